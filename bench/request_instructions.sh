#!/usr/bin/env bash
# Counts the CPU instructions pixelgate executes per cache-hit request, with
# valgrind's callgrind. Instruction counts do not depend on other load on the
# machine, so this measures per-request cost even where wall-clock
# benchmarks would be noisy. It complements bench/cache_hits.sh, which
# measures requests per second next to nginx.
#
# Cases: a 200 and a 304 revalidation of /images/<key>.png, one server
# thread, the image in the hot cache. Counting starts after a warm-up.
#
# Usage: bash bench/request_instructions.sh
# Settings from the environment: PIXELGATE_BIN (build/pixelgate),
# DURATION (10s, per case), CONNECTIONS (4), PORT (18431).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PIXELGATE_BIN="${PIXELGATE_BIN:-$REPO/build/pixelgate}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-4}"
PORT="${PORT:-18431}"

for tool in valgrind callgrind_control callgrind_annotate wrk curl; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install -y valgrind wrk curl)" >&2; exit 1; }
done
[[ -x "$PIXELGATE_BIN" ]] || { echo "error: $PIXELGATE_BIN is missing; build it first" >&2; exit 1; }

WORK="$(mktemp -d /tmp/pixelgate-instructions.XXXXXX)"
SERVER_PID=""
cleanup() {
  [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

cat >"$WORK/pixelgate.toml" <<EOF
[server]
host = "127.0.0.1"
port = $PORT
threads = 1

[storage]
path = "$WORK/data"

[logging]
access_log = false
level = "warn"

[security]
mode = "open"

[rate_limits]
requests_per_second = 0
generations_per_minute = 0
EOF

wait_until_up() {
  local i
  for i in $(seq 120); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && return 0
    sleep 0.5
  done
  echo "error: pixelgate did not start within 60 s" >&2
  exit 1
}

# Stores one image with a plain run first, so the profiled run only serves it.
"$PIXELGATE_BIN" serve --config "$WORK/pixelgate.toml" >/dev/null 2>"$WORK/first.log" &
SERVER_PID=$!
wait_until_up
KEY="$(curl -s -D - -o /dev/null "http://127.0.0.1:$PORT/generate-image?prompt=benchmark&width=1024&height=1024" |
  awk 'tolower($1) == "x-pixelgate-key:" {print $2}' | tr -d '\r')"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
[[ "$KEY" =~ ^[0-9a-f]{64}$ ]] || { echo "error: no image key in the response" >&2; exit 1; }
URL="http://127.0.0.1:$PORT/images/$KEY.png"

# count_case NAME [wrk header arguments...]
count_case() {
  local name="$1"; shift
  local out="$WORK/callgrind.$name"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$PIXELGATE_BIN" serve --config "$WORK/pixelgate.toml" >/dev/null 2>"$WORK/$name.log" &
  SERVER_PID=$!
  wait_until_up
  wrk -t1 -c"$CONNECTIONS" -d3s "$@" "$URL" >/dev/null 2>&1   # warm-up: hot cache, allocator, connections
  callgrind_control -i on "$SERVER_PID" >/dev/null 2>&1
  local requests
  requests="$(wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "$@" "$URL" | awk '/requests in/ {print $1}')"
  callgrind_control -i off "$SERVER_PID" >/dev/null 2>&1
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  local total
  total="$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
  printf '| %s | %s | %s | %s |\n' "$name" "$requests" "$total" "$((total / requests))"
}

echo "| case | requests | instructions | instructions per request |"
echo "|---|---|---|---|"
count_case images-200
count_case images-304 -H "If-None-Match: \"$KEY\""
