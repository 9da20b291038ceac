#!/usr/bin/env python3
"""1:1 p2p against an older broker (BENCHMARKS.md, "1:1 p2p before and after groups").

Interleaved, rotated rounds of three variants, each against a fresh broker (shards = 2,
fsync = "always", 64 MiB segments, sends_per_sec = 1000000), all driven by this tree's load
tool: BASE (an older ringpost binary, e.g. one built from the commit before a change), CUR
(target/release/ringpost with its defaults, own-send sync on) and CUR-OFF (the same with
`own_send_sync = false`). Per run: p2p at overload (RATE) for the delivered msg/s and the
broker's CPU µs per delivered message (utime + stime from /proc/PID/stat; echoes of own sends
are not counted as deliveries), then p2p at LAT_RATE for latency p50 / p99.

    git worktree add /tmp/base COMMIT && (cd /tmp/base && cargo build --release --bin ringpost)
    cargo build --release --workspace
    RINGPOST_BASE=/tmp/base/target/release/ringpost scripts/bench_regression.py

Environment: RINGPOST_BASE (required), ROUNDS (3), RATE (400000), LAT_RATE (10000). The base
broker gets only keys every version knows (no [admin], no ws_listen). RINGPOST_VARIANTS
("label=path,label=path") replaces CUR by those binaries (current enough to take the keys CUR
takes), each run with own-send sync on (`label`) and off (`label-off`): for A/B of changes.
"""

import json
import os
import shutil
import statistics
import subprocess
import tempfile

from benchlib import cpu_seconds, no_arguments, start_broker  # scripts/ is sys.path[0] when run as a script

if __name__ == "__main__":
    no_arguments(__doc__)  # before the environment is read below

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "release", "ringpost-tools")
CUR = os.path.join(ROOT, "target", "release", "ringpost")
BASE = os.environ["RINGPOST_BASE"]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
RATE = os.environ.get("RATE", "400000")
LAT_RATE = os.environ.get("LAT_RATE", "10000")


def run(binary, server_extra, other_sections):
    d = tempfile.mkdtemp(prefix="ringpost-regression-")
    conf = os.path.join(d, "ringpost.toml")
    with open(conf, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:0"\nshards = 2\n{server_extra}'
                f'[storage]\ndata_dir = "{d}/data"\nsegment_size = "64MiB"\nfsync = "always"\n'
                f'[auth]\nsecret_file = "{d}/auth.secret"\n'
                f'[limits]\nsends_per_sec = 1000000\nmax_inbox = 100000000\n{other_sections}')
    p, addr = start_broker(binary, conf)
    try:
        out = {}
        for name, rate in (("peak", RATE), ("lat", LAT_RATE)):
            c0 = cpu_seconds(p.pid)
            o = subprocess.run([TOOLS, "load", "p2p", "--json", "--addr", addr, "--secret-file",
                                f"{d}/auth.secret", "--users", "200", "--rate", rate,
                                "--duration", "5s", "--warmup", "1s", "--size", "64",
                                "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            cpu = cpu_seconds(p.pid) - c0
            j = json.loads(o.stdout)
            for k in ("lost", "duplicated", "out_of_order"):
                assert j[k] == 0, j
            out[name] = {"msg_s": round(j["throughput_per_s"]),
                         "cpu_us_per_msg": round(cpu * 1e6 / max(1, j["delivered"]), 3),
                         "p50_us": j["latency_us"]["p50"], "p99_us": j["latency_us"]["p99"]}
        return out
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    current = [("cur", CUR)]
    if os.environ.get("RINGPOST_VARIANTS"):
        current = [tuple(v.split("=", 1)) for v in os.environ["RINGPOST_VARIANTS"].split(",")]
    variants = [("base", BASE, "", "")]
    for label, binary in current:
        variants += [
            (label, binary, 'ws_listen = ""\n', '[admin]\nlisten = ""\n'),
            (f"{label}-off", binary, 'ws_listen = ""\nown_send_sync = false\n',
             '[admin]\nlisten = ""\n'),
        ]
    runs = {v[0]: [] for v in variants}
    n = len(variants)
    for rnd in range(ROUNDS):
        for label, binary, server, other in variants[rnd % n:] + variants[:rnd % n]:
            r = run(binary, server, other)
            runs[label].append(r)
            print(f"round {rnd + 1} {label}: {json.dumps(r)} load {os.getloadavg()[0]:.1f}",
                  flush=True)
    med = {label: {"peak_msg_s": statistics.median(r["peak"]["msg_s"] for r in rs),
                   "cpu_us_per_msg": statistics.median(r["peak"]["cpu_us_per_msg"] for r in rs),
                   "p50_us": statistics.median(r["lat"]["p50_us"] for r in rs),
                   "p99_us": statistics.median(r["lat"]["p99_us"] for r in rs)}
           for label, rs in runs.items()}
    print(json.dumps({"runs": runs, "median": med}))


if __name__ == "__main__":
    main()
