#!/usr/bin/env bash
# Installs the Debian packages PeerCache builds against (see docs/development.md):
# rdma-core headers (rdma-sys), libclang (bindgen), hwloc + udev (hwlocality),
# numactl (perf-scripts), chromium (the headless dashboard test in
# tests/tests/metrics.rs). Skips apt when everything is already there.
set -euo pipefail
pkgs=(libibverbs-dev librdmacm-dev libclang-dev libhwloc-dev libudev-dev numactl pkg-config chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing system packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
