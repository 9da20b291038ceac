#!/usr/bin/env python3
"""Where a durable 1:1 message's time goes: `load p2p` against fresh brokers, with the broker's
own per-stage histograms (`ringpost_message_stage_seconds{stage}`) scraped from /metrics before
and after each run and their deltas turned into p50/p99 per stage (BENCHMARKS.md, "The durable
latency floor").

Two ways to run it:

    # A/B: fresh brokers, interleaved (A, B, A, B, ... per fsync policy), medians at the end
    scripts/latency_breakdown.py --bin target/release/ringpost --bin /tmp/ringpost-before \\
        --fsync always,never --rounds 3 --shards 2 --rate 10000 --duration 10s

    # Around any command, against a broker you started (its admin listener):
    scripts/latency_breakdown.py --admin 127.0.0.1:9090 -- \\
        target/release/ringpost-tools load p2p --secret-file data/auth.secret --rate 10000

Per-stage quantiles are estimated from the histogram buckets (linear inside a bucket), so
they are as fine as the buckets (src/metrics/stages.rs); the load generator's own latency
(intended send → Deliver received, HdrHistogram) is printed next to them.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# scripts/ is sys.path[0] when run as a script
from benchlib import bucket_delta, bucket_quantile, metrics_text, raise_nofile, stage_buckets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "release", "ringpost-tools")
STAGES = ["mesh", "append", "commit_wait", "sync", "ack_release", "ack_mesh", "ack_write",
          "total", "deliver_write"]
SYNC_BUCKET = re.compile(r'^ringpost_log_sync_seconds_bucket\{le="([^"]+)"\} (\d+)')


def scrape(admin):
    """{stage: [(upper bound s, cumulative count)]} of one /metrics scrape."""
    text = metrics_text(admin)
    out = stage_buckets(text, "ringpost_message_stage_seconds")
    for line in text.splitlines():
        m = SYNC_BUCKET.match(line)
        if m:
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            out.setdefault("log_sync (per sync)", []).append((le, int(m.group(2))))
    return out


def over(buckets, seconds):
    """How many observations lie above the bucket bound `seconds` (a bound of the family)."""
    below = max((cum for le, cum in buckets if le <= seconds), default=0)
    return buckets[-1][1] - below


def breakdown(d):
    """{stage: (count, p50 µs, p99 µs, p99.9 µs, count over 1 ms)} of a delta."""
    rows = {}
    for stage in STAGES + ["log_sync (per sync)"]:
        b = d.get(stage)
        if not b or b[-1][1] == 0:
            continue
        rows[stage] = (b[-1][1], bucket_quantile(b, 0.5) * 1e6, bucket_quantile(b, 0.99) * 1e6,
                       bucket_quantile(b, 0.999) * 1e6, over(b, 0.001))
    return rows


def print_breakdown(rows, out=sys.stdout):
    print(f"  {'stage':<22} {'count':>9} {'p50 µs':>9} {'p99 µs':>9} {'p99.9 µs':>9} "
          f"{'> 1 ms':>7}", file=out)
    for stage, (n, p50, p99, p999, slow) in rows.items():
        print(f"  {stage:<22} {n:>9} {p50:>9.0f} {p99:>9.0f} {p999:>9.0f} {slow:>7}", file=out)


class Broker:
    def __init__(self, binary, shards, fsync, sets):
        self.dir = tempfile.mkdtemp(prefix="ringpost-latency-")
        self.secret = os.path.join(self.dir, "auth.secret")
        conf = os.path.join(self.dir, "ringpost.toml")
        sections = {
            "server": {"listen": '"127.0.0.1:0"', "ws_listen": '""', "shards": str(shards)},
            "storage": {"data_dir": f'"{self.dir}/data"', "fsync": f'"{fsync}"'},
            "auth": {"secret_file": f'"{self.secret}"'},
            "admin": {"listen": '"127.0.0.1:0"', "token_file": f'"{self.dir}/admin.token"'},
            "limits": {"sends_per_sec": "1000000", "max_inbox": "100000000"},
        }
        for item in sets:
            key, value = item.split("=", 1)
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = value
        with open(conf, "w") as f:
            for section, keys in sections.items():
                f.write(f"[{section}]\n")
                for name, value in keys.items():
                    f.write(f"{name} = {value}\n")
        # A --bin may start with VAR=VALUE words: the broker's environment for that variant.
        words = binary.split()
        env = dict(os.environ)
        while len(words) > 1 and "=" in words[0]:
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        self.proc = subprocess.Popen(words + ["--config", conf], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        lines = [self.proc.stdout.readline() for _ in range(2)]
        listen = [l for l in lines if l.startswith("ringpost listening on ")]
        admin = [l for l in lines if l.startswith("ringpost admin on ")]
        if not listen or not admin:
            self.close()
            raise SystemExit(f"broker {binary} did not start: {lines!r}")
        self.addr = listen[0].split()[3]
        self.admin = admin[0].split()[3]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def run_one(binary, fsync, args):
    broker = Broker(binary, args.shards, fsync, args.config)
    try:
        before = scrape(broker.admin)
        cmd = [args.tools, "load", "p2p", "--addr", broker.addr, "--secret-file", broker.secret,
               "--users", str(args.users), "--rate", str(args.rate), "--size", str(args.size),
               "--duration", args.duration, "--warmup", args.warmup, "--threads", "1", "--json"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        after = scrape(broker.admin)
    finally:
        broker.close()
    try:
        report = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise SystemExit(f"load p2p failed ({res.returncode}): {res.stderr[-2000:]}")
    if res.returncode != 0:
        print(f"WARNING: load p2p exited {res.returncode}: lost {report.get('lost')} "
              f"dup {report.get('duplicated')} errors {report.get('errors')}", file=sys.stderr)
    return report, breakdown(bucket_delta(before, after))


def ab(args):
    raise_nofile()
    fsyncs = args.fsync.split(",")
    results = {}  # (bin, fsync) -> list of (report, rows)
    for rnd in range(args.rounds):
        for fsync in fsyncs:
            order = args.bin if rnd % 2 == 0 else list(reversed(args.bin))
            for binary in order:
                load = loadavg()
                report, rows = run_one(binary, fsync, args)
                lat = report["latency_us"]
                print(f"round {rnd + 1} {binary} fsync={fsync} load={load}: delivered "
                      f"{report['throughput_per_s']:.0f}/s p50 {lat['p50']} p99 {lat['p99']} "
                      f"p99.9 {lat['p999']} max {lat['max']} µs lost {report['lost']}", flush=True)
                print_breakdown(rows)
                results.setdefault((binary, fsync), []).append((report, rows, load))
    print("\nmedians (min … max) over rounds:")
    summary = []
    for (binary, fsync), runs in results.items():
        p50s = [r["latency_us"]["p50"] for r, _, _ in runs]
        p99s = [r["latency_us"]["p99"] for r, _, _ in runs]
        p999s = [r["latency_us"]["p999"] for r, _, _ in runs]
        print(f"{binary} fsync={fsync}: p50 {statistics.median(p50s):.0f} ({min(p50s)} … "
              f"{max(p50s)}) p99 {statistics.median(p99s):.0f} ({min(p99s)} … {max(p99s)}) "
              f"p99.9 {statistics.median(p999s):.0f} ({min(p999s)} … {max(p999s)}) µs; "
              f"load {', '.join(l for _, _, l in runs)}")
        stages = {}
        for _, rows, _ in runs:
            for stage, (_, p50, p99, p999, slow) in rows.items():
                stages.setdefault(stage, []).append((p50, p99, p999, slow))
        for stage, vals in stages.items():
            print(f"  {stage:<22} p50 {statistics.median(v[0] for v in vals):>7.0f}"
                  f"  p99 {statistics.median(v[1] for v in vals):>7.0f}"
                  f"  p99.9 {statistics.median(v[2] for v in vals):>7.0f} µs"
                  f"  > 1 ms {statistics.median(v[3] for v in vals):>5.0f}")
        summary.append({"bin": binary, "fsync": fsync, "p50": p50s, "p99": p99s,
                        "p999": p999s, "stages": {s: v for s, v in stages.items()}})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


def around(args):
    before = scrape(args.admin)
    rc = subprocess.call(args.command)
    after = scrape(args.admin)
    print_breakdown(breakdown(bucket_delta(before, after)))
    return rc


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--admin", help="scrape this admin listener around the command after --")
    p.add_argument("--bin", action="append",
                   help="broker binary, optionally after VAR=VALUE words for its environment "
                        "(repeat for an A/B)")
    p.add_argument("--tools", default=TOOLS)
    p.add_argument("--fsync", default="always,never")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--rate", type=int, default=10000)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--duration", default="10s")
    p.add_argument("--warmup", default="1s")
    p.add_argument("--set", action="append", default=[], dest="config",
                   help='a broker config key, e.g. --set storage.segment_size=\'"1MiB"\'')
    p.add_argument("--json", help="write the per-run figures here")
    p.add_argument("command", nargs="*")
    args = p.parse_args()
    if args.admin:
        sys.exit(around(args))
    if not args.bin:
        args.bin = [os.path.join(ROOT, "target", "release", "ringpost")]
    ab(args)


if __name__ == "__main__":
    main()
