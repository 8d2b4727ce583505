#!/usr/bin/env bash
# End-to-end benchmark: dashboard, ingress and txgen as three processes on
# this machine, everything over mTLS, the dashboard receiving every verdict.
# Usage: services/benches/e2e.sh [RATE|max] [SECONDS] [ACCOUNTS]
# Prints txgen's JSON report, then the dashboard's totals check.
set -euo pipefail
cd "$(dirname "$0")/../.."
rate=${1:-max}
secs=${2:-30}
accounts=${3:-100000}
bin=target/release/txmesh
cargo build --release --quiet
state=$(mktemp -d)
# Stop the services and wait for them (the dashboard saves its totals into
# the state directory as it stops) before the directory is removed; the
# script's exit status is txgen's.
cleanup() {
  local rc=$?
  local pids
  pids=$(jobs -p)
  if [ -n "$pids" ]; then
    kill -TERM $pids 2>/dev/null || true
    wait $pids 2>/dev/null || true
  fi
  rm -rf "$state"
  exit "$rc"
}
trap cleanup EXIT
export TXMESH__STATE_DIR="$state" TXMESH__INGRESS__LISTEN=127.0.0.1:17443 \
  TXMESH__INGRESS__METRICS_LISTEN=127.0.0.1:19443 \
  TXMESH__INGRESS__DASHBOARD_ADDR=127.0.0.1:17444 TXMESH__DASHBOARD__GRPC_LISTEN=127.0.0.1:17444 \
  TXMESH__DASHBOARD__HTTPS_LISTEN=127.0.0.1:18443 TXMESH__TXGEN__TARGET=127.0.0.1:17443
"$bin" certs init --dir "$state" >/dev/null
"$bin" dashboard & sleep 1
"$bin" ingress & sleep 1
"$bin" txgen --rate "$rate" --duration "$secs" --accounts "$accounts" --report json >"$state/report.json"
cat "$state/report.json"
# The dashboard must have applied exactly what txgen was answered: poll its
# totals (the publisher delivers within milliseconds) for up to 10 s.
snapshot() {
  curl -s --cacert "$state/ca/tls.crt" --cert "$state/operator/tls.crt" --key "$state/operator/tls.key" \
    https://localhost:18443/api/snapshot
}
for _ in $(seq 1 20); do
  snapshot >"$state/snapshot.json" || true
  python3 - "$state/report.json" "$state/snapshot.json" <<'PY' && exit 0
import json, sys
report = json.load(open(sys.argv[1]))
try:
    totals = json.load(open(sys.argv[2]))["totals"]
except (ValueError, KeyError):
    sys.exit(1)
status = report["by_status"]
want = {k: status.get(k.upper(), 0) for k in ("approved", "flagged", "rejected")}
got = {k: totals[k] for k in want}
match = totals["verdicts"] == report["answered"] and got == want
print(json.dumps({"dashboard_verdicts": totals["verdicts"], "answered": report["answered"],
                  "dashboard_totals_match": match}))
sys.exit(0 if match else 1)
PY
  sleep 0.5
done
echo '{"dashboard_totals_match": false}'
exit 1
