#!/usr/bin/env python3
"""What TLS costs (BENCHMARKS.md, "TLS against plaintext").

Interleaved A/B on the same release build: plaintext (A) and TLS 1.3 with a P-256 certificate
for 127.0.0.1 (B), each run against a fresh broker (shards = 2, fsync = "always", no WebSocket
or admin listener). Rounds alternate the order (A B, B A, ...) because the machine is shared
and single runs are noise; medians are reported. Per run:

1. p2p at overload (RATE): delivered msg/s, and the broker's CPU µs per delivered message
   (utime + stime from /proc/PID/stat), which other load on the machine hardly moves;
2. p2p at a moderate rate (LAT_RATE): latency p50 / p99 from the intended send time;
3. `load connect` of CONNS idle connections logged in at CONNS/s over 127.0.0.2-127.0.0.100,
   held until they park: the broker's RSS per connection (the load tool's
   `broker_rss_bytes_per_conn`).

    cargo build --release --workspace && scripts/bench_tls.py

Environment: ROUNDS (3), RATE (400000), LAT_RATE (10000), DURATION ("5s"), CONNS (5000),
RINGPOST_BIN (the broker; default target/release/ringpost).
Needs `openssl` for the test certificate.
"""

import json
import os
import shutil
import statistics
import subprocess
import tempfile

from benchlib import cpu_seconds, raise_nofile, no_arguments  # scripts/ is sys.path[0] when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BROKER = os.environ.get("RINGPOST_BIN", os.path.join(ROOT, "target", "release", "ringpost"))
TOOLS = os.path.join(ROOT, "target", "release", "ringpost-tools")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
RATE = os.environ.get("RATE", "400000")
LAT_RATE = os.environ.get("LAT_RATE", "10000")
DURATION = os.environ.get("DURATION", "5s")
CONNS = int(os.environ.get("CONNS", "5000"))


def make_cert(d):
    """A CA and a leaf for 127.0.0.1 signed by it (rustls refuses a CA as the end entity)."""
    ca, ca_key = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    cert, key, csr = (os.path.join(d, n) for n in ("cert.pem", "key.pem", "leaf.csr"))
    ext = os.path.join(d, "leaf.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=ringpost bench CA"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ):
        subprocess.run(["openssl", *cmd], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return ca, cert, key


class Broker:
    def __init__(self, tls):
        self.dir = tempfile.mkdtemp(prefix="ringpost-tls-bench-")
        self.secret = os.path.join(self.dir, "auth.secret")
        tls_conf = ""
        self.client_args = []
        if tls:
            ca, cert, key = make_cert(self.dir)
            tls_conf = f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
            self.client_args = ["--tls", "--ca-file", ca]
        conf = os.path.join(self.dir, "ringpost.toml")
        with open(conf, "w") as f:
            f.write(
                f'[server]\nlisten = "127.0.0.1:0"\nws_listen = ""\nshards = 2\n'
                f'listen_backlog = 65535\n'
                f'[storage]\ndata_dir = "{self.dir}/data"\nsegment_size = "64MiB"\n'
                f'fsync = "always"\n'
                f'[auth]\nsecret_file = "{self.secret}"\n'
                f'[admin]\nlisten = ""\n'
                f'[limits]\nsends_per_sec = 1000000\nmax_inbox = 100000000\n'
                f'idle_timeout = "120s"\n' + tls_conf)
        self.proc = subprocess.Popen([BROKER, "--config", conf], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        first = self.proc.stdout.readline()
        if not first.startswith("ringpost listening on "):
            raise SystemExit(f"broker did not start: {first!r}")
        self.addr = first.split()[3]

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def load(broker, *args):
    out = subprocess.run([TOOLS, "load", *args, "--json", "--addr", broker.addr,
                          "--secret-file", broker.secret, *broker.client_args],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"load {args[0]} printed no JSON (exit {out.returncode})")


def p2p(broker, rate):
    cpu0 = cpu_seconds(broker.proc.pid)
    r = load(broker, "p2p", "--users", "200", "--size", "64", "--warmup", "1s", "--duration",
             DURATION, "--threads", "1", "--rate", rate)
    cpu = cpu_seconds(broker.proc.pid) - cpu0
    for k in ("lost", "duplicated", "out_of_order"):
        assert r[k] == 0, r
    return r, cpu * 1e6 / max(1, r["delivered"])


def run(tls):
    broker = Broker(tls)
    try:
        peak, us = p2p(broker, RATE)
        lat, _ = p2p(broker, LAT_RATE)
        conn = load(broker, "connect", "--conns", str(CONNS), "--connect-rate", str(CONNS),
                    "--hold", "8s", "--ping-interval", "30s", "--processes", "1",
                    "--threads", "1", "--source-ips", "127.0.0.2-127.0.0.100",
                    "--broker-pid", str(broker.proc.pid))
        return {
            "peak_msg_s": round(peak["throughput_per_s"]),
            "cpu_us_per_msg": round(us, 3),
            "p50_us": lat["latency_us"]["p50"],
            "p99_us": lat["latency_us"]["p99"],
            "rss_per_conn": conn.get("broker_rss_bytes_per_conn"),
            "login_p99_us": conn.get("login_latency_us", {}).get("p99"),
        }
    finally:
        broker.close()


def main():
    no_arguments(__doc__)
    raise_nofile()
    runs = {"plain": [], "tls": []}
    for rnd in range(ROUNDS):
        order = ["plain", "tls"] if rnd % 2 == 0 else ["tls", "plain"]
        for mode in order:
            r = run(mode == "tls")
            runs[mode].append(r)
            print(f"round {rnd + 1} {mode}: {json.dumps(r)}", flush=True)
    med = {m: {k: statistics.median(v) if (v := [r[k] for r in rs if r[k] is not None])
               else None for k in rs[0]} for m, rs in runs.items()}
    print(json.dumps({"runs": runs, "median": med}))


if __name__ == "__main__":
    main()
