#!/usr/bin/env bash
# Install fastssl and everything it needs on a fresh Debian/Ubuntu machine (CPU or GPU).
#   bash scripts/setup.sh          # fastssl with all pipelines (torchvision, DALI, FFCV)
#   bash scripts/setup.sh --dev    # ... plus the test tools
# Idempotent: a second run only checks. FFCV compiles against OpenCV and libjpeg-turbo, hence apt.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="all"
[[ "${1:-}" == "--dev" ]] && extras="all,dev"

apt_pkgs=(pkg-config libopencv-dev libturbojpeg0-dev)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if (( ${#missing[@]} )); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

py="$(command -v python3 || command -v python)"  # some images have python3 alone
"$py" -m pip install -q -e ".[${extras}]"
"$py" -c "import fastssl, pipelines, torch; print('fastssl ready: torch', torch.__version__)"
