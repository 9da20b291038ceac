#!/usr/bin/env python3
"""`make bench-peers`: the same p2p workload against ringpost, Mosquitto and nats-server, one
after another in one run, and a table in BENCHMARKS.md.

Installs Mosquitto and nats-server from Debian when missing (apt-get; root). For every offered
rate, in turn, each broker is started fresh on a free local port with its own directory:
  * ringpost (release build): 2 shards, fsync = "always" (acked after the msync that covers
    the message), own-send sync on (the default);
  * Mosquitto: persistence on (its in-memory store is saved to mosquitto.db periodically),
    max_queued_messages 0 (no silent drops of queued QoS 1 messages), max_inflight_messages 100,
    set_tcp_nodelay true (its default leaves Nagle on: ~40 ms stalls per message on loopback;
    ringpost and nats-server set TCP_NODELAY);
  * nats-server: JetStream (file store) and its MQTT listener; MQTT needs both and a server name.
Then `ringpost-tools load p2p` runs the workload (ringpost over its protocol, the peers over MQTT
3.1.1 with --target mqtt://…: QoS 1, persistent sessions, one topic per user) and the broker's
CPU time (utime + stime from /proc/PID/stat) and memory (VmRSS at the end, VmHWM) are read.

A run that loses, duplicates or reorders is recorded as it is, not dropped: the table says so.
The sustainable rate of a broker is the highest offered rate whose run was clean (exit 0) and
delivered at least 95 % of the offered rate (PEERS_SUSTAIN_P99_MS=N also bounds its p99); p99
is compared at every rate where the peers kept up.
A broker that delivered less than 80 % of a rate is not offered the higher ones (its backlog
would take minutes to drain); the table says so.

Environment:
  PEERS_RATES="5000,10000,…"  offered msg/s (default 5k…160k, doubling)
  PEERS_USERS=100             users (pairs = users / 2)
  PEERS_DURATION=5s           measured period (plus a 1 s warm-up)
  PEERS_QUICK=1               two short rates, printed, nothing written (driver smoke test)
  PEERS_OUT=FILE              write the section to FILE instead of BENCHMARKS.md
  PEERS_JSON=FILE             also write every run's report there
"""

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e as e2e  # noqa: E402  (machine(), commit(), the release binaries)
from benchlib import cpu_seconds, no_arguments, raise_nofile  # noqa: E402

BEGIN = "<!-- peers:begin (written by scripts/bench_peers.py; edits inside are overwritten) -->"
END = "<!-- peers:end -->"
QUICK = os.environ.get("PEERS_QUICK") == "1"
# CPU seconds (user + system) of the last load command (run_load), for "who was the bottleneck".
LAST_TOOL_CPU = 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"{what} did not listen on {port} within {timeout} s")


def memory_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


def find(binary, package):
    """The binary's path, installing its Debian package first when it is missing."""
    def look():
        for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
            p = os.path.join(d, binary)
            if os.access(p, os.X_OK):
                return p
        return shutil.which(binary)

    if look() is None:
        print(f"installing {package} from Debian", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env)
    path = look()
    if path is None:
        raise SystemExit(f"{package} installed but {binary} not found")
    return path


def version(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


class Process:
    """A broker process in its own temporary directory; `target` is what the load tool gets."""

    def __init__(self, name, argv, port, cwd):
        self.name, self.dir, self.port = name, cwd, port
        self.log = open(os.path.join(cwd, "broker.log"), "w")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)
        wait_listening(port, self.proc, name)

    @property
    def pid(self):
        return self.proc.pid

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def ringpost(shards=2, server_extra="", limits_extra="", fsync="always", cpus=None):
    d = tempfile.mkdtemp(prefix="ringpost-peers-")
    port = free_port()
    cpu_line = f"cpus = {list(cpus)}\n" if cpus else ""
    with open(os.path.join(d, "ringpost.toml"), "w") as f:
        f.write(
            f'[server]\nlisten = "127.0.0.1:{port}"\nws_listen = ""\nshards = {shards}\n{cpu_line}'
            f"{server_extra}"
            f'[storage]\ndata_dir = "{d}/data"\nsegment_size = "64MiB"\nfsync = "{fsync}"\n'
            f'[auth]\nsecret_file = "{d}/auth.secret"\n'
            f"[limits]\nsends_per_sec = 1000000\nmax_inbox = 10000000\n{limits_extra}"
        )
    p = Process("ringpost", [e2e.BROKER, "--config", os.path.join(d, "ringpost.toml")], port, d)
    p.args = ["--addr", f"127.0.0.1:{port}", "--secret-file", os.path.join(d, "auth.secret")]
    p.data_dir = os.path.join(d, "data")
    return p


def mosquitto(binary):
    d = tempfile.mkdtemp(prefix="mosquitto-peers-")
    port = free_port()
    conf = os.path.join(d, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                f"persistence_location {d}/\nmax_queued_messages 0\nmax_inflight_messages 100\n"
                "set_tcp_nodelay true\n")
    p = Process("mosquitto", [binary, "-c", conf], port, d)
    p.args = ["--target", f"mqtt://127.0.0.1:{port}"]
    return p


def nats(binary):
    d = tempfile.mkdtemp(prefix="nats-peers-")
    port, client_port = free_port(), free_port()
    conf = os.path.join(d, "nats.conf")
    with open(conf, "w") as f:
        f.write(f"server_name: ringpost_bench\nlisten: 127.0.0.1:{client_port}\n"
                f'jetstream {{\n  store_dir: "{d}/js"\n}}\n'
                f"mqtt {{\n  listen: 127.0.0.1:{port}\n}}\n")
    p = Process("nats-server", [binary, "-c", conf], port, d)
    p.args = ["--target", f"mqtt://127.0.0.1:{port}"]
    return p


def run_load(broker, scenario, args, timeout=600, prefix=()):
    """One load command against `broker` (`prefix`: e.g. taskset); returns (shown command,
    report, exit code, cpu s, (rss KiB, hwm KiB)). A failed run is returned, not raised: the
    table records it."""
    cmd = list(prefix) + [e2e.TOOLS, "load", scenario, "--json"] + broker.args + args
    # ringpost's --addr/--secret-file change every run and are left out of what is shown.
    shown_args = (broker.args if broker.name != "ringpost" else []) + args
    shown = " ".join(list(prefix) + ["ringpost-tools", "load", scenario] + shown_args)
    global LAST_TOOL_CPU
    cpu0 = cpu_seconds(broker.pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         timeout=timeout)
    cpu = cpu_seconds(broker.pid) - cpu0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_TOOL_CPU = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    mem = memory_kib(broker.pid)
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        tail = "\n".join(out.stderr.splitlines()[-10:])
        raise SystemExit(f"{shown}: no JSON (exit {out.returncode})\n{tail}")
    return shown, report, out.returncode, cpu, mem


def keeps_up(r):
    """A clean run (exit 0) that delivered at least 95 % of the offered rate."""
    return ("skipped" not in r and r["code"] == 0
            and r["report"]["throughput_per_s"] >= 0.95 * r["report"]["rate"])


def sustainable(rows, p99_ms):
    """The highest offered rate the broker kept up with (and, with a p99 bound, within it)."""
    best = 0
    for r in rows:
        if keeps_up(r) and (p99_ms is None or r["report"]["latency_us"]["p99"] <= p99_ms * 1000):
            best = max(best, int(r["report"]["rate"]))
    return best


def write_section(section, begin, end, env_out):
    target = os.environ.get(env_out) or os.path.join(e2e.ROOT, "BENCHMARKS.md")
    text = open(target).read() if os.path.exists(target) else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(target, "w") as f:
        f.write(text)
    print(f"wrote {begin.split()[1]} section of {target}", file=sys.stderr)


def main():
    no_arguments(__doc__)
    raise_nofile()
    for b in (e2e.BROKER, e2e.TOOLS):
        if not os.path.exists(b):
            raise SystemExit(f"{b} is missing: cargo build --release --workspace")
    mosq_bin = find("mosquitto", "mosquitto")
    nats_bin = find("nats-server", "nats-server")
    rates = [int(r) for r in os.environ.get(
        "PEERS_RATES", "2000,5000" if QUICK else "5000,10000,20000,40000,80000,160000").split(",")]
    users = os.environ.get("PEERS_USERS", "100")
    duration = os.environ.get("PEERS_DURATION", "2s" if QUICK else "5s")
    p99_ms = float(os.environ["PEERS_SUSTAIN_P99_MS"]) if "PEERS_SUSTAIN_P99_MS" in os.environ else None
    base = ["--users", users, "--size", "64", "--warmup", "1s", "--duration", duration,
            "--threads", "1", "--drain-timeout", "5s"]
    makers = [("ringpost", lambda: ringpost()),
              ("mosquitto", lambda: mosquitto(mosq_bin)),
              ("nats-server", lambda: nats(nats_bin))]
    results = {name: [] for name, _ in makers}
    commands = []
    saturated = {}  # broker → the rate it fell behind at; higher rates are not offered to it
    for rate in rates:
        for name, make in makers:
            if name in saturated:
                results[name].append({"skipped": saturated[name]})
                continue
            broker = make()
            try:
                shown, rep, code, cpu, mem = run_load(broker, "p2p", base + ["--rate", str(rate)])
            finally:
                broker.close()
            results[name].append({"report": rep, "code": code, "cpu": cpu, "mem": mem})
            # Far behind: a higher rate would only queue longer (a backlog of minutes to drain).
            if rep["throughput_per_s"] < 0.8 * rate:
                saturated[name] = rate
            if rate == rates[0]:
                commands.append(f"# {name}\n{shown}")
            print(f"{name} @ {rate}: {rep['throughput_per_s']:.0f} msg/s, p99 "
                  f"{rep['latency_us']['p99']} µs, lost {rep['lost']}, exit {code}",
                  file=sys.stderr)

    lines = [BEGIN, "", "## ringpost against Mosquitto and nats-server (make bench-peers)", "",
             f"Machine: {e2e.machine()}, load average {os.getloadavg()[0]:.1f} at the end. "
             f"Commit {e2e.commit()}, {time.strftime('%Y-%m-%d')}. Release build. Broker "
             "and load generator (1 thread) share the 2 cores; each run starts a fresh broker.",
             "",
             f"Versions: ringpost {e2e.commit()} (2 shards, fsync = \"always\", own-send sync "
             f"on); {version([mosq_bin, '-h'])}; {version([nats_bin, '--version'])}.", "",
             f"Workload: `load p2p`, {users} users in pairs, 64 B bodies, open loop, {duration} "
             "measured after a 1 s warm-up, latency from the intended send time. ringpost over "
             "its own protocol (SendAck = acked); the peers over MQTT 3.1.1 (`--target`), QoS 1, "
             "persistent sessions, one topic per user (PUBACK = acked). Mosquitto runs with "
             "`persistence true`, `max_queued_messages 0` (its default, 1000, drops QoS 1 "
             "messages beyond the queue), `max_inflight_messages 100`, `set_tcp_nodelay true`; "
             "nats-server with JetStream (file store) and its MQTT listener, defaults otherwise. "
             "Broker CPU is utime + stime over the whole load command (log-in, run, drain), so "
             "at low rates it includes the idle cost of the broker's event loops.", "",
             "| offered msg/s | broker | delivered msg/s | lost / dup / reorder | unanswered | "
             "latency µs p50 / p99 / p99.9 | broker CPU s per 100k msgs | broker RSS MiB end / peak | exit |",
             "|---:|---|---:|---|---:|---|---:|---|---:|"]
    for i, rate in enumerate(rates):
        for name, _ in makers:
            r = results[name][i]
            if "skipped" in r:
                lines.append(f"| {rate:,} | {name} | not offered: fell below 80 % of the offered "
                             f"rate at {r['skipped']:,} | | | | | | |")
                continue
            rep = r["report"]
            lat = rep["latency_us"]
            per100k = r["cpu"] / max(1, rep["delivered"]) * 100_000
            lines.append(
                f"| {rate:,} | {name} | {rep['throughput_per_s']:,.0f} | {rep['lost']} / "
                f"{rep['duplicated']} / {rep['out_of_order']} | {rep['unanswered']} | "
                f"{lat['p50']:,} / {lat['p99']:,} / {lat['p999']:,} | {per100k:.2f} | "
                f"{r['mem'][0] / 1024:.0f} / {r['mem'][1] / 1024:.0f} | {r['code']} |")
    sus = {name: sustainable(results[name], p99_ms) for name, _ in makers}
    rp, mq, nt = sus["ringpost"], sus["mosquitto"], sus["nats-server"]
    ratio = lambda a, b: f"{a / b:.1f}×" if b else "n/a (never sustained)"
    bound = f", p99 ≤ {p99_ms:.0f} ms" if p99_ms is not None else ""
    lower = []
    for i, rate in enumerate(rates):
        rp_row = results["ringpost"][i]
        peers_ok = [(n, results[n][i]) for n in ("mosquitto", "nats-server")
                    if keeps_up(results[n][i])]
        if keeps_up(rp_row) and peers_ok:
            rp99 = rp_row["report"]["latency_us"]["p99"]
            cmp = ", ".join(f"{n} {r['report']['latency_us']['p99']:,}" for n, r in peers_ok)
            verdict = all(rp99 < r["report"]["latency_us"]["p99"] for _, r in peers_ok)
            lower.append(f"{rate:,} msg/s: ringpost {rp99:,} µs vs {cmp} µs "
                         f"({'lower' if verdict else 'NOT lower'})")
    lines += ["",
              f"Sustainable rate (the highest offered rate with a clean run delivering ≥ 95 % of "
              f"it{bound}; rates double, so each figure is a lower bound within 2×): ringpost "
              f"**{rp:,}**, Mosquitto **{mq:,}**, nats-server **{nt:,}** msg/s. ringpost / "
              f"Mosquitto = {ratio(rp, mq)} (goal ≥ 3×), ringpost / nats-server = "
              f"{ratio(rp, nt)} (goal ≥ 10×).", "",
              "p99 where the peers kept up: " + ("; ".join(lower) if lower else "no such rate")
              + ".", "",
              "What an ack means on a crash:",
              "- **ringpost**, fsync = \"always\": the SendAck is sent after the msync of the "
              "group commit that covers the message — it survives kill -9 and power loss.",
              "- **Mosquitto** (persistence true): messages live in memory; the store is written "
              "to mosquitto.db every `autosave_interval` (default 1800 s) and at a clean shutdown. "
              "A PUBACK does not mean the message is on disk: kill -9 or a power cut loses "
              "everything since the last save.",
              "- **nats-server** 2.9 (JetStream file store): the MQTT PUBACK comes after the "
              "message is stored in the session's stream, but the file store does not fsync per "
              "message — it syncs in the background every 2 minutes (its default sync interval; "
              "not configurable in 2.9, where `sync_interval` is an unknown key; 2.10+ has "
              "`sync_interval: always`). An acked message can be lost in an OS crash or power "
              "loss.",
              "",
              "Commands (the lowest rate; the others differ only in `--rate`; ringpost's "
              "`--addr`/`--secret-file` omitted):", "", "```"] + commands + ["```", "", END]
    section = "\n".join(lines) + "\n"
    if os.environ.get("PEERS_JSON"):
        with open(os.environ["PEERS_JSON"], "w") as f:
            json.dump({"rates": rates, "results": results}, f)
    if QUICK and not os.environ.get("PEERS_OUT"):
        print(section)
        return
    write_section(section, BEGIN, END, "PEERS_OUT")


if __name__ == "__main__":
    main()
