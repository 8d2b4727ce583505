#!/usr/bin/env bash
# Memory of a real ingress under txgen (dashboard and ingress as in e2e.sh).
# Usage:
#   services/benches/memory.sh active [COUNT] [ACCOUNTS]
#       RSS after COUNT transactions over ACCOUNTS accounts, all still active
#       (default 1,000,000 over 100,000), and the RSS it grew by per account.
#   services/benches/memory.sh passivated [COUNT] [ACCOUNTS]
#       The same run with passivation after 5 s idle, RSS once every account
#       is passivated (default 1,000,000 over 1,000,000: about 632,000
#       distinct accounts get a transaction).
#       (`passivated 3000000 1000000`: about 950,000.)
# The RSS is read TXMESH_BENCH_SETTLE_SECS (default 90) after the accounts
# are where the mode wants them, and sampled every second meanwhile: the
# settle covers a window snapshot (every 60 s by default), and rss_peak_kib
# is the most the ingress held at rest, snapshot included (what a pod must
# be sized for), from 20 s into the settle (once the allocator has given
# back what passivation freed: 10 s dirty, then 10 s muzzy decay);
# passivated_store_kib is what the passivated windows' store holds, chunks
# and index (txmesh_passivated_window_bytes). TXMESH_BENCH_BIN=PATH measures that
# build; other TXMESH__ variables pass through (TXMESH__ACTORS__JOURNAL__TAIL_BYTES=65536 leaves out most of the
# journal's in-memory tail, 64 MiB per shard by default).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-active}
count=${2:-1000000}
if [ "$mode" = passivated ]; then accounts=${3:-1000000}; else accounts=${3:-100000}; fi
bin=${TXMESH_BENCH_BIN:-target/release/txmesh}
settle=${TXMESH_BENCH_SETTLE_SECS:-90}
[ -n "${TXMESH_BENCH_BIN:-}" ] || cargo build --release --quiet -p txmesh
state=$(mktemp -d)
cleanup() {
  local pids
  pids=$(jobs -p)
  if [ -n "$pids" ]; then
    kill -TERM $pids 2>/dev/null || true
    wait $pids 2>/dev/null || true
  fi
  rm -rf "$state"
}
trap cleanup EXIT
export RUST_LOG=warn TXMESH__STATE_DIR="$state" TXMESH__INGRESS__LISTEN=127.0.0.1:17443 \
  TXMESH__INGRESS__METRICS_LISTEN=127.0.0.1:19443 \
  TXMESH__INGRESS__DASHBOARD_ADDR=127.0.0.1:17444 TXMESH__DASHBOARD__GRPC_LISTEN=127.0.0.1:17444 \
  TXMESH__DASHBOARD__HTTPS_LISTEN=127.0.0.1:18443 TXMESH__TXGEN__TARGET=127.0.0.1:17443
[ "$mode" = passivated ] && export TXMESH__ACTORS__SHARDS__PASSIVATE_AFTER_SECS=5
"$bin" certs init --dir "$state" >/dev/null
"$bin" dashboard & sleep 1
"$bin" ingress & ingress=$!
sleep 1.5
rss() { awk '/VmRSS/{print $2}' "/proc/$ingress/status"; }
idle=$(rss)
"$bin" txgen --rate max --count "$count" --accounts "$accounts" --report json >"$state/report.json"
accounts_metric() {
  curl -s --cacert "$state/ca/tls.crt" --cert "$state/operator/tls.crt" --key "$state/operator/tls.key" \
    https://localhost:19443/metrics | awk -v m="$1" '$1 ~ "^"m {s+=$2} END {printf "%.0f\n", s}'
}
if [ "$mode" = passivated ]; then
  for _ in $(seq 1 180); do
    [ "$(accounts_metric txmesh_active_accounts)" = 0 ] && break
    sleep 1
  done
fi
# The RSS at rest: the allocator hands freed pages back to the system
# after its decay time (jemalloc's background threads, 10 s dirty then
# 10 s muzzy), and an operator sizing a pod reads the RSS it settles at.
peak=0
for i in $(seq 1 "$settle"); do
  sleep 1
  now=$(rss)
  [ "$i" -gt 20 ] && [ "$now" -gt "$peak" ] && peak=$now
done
active=$(accounts_metric txmesh_active_accounts)
passivated=$(accounts_metric txmesh_passivated_accounts)
store=$(accounts_metric txmesh_passivated_window_bytes)
after=$(rss)
held=$((active + passivated))
echo "{\"mode\": \"$mode\", \"transactions\": $count, \"active\": $active, \"passivated\": $passivated," \
  "\"rss_idle_kib\": $idle, \"rss_kib\": $after, \"rss_peak_kib\": $peak, \"passivated_store_kib\": $(( store / 1024 ))," \
  "\"grown_bytes_per_account\": $(( (after - idle) * 1024 / (held > 0 ? held : 1) ))}"
