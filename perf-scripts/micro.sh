#!/usr/bin/env bash
# Data-plane microbenchmark: local set/get through the node store vs a plain
# memcpy of the same bytes, measured in the same run, with 1 shard and with
# the node's automatic shard count. Extra arguments go to every run.
#
# Usage: bash perf-scripts/micro.sh [--duration 3 --working-set 2048 ...]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash .ci/install-system-deps.sh
cargo build --release -q -p peercache-bench
for shards in 1 0; do
  label=$([ "$shards" = 0 ] && echo "auto" || echo "$shards")
  echo "== micro, shards=$label =="
  ./target/release/peercache-bench micro --shards "$shards" --tag "shards-$label" "$@"
done
