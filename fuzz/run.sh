#!/usr/bin/env bash
# Runs one fuzz target for SECONDS from its committed seeds (fuzz/corpus/TARGET), growing its
# working corpus in fuzz/work/TARGET (ignored by git), with the options that target needs.
# Exits with cargo fuzz's status: non-zero on a crash, a leak, a timeout or an out-of-memory,
# whose input libFuzzer writes under fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh TARGET SECONDS [libFuzzer options...]
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer options...]}
seconds=${2:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer options...]}
shift 2
case $target in
  config) opts=(-dict=fuzz/dict/config.dict) ;;
  # Several segment files per input.
  log_recovery) opts=(-max_len=16384) ;;
  # Past MAX_REQUEST_HEAD (8 KiB), where the 431 answer starts.
  ws_upgrade) opts=(-max_len=12288 -dict=fuzz/dict/http.dict) ;;
  # Past the default max_request (1 MiB) is too slow to explore; 96 KiB passes the 64 KiB
  # limit the input can pick and limits.max_frame (64 KiB), where a publish gets 413.
  admin_http) opts=(-max_len=98304 -dict=fuzz/dict/admin.dict) ;;
  *) opts=() ;;
esac
mkdir -p "fuzz/work/$target"
exec "${CARGO:-cargo}" +nightly fuzz run "$target" "fuzz/work/$target" "fuzz/corpus/$target" -- \
  -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${opts[@]}" "$@"
