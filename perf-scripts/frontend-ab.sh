#!/usr/bin/env bash
# What the Python front end (PeerCacheStore.batch_get_v1 from Python threads)
# costs over the Rust API, measured so that the machine's drift cancels out:
# ROUNDS rounds, each running `peercache-bench throughput --op get` once per
# front end back to back (the order alternating between rounds), and the
# overhead 1 - python/rust GB/s taken per round. Prints every round and the
# median; the per-run JSON/MD files stay in ./peercache-bench-results/.
#
#   perf-scripts/frontend-ab.sh [ROUNDS] [extra peercache-bench flags...]
#
# Environment: BENCH (default target/release/peercache-bench), PYTHON (an
# interpreter with the peercache package installed; default python3).
# Bounded: each run is --duration 2 --warmup 1 unless overridden, ~20 s.
set -euo pipefail
rounds="${1:-6}"
shift || true
source "$(dirname "$0")/bench-env.sh"
tag="ab-$$"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

run() { # front end -> PEAK get GB/s of that run
  "$bench" throughput --op get --frontend "$1" --python "$python" \
    --duration 2 --warmup 1 --tag "$tag-$1" "${@:2}" 2>/dev/null >/dev/null
  local json
  json="$(ls -t peercache-bench-results/hicache-throughput-"$tag-$1"-*.json | head -1)"
  "$python" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["peak"][0]["gbps"])' "$json"
}

for ((r = 1; r <= rounds; r++)); do
  if ((r % 2)); then order=(rust python); else order=(python rust); fi
  declare -A gbps=()
  for fe in "${order[@]}"; do
    gbps[$fe]="$(run "$fe" "$@")"
  done
  echo "${gbps[rust]} ${gbps[python]}" >>"$out"
  echo "round $r: rust ${gbps[rust]} GB/s, python ${gbps[python]} GB/s" >&2
done

"$python" - "$out" <<'EOF'
import statistics, sys
rows = [tuple(map(float, line.split())) for line in open(sys.argv[1])]
over = [1 - py / rs for rs, py in rows]
print("rounds:", len(rows))
print("overhead per round:", " ".join(f"{o:+.1%}" for o in over))
print(f"median overhead of the Python front end: {statistics.median(over):+.1%}")
print(f"median GB/s: rust {statistics.median(r for r, _ in rows):.3f}, python {statistics.median(p for _, p in rows):.3f}")
EOF
