#!/usr/bin/env python3
"""What the operations surface costs (BENCHMARKS.md, "Cost of metrics and scrapes").

1. p2p peak, A/B, interleaved: the broker as built (A) against the same source built with
   `--features metrics-off` (B: every counter increment compiled to nothing), and A again
   while /metrics is scraped every second (C). Rounds run A, B, C (rotated), each against a
   fresh broker (shards = 1, fsync = "always", admin listener on), and the medians are
   compared: the machine is shared, so single runs are noise. The order rotates each round.
   Each run also reports the broker's CPU time (utime + stime from /proc/PID/stat) per
   delivered message. At overload the broker is CPU-bound, so its peak is the inverse of that
   figure, and the figure hardly moves when other work on the shared machine takes CPU away
   (the broker then delivers fewer messages with the CPU it had). Below the peak it would
   not do: an idle glommio executor spins before it parks.
2. Scrape latency while `load connect` holds CONNS idle connections (shards = 2): wall time
   of GET /metrics from connect to the last byte, over SCRAPES requests.

    cargo build --release --workspace && cp target/release/ringpost /tmp/ringpost-on
    cargo build --release --bin ringpost --features metrics-off && cp target/release/ringpost /tmp/ringpost-off
    RINGPOST_A=/tmp/ringpost-on RINGPOST_B=/tmp/ringpost-off scripts/bench_admin.py

Environment: ROUNDS (5), RATE (600000), DURATION ("5s"), CONNS (19000), SCRAPES (50),
PARTS ("ab,scrape").
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import cpu_seconds, raise_nofile, no_arguments  # scripts/ is sys.path[0] when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "target", "release", "ringpost-tools")
A = os.environ.get("RINGPOST_A", os.path.join(ROOT, "target", "release", "ringpost"))
B = os.environ.get("RINGPOST_B", "/tmp/ringpost-off")
ROUNDS = int(os.environ.get("ROUNDS", "5"))
RATE = os.environ.get("RATE", "600000")
DURATION = os.environ.get("DURATION", "5s")
CONNS = int(os.environ.get("CONNS", "19000"))
SCRAPES = int(os.environ.get("SCRAPES", "50"))
PARTS = os.environ.get("PARTS", "ab,scrape").split(",")


class Broker:
    def __init__(self, binary, shards):
        self.dir = tempfile.mkdtemp(prefix="ringpost-admin-bench-")
        self.secret = os.path.join(self.dir, "auth.secret")
        conf = os.path.join(self.dir, "ringpost.toml")
        with open(conf, "w") as f:
            f.write(
                f'[server]\nlisten = "127.0.0.1:0"\nshards = {shards}\nlisten_backlog = 65535\n'
                f'[storage]\ndata_dir = "{self.dir}/data"\nsegment_size = "64MiB"\n'
                f'[auth]\nsecret_file = "{self.secret}"\n'
                f'[admin]\nlisten = "127.0.0.1:0"\ntoken_file = "{self.dir}/admin.token"\n'
                f"[limits]\nsends_per_sec = 1000000\nmax_inbox = 100000000\nidle_timeout = \"120s\"\n"
            )
        self.proc = subprocess.Popen([binary, "--config", conf], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        first = self.proc.stdout.readline()
        second = self.proc.stdout.readline()
        if not first.startswith("ringpost listening on ") or not second.startswith("ringpost admin on "):
            raise SystemExit(f"broker did not start: {first!r} {second!r}")
        self.addr = first.split()[3]
        host, port = second.split()[3].rsplit(":", 1)
        self.admin = (host, int(port))

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def scrape(admin):
    """GET /metrics; returns (seconds from connect to the last byte, body)."""
    t0 = time.perf_counter()
    s = socket.create_connection(admin)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    chunks = []
    while True:
        c = s.recv(65536)
        if not c:
            break
        chunks.append(c)
    s.close()
    elapsed = time.perf_counter() - t0
    body = b"".join(chunks).split(b"\r\n\r\n", 1)[-1].decode()
    return elapsed, body


def series_total(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series == name or series.startswith(name + "{"):
            total += float(value)
    return total


def p2p(binary, scraping):
    """One run against a fresh broker: (throughput msg/s, scrape times, broker CPU µs per
    delivered message)."""
    broker = Broker(binary, 1)
    stop = threading.Event()
    scrapes = []

    def scraper():
        while not stop.wait(1.0):
            scrapes.append(scrape(broker.admin)[0])

    t = threading.Thread(target=scraper)
    if scraping:
        t.start()
    try:
        args = ["--users", "200", "--size", "64", "--warmup", "1s", "--duration", DURATION,
                "--threads", "1", "--rate", RATE]
        cpu0 = cpu_seconds(broker.proc.pid)
        out = subprocess.run([TOOLS, "load", "p2p", "--json", "--addr", broker.addr,
                              "--secret-file", broker.secret] + args,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        cpu = cpu_seconds(broker.proc.pid) - cpu0
        r = json.loads(out.stdout)
        assert r["lost"] == 0 and r["duplicated"] == 0 and r["out_of_order"] == 0, r
        return r["throughput_per_s"], scrapes, cpu * 1e6 / max(1, r["delivered"])
    finally:
        stop.set()
        if scraping:
            t.join()
        broker.close()


def ab():
    runs = {"A": [], "B": [], "C": []}
    cpu = {"A": [], "B": [], "C": []}
    variants = [("A", A, False), ("B", B, False), ("C", A, True)]
    for rnd in range(ROUNDS):
        # Rotated each round, so that no variant always follows the same one.
        order = variants[rnd % 3:] + variants[:rnd % 3]
        for label, binary, scraping in order:
            rate, scrapes, us = p2p(binary, scraping)
            runs[label].append(rate)
            cpu[label].append(round(us, 3))
            extra = f", {len(scrapes)} scrapes, max {max(scrapes) * 1000:.1f} ms" if scrapes else ""
            print(f"round {rnd + 1} {label}: {rate:.0f} msg/s, broker {us:.3f} CPU µs/msg{extra}",
                  flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    print(json.dumps({"runs": runs, "median": med, "cpu_us_per_msg": cpu, "cpu_median": cmed,
                      "peak_cost_A_vs_B_pct": round((med["B"] - med["A"]) / med["B"] * 100, 2),
                      "peak_cost_C_vs_B_pct": round((med["B"] - med["C"]) / med["B"] * 100, 2),
                      "cpu_cost_A_vs_B_pct": round((cmed["A"] - cmed["B"]) / cmed["B"] * 100, 2),
                      "cpu_cost_C_vs_B_pct": round((cmed["C"] - cmed["B"]) / cmed["B"] * 100, 2)}))


def scrape_with_connections():
    broker = Broker(A, 2)
    try:
        gen = subprocess.Popen(
            [TOOLS, "load", "connect", "--json", "--addr", broker.addr, "--secret-file",
             broker.secret, "--conns", str(CONNS), "--connect-rate", "20000", "--hold", "30s",
             "--ping-interval", "30s", "--processes", "2", "--threads", "1",
             "--source-ips", "127.0.0.2-127.0.0.100"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 60
        while True:
            _, text = scrape(broker.admin)
            held = series_total(text, "ringpost_connections")
            if held >= CONNS:
                break
            if time.time() > deadline or gen.poll() is not None:
                raise SystemExit(f"only {held} connections held")
            time.sleep(0.5)
        times = []
        for _ in range(SCRAPES):
            t, text = scrape(broker.admin)
            times.append(t * 1000)
            time.sleep(0.1)
        times.sort()
        held = series_total(text, "ringpost_connections")
        parked = sum(float(l.rpartition(" ")[2]) for l in text.splitlines()
                     if l.startswith("ringpost_connections{") and 'state="parked"' in l)
        print(json.dumps({"connections": held, "parked": parked, "scrapes": SCRAPES,
                          "ms_p50": round(times[len(times) // 2], 2),
                          "ms_p99": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
                          "ms_max": round(times[-1], 2), "bytes": len(text)}))
        gen.wait(timeout=120)
    finally:
        broker.close()


def main():
    no_arguments(__doc__)
    raise_nofile()
    for p in (A, B, TOOLS):
        if not os.path.exists(p):
            raise SystemExit(f"{p} is missing (see the docstring)")
    if "ab" in PARTS:
        ab()
    if "scrape" in PARTS:
        scrape_with_connections()


if __name__ == "__main__":
    sys.exit(main())
