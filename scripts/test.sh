#!/usr/bin/env bash
# Installs dependencies (test tools included), builds, and runs every suite
# in one ctest call: the GoogleTest unit tests and the black-box tests that
# drive the built binary over loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
scripts/build.sh -DPIXELGATE_BUILD_TESTS=ON
cd build
ctest --output-on-failure -j2 "$@"
