#!/usr/bin/env bash
# Measures how fast pixelgate serves one already-stored image, next to nginx
# serving a copy of the same file, with wrk over loopback.
#
# Cases: 200 responses and 304 revalidations (If-None-Match with the server's
# own ETag) for /images/<key>.png on both servers, plus pixelgate's
# /generate-image URL, which resolves the query and computes the key on every
# request before it reaches the in-memory hot cache.
#
# Both servers run side by side and the cases alternate between them, round
# after round (ROUNDS, default 5), with the order flipped every round. A
# virtual machine's speed can change by tens of percent within minutes, so
# measuring all of one server first and then all of the other would compare
# two different machines. The summary gives the median of the rounds for each case
# and counts the rounds each server won.
#
# Variants:
#   1t  pixelgate `threads = 1` and nginx `worker_processes 1`, both pinned to
#       CPU 0 with taskset; wrk pinned to CPU 1.
#   2t  pixelgate `threads = 2` and nginx `worker_processes 2`; nothing is
#       pinned, so servers and wrk share both CPUs.
#
# Usage: bash bench/cache_hits.sh
# Writes a Markdown report to stdout and progress to stderr. Raw wrk output,
# configs and server logs stay in $BENCH_OUT (default: a new /tmp directory).
#
# Settings, from the environment:
#   DURATION (10s), WARMUP (2s), ROUNDS (5), CONNECTIONS (64), WRK_THREADS (1),
#   PIXELGATE_BIN (build/pixelgate), QUIET_WAIT_MAX_S (1200), MAX_ATTEMPTS (5),
#   OTHER_CPU_MAX (20), VARIANTS ("1t 2t").
#
# Before each measured run the script waits (15 s polls, QUIET_WAIT_MAX_S in
# all) until no test suite, build, fuzzer or other pixelgate server is running
# and other processes use at most OTHER_CPU_MAX percent of a core. It measures
# again, up to MAX_ATTEMPTS times, when one was found right after the run or
# when processes other than the server and wrk used more than OTHER_CPU_MAX
# percent of a core during it.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-2s}"
ROUNDS="${ROUNDS:-5}"
CONNECTIONS="${CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-1}"
PIXELGATE_BIN="${PIXELGATE_BIN:-$REPO/build/pixelgate}"
QUIET_WAIT_MAX_S="${QUIET_WAIT_MAX_S:-1200}"
MAX_ATTEMPTS="${MAX_ATTEMPTS:-5}"
OTHER_CPU_MAX="${OTHER_CPU_MAX:-20}"
VARIANTS="${VARIANTS:-1t 2t}"
PROMPT_QUERY="prompt=benchmark&width=1024&height=1024"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in wrk nginx curl taskset ss awk; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install -y nginx-light wrk)"
done
[[ -x "$PIXELGATE_BIN" ]] || die "$PIXELGATE_BIN is missing; build it with: ninja -C build -j2 pixelgate"
(( $(nproc) >= 2 )) || die "the pinned variant needs at least 2 CPUs (server on CPU 0, wrk on CPU 1)"

OUT="${BENCH_OUT:-$(mktemp -d /tmp/pixelgate-bench.XXXXXX)}"
WORK="$OUT/work"
mkdir -p "$OUT/raw" "$WORK"
CLK_TCK="$(getconf CLK_TCK)"

PIXELGATE_PID=""
NGINX_PID=""

# Sends SIGTERM to PID, waits up to 10 s for it to exit, then sends SIGKILL,
# so that a server that hangs in shutdown cannot stall the script.
stop_process() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "warning: pid $pid did not exit within 10 s of SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_pixelgate() {
  if [[ -n "$PIXELGATE_PID" ]]; then
    stop_process "$PIXELGATE_PID"
    PIXELGATE_PID=""
  fi
}

stop_nginx() {
  if [[ -n "$NGINX_PID" ]]; then
    # SIGTERM is nginx's fast shutdown: the master stops its workers, then exits.
    stop_process "$NGINX_PID"
    NGINX_PID=""
  fi
}

cleanup() {
  stop_pixelgate
  stop_nginx
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every command that talks to a server is recorded here for the report.
COMMANDS=()
record() { COMMANDS+=("$*"); }

# --- Quiet machine -----------------------------------------------------------

# Lists processes that would compete for the 2 CPUs: test suites, builds,
# fuzzers and pixelgate servers other than this script's own. Zombies use no
# CPU and are left out.
busy_processes() {
  {
    pgrep -af "node --test" || true
    pgrep -ax node || true
    pgrep -af pixelgate_unit_tests || true
    pgrep -ax ninja || true
    pgrep -ax ctest || true
    pgrep -ax cc1plus || true
    pgrep -af _fuzzer || true
    pgrep -af "pixelgate serve" || true
  } | awk -v own="${PIXELGATE_PID:-none}" '$1 != own && !/<defunct>$/' | sort -u -n
}

# Prints the percentage of one core that all processes used over one second.
# Called while no load runs, so it measures everyone else.
idle_machine_cpu() {
  local before after
  before="$(machine_busy_ticks)"
  sleep 1
  after="$(machine_busy_ticks)"
  echo $(((after - before) * 100 / CLK_TCK))
}

# Waits until busy_processes lists nothing and other processes use at most
# OTHER_CPU_MAX percent of a core, polling every 15 s. All waits in one run
# share a budget of QUIET_WAIT_MAX_S seconds. Once it is spent, the run goes
# on and the report states that the machine was busy.
QUIET_WAITED=0
QUIET_GAVE_UP=""
wait_for_quiet() {
  local busy
  while :; do
    busy="$(busy_processes)"
    if [[ -z "$busy" ]]; then
      local used
      used="$(idle_machine_cpu)"
      (( used <= OTHER_CPU_MAX )) && return 0
      busy="no listed process, but the CPUs were ${used}% busy: $(top -b -n 1 -o %CPU | sed -n 8,9p | awk '{print $1, $9 "%", $12}' | tr '\n' ' ')"
    fi
    if (( QUIET_WAITED >= QUIET_WAIT_MAX_S )); then
      [[ -z "$QUIET_GAVE_UP" ]] && log "still busy after ${QUIET_WAITED} s; measuring anyway"
      QUIET_GAVE_UP=yes
      return 0
    fi
    log "machine busy, waiting 15 s: $(printf '%s' "$busy" | cut -c1-120 | tr '\n' ';')"
    sleep 15
    QUIET_WAITED=$((QUIET_WAITED + 15))
  done
}

# Prints the user, nice and system clock ticks of all CPUs together, from
# /proc/stat. Interrupt and softirq time are left out, so that loopback packet
# processing, which the kernel may account there, does not count as "other".
machine_busy_ticks() {
  awk '$1 == "cpu" { print $2 + $3 + $4 }' /proc/stat
}

# --- Measurement helpers ----------------------------------------------------

# Prints user+system clock ticks used so far by the given processes (all of
# their threads).
cpu_ticks() {
  local total=0 pid stat fields
  for pid in "$@"; do
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || continue
    # The command name may contain spaces, so split after its closing ')'.
    read -r -a fields <<<"${stat##*) }"
    total=$((total + fields[11] + fields[12]))
  done
  echo "$total"
}

server_pids() {
  if [[ "$1" == pixelgate ]]; then
    echo "$PIXELGATE_PID"
  else
    echo "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true)
  fi
}

# Converts a wrk duration ("812.00us", "1.23ms", "2.00s") to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
    printf "%.2f", n }'
}

# Converts a wrk byte count ("8.91GB", "512.00KB") to bytes.
to_bytes() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /TB$/) n *= 1024^4; else if (v ~ /GB$/) n *= 1024^3; else if (v ~ /MB$/) n *= 1024^2; else if (v ~ /KB$/) n *= 1024
    printf "%.0f", n }'
}

# Stops the run with the server's log when the server under test has exited,
# for example because another process sent it a signal.
ensure_server_running() {
  if [[ "$1" == pixelgate ]]; then
    kill -0 "$PIXELGATE_PID" 2>/dev/null && return
    die "pixelgate (pid $PIXELGATE_PID) is no longer running; last log lines:
$(tail -n 5 "$WORK"/pixelgate-*t.stderr)"
  fi
  kill -0 "$NGINX_PID" 2>/dev/null && return
  die "nginx (pid $NGINX_PID) is no longer running; see $WORK/nginx-*/error.log"
}

ROWS=()   # variant|server|case|path|status|rps|p99_ms|bytes|server_cpu|wrk_cpu|other_cpu|quiet|attempt|errors|round

# run_case ROUND VARIANT SERVER CASE URL ETAG WRK_CPUS
# ETAG empty: plain GET expecting 200. Otherwise sends If-None-Match: ETAG
# and expects 304. WRK_CPUS empty: wrk is not pinned.
run_case() {
  local round="$1" variant="$2" server="$3" case_name="$4" url="$5" etag="$6" wrk_cpus="$7"
  local expected=200 name="${variant}-${server}-${case_name}-round${round}"
  local -a headers=() pin=()
  if [[ -n "$etag" ]]; then
    headers=(-H "If-None-Match: $etag")
    expected=304
  fi
  [[ -n "$wrk_cpus" ]] && pin=(taskset -c "$wrk_cpus")

  local status
  status="$(curl -s -o /dev/null -w '%{http_code}' "${headers[@]}" "$url")"
  [[ "$status" == "$expected" ]] || log "warning: $name: curl got HTTP $status, expected $expected"

  local -a wrk_base=(wrk "-t$WRK_THREADS" "-c$CONNECTIONS" --latency "${headers[@]}")
  local raw="$OUT/raw/$name.txt" attempt quiet
  local pids before after start end machine_before machine_after
  local wall server_cpu wrk_cpu machine_cpu other_cpu
  for attempt in $(seq "$MAX_ATTEMPTS"); do
    wait_for_quiet
    quiet=yes
    [[ -n "$(busy_processes)" ]] && quiet=no
    ensure_server_running "$server"

    log "$name: warm-up $WARMUP"
    "${pin[@]}" "${wrk_base[@]}" "-d$WARMUP" "$url" >"$OUT/raw/$name.warmup.txt" 2>&1 ||
      die "$name: wrk warm-up failed: $(cat "$OUT/raw/$name.warmup.txt")"

    log "$name: measuring $DURATION (attempt $attempt)"
    pids="$(server_pids "$server")"
    machine_before="$(machine_busy_ticks)"
    # shellcheck disable=SC2086  # pids is a space-separated list
    before="$(cpu_ticks $pids)"
    start="$(date +%s.%N)"
    # `times` in the subshell prints the CPU time of its children, which is wrk
    # (taskset replaces itself with wrk).
    ( "${pin[@]}" "${wrk_base[@]}" "-d$DURATION" "$url" >"$raw" 2>&1; status=$?; times >"$OUT/raw/$name.times"; exit $status ) ||
      die "$name: wrk failed: $(cat "$raw")"
    end="$(date +%s.%N)"
    # shellcheck disable=SC2086
    after="$(cpu_ticks $pids)"
    machine_after="$(machine_busy_ticks)"
    [[ -n "$(busy_processes)" ]] && quiet=no
    ensure_server_running "$server"

    wall="$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')"
    server_cpu="$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v w="$wall" 'BEGIN { printf "%.0f", 100 * t / hz / w }')"
    machine_cpu="$(awk -v t=$((machine_after - machine_before)) -v hz="$CLK_TCK" -v w="$wall" 'BEGIN { printf "%.0f", 100 * t / hz / w }')"
    # The second line of `times` is the children's user and system time, e.g. "0m1.234s 0m2.345s".
    wrk_cpu="$(awk -v w="$wall" 'NR == 2 {
        split($1, u, /[ms]/); split($2, s, /[ms]/)
        printf "%.0f", 100 * (u[1] * 60 + u[2] + s[1] * 60 + s[2]) / w }' "$OUT/raw/$name.times")"
    other_cpu=$((machine_cpu - server_cpu - wrk_cpu))
    (( other_cpu < 0 )) && other_cpu=0
    (( other_cpu > OTHER_CPU_MAX )) && quiet=no

    [[ "$quiet" == yes || -n "$QUIET_GAVE_UP" || "$attempt" == "$MAX_ATTEMPTS" ]] && break
    log "$name: other processes ran during the measurement (other CPU $other_cpu%); measuring again (kept as $name.attempt$attempt.txt)"
    mv "$raw" "$OUT/raw/$name.attempt$attempt.txt"
  done
  local pretty_headers=""
  [[ -n "$etag" ]] && pretty_headers=" -H 'If-None-Match: $etag'"
  (( round == 1 )) && record "${pin[*]}${pin:+ }wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION --latency$pretty_headers '$url'"

  local rps p99 requests read_text bytes socket_errors non2xx errors
  rps="$(awk '/^Requests\/sec:/ {print $2}' "$raw")"
  p99="$(awk '$1 == "99%" {print $2}' "$raw")"
  requests="$(awk '/ requests in / {print $1}' "$raw")"
  read_text="$(awk '/ requests in / {print $5}' "$raw")"
  [[ -n "$rps" && -n "$p99" && -n "$requests" ]] || die "$name: could not parse wrk output in $raw"
  bytes="$(awk -v b="$(to_bytes "$read_text")" -v n="$requests" 'BEGIN { printf "%.0f", (n > 0 ? b / n : 0) }')"
  socket_errors="$(awk -F': ' '/Socket errors:/ {print $2}' "$raw")"
  non2xx="$(awk -F': ' '/Non-2xx or 3xx responses:/ {print $2}' "$raw")"
  errors="none"
  if [[ -n "$socket_errors" || -n "$non2xx" ]]; then
    errors="${socket_errors:+socket: $socket_errors}${socket_errors:+${non2xx:+; }}${non2xx:+non-2xx/3xx: $non2xx}"
    log "warning: $name: $errors"
  fi

  ROWS+=("$variant|$server|$case_name|$(printf '%s' "${url#http://127.0.0.1:*/}" | sed 's|^|/|')|$status|$rps|$(to_ms "$p99")|$bytes|$server_cpu|$wrk_cpu|$other_cpu|$quiet|$attempt|$errors|$round")
  log "$name: $rps req/s, p99 $p99, HTTP $status, server CPU $server_cpu%, wrk CPU $wrk_cpu%, other CPU $other_cpu%, quiet: $quiet, errors: $errors"
}

# --- Servers -----------------------------------------------------------------

DATA_DIR="$WORK/pixelgate-data"
KEY=""

# start_pixelgate THREADS CPUS; CPUS empty: not pinned. Sets PIXELGATE_PORT.
start_pixelgate() {
  local threads="$1" cpus="$2"
  local config="$WORK/pixelgate-${threads}t.toml"
  cat >"$config" <<EOF
[server]
host = "127.0.0.1"
port = 0
threads = $threads

[storage]
path = "$DATA_DIR"

[logging]
access_log = false

# Anyone may request images, as nginx serves anyone; stored images need no
# signature in any mode.
[security]
mode = "open"

# The per-address limits (100 requests/s by default) would reject most of the
# load with 429, because every request comes from 127.0.0.1. 0 turns them off.
[rate_limits]
requests_per_second = 0
generations_per_minute = 0
EOF
  local -a pin=() unset_env=()
  [[ -n "$cpus" ]] && pin=(taskset -c "$cpus")
  # Keep the embedded placeholder backend and the settings above: OPENAI_* would
  # select the OpenAI backend and PIXELGATE_* would override the file.
  local variable
  for variable in $(compgen -e); do
    [[ "$variable" == OPENAI_* || "$variable" == PIXELGATE_* ]] && unset_env+=(-u "$variable")
  done
  local stdout="$WORK/pixelgate-${threads}t.stdout" stderr="$WORK/pixelgate-${threads}t.stderr"
  record "${pin[*]}${pin:+ }$WORK/pixelgate-bench serve --config $config"
  env "${unset_env[@]}" "${pin[@]}" "$WORK/pixelgate-bench" serve --config "$config" >"$stdout" 2>"$stderr" &
  PIXELGATE_PID=$!
  local i
  PIXELGATE_PORT=""
  for i in $(seq 100); do
    PIXELGATE_PORT="$(grep -o '"listening":{[^}]*"port":[0-9]*' "$stdout" 2>/dev/null | grep -o '[0-9]*$' || true)"
    [[ -n "$PIXELGATE_PORT" ]] && break
    kill -0 "$PIXELGATE_PID" 2>/dev/null || { cat "$stderr" >&2; die "pixelgate exited during startup"; }
    sleep 0.1
  done
  [[ -n "$PIXELGATE_PORT" ]] || die "pixelgate did not print its port within 10 s (see $stderr)"
  log "pixelgate ($threads threads) listening on port $PIXELGATE_PORT, pid $PIXELGATE_PID"
}

# Generates (first time) or loads (later starts) the benchmark image and checks
# that it is in pixelgate's hot cache. Sets KEY.
prepare_image() {
  local url="http://127.0.0.1:$PIXELGATE_PORT/generate-image?$PROMPT_QUERY"
  local headers="$WORK/generate.headers"
  record "curl -s -D - -o image.png '$url'"
  curl -sf -D "$headers" -o "$WORK/generated.png" "$url" || die "GET $url failed"
  local key warning
  key="$(awk -F': ' 'tolower($1) == "x-pixelgate-key" {print $2}' "$headers" | tr -d '\r')"
  warning="$(awk -F': ' 'tolower($1) == "x-pixelgate-warning" {print $2}' "$headers" | tr -d '\r')"
  [[ "$key" =~ ^[0-9a-f]{64}$ ]] || die "no X-Pixelgate-Key in the /generate-image response (see $headers)"
  [[ -n "$warning" ]] || log "warning: no X-Pixelgate-Warning header; is the placeholder backend in use?"
  [[ -z "$KEY" || "$KEY" == "$key" ]] || die "the key changed between server starts: $KEY, then $key"
  KEY="$key"
  local cache
  cache="$(curl -s -o /dev/null -D - "http://127.0.0.1:$PIXELGATE_PORT/images/$KEY.png" |
    awk -F': ' 'tolower($1) == "x-pixelgate-cache" {print $2}' | tr -d '\r')"
  [[ "$cache" == hit ]] || die "/images/$KEY.png returned X-Pixelgate-Cache: '$cache', expected hit"
}

free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 40000))
    [[ -z "$(ss -Htln "( sport = :$port )")" ]] && { echo "$port"; return; }
  done
  die "found no free loopback port"
}

# start_nginx WORKERS CPUS; CPUS empty: not pinned. Sets NGINX_PORT.
start_nginx() {
  local workers="$1" cpus="$2"
  local prefix="$WORK/nginx-${workers}w"
  mkdir -p "$prefix/temp" "$WORK/www/images"
  local object="$DATA_DIR/objects/${KEY:0:2}/${KEY:2:2}/$KEY"
  [[ -f "$object" ]] || die "stored image not found at $object"
  cp "$object" "$WORK/www/images/$KEY.png"
  # Workers of a root master switch to the `user` directive's account; naming
  # the current user keeps every nginx process running as the caller. A non-root
  # master ignores the directive with a warning in the error log.
  local user_line="user $(id -un) $(id -gn);"
  local attempt
  for attempt in 1 2 3 4 5; do
    NGINX_PORT="$(free_port)"
    cat >"$prefix/nginx.conf" <<EOF
$user_line
daemon off;
worker_processes $workers;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events { worker_connections 4096; }
http {
  types { image/png png; }
  default_type application/octet-stream;
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  open_file_cache max=1000 inactive=60s;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path $prefix/temp/client_body;
  proxy_temp_path $prefix/temp/proxy;
  fastcgi_temp_path $prefix/temp/fastcgi;
  uwsgi_temp_path $prefix/temp/uwsgi;
  scgi_temp_path $prefix/temp/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $WORK/www;
    etag on;
    location /images/ {
      add_header Cache-Control "public, max-age=31536000, immutable";
    }
  }
}
EOF
    local -a pin=()
    [[ -n "$cpus" ]] && pin=(taskset -c "$cpus")
    nginx -t -q -p "$prefix/" -e "$prefix/error.log" -c "$prefix/nginx.conf" || die "nginx rejected $prefix/nginx.conf"
    record "${pin[*]}${pin:+ }nginx -p $prefix/ -e $prefix/error.log -c $prefix/nginx.conf"
    "${pin[@]}" nginx -p "$prefix/" -e "$prefix/error.log" -c "$prefix/nginx.conf" &
    NGINX_PID=$!
    local i
    for i in $(seq 50); do
      if curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/images/$KEY.png"; then
        log "nginx ($workers workers) listening on port $NGINX_PORT, master pid $NGINX_PID"
        return
      fi
      kill -0 "$NGINX_PID" 2>/dev/null || break
      sleep 0.1
    done
    log "nginx did not start on port $NGINX_PORT (attempt $attempt); see $prefix/error.log"
    stop_nginx
  done
  die "nginx failed to start"
}

nginx_etag() {
  curl -sI "http://127.0.0.1:$NGINX_PORT/images/$KEY.png" |
    awk -F': ' 'tolower($1) == "etag" {print $2}' | tr -d '\r'
}

# --- Report helpers --------------------------------------------------------

field() { printf '%s' "$1" | cut -d'|' -f"$2"; }

# round_values VARIANT SERVER CASE FIELD: prints FIELD of every round's row, one per line.
round_values() {
  local row
  for row in "${ROWS[@]}"; do
    [[ "$(field "$row" 1)|$(field "$row" 2)|$(field "$row" 3)" == "$1|$2|$3" ]] && field "$row" "$4"
  done
  return 0
}

# Prints the median of the numbers on standard input (the mean of the two
# middle ones for an even count).
median() {
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) exit 1
    if (NR % 2) printf "%s", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# --- Run ---------------------------------------------------------------------

# Everything that runs is inside main, so bash has parsed the whole file before
# the first measurement and an edit to this file during a run cannot change it.
main() {
  wait_for_quiet
  QUIET_AT_START="$QUIET_WAITED"
  # Run a private copy so that a rebuild of build/pixelgate during the run cannot
  # mix two binaries in one report. Its name also keeps it out of reach of a
  # `pkill -x pixelgate` in someone else's test scripts.
  cp "$PIXELGATE_BIN" "$WORK/pixelgate-bench"
  PIXELGATE_SHA="$(sha256sum "$WORK/pixelgate-bench" | cut -c1-12)"
  # Nothing below writes to the current directory, but keep stray output out of
  # the repository all the same.
  cd "$WORK"
  LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
  STARTED_AT="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

  for variant in $VARIANTS; do
    case "$variant" in
      1t) threads=1; server_cpus=0; wrk_cpus=1 ;;
      2t) threads=2; server_cpus=""; wrk_cpus="" ;;
      *) die "unknown variant $variant (use 1t or 2t)" ;;
    esac

    # Both servers stay up for the whole variant. Only the one under load
    # uses the CPU.
    start_pixelgate "$threads" "$server_cpus"
    prepare_image
    start_nginx "$threads" "$server_cpus"
    local pg_base="http://127.0.0.1:$PIXELGATE_PORT" ng_base="http://127.0.0.1:$NGINX_PORT"
    local pg_etag="\"$KEY\"" ng_etag
    ng_etag="$(nginx_etag)"
    [[ -n "$ng_etag" ]] || die "nginx sent no ETag for /images/$KEY.png; see $WORK/nginx-*/error.log"
    record "curl -sI '$ng_base/images/$KEY.png'   # nginx ETag: $ng_etag"

    local round status server pg_tag ng_tag
    local -a order
    for round in $(seq "$ROUNDS"); do
      # Odd rounds start with pixelgate, even rounds with nginx.
      order=(pixelgate nginx)
      (( round % 2 == 0 )) && order=(nginx pixelgate)
      for status in 200 304; do
        pg_tag=""
        ng_tag=""
        [[ "$status" == 304 ]] && { pg_tag="$pg_etag"; ng_tag="$ng_etag"; }
        for server in "${order[@]}"; do
          if [[ "$server" == nginx ]]; then
            run_case "$round" "$variant" nginx "images-$status" "$ng_base/images/$KEY.png" "$ng_tag" "$wrk_cpus"
          else
            run_case "$round" "$variant" pixelgate "images-$status" "$pg_base/images/$KEY.png" "$pg_tag" "$wrk_cpus"
            run_case "$round" "$variant" pixelgate "generate-$status" "$pg_base/generate-image?$PROMPT_QUERY" \
              "$pg_tag" "$wrk_cpus"
          fi
        done
      done
    done
    stop_pixelgate
    stop_nginx
  done

  LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
  QUIET_NOTE="waited $QUIET_AT_START s for a quiet machine before the first run and $QUIET_WAITED s in all"
  [[ -n "$QUIET_GAVE_UP" ]] && QUIET_NOTE="$QUIET_NOTE; BUSY: the wait budget ran out and some runs were measured with other processes active"

  # Report.
  commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  dirty=""
  [[ -n "$(git -C "$REPO" status --porcelain 2>/dev/null)" ]] && dirty=" (working tree has uncommitted changes)"

  cat <<EOF
# pixelgate vs nginx: serving one stored image

Started $STARTED_AT. Raw wrk output: \`$OUT/raw\`.

## Machine

- CPUs (\`nproc\`): $(nproc)
- CPU model (\`lscpu\`): $(lscpu | awk -F': *' '/^Model name/ {print $2; exit}')
- Kernel: $(uname -r)
- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')
- wrk: $(wrk -v 2>&1 | head -n 1 | awk '{print $1, $2}')
- pixelgate: $("$WORK/pixelgate-bench" version 2>&1 | head -n 1), repository at commit $commit$dirty, copy of $PIXELGATE_BIN with sha256 $PIXELGATE_SHA…
- Image: $(stat -c %s "$WORK/www/images/$KEY.png") bytes PNG, key \`$KEY\`
- Machine state: $QUIET_NOTE. Load average before: $LOAD_BEFORE, after: $LOAD_AFTER.

## Settings

wrk: $WRK_THREADS thread, $CONNECTIONS keep-alive connections, $WARMUP warm-up run (discarded), then $DURATION measured.
Rounds: $ROUNDS; in each, every case runs once on each server, pixelgate first in odd rounds and nginx first in even ones.
Variant 1t: pixelgate \`threads = 1\` / nginx \`worker_processes 1\`, server pinned to CPU 0 and wrk to CPU 1 with \`taskset\`.
Variant 2t: pixelgate \`threads = 2\` / nginx \`worker_processes 2\`, nothing pinned.
Server CPU and wrk CPU are user+system time over the measured run, in percent of one core. Other CPU is the user+system
time of both cores (from /proc/stat) minus those two, so it shows any other process, including short-lived ones. Quiet:
no test suite, build or other pixelgate server was running just before and just after the run, and other CPU was at most
$OTHER_CPU_MAX%. A run that was not quiet was repeated, up to $MAX_ATTEMPTS attempts; the table shows the last attempt.

## Results

In the order measured.

| Variant | Round | Server | Case | Path | HTTP | Requests/s | p99 (ms) | Bytes/response | Server CPU % | wrk CPU % | Other CPU % | Quiet | Attempt | Errors |
|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|
EOF
  for row in "${ROWS[@]}"; do
    IFS='|' read -r v s c p st rps p99 bytes scpu wcpu ocpu quiet attempt err round <<<"$row"
    short_path="$p"
    [[ ${#short_path} -gt 40 ]] && short_path="${short_path:0:16}…${short_path: -12}"
    printf '| %s | %s | %s | %s | `%s` | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
      "$v" "$round" "$s" "$c" "$short_path" "$st" "$rps" "$p99" "$bytes" "$scpu" "$wcpu" "$ocpu" "$quiet" "$attempt" "$err"
  done

  cat <<EOF

## pixelgate / nginx

Both pixelgate routes are compared with nginx serving the file at /images/. Requests/s and p99 are medians over
the $ROUNDS rounds, and the ratios are ratios of those medians. "Rounds won" compares the two servers within each
round: rounds where pixelgate served at least as many requests per second, and rounds where its p99 was at most
nginx's. "Quiet runs" counts the runs of both servers that were quiet.

| Variant | pixelgate case | pixelgate req/s | nginx req/s | req/s ratio | pixelgate p99 (ms) | nginx p99 (ms) | p99 ratio | Rounds won, req/s | Rounds won, p99 | Quiet runs |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
  local pg_rps ng_rps pg_p99 ng_p99 pg_quiet ng_quiet
  for variant in $VARIANTS; do
    for case_name in images-200 generate-200 images-304 generate-304; do
      pg_rps="$(round_values "$variant" pixelgate "$case_name" 6)"
      ng_rps="$(round_values "$variant" nginx "images-${case_name##*-}" 6)"
      [[ -n "$pg_rps" && -n "$ng_rps" ]] || continue
      pg_p99="$(round_values "$variant" pixelgate "$case_name" 7)"
      ng_p99="$(round_values "$variant" nginx "images-${case_name##*-}" 7)"
      pg_quiet="$(round_values "$variant" pixelgate "$case_name" 12 | grep -c '^yes$' || true)"
      ng_quiet="$(round_values "$variant" nginx "images-${case_name##*-}" 12 | grep -c '^yes$' || true)"
      # Rounds are listed in the same order for both servers.
      awk -v v="$variant" -v c="$case_name" \
        -v pr="$(median <<<"$pg_rps")" -v nr="$(median <<<"$ng_rps")" \
        -v pl="$(median <<<"$pg_p99")" -v nl="$(median <<<"$ng_p99")" \
        -v rps_won="$(paste -d' ' <(echo "$pg_rps") <(echo "$ng_rps") | awk '$1 >= $2 { n++ } END { printf "%d of %d", n, NR }')" \
        -v p99_won="$(paste -d' ' <(echo "$pg_p99") <(echo "$ng_p99") | awk '$1 <= $2 { n++ } END { printf "%d of %d", n, NR }')" \
        -v quiet="$((pg_quiet + ng_quiet)) of $(($(wc -l <<<"$pg_rps") + $(wc -l <<<"$ng_rps")))" 'BEGIN {
          printf "| %s | %s | %s | %s | %.2f | %s | %s | %s | %s | %s | %s |\n", v, c, pr, nr, pr / nr, pl, nl,
            (nl > 0 ? sprintf("%.2f", pl / nl) : "n/a"), rps_won, p99_won, quiet }'
    done
  done

  echo
  echo "## Commands"
  echo
  echo '```'
  printf '%s\n' "${COMMANDS[@]}"
  echo '```'
  log "done; raw output in $OUT"
}

main "$@"
exit
