#!/usr/bin/env bash
# PeerCache and Mooncake's transfer engine side by side, over TCP, on this
# host, in one run: `peercache-bench compare` at each block size measures
# PeerCache's remote get, then Mooncake's own transfer_engine_bench (a target
# it starts on 127.0.0.1 and an initiator reading blocks of the same size, in
# batches of the same size, on as many threads as the get PEAK), and writes
# the two side by side (references.mooncake_gbps, ratios.get_peak_vs_mooncake).
#
# Usage: bash perf-scripts/compare-mooncake.sh [--block-sizes 4k,64k,128k,1m] [--duration 5] [--teb PATH]
#
# Mooncake comes from `pip install mooncake-transfer-engine` (its
# transfer_engine_bench on PATH, or --teb). Its PyPI wheel links the CUDA
# driver (libcuda.so.1), so on a machine without an NVIDIA driver - like this
# project's CI machines - the binary cannot load: `compare` then records why
# and measures the PeerCache side alone, and this script exits 3.
# The Mooncake side has been run only against a stand-in in the tests
# (benchmarks/tests/mooncake_cli.rs), never the real binary on this machine class.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SIZES="4k,64k,128k,1m"
DURATION=5
TEB_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --block-sizes) SIZES="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --teb) TEB_ARGS=(--teb "$2"); shift 2 ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
done
bash .ci/install-system-deps.sh
cargo build --release -q -p peercache-bench
BENCH=./target/release/peercache-bench
OUT="$ROOT/peercache-bench-results/compare-mooncake-$(date +%s)"
mkdir -p "$OUT"

"$BENCH" compare --block-sizes "$SIZES" --duration "$DURATION" \
  --warmup 1 --tag compare --out-dir "$OUT" "${TEB_ARGS[@]}"

# `compare` goes on without Mooncake; the exit code says whether it ran:
# `mooncake --check` exits 3 (and says why) when it is missing or cannot load.
status=0
"$BENCH" mooncake --check "${TEB_ARGS[@]}" || status=$?
if [ "$status" -ne 0 ]; then
  echo "Mooncake not run; the PeerCache results are in $OUT"
  exit "$status"
fi
echo "results in $OUT"
