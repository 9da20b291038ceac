#!/usr/bin/env python3
"""`make bench`: the micro-benchmarks in bench/, then end-to-end runs against a locally
started release broker.

Runs `cargo bench -p ringpost-bench` (codec, owner hash, cross-shard hop, log append/replay),
then, each against a fresh broker with its own data directory:
  * p2p (durable, fsync=always) at 1 and 2 shards: an overload run to find the peak, then a
    run at half of that peak for latency;
  * connect sweeps: idle RSS per connection at several counts up to what the fd limit allows,
    and the login rate with no rate limit;
and rewrites the "End-to-end (make bench)" section of BENCHMARKS.md (between the markers)
with the machine, commit, command lines and results. Environment:
  E2E_QUICK=1     shorter runs (CI smoke: checks the driver, writes nothing)
  E2E_OUT=FILE    write the section to FILE instead of BENCHMARKS.md
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import raise_nofile, no_arguments  # scripts/ is sys.path[0] when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROKER = os.path.join(ROOT, "target", "release", "ringpost")
TOOLS = os.path.join(ROOT, "target", "release", "ringpost-tools")
BEGIN = "<!-- e2e:begin (written by scripts/bench_e2e.py; edits inside are overwritten) -->"
END = "<!-- e2e:end -->"
QUICK = os.environ.get("E2E_QUICK") == "1"


class Broker:
    def __init__(self, shards, extra="", fsync="always"):
        self.dir = tempfile.mkdtemp(prefix="ringpost-e2e-")
        self.secret = os.path.join(self.dir, "auth.secret")
        conf = os.path.join(self.dir, "ringpost.toml")
        with open(conf, "w") as f:
            f.write(
                f'[server]\nlisten = "127.0.0.1:0"\nws_listen = "127.0.0.1:0"\nshards = {shards}\n'
                f'[storage]\ndata_dir = "{self.dir}/data"\nsegment_size = "64MiB"\nfsync = "{fsync}"\n'
                f'[auth]\nsecret_file = "{self.secret}"\n'
                f'[admin]\nlisten = "127.0.0.1:0"\ntoken_file = "{self.dir}/admin.token"\n'
                f"[limits]\nsends_per_sec = 1000000\n{extra}"
            )
        self.proc = subprocess.Popen(
            [BROKER, "--config", conf],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("ringpost listening on "):
            raise SystemExit(f"broker did not start: {line!r}")
        self.addr = line.split()[3]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def load(broker, scenario, args):
    """Runs one load command; stops the whole bench, loudly, unless it exited 0 (a run that
    lost, duplicated, reordered, left unanswered or got error acks is not a benchmark)."""
    cmd = [TOOLS, "load", scenario, "--json", "--addr", broker.addr,
           "--secret-file", broker.secret] + args
    shown = "ringpost-tools load " + scenario + " " + " ".join(args)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail = "\n".join(out.stderr.splitlines()[-15:])
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"{shown}: no JSON (exit {out.returncode})\n{tail}")
    if out.returncode != 0:
        raise SystemExit(f"{shown}: FAILED with exit {out.returncode}; nothing written.\n"
                         f"report: {json.dumps(report)}\n{tail}")
    return shown, report, out.returncode


def p2p(shards, duration, users=200):
    rows = []
    broker = Broker(shards)
    try:
        base = ["--users", str(users), "--size", "64", "--warmup", "1s",
                "--duration", duration, "--threads", "1"]
        cmd, peak, _ = load(broker, "p2p", base + ["--rate", "400000"])
        rows.append((cmd, peak))
    finally:
        broker.close()
    half = max(1000, int(peak["throughput_per_s"] / 2))
    broker = Broker(shards)
    try:
        cmd, at_half, _ = load(broker, "p2p", base + ["--rate", str(half)])
        rows.append((cmd, at_half))
    finally:
        broker.close()
    return peak, at_half, rows


def fixed_rate(shards, fsync, rate, duration, users=200):
    broker = Broker(shards, fsync=fsync)
    try:
        args = ["--users", str(users), "--size", "64", "--warmup", "1s", "--duration", duration,
                "--threads", "1", "--rate", str(rate)]
        cmd, r, _ = load(broker, "p2p", args)
        return cmd, r
    finally:
        broker.close()


def connect(conns, rate, hold, processes, shards=2, ping="30s"):
    broker = Broker(shards)
    try:
        args = ["--conns", str(conns), "--connect-rate", str(rate), "--hold", hold,
                "--ping-interval", ping, "--processes", str(processes), "--threads", "1",
                "--source-ips", "127.0.0.2-127.0.0.100", "--broker-pid", str(broker.proc.pid)]
        cmd, r, _ = load(broker, "connect", args)
        return cmd, r
    finally:
        broker.close()


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return (f"{os.cpu_count()} CPUs ({model}), {mem_kib // 1024 // 1024} GiB RAM, "
            f"Linux {platform.release()}")


def commit():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+uncommitted" if dirty else "")
    except OSError:
        return "?"


def micro():
    """Runs the micro-benchmarks; returns their result lines."""
    out = subprocess.run(["cargo", "bench", "-p", "ringpost-bench"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if out.returncode != 0:
        raise SystemExit("cargo bench -p ringpost-bench failed")
    return [l for l in out.stdout.splitlines()
            if l.strip() and not l.startswith(("running ", "test result"))]


def lat(h):
    return f"{h['p50']} / {h['p99']} / {h['p999']} / {h['p9999']} / {h['max']}"


def losses(r):
    """lost/dup/ooo/unanswered of a p2p report (a run only gets here with all of them 0)."""
    return f"{r['lost']}/{r['duplicated']}/{r['out_of_order']}/{r['unanswered']}"


def main():
    no_arguments(__doc__)
    nofile = raise_nofile()
    duration = "2s" if QUICK else "5s"
    lines = [BEGIN, "", "## End-to-end (make bench)", "",
             f"Machine: {machine()}. Commit {commit()}, {time.strftime('%Y-%m-%d')}. "
             "Broker and load generator share this machine; broker fsync=always, release build.",
             ""]
    commands = []
    if not QUICK:
        lines += ["### Micro-benchmarks (cargo bench -p ringpost-bench)", "", "```"] + micro() + ["```", ""]

    lines += ["### 1:1 messages (load p2p, 200 users, 64 B, durable)", "",
              "| shards | offered msg/s | delivered msg/s | latency µs p50 / p99 / p99.9 / p99.99 / max | lost/dup/ooo/unanswered |",
              "|---:|---:|---:|---|---|"]
    for shards in (1, 2):
        peak, half, rows = p2p(shards, duration)
        for _, r in ((None, peak), (None, half)):
            lines.append(f"| {shards} | {r['rate']:.0f} | {r['throughput_per_s']:.0f} | "
                         f"{lat(r['latency_us'])} | {losses(r)} |")
        commands += [f"# broker: shards = {shards}, fsync = \"always\"\n{c}" for c, _ in rows]
        print(f"p2p {shards} shard(s): peak {peak['throughput_per_s']:.0f} msg/s, "
              f"p99 at half {half['latency_us']['p99']} µs", file=sys.stderr)
    lines += ["", "Rows 2 and 4 are at half of the row above (the latency-at-half-of-peak figure). "
              "Both processes are CPU-bound there: the generator and the broker share the 2 cores, "
              "and the kernel's loopback TCP work is charged to whichever side sends.", "",
              "Fixed, modest rate (1 shard):", "",
              "| fsync | offered msg/s | delivered msg/s | latency µs p50 / p99 / p99.9 / p99.99 / max | lost/dup/ooo/unanswered |",
              "|---|---:|---:|---|---|"]
    for fsync in ("always", "interval"):
        cmd, r = fixed_rate(1, fsync, 20_000, duration)
        commands.append(f"# broker: shards = 1, fsync = \"{fsync}\"\n{cmd}")
        lines.append(f"| {fsync} | {r['rate']:.0f} | {r['throughput_per_s']:.0f} | "
                     f"{lat(r['latency_us'])} | {losses(r)} |")
    lines.append("")

    # Each generator process holds at most ~nofile connections; leave room for the broker's
    # own fds under the same limit.
    top = max(1000, min(nofile - 300, 19_800))
    counts = [1000, 4000] if QUICK else [1000, 5000, 10_000, top]
    lines += ["### Idle connections (load connect, 2 shards, 20k logins/s, pings every 30 s, "
              "held 10 s so that they park after the default park_after = 5s)", "",
              "| connections | broker RSS B/conn | kernel slab B/conn (both ends) | ping RTT µs p50 / p99 / p99.9 / p99.99 / max | failed |",
              "|---:|---:|---:|---|---:|"]
    points = []
    for n in counts:
        procs = 1 if n + 200 < nofile else 2
        cmd, r = connect(n, 20_000, "3s" if QUICK else "10s", procs)
        commands.append(cmd)
        points.append((r["connected"], r["broker"]["rss_holding_bytes"] - r["broker"]["rss_before_bytes"]))
        lines.append(f"| {r['connected']} | {r['broker_rss_bytes_per_conn']} | "
                     f"{r['kernel_slab_bytes_per_conn']} | {lat(r['ping_rtt_us'])} | {r['failed']} |")
        print(f"connect {n}: {r['broker_rss_bytes_per_conn']} B/conn", file=sys.stderr)
    if len(points) >= 2:
        (n0, b0), (n1, b1) = points[0], points[-1]
        slope = (b1 - b0) / max(1, n1 - n0)
        lines += ["", f"Slope between {n0} and {n1} connections: **{slope:.0f} B of broker RSS per "
                  f"added connection**; extrapolated to 1M connections: "
                  f"{slope * 1e6 / 2**30:.2f} GiB (extrapolation, not a measurement)."]
    lines.append("")

    n = 4000 if QUICK else min(10_000, top)
    procs = 1 if n + 200 < nofile else 2
    cmd, r = connect(n, 0, "1s", procs, ping="2s")
    commands.append(cmd)
    lines += ["### Login rate (load connect, no rate limit, 512 logins in flight per thread)", "",
              f"{r['connected']} connections logged in at **{r['connect_rate_per_s']:.0f}/s**; "
              f"failed {r['failed']}. Login latency µs p50 / p99 / p99.9 / p99.99 / max, per "
              f"attempt (from its connect call): {lat(r['login_attempt_latency_us'])}; from the "
              f"intended start (all were due at once, so this includes the wait behind the "
              f"in-flight cap): {lat(r['login_latency_us'])}.", ""]
    lines += ["Commands (each against a fresh broker; `--addr`/`--secret-file` omitted):", "",
              "```"] + commands + ["```", "", END]
    section = "\n".join(lines) + "\n"

    if QUICK and not os.environ.get("E2E_OUT"):
        print(section)
        return
    target = os.environ.get("E2E_OUT") or os.path.join(ROOT, "BENCHMARKS.md")
    text = open(target).read() if os.path.exists(target) else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(target, "w") as f:
        f.write(text)
    print(f"wrote the end-to-end section of {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
