#!/usr/bin/env bash
# README's first command. The multi-node demo cluster (4 node processes on
# 127.0.0.1 sharing a prefix workload) is built by the cluster work (TCP
# discovery, directory and data plane), which has not landed yet. Until it
# does, this runs what exists end to end: one node's store against memcpy.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
echo "peercache demo: the multi-node cluster demo is not built yet (cluster issue);"
echo "running the single-node data-plane microbenchmark instead."
exec bash "$ROOT/perf-scripts/micro.sh" "$@"
