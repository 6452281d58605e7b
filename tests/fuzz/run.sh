#!/usr/bin/env bash
# Builds the URL fuzzer with clang's libFuzzer, AddressSanitizer and
# UndefinedBehaviorSanitizer, and runs it on the checked-in corpus.
# Usage: tests/fuzz/run.sh [SECONDS]   (default 60)
# New inputs that reach new code go to build/fuzz/corpus, not the checked-in
# corpus; copy interesting ones over by hand.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-60}"
mkdir -p build/fuzz/corpus
clang++ -std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -Isrc \
  tests/fuzz/url_fuzzer.cpp src/admission/url_signing.cpp src/api/image_query.cpp \
  src/core/text.cpp src/core/hash.cpp src/core/error.cpp \
  -lcrypto -o build/fuzz/url_fuzzer
build/fuzz/url_fuzzer -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
  build/fuzz/corpus tests/fuzz/corpus
