#!/usr/bin/env bash
# README's first command: the multi-node demo. Starts 4 PeerCache node
# processes on 127.0.0.1 (node-1 is the discovery head), drives a
# generated-shared-prefix workload round-robin over them for two passes, and
# prints the hit rate of each pass and every node's cache counters.
#
# Usage: bash perf-scripts/demo.sh [peercache-demo flags]   (from anywhere)
#   e.g. bash perf-scripts/demo.sh --groups 64 --prompts-per-group 16
#   bash perf-scripts/demo.sh --help lists every flag.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

bash .ci/install-system-deps.sh
ulimit -l unlimited 2>/dev/null || true   # the shards pin memory; root has CAP_IPC_LOCK anyway

echo "building peercache-demo and peercache-node (release; the first build takes a few minutes)"
cargo build --release --quiet -p peercache-tests --bins
exec "$ROOT/target/release/peercache-demo" "$@"
