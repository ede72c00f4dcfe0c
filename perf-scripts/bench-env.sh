# Sourced by the perf-scripts that run peercache-bench many times: moves to
# the repository root and sets $bench (BENCH, default the release build) and
# $python (PYTHON: an interpreter with the peercache package installed,
# default python3). Stops with the build command when the binary is missing.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bench="${BENCH:-target/release/peercache-bench}"
python="${PYTHON:-python3}"
[[ -x "$bench" ]] || { echo "no $bench: cargo build --release -p peercache-bench" >&2; exit 2; }
