#!/usr/bin/env python3
"""`make bench-scaling`: p2p and fan-out peak and p99 per shard count, with the load generator
pinned to other cores than the broker's, and the scaling efficiency; a table in BENCHMARKS.md.

For each shard count N (default 1, 2, 4, 8, 16, keeping those below the CPU count so that at
least one core is left for the generator), a fresh release broker runs with `[server] shards =
N, cpus = [0..N-1]` (fsync = "always") and the generator under `taskset -c N..CPUS-1` with one
thread per remaining core:
  * p2p: an overload run for the peak (200 users per shard, offered PEAK_P2P_PER_SHARD msg/s
    per shard), then a run at half of that peak for p99;
  * fan-out: one group of 1,000 members (every member connected), offered
    PEAK_FANOUT_PER_SHARD group messages/s per shard (× 1,000 deliveries each), then half.
Scaling efficiency = peak(N) / (N × peak(1)). On a 2-core machine only N = 1 fits; run it on a
16-core box for the curve:

    make bench-scaling                      # N in 1 2 4 8 (16 needs a 17th core)
    SCALING_SHARDS=1,2,4,8,16 make bench-scaling   # also N = 16, generator sharing cores

Environment: SCALING_SHARDS, SCALING_DURATION (default 5s), PEAK_P2P_PER_SHARD (300000),
PEAK_FANOUT_PER_SHARD (1000), SCALING_QUICK=1 (short runs, printed, nothing written),
SCALING_OUT=FILE.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_e2e as e2e  # noqa: E402
import bench_peers as peers  # noqa: E402
from benchlib import no_arguments, raise_nofile  # noqa: E402

BEGIN = "<!-- scaling:begin (written by scripts/bench_scaling.py; edits inside are overwritten) -->"
END = "<!-- scaling:end -->"
QUICK = os.environ.get("SCALING_QUICK") == "1"


def cpus_allowed():
    return sorted(os.sched_getaffinity(0))


def one(shards, cpus, scenario, args, gen_cpus):
    broker = peers.ringpost(shards=shards, cpus=cpus[:shards] if shards < len(cpus) else None)
    try:
        prefix = ["taskset", "-c", ",".join(map(str, gen_cpus))]
        threads = ["--threads", str(len(gen_cpus))]
        return peers.run_load(broker, scenario, args + threads, prefix=prefix)
    finally:
        broker.close()


def measure(shards, cpus, duration):
    gen = cpus[shards:] or cpus  # no core left: the generator shares the broker's
    p2p = ["--users", str(200 * shards), "--size", "64", "--warmup", "1s",
           "--duration", duration, "--drain-timeout", "10s"]
    fan = ["--groups", "1", "--members", "1000", "--size", "64", "--warmup", "1s",
           "--duration", duration, "--drain-timeout", "10s", "--shards", str(shards)]
    p2p_peak_rate = int(os.environ.get("PEAK_P2P_PER_SHARD", "300000")) * shards
    fan_peak_rate = int(os.environ.get("PEAK_FANOUT_PER_SHARD", "1000")) * shards
    out = {"shards": shards, "gen": gen, "commands": []}
    for name, scenario, args, rate, key in (
            ("p2p", "p2p", p2p, p2p_peak_rate, "throughput_per_s"),
            ("fanout", "fanout", fan, fan_peak_rate, "deliveries_per_s")):
        shown, peak, code, _, _ = one(shards, cpus, scenario, args + ["--rate", str(rate)], gen)
        out["commands"].append(shown)
        # The half-of-peak run offers half of what was delivered (fan-out: in group messages).
        delivered = peak[key] if scenario == "p2p" else peak[key] / 1000
        half_rate = max(1, int(delivered / 2))
        shown_h, half, code_h, _, _ = one(shards, cpus, scenario,
                                          args + ["--rate", str(half_rate)], gen)
        out["commands"].append(shown_h)
        out[name] = {"peak": peak[key], "peak_code": code, "peak_p99": peak["latency_us"]["p99"],
                     "half_rate": half_rate, "half_p99": half["latency_us"]["p99"],
                     "half_code": code_h, "half": half[key]}
        print(f"{shards} shard(s) {name}: peak {peak[key]:.0f}/s (exit {code}), p99 at half "
              f"{half['latency_us']['p99']} µs (exit {code_h})", file=sys.stderr)
    return out


def main():
    no_arguments(__doc__)
    raise_nofile()
    cpus = cpus_allowed()
    wanted = [int(s) for s in os.environ.get("SCALING_SHARDS", "1,2,4,8,16").split(",")]
    forced = "SCALING_SHARDS" in os.environ
    counts = [n for n in wanted if n < len(cpus) or (forced and n <= len(cpus))]
    skipped = [n for n in wanted if n not in counts]
    duration = os.environ.get("SCALING_DURATION", "2s" if QUICK else "5s")
    rows = [measure(n, cpus, duration) for n in counts]
    base = {k: rows[0][k]["peak"] for k in ("p2p", "fanout")} if rows and rows[0]["shards"] == 1 else None

    lines = [BEGIN, "", "## Scaling with the shard count (make bench-scaling)", "",
             f"Machine: {e2e.machine()}. Commit {e2e.commit()}, {time.strftime('%Y-%m-%d')}. "
             "Release build, fsync = \"always\". Broker shards pinned to CPUs 0..N-1 (`[server] "
             "cpus`), the generator to the others (`taskset`, one thread per core).", "",
             "| shards | generator CPUs | p2p peak msg/s | p2p p99 µs at half (rate) | p2p efficiency | "
             "fan-out peak deliveries/s | fan-out p99 µs at half (msgs/s) | fan-out efficiency | exits |",
             "|---:|---|---:|---|---:|---:|---|---:|---|"]
    for r in rows:
        n = r["shards"]
        eff = {k: (f"{r[k]['peak'] / (n * base[k]) * 100:.0f} %" if base else "—")
               for k in ("p2p", "fanout")}
        exits = "/".join(str(r[k][c]) for k in ("p2p", "fanout") for c in ("peak_code", "half_code"))
        gen = f"{r['gen'][0]}-{r['gen'][-1]}" if len(r["gen"]) > 1 else str(r["gen"][0])
        lines.append(
            f"| {n} | {gen} | {r['p2p']['peak']:,.0f} | {r['p2p']['half_p99']:,} "
            f"({r['p2p']['half_rate']:,}) | {eff['p2p']} | {r['fanout']['peak']:,.0f} | "
            f"{r['fanout']['half_p99']:,} ({r['fanout']['half_rate']:,}) | {eff['fanout']} | {exits} |")
    lines += ["", "Efficiency: peak(N) / (N × peak(1)); exits: p2p peak/half, fan-out peak/half "
              "(non-zero = the run lost, duplicated or reordered something, or left sends "
              "unanswered — an overload run may end with unanswered sends after its drain "
              "timeout)."]
    if skipped:
        lines += ["", f"Not run here: {', '.join(map(str, skipped))} shards — this machine lets "
                  f"this process use {len(cpus)} CPUs and a shard count must leave at least one "
                  "core to the generator. On a 16-core box: `make bench-scaling` (1, 2, 4, 8), "
                  "and `SCALING_SHARDS=1,2,4,8,16 make bench-scaling` to add 16 with the "
                  "generator sharing the broker's cores."]
    lines += ["", "Commands (`--addr`/`--secret-file` omitted):", "", "```"]
    for r in rows:
        lines += [f"# broker: shards = {r['shards']}, cpus = {list(range(r['shards']))}"]
        lines += r["commands"]
    lines += ["```", "", END]
    section = "\n".join(lines) + "\n"
    if QUICK and not os.environ.get("SCALING_OUT"):
        print(section)
        return
    peers.write_section(section, BEGIN, END, "SCALING_OUT")


if __name__ == "__main__":
    main()
