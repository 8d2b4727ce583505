#!/usr/bin/env python3
"""Ceiling benchmark: what this machine can do for txmesh's shape of work,
measured in the same run as the end-to-end benchmark, so that figures
from a noisy machine stay comparable as ratios.

Rows, each with `txmesh txgen` as the client (the same binary, flags,
identity and mTLS as the end-to-end run):
  echo    the ceiling server (benches/ceiling.rs) answering each request at
          once: the bare mTLS bidi stream;
  hop     the same, each transaction through one actix hop to its
          account's actor (one per account);
  single  txmesh itself: dashboard and ingress as in production (journal
          on with its default policy, every verdict published).
Then txmesh's throughput as a share of each ceiling.

Usage: services/benches/ceiling.py [RATE|max] [SECONDS] [ACCOUNTS]
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import replicas  # noqa: E402  (the end-to-end runner)


def ceiling_binary():
    out = subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "txmesh", "--bench", "ceiling",
         "--message-format=json"],
        cwd=replicas.ROOT, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "ceiling":
            return msg["executable"]
    raise SystemExit("the ceiling bench was not built")


def run_ceiling(server, mode, rate, secs, accounts):
    state = tempfile.mkdtemp(prefix=f"txmesh-ceiling-{mode}-")
    port = replicas.grpc_port(0)
    env = dict(os.environ, RUST_LOG="warn", TXMESH__STATE_DIR=state,
               TXMESH__TXGEN__TARGET=f"127.0.0.1:{port}")
    subprocess.run([replicas.BIN, "certs", "init", "--dir", state], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    proc = subprocess.Popen([server, mode, f"127.0.0.1:{port}", state], env=env)
    replicas.wait_listening(port)
    time.sleep(1)
    args = ["--rate", str(rate), "--duration", f"{secs}s", "--accounts", str(accounts)]
    report, cpu = replicas.run_txgen(args, env, [proc.pid])
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(state, ignore_errors=True)
    return dict(mode=mode, offered=rate, **replicas.figures(report, cpu))

def main():
    rate = sys.argv[1] if len(sys.argv) > 1 else "max"
    secs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    accounts = int(sys.argv[3]) if len(sys.argv) > 3 else 100000
    if "TXMESH_BENCH_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "txmesh"],
                       cwd=replicas.ROOT, check=True)
    server = ceiling_binary()
    rows = [run_ceiling(server, mode, rate, secs, accounts) for mode in ("echo", "hop")]
    rows.append(replicas.run("single", rate, secs, 1, accounts))
    for row in rows:
        print(json.dumps(row))
    by = {r["mode"]: r for r in rows}
    txmesh = by["single"]["tx_per_s"]
    print(json.dumps({
        "txmesh_share_of_echo": round(txmesh / max(by["echo"]["tx_per_s"], 1), 3),
        "txmesh_share_of_hop": round(txmesh / max(by["hop"]["tx_per_s"], 1), 3),
    }))


if __name__ == "__main__":
    main()
