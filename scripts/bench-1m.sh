#!/usr/bin/env bash
# `make bench-1m`: one broker and `ringpost-tools load connect` on this machine, CONNS idle
# connections (default 1,000,000) spread over 253 loopback source addresses, held with pings.
# Prints RSS per connection, connect rate and ping RTT percentiles; keeps the JSON in
# bench-1m.json. Run `sudo make tune` first and raise `ulimit -n` (kernel-tuning.md).
#   CONNS=1000000 RATE=50000 HOLD=60s SHARDS=0 make bench-1m
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-1000000}
RATE=${RATE:-50000}
HOLD=${HOLD:-60s}
SHARDS=${SHARDS:-0}
BROKER=target/release/ringpost
TOOLS=target/release/ringpost-tools

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
[[ $nofile == unlimited ]] && nofile=$((CONNS * 2))
if (( nofile < CONNS + 1000 )); then
  echo "bench-1m: open-file limit is $nofile, so the broker can hold at most ~$((nofile - 1000))"
  echo "  connections, not $CONNS. Raise it ('ulimit -n $((CONNS + 100000))' as root after"
  echo "  'make tune'; the hard limit is capped by fs.nr_open). Running anyway: the result will"
  echo "  say how far it got."
fi
# The generator splits itself into processes that each stay under the same limit.
per_proc=$(( nofile > 2000 ? nofile - 1000 : 1000 ))
procs=$(( (CONNS + per_proc - 1) / per_proc ))

dir=$(mktemp -d /tmp/ringpost-1m-XXXXXX)
cat > "$dir/ringpost.toml" <<CONF
[server]
listen = "127.0.0.1:0"
ws_listen = "127.0.0.1:0"
shards = $SHARDS
listen_backlog = 65535
[storage]
data_dir = "$dir/data"
segment_size = "64MiB"
[auth]
secret_file = "$dir/auth.secret"
[admin]
listen = "127.0.0.1:0"
token_file = "$dir/admin.token"
[limits]
idle_timeout = "120s"
CONF
"$BROKER" --config "$dir/ringpost.toml" > "$dir/broker.out" 2> "$dir/broker.log" &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$dir/broker.out" 2>/dev/null && break
  sleep 0.1
done
addr=$(awk '/listening on/ {print $4}' "$dir/broker.out")
[[ -n $addr ]] || { echo "bench-1m: broker did not start:"; cat "$dir/broker.log"; exit 1; }
echo "broker pid $broker on $addr ($(head -1 "$dir/broker.out")); $procs generator process(es)"

set +e
"$TOOLS" load connect --addr "$addr" --secret-file "$dir/auth.secret" \
  --conns "$CONNS" --connect-rate "$RATE" --hold "$HOLD" --ping-interval 30s \
  --source-ips 127.0.0.2-127.0.0.254 --processes "$procs" --broker-pid "$broker" \
  --json > bench-1m.json
rc=$?
set -e
python3 - bench-1m.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = lambda h: " / ".join(str(h[k]) for k in ("p50", "p90", "p99", "p999", "p9999", "max"))
print(f"connected           {r['connected']} of {r['conns']} (failed {r['failed']}: {r['failed_by_code']})")
print(f"connect rate        {r['connect_rate_per_s']:.0f}/s (target {r['target_connect_rate_per_s']:.0f}/s)")
print(f"broker RSS          {r['broker_rss_bytes_per_conn']} B per connection")
print(f"kernel              {r['kernel_slab_bytes_per_conn']} B slab per connection (both loopback ends)")
print(f"login latency µs    p50/p90/p99/p99.9/p99.99/max {p(r['login_latency_us'])}")
print(f"ping RTT µs (hold)  p50/p90/p99/p99.9/p99.99/max {p(r['ping_rtt_us'])}")
PY
echo "full report: bench-1m.json"
exit $rc
