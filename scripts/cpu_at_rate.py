#!/usr/bin/env python3
"""Broker and load-generator CPU per 1:1 message at one fixed offered rate (BENCHMARKS.md,
"Own-send sync after the SendAck carries the copy").

For each binary and own-send setting, one fresh broker (2 shards, fsync = "always",
sends_per_sec = 1000000) and one `load p2p --users 200 --size 64 --threads 1 --warmup 1s
--duration 6s --rate RATE`; prints delivered, p50, and CPU µs per delivered message of the
broker (utime + stime from /proc/PID/stat over the load run) and of the generator (its rusage).
Unlike the peak in scripts/bench_regression.py, every variant does the same work per second,
so the per-message figures compare the path, not how well each batches at saturation.

    scripts/cpu_at_rate.py [--users N] [--threads T] [--rounds R] RATE BIN [BIN ...]
    # e.g. scripts/cpu_at_rate.py 200000 target/release/ringpost

`--users N` (default 200) spreads the same rate over N users (two connections each): with
thousands, every connection stays active (it sends more often than `park_after`), each
waiting in a poll on its shard's ring. `--threads T` (default 1) generator threads; one
thread falls behind past a few thousand connections (its send lag shows in the p50).
`--rounds R` (default 1) repeats the binaries in turn (A, B, A, B, ...).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time

from benchlib import cpu_seconds, raise_nofile  # scripts/ is sys.path[0] when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "release", "ringpost-tools")


def run(binary, rate, own_send, users, threads):
    d = tempfile.mkdtemp(prefix="ringpost-cpu.")
    try:
        with open(f"{d}/c.toml", "w") as f:
            f.write(
                f'[server]\nlisten = "127.0.0.1:0"\nws_listen = ""\nshards = 2\n'
                f"own_send_sync = {own_send}\n"
                f'[storage]\ndata_dir = "{d}/data"\nfsync = "always"\n'
                f'[auth]\nsecret_file = "{d}/auth.secret"\n[admin]\nlisten = ""\n'
                f"[limits]\nsends_per_sec = 1000000\nmax_inbox = 100000000\n"
                f"max_pending_logins_per_ip = 100000\n"
            )
        out = open(f"{d}/out", "w")
        broker = subprocess.Popen([binary, "--config", f"{d}/c.toml"], stdout=out, stderr=out)
        addr = None
        for _ in range(100):
            with open(f"{d}/out") as f:
                for line in f:
                    if "listening on" in line:
                        addr = line.split()[3]
            if addr:
                break
            time.sleep(0.1)
        if addr is None:
            raise SystemExit(f"{binary} did not start")
        c0 = cpu_seconds(broker.pid)
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = subprocess.run(
            [TOOLS, "load", "p2p", "--addr", addr, "--secret-file", f"{d}/auth.secret",
             "--users", str(users), "--size", "64", "--warmup", "1s", "--duration", "6s",
             "--threads", str(threads), "--rate", str(rate), "--json"],
            capture_output=True, text=True, check=True)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        c1 = cpu_seconds(broker.pid)
        broker.terminate()
        broker.wait()
        rep = json.loads(load.stdout.strip().splitlines()[-1])
        n = rep["delivered"]
        gen = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
        lat = rep["latency_us"]
        return n, rep["lost"], lat["p50"], lat["p99"], 1e6 * (c1 - c0) / n, 1e6 * gen / n
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("rate", type=int)
    ap.add_argument("bin", nargs="+")
    args = ap.parse_args()
    raise_nofile()
    for _ in range(args.rounds):
        for binary in args.bin:
            for own_send in ("true", "false"):
                n, lost, p50, p99, broker, gen = run(binary, args.rate, own_send, args.users,
                                                     args.threads)
                print(f"{binary} own_send_sync={own_send} rate={args.rate} users={args.users}: "
                      f"delivered {n} lost {lost} p50 {p50} p99 {p99} µs; broker {broker:.2f} "
                      f"µs/msg, generator {gen:.2f} µs/msg; load {os.getloadavg()[0]:.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
