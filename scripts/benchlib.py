"""Helpers the bench scripts share for measuring broker processes (Linux /proc).

Importing it has no side effects: no environment read, nothing computed at import time.
"""

import json
import os
import re
import resource
import socket
import subprocess
import sys


def cpu_seconds(pid):
    """CPU seconds (utime + stime, from /proc/PID/stat) the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile():
    """Raises this process's open-file limit to its hard limit (children inherit it); returns
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def no_arguments(doc):
    """For the scripts configured only by environment variables (`make bench` and friends): `-h`
    or `--help` prints `doc` and exits, any other argument is refused, so that asking a script
    for help never starts a benchmark that rewrites BENCHMARKS.md."""
    args = sys.argv[1:]
    if not args:
        return
    if args[0] in ("-h", "--help"):
        print(doc)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]} takes no arguments (it is configured by environment variables; "
             f"see --help), got: {' '.join(args)}")


def start_broker(binary, conf, admin=False):
    """Starts `binary --config conf` (its stdout piped, stderr dropped) and waits for its
    "ringpost listening on ADDR" line; returns (process, ADDR), or with `admin` (the config has
    an admin listener) (process, ADDR, ADMIN ADDR). Exits if the broker does not start."""
    p = subprocess.Popen([binary, "--config", conf], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    lines = [p.stdout.readline() for _ in range(2 if admin else 1)]
    listen = [l.split()[3] for l in lines if l.startswith("ringpost listening on ")]
    admins = [l.split()[3] for l in lines if l.startswith("ringpost admin on ")]
    if not listen or (admin and not admins):
        p.kill()
        p.wait()
        raise SystemExit(f"{binary} did not start: {lines!r}")
    return (p, listen[0], admins[0]) if admin else (p, listen[0])


def interleaved(binaries, rounds, run_one):
    """Runs `run_one(binary)` for every binary in turn, `rounds` times (A, B, A, B, ...), printing
    one JSON line per run (round, bin, the run's dict, the 1-minute load average); returns
    {binary: [dict per run]}."""
    runs = {b: [] for b in binaries}
    for rnd in range(rounds):
        for b in binaries:
            r = run_one(b)
            runs[b].append(r)
            print(json.dumps({"round": rnd + 1, "bin": b, **r,
                              "load": round(os.getloadavg()[0], 1)}), flush=True)
    return runs


def metrics_text(admin):
    """One /metrics scrape of the admin listener at `admin` (HOST:PORT), as text."""
    host, port = admin.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


def stage_buckets(text, family):
    """{stage: [(upper bound s, cumulative count)]} of the histogram family `family` (labelled
    by `stage`, e.g. ringpost_message_stage_seconds) in a /metrics text."""
    # Label order is the encoder's (`le` first today); accept either.
    bucket = re.compile(
        rf'^{family}_bucket\{{(?:le="(?P<le1>[^"]+)",)?stage="(?P<stage>[a-z_]+)"'
        r'(?:,le="(?P<le2>[^"]+)")?\} (?P<n>\d+)')
    out = {}
    for line in text.splitlines():
        m = bucket.match(line)
        if m:
            raw = m.group("le1") or m.group("le2")
            le = float("inf") if raw == "+Inf" else float(raw)
            out.setdefault(m.group("stage"), []).append((le, int(m.group("n"))))
    return out


def bucket_delta(before, after):
    """`after` minus `before`, per stage, of two `stage_buckets` results."""
    out = {}
    for stage, buckets in after.items():
        prev = dict(before.get(stage, []))
        out[stage] = [(le, cum - prev.get(le, 0)) for le, cum in buckets]
    return out


def bucket_quantile(buckets, q):
    """Estimate of the q-quantile (seconds) from cumulative (bound, count) pairs, linear inside
    a bucket; None when there are no observations."""
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0
    for le, cum in buckets:
        if cum >= rank:
            if le == float("inf"):
                return lower
            inside = cum - below
            frac = (rank - below) / inside if inside else 1.0
            return lower + (le - lower) * frac
        lower, below = le, cum
    return lower
