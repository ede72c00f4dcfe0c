#!/usr/bin/env bash
# Installs SGLang's real HiCache storage layer, CPU-only, into a venv, for the
# integration tests (tests/python): torch 2.14.1 from PyPI with its own CUDA
# wheels (they import fine on a machine without a GPU; torch.cuda reports no
# device), SGLang 0.5.23 without its dependency tree, and the pinned packages
# its mem_cache / cache_controller imports need. Versions are pinned because
# SGLang's storage interface changes between releases.
#
# Usage: bash tests/sglang/install.sh VENV
# Idempotent: a venv already holding this exact set (same pins) is kept.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${1:?usage: install.sh VENV}"
TORCH=2.14.1
SGLANG=0.5.23
TRITON=3.8.0
STAMP="$VENV/.peercache-sglang-$(cat "$0" "$HERE/requirements.txt" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ]; then
  echo "SGLang test venv up to date: $VENV"
  exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
echo "installing torch $TORCH, sglang $SGLANG (CPU) into $VENV"
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "torch==$TORCH"
"${PIP[@]}" --no-deps "sglang==$SGLANG" "triton==$TRITON" -r "$HERE/requirements.txt"
"${PIP[@]}" pytest maturin
"$VENV/bin/python" - <<'PY'
import torch
assert not torch.cuda.is_available()
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage  # noqa: F401
from sglang.srt.managers.cache_controller import HiCacheController  # noqa: F401
print("torch", torch.__version__, "+ sglang HiCache importable, CPU-only")
PY
touch "$STAMP"
