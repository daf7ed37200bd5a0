#!/usr/bin/env bash
# setup.sh - the first command on a fresh Debian machine: installs what fpdm
# needs (Debian packages), builds it into build/, and samples a grid of digits
# with the shipped FPDM model into samples/.
#   ./setup.sh                 install, build, sample
#   FPDM_SKIP_SAMPLE=1 ./setup.sh   install and build only
set -euo pipefail
cd "$(dirname "$0")"

packages=(build-essential cmake pkg-config libopenblas-openmp-dev libcjson-dev libstb-dev
          python3 python3-numpy python3-torch)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    echo "setup.sh: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${FPDM_CMAKE_FLAGS:-}
cmake --build build -j"$(nproc)"

if [ -z "${FPDM_SKIP_SAMPLE:-}" ]; then
    ./build/fpdm-sample --steps 20 -n 16 --out samples --grid samples/grid.png --overwrite
    echo "setup.sh: wrote samples/*.png and samples/grid.png"
fi
