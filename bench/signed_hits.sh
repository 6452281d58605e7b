#!/usr/bin/env bash
# Measures signed, rate-limited cache hits: pixelgate verifying an HMAC-signed
# /generate-image URL and taking a token from its rate limiter on every
# request, next to nginx checking a secure_link (MD5) URL under limit_req for
# a copy of the same image. Both limits are set far above the load, so every
# request is checked and none is rejected. Two cases: full 200 responses, and
# 304 revalidations with each server's own ETag.
#
# Both servers run one worker thread pinned to CPU 0; wrk runs on CPU 1 with
# one thread and 64 keep-alive connections.
#
# Usage: bash bench/signed_hits.sh     (DURATION=10s, CONNECTIONS=64)
# Prints a Markdown table to stdout; raw wrk output stays in $OUT.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${PIXELGATE_BIN:-$REPO/build/pixelgate}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
OUT="$(mktemp -d /tmp/pixelgate-signed-bench.XXXXXX)"
for tool in wrk nginx curl taskset openssl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y nginx-light wrk openssl)" >&2; exit 1; }
done
[[ -x "$BIN" ]] || { echo "missing $BIN; build it first" >&2; exit 1; }

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# pixelgate: signed mode, limiter on, access log off (as nginx's).
export PIXELGATE_BENCH_KEY="bench-secret-0123456789abcdef"
cat > "$OUT/pixelgate.toml" <<TOML
[server]
port = 0
threads = 1
[storage]
path = "$OUT/data"
[logging]
access_log = false
level = "warn"
[security]
mode = "signed"
[security.signing_keys.k1]
secret_env = "PIXELGATE_BENCH_KEY"
[rate_limits]
requests_per_second = 1000000
burst = 1000000
TOML
taskset -c 0 "$BIN" serve --config "$OUT/pixelgate.toml" > "$OUT/pixelgate.out" 2> "$OUT/pixelgate.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$OUT/pixelgate.out" 2>/dev/null && break; sleep 0.1; done
PG_PORT="$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$OUT/pixelgate.out")"
[[ -n "$PG_PORT" ]] || { echo "pixelgate did not start; see $OUT/pixelgate.err" >&2; exit 1; }
SIGNED="$("$BIN" sign '/generate-image?prompt=benchmark&width=1024&height=1024' --expires 1d --config "$OUT/pixelgate.toml")"
curl -sf -o "$OUT/image.png" -D "$OUT/first.headers" "http://127.0.0.1:$PG_PORT$SIGNED"
KEY="$(sed -n 's/^X-Pixelgate-Key: \([0-9a-f]*\).*/\1/ip' "$OUT/first.headers" | tr -d '\r')"

# nginx: the same file under secure_link and limit_req.
NG_PORT="$(free_port)"
mkdir -p "$OUT/www/images" "$OUT/nginx"
cp "$OUT/image.png" "$OUT/www/images/$KEY.png"
# nginx workers run as an unprivileged user when started as root.
chmod 755 "$OUT"
chmod -R a+rX "$OUT/www"
EXPIRES=$(( $(date +%s) + 86400 ))
URI="/images/$KEY.png"
MD5="$(printf '%s' "$EXPIRES$URI bench-secret" | openssl md5 -binary | openssl base64 | tr '+/' '-_' | tr -d '=')"
cat > "$OUT/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=1000 inactive=60s;
  keepalive_requests 1000000;
  client_body_temp_path $OUT/nginx;
  proxy_temp_path $OUT/nginx;
  fastcgi_temp_path $OUT/nginx;
  uwsgi_temp_path $OUT/nginx;
  scgi_temp_path $OUT/nginx;
  limit_req_zone \$binary_remote_addr zone=clients:1m rate=1000000r/s;
  server {
    listen 127.0.0.1:$NG_PORT;
    root $OUT/www;
    location /images/ {
      secure_link \$arg_md5,\$arg_expires;
      secure_link_md5 "\$secure_link_expires\$uri bench-secret";
      if (\$secure_link = "") { return 403; }
      if (\$secure_link = "0") { return 410; }
      limit_req zone=clients burst=1000000 nodelay;
      add_header Cache-Control "public, max-age=31536000, immutable";
    }
  }
}
NGINX
taskset -c 0 nginx -c "$OUT/nginx/nginx.conf" -p "$OUT/nginx" &
PIDS+=($!)
sleep 0.5
NG_URL="http://127.0.0.1:$NG_PORT$URI?md5=$MD5&expires=$EXPIRES"
[[ "$(curl -s -o /dev/null -w '%{http_code}' "$NG_URL")" == 200 ]] || { echo "nginx secure_link check failed" >&2; exit 1; }
[[ "$(curl -s -o /dev/null -w '%{http_code}' "${NG_URL/md5=/md5=x}")" == 403 ]] || { echo "nginx accepted a bad link" >&2; exit 1; }
[[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PG_PORT${SIGNED/benchmark/benchmarx}")" == 403 ]] || { echo "pixelgate accepted a bad signature" >&2; exit 1; }

measure() {  # name url [request header]
  local extra=()
  [[ -n "${3:-}" ]] && extra=(-H "$3")
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s "${extra[@]}" "$2" > /dev/null  # warm-up
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "${extra[@]}" "$2" > "$OUT/$1.wrk"
  local rps p99 non2xx
  rps="$(awk '/Requests\/sec/ {print $2}' "$OUT/$1.wrk")"
  p99="$(awk '$1 == "99%" {print $2}' "$OUT/$1.wrk")"
  non2xx="$(awk '/Non-2xx/ {print $4}' "$OUT/$1.wrk")"
  echo "$rps $p99 ${non2xx:-0}"
}

# Each server's own ETag, so the second case measures signed revalidations
# (304s): there wrk is not the limit, because no body is sent.
PG_ETAG="$(sed -n 's/^ETag: *//ip' "$OUT/first.headers" | tr -d '\r')"
NG_ETAG="$(curl -sI "$NG_URL" | sed -n 's/^ETag: *//ip' | tr -d '\r')"
[[ -n "$PG_ETAG" && -n "$NG_ETAG" ]] || { echo "missing ETag (pixelgate: '$PG_ETAG', nginx: '$NG_ETAG')" >&2; exit 1; }
[[ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $NG_ETAG" "$NG_URL")" == 304 ]] || { echo "nginx returned no 304 for its own ETag" >&2; exit 1; }
[[ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $PG_ETAG" "http://127.0.0.1:$PG_PORT$SIGNED")" == 304 ]] || { echo "pixelgate returned no 304 for its own ETag" >&2; exit 1; }

read -r PG_RPS PG_P99 PG_BAD < <(measure pixelgate "http://127.0.0.1:$PG_PORT$SIGNED")
read -r NG_RPS NG_P99 NG_BAD < <(measure nginx "$NG_URL")
read -r PG304_RPS PG304_P99 PG304_BAD < <(measure pixelgate-304 "http://127.0.0.1:$PG_PORT$SIGNED" "If-None-Match: $PG_ETAG")
read -r NG304_RPS NG304_P99 NG304_BAD < <(measure nginx-304 "$NG_URL" "If-None-Match: $NG_ETAG")
RATIO="$(awk -v a="$PG_RPS" -v b="$NG_RPS" 'BEGIN {printf "%.2f", a / b}')"
RATIO304="$(awk -v a="$PG304_RPS" -v b="$NG304_RPS" 'BEGIN {printf "%.2f", a / b}')"
PG_NAME="pixelgate $("$BIN" version | awk '{print $2}')"
NG_NAME="nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"

echo "| server | check per request | response | requests/s | p99 | non-2xx/3xx |"
echo "|---|---|---|---|---|---|"
echo "| $PG_NAME | HMAC-SHA256 signed URL, token bucket | 200 | $PG_RPS | $PG_P99 | $PG_BAD |"
echo "| $NG_NAME | secure_link (MD5), limit_req | 200 | $NG_RPS | $NG_P99 | $NG_BAD |"
echo "| $PG_NAME | HMAC-SHA256 signed URL, token bucket | 304 | $PG304_RPS | $PG304_P99 | $PG304_BAD |"
echo "| $NG_NAME | secure_link (MD5), limit_req | 304 | $NG304_RPS | $NG304_P99 | $NG304_BAD |"
echo
echo "pixelgate / nginx requests per second: $RATIO for 200s, $RATIO304 for 304s (wrk -t1 -c$CONNECTIONS -d$DURATION, servers on CPU 0, wrk on CPU 1; raw output in $OUT)"
