#!/usr/bin/env bash
# The whole PeerCache test suite: formatting, lints, every Rust test of the
# workspace (unit tests next to the code, cross-crate tests in tests/), and the
# Python tests in tests/python/ against a freshly built wheel.
#
# Usage: bash tests/run-all.sh        (from anywhere; installs what it needs)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

bash .ci/install-system-deps.sh
# A build plus the test venv need about 10 GB; a full disk shows up later as
# odd download or link errors, so say up front how much there is.
df -h "$ROOT" | tail -1 | awk '{print "disk: " $4 " free on " $6}'
ulimit -l unlimited 2>/dev/null || true   # glommio/RDMA pin memory; root has CAP_IPC_LOCK anyway

failures=()
step() {
  local name="$1"; shift
  echo "::: $name"
  if "$@"; then echo "::: $name: ok"; else echo "::: $name: FAILED"; failures+=("$name"); fi
}

step "rustfmt" cargo fmt --all -- --check
step "clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
step "cargo test" cargo test --workspace
# The rdma-sys implementation of the RDMA verbs interface builds only with the
# `ibverbs` feature: lint it, and run its link test (device listing, which
# reports "no device" on machines without RDMA support).
step "clippy (ibverbs)" cargo clippy -p peercache-engine --features ibverbs --all-targets --quiet -- -D warnings
step "cargo test (ibverbs link)" cargo test -p peercache-engine --features ibverbs --lib rdma::ibverbs

# Python: the package built from this tree, tested against SGLang's real
# HiCache code (CPU-only torch + sglang, installed once into the venv). The venv
# lives outside the checkout so that later runs on this machine, fresh clones
# included, reuse it instead of downloading about 1 GB again.
CACHE_DIR="${XDG_CACHE_HOME:-${HOME:+$HOME/.cache}}"
VENV="${PEERCACHE_TEST_VENV:-${CACHE_DIR:-$ROOT/target}/peercache/test-venv}"
python_tests() {
  bash tests/sglang/install.sh "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps .
  # Run from tests/ so the installed package, not the source tree, is imported.
  (cd tests/python && "$VENV/bin/python" -m pytest -q)
}
step "python tests" python_tests

if [ ${#failures[@]} -gt 0 ]; then
  echo "FAILED steps: ${failures[*]}"
  exit 1
fi
echo "all test steps passed"
