#!/usr/bin/env bash
# What the journal costs end to end, in one run of one script: e2e.sh at
# maximum rate with the journal disabled, on with its default policy
# (sync = interval) and on with sync = always, ROUNDS times in turn (so a
# noisy machine hurts each alike); then the latency at 50,000 tx/s offered
# (open loop) with each. Prints one line per run.
# Usage: services/benches/journal.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-20}
rounds=${2:-2}
cargo build --release --quiet
summary() {
  python3 -c '
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1])
missed = sum(c["sent"] - c["detected"] for c in r["injected"].values())
l = r["latency_ms"]
print("{:<26} {:>9.0f} tx/s  errors {}  missed {}  clean flagged {}  p50 {} ms  p99 {} ms  p99.9 {} ms".format(
    sys.argv[1], r["achieved_tps"], r["errors"], missed, r["clean"]["flagged"], l["p50"], l["p99"], l["p999"]))
' "$1"
}
# The order rotates each round: the first run after a build or a previous
# run's teardown is not always the slowest or the fastest.
modes=(off interval always)
run() {
  case "$1" in
    off) TXMESH__ACTORS__JOURNAL__ENABLED=false services/benches/e2e.sh "$2" "$secs" ;;
    interval) services/benches/e2e.sh "$2" "$secs" ;;
    always) TXMESH__ACTORS__JOURNAL__SYNC=always services/benches/e2e.sh "$2" "$secs" ;;
  esac
}
for round in $(seq 1 "$rounds"); do
  for k in 0 1 2; do
    mode=${modes[$(( (k + round - 1) % 3 ))]}
    run "$mode" max | summary "round $round: max, $mode"
  done
done
for mode in interval off always; do
  run "$mode" 50000 | summary "50k/s offered, $mode"
done
