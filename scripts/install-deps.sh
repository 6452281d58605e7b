#!/usr/bin/env bash
# Installs the Debian 12 packages pixelgate needs. With --test, also the test
# tools and the npm packages of the black-box suite.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

sudo_cmd=()
if [[ "$(id -u)" != 0 ]]; then sudo_cmd=(sudo); fi

packages=(
  build-essential cmake ninja-build pkg-config
  libboost-dev libcurl4-openssl-dev libssl-dev nlohmann-json3-dev
  libtomlplusplus-dev libspdlog-dev libsqlite3-dev libvips-dev libhiredis-dev fonts-dejavu-core
)
if [[ $with_tests == 1 ]]; then
  packages+=(libgtest-dev libgmock-dev curl redis-server varnish)
  # Node.js 18 or newer runs the black-box suite; keep an existing install.
  command -v node >/dev/null || packages+=(nodejs npm)
fi

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ $with_tests == 1 ]]; then
  (cd tests && npm ci --no-audit --no-fund --loglevel=error)
fi
