#!/usr/bin/env bash
# Disk use of the journal under a steady load with compaction: dashboard,
# ingress and txgen as three processes (as e2e.sh), RATE tx/s for SECONDS,
# the journal's size on disk every MINUTE seconds, then `txmesh journal
# inspect` and the bytes written per verdict.
# Usage: services/benches/disk.sh [RATE] [SECONDS] [ACCOUNTS] [EVERY]
set -euo pipefail
cd "$(dirname "$0")/../.."
rate=${1:-50000}
secs=${2:-600}
accounts=${3:-100000}
every=${4:-60}
bin=target/release/txmesh
cargo build --release --quiet
state=$(mktemp -d -p "${TMPDIR:-/tmp}")
cleanup() {
  local pids
  pids=$(jobs -p)
  if [ -n "$pids" ]; then kill -TERM $pids 2>/dev/null || true; wait $pids 2>/dev/null || true; fi
  rm -rf "$state"
}
trap cleanup EXIT
export TXMESH__STATE_DIR="$state" TXMESH__INGRESS__LISTEN=127.0.0.1:17443 \
  TXMESH__INGRESS__METRICS_LISTEN=127.0.0.1:19443 \
  TXMESH__INGRESS__DASHBOARD_ADDR=127.0.0.1:17444 TXMESH__DASHBOARD__GRPC_LISTEN=127.0.0.1:17444 \
  TXMESH__DASHBOARD__HTTPS_LISTEN=127.0.0.1:18443 TXMESH__TXGEN__TARGET=127.0.0.1:17443
"$bin" certs init --dir "$state" >/dev/null
"$bin" dashboard >/dev/null & sleep 1
"$bin" ingress >/dev/null & sleep 1
( for t in $(seq "$every" "$every" "$secs"); do
    sleep "$every"
    echo "after ${t} s: journal $(du -sm "$state/journal" | cut -f1) MiB on disk ($(ls "$state"/journal/shard-*/*.seg | wc -l) segments, $(ls "$state"/journal/shard-*/*.snap 2>/dev/null | wc -l) snapshots)"
  done ) &
watcher=$!
"$bin" txgen --rate "$rate" --duration "$secs" --accounts "$accounts" --report json > "$state/report.json"
kill "$watcher" 2>/dev/null || true
python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("txgen: {} sent, {} answered, {} errors, {:.0f} tx/s".format(r["sent"], r["answered"], r["errors"], r["achieved_tps"]))
' "$state/report.json"
"$bin" journal inspect | grep -v '^  /'
