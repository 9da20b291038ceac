#!/usr/bin/env python3
"""`make soak`: the kill -9 soak, `ringpost-tools load soak`, with the release binaries.

The tool starts the broker (fsync = "always"), runs churn traffic (reconnects, resends of
unanswered sends with the same client_msg_id, some users on two devices), kills the broker
with SIGKILL at random moments and restarts it on the same data directory, then verifies
every device's stream and a fresh replay of every inbox from the log. This script sizes the
run for a 2-core box (about 2 minutes), saves the JSON report under target/soak/, appends a
row to the soak table in RELIABILITY.md, and exits with the tool's status (non-zero on any
loss, duplicate, reorder, unanswered send or error ack). Environment:
  SOAK_KILLS=24        SIGKILLs (at least 20 for the issue's soak)
  SOAK_DURATION=90s    traffic time (kills are spread over it)
  SOAK_USERS=40        users (pairs send to each other)
  SOAK_RATE=400        messages per second, all senders together
  SOAK_DEVICES=2       devices of each multi-device user (half of the users)
  SOAK_SHARDS=2        broker shards
  SOAK_ARGS="..."      more `load soak` flags, e.g. "--churn-every 200ms --size 256"
  SOAK_RECORD=0        do not append to RELIABILITY.md
  SOAK_KEEP=1          keep the data directory even when the soak passes
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import no_arguments  # scripts/ is sys.path[0] when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "release", "ringpost-tools")
BROKER = os.path.join(ROOT, "target", "release", "ringpost")
RELIABILITY = os.path.join(ROOT, "RELIABILITY.md")
ROWS_END = "<!-- soak:rows-end (make soak appends above this line) -->"


def env(name, default):
    return os.environ.get(name, default)


def commit():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return (rev or "?") + ("+uncommitted" if dirty else "")
    except OSError:
        return "?"


def main():
    no_arguments(__doc__)
    for path in (TOOLS, BROKER):
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: run `make build` first")
    args = ["--kills", env("SOAK_KILLS", "24"), "--duration", env("SOAK_DURATION", "90s"),
            "--users", env("SOAK_USERS", "40"), "--rate", env("SOAK_RATE", "400"),
            "--devices-per-user", env("SOAK_DEVICES", "2"), "--multi-device-fraction", "0.5",
            "--shards", env("SOAK_SHARDS", "2"), "--threads", "1"]
    args += shlex.split(env("SOAK_ARGS", ""))
    shown = "ringpost-tools load soak " + " ".join(args)
    work = tempfile.mkdtemp(prefix="ringpost-soak-")
    cmd = [TOOLS, "load", "soak", "--json", "--broker-bin", BROKER,
           "--dir", os.path.join(work, "soak")] + args
    print(f"soak: {shown} (data in {work})", file=sys.stderr)
    started = time.time()
    # Progress (one line a second, and each SIGKILL) goes straight to the terminal.
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"soak: the tool printed no JSON report (exit {out.returncode}); "
                         f"data and broker.log kept in {work}")

    os.makedirs(os.path.join(ROOT, "target", "soak"), exist_ok=True)
    saved = os.path.join(ROOT, "target", "soak", time.strftime("soak-%Y%m%d-%H%M%S.json"))
    with open(saved, "w") as f:
        json.dump(report, f, indent=1)
    replay = report.get("replay") or {}
    verdict = "pass" if out.returncode == 0 else f"**FAIL** (exit {out.returncode})"
    row = (f"| {time.strftime('%Y-%m-%d')} | {commit()} | {report.get('kills')} of "
           f"{report.get('kills_planned')} | {report.get('acked')} | {report.get('devices')} | "
           f"{report.get('lost')} / {replay.get('lost', '–')} | "
           f"{report.get('duplicated')} / {replay.get('duplicated', '–')} | "
           f"{report.get('out_of_order')} / {report.get('seq_gaps')} | "
           f"{report.get('unanswered')} | {sum((report.get('error_acks') or {}).values())} | "
           f"{verdict} | `{shown}` |")
    print(row)
    if env("SOAK_RECORD", "1") != "0":
        text = open(RELIABILITY).read() if os.path.exists(RELIABILITY) else ""
        if ROWS_END in text:
            text = text.replace(ROWS_END, row + "\n" + ROWS_END, 1)
            with open(RELIABILITY, "w") as f:
                f.write(text)
            print(f"soak: row appended to {RELIABILITY}", file=sys.stderr)
        else:
            print(f"soak: {RELIABILITY} has no soak table marker; row not recorded",
                  file=sys.stderr)
    for failure in report.get("failures", []):
        print(f"soak: FAILED: {failure}", file=sys.stderr)
    print(f"soak: {time.time() - started:.0f} s, report in {saved}", file=sys.stderr)
    if out.returncode == 0 and env("SOAK_KEEP", "0") != "1":
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"soak: data and broker.log kept in {work}", file=sys.stderr)
    sys.exit(out.returncode)


if __name__ == "__main__":
    main()
