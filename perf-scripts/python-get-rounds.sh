#!/usr/bin/env bash
# Remote get through the Python front end against the raw TCP reference,
# repeated so that one noisy run does not decide the figure: ROUNDS runs of
# `peercache-bench compare --frontend python` (2 processes, batch 32 ×
# 128 KiB MLA pages, PeerCacheStore.batch_get_v1 from Python threads at each
# concurrency, then the raw TCP stream reference and memcpy in the same run).
# Each round also measures paired rounds (`--paired-rounds`): the raw TCP
# stream and a Python get at the PEAK's concurrency, back to back.
# Prints each round (raw TCP GB/s, Python GB/s per concurrency, the PEAK's
# ratio to raw TCP, the paired ratios, p99/p50 at concurrency 1 beside the
# same run's raw TCP batch round trip's) and the median, min and max over the
# rounds of the PEAK's ratio and of all paired ratios, and in how many rounds
# p99 <= 2 x p50 held for the get and for the raw reference. The JSON/MD
# files stay in ./peercache-bench-results/.
#
#   perf-scripts/python-get-rounds.sh [ROUNDS] [extra peercache-bench flags...]
#
# Environment: BENCH (default target/release/peercache-bench), PYTHON (an
# interpreter with the peercache package installed; default python3),
# PAIRED_ROUNDS (paired rounds per round, default 2; 0 turns them off).
# Bounded: each round is --duration 2 --warmup 1 at the default
# --concurrencies 1,2,4,8 unless given, about a minute and a half with
# SGLang's import and two paired rounds.
set -euo pipefail
rounds="${1:-6}"
shift || true
source "$(dirname "$0")/bench-env.sh"
tag="pyrounds-$$"
files=()
for ((r = 1; r <= rounds; r++)); do
  echo "round $r/$rounds ..." >&2
  "$bench" compare --frontend python --python "$python" --paired-rounds "${PAIRED_ROUNDS:-2}" \
    --duration 2 --warmup 1 --tag "$tag-$r" "$@" >/dev/null 2>&1 ||
    { echo "round $r failed: rerun it alone to see why" >&2; exit 1; }
  files+=("$(ls -t peercache-bench-results/hicache-compare-"$tag-$r"-*.json | head -1)")
done
"$python" - "${files[@]}" <<'EOF'
import json, statistics, sys
ratios, paired, tails = [], [], []
for r, path in enumerate(sys.argv[1:], 1):
    d = json.load(open(path))
    raw = d["references"]["raw_tcp_gbps"]
    gets = " / ".join(f'{p["gbps"]:.2f}' for p in d["results"])
    ratio = d["ratios"]["python_get_peak_vs_raw_tcp"]
    tail = d["ratios"].get("get_c1_p99_over_p50", float("nan"))
    # The host's own tail for the same bytes: one batch per raw TCP request.
    raw_tail = d["references"].get("raw_tcp_batch_round_trip_p99_over_p50", float("nan"))
    tails.append((tail, raw_tail))
    pairs = [p["get_vs_raw_tcp"] for p in d.get("paired", [])]
    ratios.append(ratio)
    paired += pairs
    shown = " ".join(f"{100 * x:.0f}%" for x in pairs) or "none"
    print(f"round {r}: raw TCP {raw:.2f} GB/s; Python get {gets} GB/s; "
          f"PEAK = {100 * ratio:.0f}% of raw TCP; paired {shown}; "
          f"p99/p50 at 1 thread {tail:.2f} (raw TCP, one batch per request: {raw_tail:.2f})")
for name, xs in [("PEAK vs raw TCP", ratios), ("paired get vs raw TCP", paired)]:
    if xs:
        print(f"{name} over {len(xs)} measurements: median {100 * statistics.median(xs):.0f}%, "
              f"min {100 * min(xs):.0f}%, max {100 * max(xs):.0f}%")
met = sum(1 for t, _ in tails if t <= 2)
raw_met = sum(1 for _, t in tails if t <= 2)
print(f"p99 <= 2 x p50 at 1 thread: get {met} of {len(tails)} rounds; "
      f"the raw TCP batch round trip {raw_met} of {len(tails)}")
EOF
