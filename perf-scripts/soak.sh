#!/usr/bin/env bash
# A bounded chaos run (not part of the test suite): peercache-soak starts
# node processes on 127.0.0.1 under a prefix workload, kills one with SIGKILL
# and restarts it under the same node_id every few seconds, and fails on any
# page returned with wrong bytes, any hang, or any unexpected death.
#
# Usage: bash perf-scripts/soak.sh [--seconds 120] [--kill-every 10] [--nodes 4] [--kill-head] [--disk 64mb] [peercache-soak options...]
#   (`--help` lists them all; --seconds is capped at 3600.)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash .ci/install-system-deps.sh
ulimit -l unlimited 2>/dev/null || true   # the shards pin memory; root has CAP_IPC_LOCK anyway
cargo build --release --quiet -p peercache-tests --bins
exec "$ROOT/target/release/peercache-soak" "$@"
