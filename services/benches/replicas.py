#!/usr/bin/env python3
"""Replicas benchmark: ingress replicas as separate processes, one
dashboard, txgen, everything over mTLS on this machine, the dashboard
receiving every verdict, the journal on with its default policy.

Modes, each on a fresh state directory:
  single   one ingress, no [cluster] (the baseline);
  via-one  N replicas, txgen connected to ingress-0 only, which forwards
           each transaction whose account another replica owns ((N-1)/N);
  aware    N replicas, txgen partition-aware (straight to each owner).

Per mode: txgen's throughput, latency (from the intended send time, open
loop at a fixed rate), errors; the share of transactions forwarded (from
the replicas' txmesh_forwarded_transactions_total); and the CPU all
processes spent per answered transaction (core-microseconds, from
/proc/PID/stat and txgen's rusage).

Usage: services/benches/replicas.py [RATE|max] [SECONDS] [REPLICAS] [ACCOUNTS] [MODES]
  e.g. services/benches/replicas.py max 20 3 100000 single,via-one,aware
  TXMESH_BENCH_BIN=/path/to/txmesh measures that build instead of building.
"""

import json
import os
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import http.client

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# TXMESH_BENCH_BIN: another build to measure (an A/B against a saved binary).
BIN = os.environ.get("TXMESH_BENCH_BIN") or os.path.join(ROOT, "target", "release", "txmesh")
TICKS = os.sysconf("SC_CLK_TCK")
DASH_GRPC, DASH_HTTPS = 17444, 18443


def grpc_port(i):
    return 17450 + i


def https_port(i):
    return 19450 + i


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def metrics(state, port):
    ctx = ssl.create_default_context(cafile=os.path.join(state, "ca", "tls.crt"))
    ctx.load_cert_chain(os.path.join(state, "operator", "tls.crt"),
                        os.path.join(state, "operator", "tls.key"))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    conn.close()
    return body


def value(body, series):
    for line in body.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def wait_listening(port, deadline=30):
    import socket
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def run(mode, rate, secs, replicas, accounts):
    n = 1 if mode == "single" else replicas
    state = tempfile.mkdtemp(prefix=f"txmesh-bench-{mode}-")
    env = dict(os.environ, RUST_LOG="warn", TXMESH__STATE_DIR=state,
               TXMESH__DASHBOARD__GRPC_LISTEN=f"127.0.0.1:{DASH_GRPC}",
               TXMESH__DASHBOARD__HTTPS_LISTEN=f"127.0.0.1:{DASH_HTTPS}",
               TXMESH__INGRESS__DASHBOARD_ADDR=f"127.0.0.1:{DASH_GRPC}")
    subprocess.run([BIN, "certs", "init", "--dir", state], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    procs = [subprocess.Popen([BIN, "dashboard"], env=env, stdout=subprocess.DEVNULL)]
    wait_listening(DASH_GRPC)
    names = [f"ingress-{i}" for i in range(n)]
    members = ",".join(f"{name}=127.0.0.1:{grpc_port(i)}" for i, name in enumerate(names))
    for i, name in enumerate(names):
        e = dict(env, TXMESH__INGRESS__LISTEN=f"127.0.0.1:{grpc_port(i)}",
                 TXMESH__INGRESS__METRICS_LISTEN=f"127.0.0.1:{https_port(i)}")
        if mode != "single":
            e.update(TXMESH__CLUSTER__NAME=name, TXMESH__CLUSTER__REPLICAS=members)
        procs.append(subprocess.Popen([BIN, "ingress"], env=e, stdout=subprocess.DEVNULL))
    for i in range(n):
        wait_listening(grpc_port(i))
    time.sleep(1)
    args = ["--rate", str(rate), "--duration", f"{secs}s", "--accounts", str(accounts)]
    if mode == "aware":
        args.append("--partition-aware")
    txgen_env = dict(env, TXMESH__TXGEN__TARGET=f"127.0.0.1:{grpc_port(0)}")
    report, cpu = run_txgen(args, txgen_env, [p.pid for p in procs])
    forwarded = sum(
        value(metrics(state, https_port(i)),
              'txmesh_forwarded_transactions_total{outcome="sent"}')
        for i in range(n))
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=30)
    shutil.rmtree(state, ignore_errors=True)
    answered = max(report["answered"], 1)
    return dict(mode=mode, replicas=n, offered=rate, **figures(report, cpu),
                forwarded_share=round(forwarded / answered, 3))


def run_txgen(args, env, pids):
    """Runs `txmesh txgen ARGS --report json` while `pids` serve it; returns
    its report and the CPU seconds spent meanwhile: (services, txgen)."""
    before = {pid: cpu_ticks(pid) for pid in pids}
    child_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([BIN, "txgen", *args, "--report", "json"], env=env,
                         capture_output=True, text=True)
    child_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    services = sum(cpu_ticks(pid) - before[pid] for pid in pids) / TICKS
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"txgen: {out.stderr[-2000:]}")
    txgen = (child_after.ru_utime - child_before.ru_utime
             + child_after.ru_stime - child_before.ru_stime)
    return report, (services, txgen)


def figures(report, cpu):
    """What a row shows of a txgen report and the CPU spent for it."""
    services, txgen = cpu
    answered = max(report["answered"], 1)
    lat = report["latency_ms"]
    return {
        "tx_per_s": round(report["achieved_tps"]),
        "answered": report["answered"],
        "errors": report["errors"],
        "missed_patterns": sum(v["sent"] - v["detected"] for v in report["injected"].values()),
        "p50_ms": lat["p50"], "p99_ms": lat["p99"], "p999_ms": lat["p999"],
        "core_us_per_tx_services": round(services * 1e6 / answered, 1),
        "core_us_per_tx_all": round((services + txgen) * 1e6 / answered, 1),
    }

def main():
    rate = sys.argv[1] if len(sys.argv) > 1 else "max"
    secs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    replicas = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    accounts = int(sys.argv[4]) if len(sys.argv) > 4 else 100000
    modes = (sys.argv[5] if len(sys.argv) > 5 else "single,via-one,aware").split(",")
    if "TXMESH_BENCH_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "txmesh"], cwd=ROOT, check=True)
    rows = [run(mode, rate, secs, replicas, accounts) for mode in modes]
    for row in rows:
        print(json.dumps(row))
    by = {r["mode"]: r for r in rows}
    if "via-one" in by and "aware" in by:
        v, a = by["via-one"], by["aware"]
        share = v["forwarded_share"] - a["forwarded_share"]
        if share > 0:
            hop = (v["core_us_per_tx_services"] - a["core_us_per_tx_services"]) / share
            print(json.dumps({"core_us_per_forward_hop": round(hop, 1),
                              "p99_ms_with_hop": v["p99_ms"], "p99_ms_without_hop": a["p99_ms"]}))


if __name__ == "__main__":
    main()
