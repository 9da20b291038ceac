"""Helpers the bench scripts share for measuring broker processes (Linux /proc).

Importing it has no side effects: no environment read, nothing computed at import time.
"""

import json
import os
import resource
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


def start_broker(binary, conf):
    """Starts `binary --config conf` (its stdout piped, stderr dropped) and waits for its
    "ringpost listening on ADDR" line; returns (process, ADDR). Exits if the broker does not
    start."""
    p = subprocess.Popen([binary, "--config", conf], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    first = p.stdout.readline()
    if not first.startswith("ringpost listening on "):
        p.kill()
        p.wait()
        raise SystemExit(f"{binary} did not start: {first!r}")
    return p, first.split()[3]


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
