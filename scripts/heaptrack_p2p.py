#!/usr/bin/env python3
"""Heap allocation calls of a whole broker under 1:1 load, by site (BENCHMARKS.md, "The
executor's loop without allocations").

Runs BIN (a `--features sysalloc` build: heaptrack intercepts the system allocator, not
mimalloc) under `heaptrack` with 2 shards, fsync = "always", sends_per_sec = 1000000; drives it
with this tree's `ringpost-tools load p2p --users 200 --size 64 --warmup 1s --duration DURATION
--threads 1 --rate RATE --pairs-cross-shard-only --shards 2` (every message crosses the mesh);
stops it with SIGTERM and counts allocation calls (`heaptrack_print --flamegraph-cost-type
allocations`) by site: the deepest ringpost frame of each stack, and the deepest glommio frame
below it where the allocation is glommio's. Prints the load's outcome, the total, allocation
calls per delivered message, and the sites over 0.1 % of the total.

    CARGO_TARGET_DIR=target/sysalloc cargo build --release --features sysalloc --bin ringpost
    cargo build --release -p ringpost-tools
    scripts/heaptrack_p2p.py target/sysalloc/release/ringpost [--rate 20000] [--duration 5s]

Needs heaptrack and heaptrack_print (Debian: `apt install heaptrack`).
"""

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "release", "ringpost-tools")


def frame_name(frame):
    """A collapsed-stack frame as a readable Rust path: no file, no hash, no $-escapes."""
    frame = re.sub(r" \([^)]*\)$", "", frame)
    frame = re.sub(r"::h[0-9a-f]{16}$", "", frame)
    for escaped, plain in (("$LT$", "<"), ("$GT$", ">"), ("$u20$", " "), ("$C$", ","),
                           ("$RF$", "&"), ("$u7b$", "{"), ("$u7d$", "}"), ("..", "::")):
        frame = frame.replace(escaped, plain)
    return frame


def sites(collapsed):
    """{(ringpost frame, glommio frame or '-'): allocation calls} from heaptrack's collapsed
    stacks (root first; one line per stack, its count last)."""
    counts = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [frame_name(f) for f in stack.split(";")]
        ours = [i for i, f in enumerate(frames) if f.startswith("ringpost::") or "<ringpost::" in f]
        theirs = [i for i, f in enumerate(frames) if "glommio::" in f]
        at = ours[-1] if ours else -1
        below = [i for i in theirs if i > at]
        counts[(frames[at] if ours else "-", frames[below[-1]] if below else "-")] += int(n)
    return counts


def broker_pids(binary):
    """The processes running `binary`."""
    want, pids = os.path.realpath(binary), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == want:
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bin")
    ap.add_argument("--rate", default="20000")
    ap.add_argument("--duration", default="5s")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="ringpost-heaptrack.")
    try:
        with open(f"{d}/c.toml", "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:0"\nws_listen = ""\nshards = 2\n'
                    f'[storage]\ndata_dir = "{d}/data"\nfsync = "always"\n'
                    f'[auth]\nsecret_file = "{d}/auth.secret"\n[admin]\nlisten = ""\n'
                    f"[limits]\nsends_per_sec = 1000000\nmax_inbox = 100000000\n")
        broker = subprocess.Popen(["heaptrack", "-o", f"{d}/heap", args.bin, "--config", f"{d}/c.toml"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        addr = None
        for line in broker.stdout:
            if line.startswith("ringpost listening on "):
                addr = line.split()[3]
                break
        if addr is None:
            raise SystemExit(f"{args.bin} did not start under heaptrack")
        load = subprocess.run(
            [TOOLS, "load", "p2p", "--addr", addr, "--secret-file", f"{d}/auth.secret",
             "--users", "200", "--size", "64", "--warmup", "1s", "--duration", args.duration,
             "--threads", "1", "--rate", args.rate, "--pairs-cross-shard-only", "--shards", "2",
             "--json"], capture_output=True, text=True, check=True)
        out = json.loads(load.stdout)
        # `heaptrack` is a shell script running the broker and its own interpreter: signal
        # the broker itself, found by its executable.
        for pid in broker_pids(args.bin):
            os.kill(pid, signal.SIGTERM)
        broker.wait()
        data = next(f for f in os.listdir(d) if f.startswith("heap."))
        subprocess.run(["heaptrack_print", "--flamegraph-cost-type", "allocations",
                        "-F", f"{d}/collapsed", f"{d}/{data}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        with open(f"{d}/collapsed") as f:
            counts = sites(f.read())
        total = sum(counts.values())
        print(json.dumps({k: out[k] for k in ("sent", "delivered", "lost", "duplicated")}))
        print(f"allocation calls: {total} ({total / max(out['delivered'], 1):.3f} per delivered message)")
        for (ours, theirs), n in counts.most_common():
            if n * 1000 < total:
                break
            print(f"{n:9d}  {ours}" + (f"  ->  {theirs}" if theirs != "-" else ""))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
