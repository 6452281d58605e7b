#!/usr/bin/env bash
# Installs dependencies, builds, and starts `pixelgate serve` on port 8080
# with the embedded defaults (images under ./data, placeholder backend unless
# OPENAI_API_KEY and OPENAI_BASE_URL are set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh -DPIXELGATE_BUILD_TESTS=OFF
exec build/pixelgate serve "$@"
