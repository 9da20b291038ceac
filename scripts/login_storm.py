#!/usr/bin/env python3
"""Logins per second and what each costs: a login storm (`load connect`) against fresh brokers,
with the broker's CPU taken at the end of the storm and the generator's from its own rusage
(BENCHMARKS.md, "Shards go to sleep without an IPI", logins).

    scripts/login_storm.py --bin target/release/ringpost [--bin /tmp/before] \\
        [--conns 15000] [--rate 0] [--threads 2] [--rounds 3] [--tools PATH]

Broker: 2 shards, fsync = "always", 64 MiB segments, listen_backlog = 65535,
max_pending_logins_per_ip = 4096, idle_timeout = "120s", no WebSocket listener; its admin
listener is scraped before and after the storm for the broker's own split of each login
(`ringpost_login_stage_seconds{stage}`: p50/p99 per stage, estimated from the buckets, in the
`broker_*` fields).
Generator: `load connect --conns N --connect-rate RATE --hold 1s --ping-interval 600s
--threads T --source-ips 127.0.0.1,127.0.0.2` (RATE 0: as fast as it goes, 512 logins in
flight per thread). Binaries are interleaved round by round; one JSON line per run, medians at
the end. The broker's CPU is sampled every 20 ms and read at the end of the storm (the hold
costs it nothing with pings every 600 s, but the sample keeps the hold out anyway); the
generator's includes its start and its one-second hold.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

# scripts/ is sys.path[0] when run as a script
from benchlib import (bucket_delta, bucket_quantile, cpu_seconds, interleaved, metrics_text,
                      raise_nofile, stage_buckets, start_broker)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "release", "ringpost-tools")
# The broker's own split of each login (src/metrics/login_stages.rs).
STAGES_FAMILY = "ringpost_login_stage_seconds"
STAGES = ["login_read", "handoff", "register", "total"]


def config(d):
    return (f'[server]\nlisten = "127.0.0.1:0"\nshards = 2\nws_listen = ""\n'
            f'listen_backlog = 65535\n'
            f'[storage]\ndata_dir = "{d}/data"\nsegment_size = "64MiB"\nfsync = "always"\n'
            f'[auth]\nsecret_file = "{d}/auth.secret"\n'
            f'[limits]\nmax_pending_logins_per_ip = 4096\nidle_timeout = "120s"\n'
            f'[admin]\nlisten = "127.0.0.1:0"\ntoken_file = "{d}/admin.token"\n')


def run(binary, args):
    d = tempfile.mkdtemp(prefix="ringpost-logins-")
    conf = os.path.join(d, "ringpost.toml")
    with open(conf, "w") as f:
        f.write(config(d))
    p, addr, admin = start_broker(binary, conf, admin=True)
    try:
        stages_before = stage_buckets(metrics_text(admin), STAGES_FAMILY)
        c0 = cpu_seconds(p.pid)
        t0 = time.monotonic()
        before = os.times()
        g = subprocess.Popen([args.tools, "load", "connect", "--json", "--addr", addr,
                              "--secret-file", f"{d}/auth.secret", "--conns", str(args.conns),
                              "--connect-rate", str(args.rate), "--hold", "1s",
                              "--ping-interval", "600s", "--threads", str(args.threads),
                              "--source-ips", "127.0.0.1,127.0.0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        samples = []
        while g.poll() is None:
            samples.append((time.monotonic() - t0, cpu_seconds(p.pid)))
            time.sleep(0.02)
        # poll() reaped the generator (and nothing else: the broker still runs), so the
        # children's times grew by exactly its CPU.
        after = os.times()
        gen_cpu = (after.children_user - before.children_user
                   + after.children_system - before.children_system)
        out = g.stdout.read()
        j = json.loads(out)
        n = j["connected"]
        if n != args.conns:
            raise SystemExit(f"{binary}: {n} of {args.conns} logged in: {j['failed_by_code']}")
        storm = j["connect_elapsed_s"]
        # The last sample taken before the storm ended (the generator starts ~20 ms after t0).
        at_end = [c for t, c in samples if t <= storm + 0.03] or [c0]
        stages = bucket_delta(stages_before, stage_buckets(metrics_text(admin), STAGES_FAMILY))
        inside = {}
        for stage in STAGES:
            for q, name in ((0.5, "p50"), (0.99, "p99")):
                v = bucket_quantile(stages.get(stage, []), q)
                inside[f"broker_{stage}_{name}_us"] = None if v is None else round(v * 1e6)
        return {"logins_per_s": round(n / storm),
                "login_p50_us": j["login_latency_us"]["p50"],
                "login_p99_us": j["login_latency_us"]["p99"],
                "attempt_p50_us": j["login_attempt_latency_us"]["p50"],
                "attempt_p99_us": j["login_attempt_latency_us"]["p99"],
                "open_p99_us": j["login_open_latency_us"]["p99"],
                "reply_p50_us": j["login_reply_latency_us"]["p50"],
                "reply_p99_us": j["login_reply_latency_us"]["p99"],
                "broker_cpu_us_per_login": round((at_end[-1] - c0) * 1e6 / n, 1),
                "generator_cpu_us_per_login": round(gen_cpu * 1e6 / n, 1),
                **inside}
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True)
    ap.add_argument("--conns", type=int, default=15000)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tools", default=TOOLS)
    args = ap.parse_args()
    raise_nofile()
    runs = interleaved(args.bin, args.rounds, lambda b: run(b, args))
    for b, rs in runs.items():
        # A broker without the login stages (an older build) has None there.
        med = {k: statistics.median(v) if (v := [x[k] for x in rs if x[k] is not None]) else None
               for k in rs[0]}
        print(json.dumps({"bin": b, "median": med}))


if __name__ == "__main__":
    main()
