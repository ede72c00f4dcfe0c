#!/usr/bin/env bash
# PeerCache and Mooncake's transfer engine side by side, over TCP, on this
# host, in one run: `peercache-bench compare` at each block size, then
# Mooncake's own transfer_engine_bench (target + initiator on 127.0.0.1,
# protocol tcp, reads of the same block size).
#
# Usage: bash perf-scripts/compare-mooncake.sh [--block-sizes 4k,64k,128k,1m] [--duration 5]
#
# Mooncake comes from `pip install mooncake-transfer-engine` (its
# transfer_engine_bench must be on PATH). Its PyPI wheel links the CUDA
# driver (libcuda.so.1), so on a machine without an NVIDIA driver - like this
# project's CI machines - the binary cannot load: the script then runs the
# PeerCache side alone, prints why Mooncake did not run, and exits 3.
# The Mooncake invocation below follows its transfer_engine_bench flags
# (--mode, --protocol, --metadata_server, --operation, --block_size,
# --batch_size, --duration); it has not been run on this machine class.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SIZES="4k,64k,128k,1m"
DURATION=5
while [ $# -gt 0 ]; do
  case "$1" in
    --block-sizes) SIZES="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
done
bash .ci/install-system-deps.sh
cargo build --release -q -p peercache-bench
OUT="$ROOT/peercache-bench-results/compare-mooncake-$(date +%s)"
mkdir -p "$OUT"

echo "== PeerCache (peercache-bench compare, tcp) =="
./target/release/peercache-bench compare --block-sizes "$SIZES" --duration "$DURATION" \
  --warmup 1 --tag compare --out-dir "$OUT"

echo "== Mooncake (transfer_engine_bench, tcp) =="
TEB="$(command -v transfer_engine_bench || true)"
if [ -z "$TEB" ]; then
  echo "Mooncake not run: transfer_engine_bench is not on PATH (pip install mooncake-transfer-engine)"
  exit 3
fi
if ! why="$("$TEB" --help 2>&1 >/dev/null)" && echo "$why" | grep -q "error while loading shared libraries"; then
  echo "Mooncake not run: $TEB cannot load here: $why"
  exit 3
fi
to_bytes() { python3 -c "import sys; s=sys.argv[1].lower(); m={'k':1<<10,'m':1<<20,'g':1<<30}; print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))" "$1"; }
IFS=',' read -r -a LIST <<< "$SIZES"
for size in "${LIST[@]}"; do
  bytes="$(to_bytes "$size")"
  port=$((20000 + RANDOM % 20000))
  "$TEB" --mode=target --protocol=tcp --metadata_server=P2PHANDSHAKE \
    --local_server_name="127.0.0.1:$port" > "$OUT/mooncake-target-$size.log" 2>&1 &
  target=$!
  sleep 2
  "$TEB" --mode=initiator --protocol=tcp --metadata_server=P2PHANDSHAKE \
    --segment_id="127.0.0.1:$port" --operation=read --block_size="$bytes" --batch_size=32 \
    --duration="$DURATION" 2>&1 | tee "$OUT/mooncake-initiator-$size.log" | tail -5
  kill "$target" 2>/dev/null || true
  wait "$target" 2>/dev/null || true
done
echo "results in $OUT"
