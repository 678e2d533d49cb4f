#!/usr/bin/env bash
# Installs the Debian packages q3n builds against, only those missing. Uses sudo when not root.
# Python packages for golden generation are separate: `make golden-deps`.
set -euo pipefail

packages=(build-essential pkg-config libhdf5-dev hdf5-tools libcmocka-dev libopenblas-dev libcjson-dev clang libclang-rt-dev)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "q3n deps: all Debian packages present"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "q3n deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
