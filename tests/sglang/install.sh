#!/usr/bin/env bash
# Installs SGLang's real HiCache storage layer, CPU-only, into a venv, for the
# integration tests (tests/python): the PyPI torch 2.14.1 wheel WITHOUT its
# nvidia-* CUDA wheels (3.2 GB installed; cuda_stubs.py gives torch no-op
# stand-ins so it imports and reports no GPU), SGLang 0.5.23 without its
# dependency tree, and the pinned packages its mem_cache / cache_controller
# imports need. Versions are pinned because SGLang's storage interface changes
# between releases.
#
# Usage: bash tests/sglang/install.sh VENV
# Idempotent: a venv already holding this exact set (same script, pins and stub
# generator) is kept; any other content of VENV is replaced.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${1:?usage: install.sh VENV}"
TORCH=2.14.1
SGLANG=0.5.23
TRITON=3.8.0
STAMP="$VENV/.peercache-sglang-$(cat "$0" "$HERE/requirements.txt" "$HERE/cuda_stubs.py" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ]; then
  echo "SGLang test venv up to date: $VENV"
  exit 0
fi
# A half-built or older venv is not patched in place: start clean, so what the
# tests run against is exactly what this script says.
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV"
# Large wheels over a flaky link: pip retries the connection and resumes a
# cut download instead of failing the run at the first interruption.
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check --retries 10 --timeout 60)
echo "installing torch $TORCH (no CUDA wheels), sglang $SGLANG (CPU) into $VENV"
"${PIP[@]}" --upgrade "pip==26.3"
PIP+=(--resume-retries 20)
"${PIP[@]}" --no-deps "torch==$TORCH" "sglang==$SGLANG" "triton==$TRITON" -r "$HERE/requirements.txt"
"${PIP[@]}" pytest maturin
"$VENV/bin/python" "$HERE/cuda_stubs.py"
"$VENV/bin/python" - <<'PY'
import torch
assert not torch.cuda.is_available()
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage  # noqa: F401
from sglang.srt.managers.cache_controller import HiCacheController  # noqa: F401
print("torch", torch.__version__, "+ sglang HiCache importable, CPU-only")
PY
touch "$STAMP"
