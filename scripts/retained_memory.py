#!/usr/bin/env python3
"""Broker heap per retained message: `load offline --phase send` stores M messages for U offline
users in a fresh broker, and the broker's anonymous memory (RssAnon, /proc/PID/status: the
heap, not the mapped log) is read before and after. What grows per message is the in-memory
user index (each message's entry in the recipient's stream and, with own-send sync, the
copy's entry in the sender's), the dedup windows, and whatever else the send path keeps; the
broker's fixed growth (buffers, the first connections) is in the delta too, so it is a
per-message figure only with enough messages (200,000 to 100 users gives ~470 B where
2,000,000 to 1,000 gives ~100). BENCHMARKS.md, "Heap per retained message".

    scripts/retained_memory.py --bin target/release/ringpost [--bin /tmp/before] \\
        [--users 1000] [--messages 2000000] [--rounds 2] [--shards 2] [--set KEY=VALUE ...]

Broker: fsync = "always", 64 MiB segments, sends_per_sec = 1000000, max_inbox = 100000000,
no admin or WebSocket listener; `--set server.own_send_sync=false` and the like add keys.
Binaries are interleaved round by round; prints one JSON line per run and medians at the end.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile

from benchlib import cpu_seconds, interleaved, start_broker  # scripts/ is sys.path[0] when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "release", "ringpost-tools")


def rss_anon_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise SystemExit(f"no RssAnon in /proc/{pid}/status")


def config(d, shards, sets):
    sections = {
        "server": {"listen": '"127.0.0.1:0"', "shards": str(shards), "ws_listen": '""'},
        "storage": {"data_dir": f'"{d}/data"', "segment_size": '"64MiB"', "fsync": '"always"'},
        "auth": {"secret_file": f'"{d}/auth.secret"'},
        "limits": {"sends_per_sec": "1000000", "max_inbox": "100000000"},
        "admin": {"listen": '""'},
    }
    for s in sets:
        key, value = s.split("=", 1)
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = value
    return "".join(f"[{sec}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items())
                   for sec, kv in sections.items())


def run(binary, args):
    d = tempfile.mkdtemp(prefix="ringpost-retained-")
    conf = os.path.join(d, "ringpost.toml")
    with open(conf, "w") as f:
        f.write(config(d, args.shards, args.set))
    p, addr = start_broker(binary, conf)
    try:
        before = rss_anon_kib(p.pid)
        c0 = cpu_seconds(p.pid)
        o = subprocess.run([TOOLS, "load", "offline", "--json", "--addr", addr, "--secret-file",
                            f"{d}/auth.secret", "--users", str(args.users), "--messages",
                            str(args.messages), "--size", "64", "--phase", "send", "--record",
                            os.path.join(d, "record")],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        cpu = cpu_seconds(p.pid) - c0
        after = rss_anon_kib(p.pid)
        j = json.loads(o.stdout)
        acked = j["acked"]
        if acked != args.messages:
            raise SystemExit(f"{binary}: {acked} of {args.messages} acked: {o.stdout}")
        return {"rss_anon_before_kib": before, "rss_anon_after_kib": after,
                "bytes_per_message": round((after - before) * 1024 / acked, 1),
                "broker_cpu_us_per_message": round(cpu * 1e6 / acked, 3)}
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True, help="broker binary (repeatable)")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help='a config key, value in TOML (e.g. server.own_send_sync=false)')
    args = ap.parse_args()
    runs = interleaved(args.bin, args.rounds, lambda b: run(b, args))
    for b, rs in runs.items():
        print(f"{b}: bytes per retained message, median "
              f"{statistics.median(r['bytes_per_message'] for r in rs)} "
              f"({', '.join(str(r['bytes_per_message']) for r in rs)}); broker CPU µs/msg "
              f"{statistics.median(r['broker_cpu_us_per_message'] for r in rs)}")


if __name__ == "__main__":
    main()
