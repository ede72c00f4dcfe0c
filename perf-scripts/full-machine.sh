#!/usr/bin/env bash
# The full-machine run of seed 003: one serve/drive pair per RDMA device, pair
# i on discovery port 31998+i, both processes of a pair bound to its NIC's
# NUMA node with numactl (when numactl is installed and the device reports a
# node), all pairs measured at the same time; each pair's best point (its
# PEAK row) is summed at the end.
#
# Usage: bash perf-scripts/full-machine.sh [--pairs N] [--op get] [peercache-bench options...]
#   Devices come from --devices a,b,c or /sys/class/infiniband. Without any
#   RDMA device (like this project's CI machines) it runs --pairs TCP pairs on
#   127.0.0.1 (default 1): a functional run, not a performance scenario.
#   For one simultaneous aggregate, pass a single --concurrencies value: the
#   pairs sweep in step, so rows of different concurrencies were measured at
#   different moments.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PAIRS=""
DEVICES=""
OP="get"
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) PAIRS="$2"; shift 2 ;;
    --devices) DEVICES="$2"; shift 2 ;;
    --op) OP="$2"; shift 2 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
bash .ci/install-system-deps.sh

if [ -z "$DEVICES" ] && [ -d /sys/class/infiniband ]; then
  DEVICES="$(ls /sys/class/infiniband | paste -sd, -)"
fi
IFS=',' read -r -a DEVS <<< "${DEVICES:-}"
if [ ${#DEVS[@]} -eq 0 ] || [ -z "${DEVS[0]}" ]; then
  DEVS=()
  for ((i = 0; i < ${PAIRS:-1}; i++)); do DEVS+=(""); done
  PROTO="tcp"
  FEATURES=()
  echo "no RDMA device: ${#DEVS[@]} TCP pair(s) on 127.0.0.1 (functional run, not a performance figure)"
else
  PROTO="rdma"
  # Without the verbs implementation the nodes refuse --protocol rdma.
  FEATURES=(--features ibverbs)
fi
cargo build --release -q -p peercache-bench "${FEATURES[@]}"
BENCH="$ROOT/target/release/peercache-bench"

OUT="$ROOT/peercache-bench-results/full-machine-$(date +%s)"
mkdir -p "$OUT"
pids=()
servers=()
cleanup() {
  # SIGTERM: each serve drops its node (deregisters) and exits.
  for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# NUMA node of each pair's device ("" when unknown).
NODES=()
for dev in "${DEVS[@]}"; do
  node=""
  if [ -n "$dev" ] && [ -r "/sys/class/infiniband/$dev/device/numa_node" ]; then
    node="$(cat "/sys/class/infiniband/$dev/device/numa_node")"
  fi
  NODES+=("$node")
done
# Sets BIND to the numactl prefix of pair $1 (empty: run unbound); serve and
# drive of a pair get the same one, so that both ends stay on the NIC's node.
bind_pair() {
  BIND=()
  local node="${NODES[$1]}"
  if command -v numactl >/dev/null && [ -n "$node" ] && [ "$node" -ge 0 ]; then
    BIND=(numactl --cpunodebind="$node" --membind="$node")
  fi
}

for i in "${!DEVS[@]}"; do
  dev="${DEVS[$i]}"
  port=$((31998 + i))
  bind_pair "$i"
  devopt=()
  [ -n "$dev" ] && devopt=(--device-name "$dev")
  echo "pair $i: device=${dev:-none} numa_node=${NODES[$i]:-n/a} discovery=127.0.0.1:$port"
  # The producer: publishes the working set and waits until its stdin (a
  # FIFO this script holds open) closes.
  mkfifo "$OUT/serve-$i.in"
  "${BIND[@]}" "$BENCH" serve --protocol "$PROTO" "${devopt[@]}" --meta-port "$port" \
    "${EXTRA[@]}" < "$OUT/serve-$i.in" > "$OUT/serve-$i.out" 2> "$OUT/serve-$i.log" &
  servers+=($!)
  exec {fd}> "$OUT/serve-$i.in"
  eval "SERVE_FD_$i=$fd"
done
for i in "${!DEVS[@]}"; do
  for _ in $(seq 1 600); do grep -q READY "$OUT/serve-$i.out" 2>/dev/null && break; sleep 0.1; done
  grep -q READY "$OUT/serve-$i.out" || { echo "pair $i: producer did not start"; cat "$OUT/serve-$i.log"; exit 1; }
done
for i in "${!DEVS[@]}"; do
  dev="${DEVS[$i]}"
  bind_pair "$i"
  devopt=()
  [ -n "$dev" ] && devopt=(--device-name "$dev")
  "${BIND[@]}" "$BENCH" drive --protocol "$PROTO" "${devopt[@]}" --discovery-addr "127.0.0.1:$((31998 + i))" \
    --op "$OP" --tag "pair$i" --out-dir "$OUT" "${EXTRA[@]}" > "$OUT/drive-$i.md" 2> "$OUT/drive-$i.log" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for i in "${!DEVS[@]}"; do fd_var="SERVE_FD_$i"; eval "exec ${!fd_var}>&-"; done
[ $status -eq 0 ] || { echo "a drive failed: see $OUT/drive-*.log"; exit 1; }
python3 - "$OUT" <<'PY'
import glob, json, sys
best = []
for path in sorted(glob.glob(sys.argv[1] + "/hicache-drive-*.json")):
    run = json.load(open(path))
    # The pair's best point: its PEAK row (the sweep's highest pages/s); a
    # sweep without one (batch 1 has no PEAK) falls back to its fastest row.
    r = max(run.get("peak") or run["results"], key=lambda row: row["pages_per_s"])
    best.append(r)
    print(f"{path.rsplit('/', 1)[-1]}: best at concurrency {r['concurrency']}: "
          f"{r['pages_per_s']:.0f} pages/s, {r['gbps']:.3f} GB/s, p99 {r['p99_us']:.0f} us")
print(f"sum of each pair's best point over {len(best)} pair(s): "
      f"{sum(r['pages_per_s'] for r in best):.0f} pages/s, {sum(r['gbps'] for r in best):.3f} GB/s")
if len({r["concurrency"] for r in best}) > 1:
    print("note: the pairs peaked at different concurrencies, measured at different moments; "
          "pass a single --concurrencies value for one simultaneous aggregate")
PY
echo "results in $OUT"
