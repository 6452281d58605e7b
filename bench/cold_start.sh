#!/usr/bin/env bash
# Measures what a worker pool adds, with tests/fakes/a1111-fake.mjs as the
# self-hosted server, everything on 127.0.0.1:
#
#  (a) cold-start overhead: request to instance ready (pixelgate's own
#      measurement, /admin/status cold_starts.last_ms) minus the fake's
#      --startup-delay-ms, over RUNS cold starts. It is split into the fake's
#      own Node.js start-up (its stats file records when the process started
#      and when it listened) and the rest, which is pixelgate's: fork and
#      exec, readiness polling (ready_poll_ms) and the manager's reaction.
#  (b) routing overhead with a warm pool: REQUESTS sequential cache misses
#      each, in turn, to the fake directly, through pixelgate to a plain a1111
#      backend (base_url), and through pixelgate to a warm pool of the same
#      fake. pool minus plain is what the pool's routing adds per request.
#
# Usage: bash bench/cold_start.sh   (RUNS=10, DELAY_MS=500, READY_POLL_MS=200, REQUESTS=300)
# Prints Markdown tables to stdout; logs stay in $OUT.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${PIXELGATE_BIN:-$REPO/build/pixelgate}"
RUNS="${RUNS:-10}"
DELAY_MS="${DELAY_MS:-500}"
READY_POLL_MS="${READY_POLL_MS:-200}"
REQUESTS="${REQUESTS:-300}"
FAKE="$REPO/tests/fakes/a1111-fake.mjs"
OUT="$(mktemp -d /tmp/pixelgate-cold-start-bench.XXXXXX)"
command -v node >/dev/null || { echo "missing node (Node.js 20 or later)" >&2; exit 1; }
[[ -x "$BIN" ]] || { echo "missing $BIN; build it first" >&2; exit 1; }
(( RUNS >= 1 && RUNS <= 100 && REQUESTS >= 10 && REQUESTS <= 5000 )) || { echo "RUNS must be 1..100 and REQUESTS 10..5000" >&2; exit 1; }

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Starts pixelgate with $1 as its configuration and prints its port.
start_pixelgate() {
  local name="$1"
  "$BIN" serve --config "$OUT/$name.toml" > "$OUT/$name.out" 2> "$OUT/$name.err" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q listening "$OUT/$name.out" 2>/dev/null && break; sleep 0.1; done
  local port
  port="$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$OUT/$name.out")"
  [[ -n "$port" ]] || { echo "pixelgate ($name) did not start; see $OUT/$name.err" >&2; exit 1; }
  echo "$port"
}

common_toml() {
  cat <<TOML
[server]
port = 0
threads = 2
[storage]
path = "$OUT/data-$1"
[logging]
access_log = false
level = "warn"
[security]
mode = "open"
[rate_limits]
requests_per_second = 0
generations_per_minute = 0
TOML
}

# (a) Cold starts: scale to zero after 200 ms idle, so every run starts cold.
mkdir -p "$OUT/stats"
{
  common_toml cold
  cat <<TOML
[backends.sd]
type = "a1111"
max_retries = 0
[backends.sd.pool]
command = ["$(command -v node)", "$FAKE", "--port", "{port}", "--startup-delay-ms", "$DELAY_MS", "--stats-file", "$OUT/stats/fake-{port}.json"]
ready_poll_ms = $READY_POLL_MS
idle_timeout_ms = 200
stop_grace_ms = 2000
start_timeout_ms = 30000
TOML
} > "$OUT/cold.toml"
COLD_PORT="$(start_pixelgate cold)"

# (b) Warm routing: a fake started here for the direct and plain paths, and a warm pool.
node "$FAKE" --port 0 > "$OUT/fake.out" 2> "$OUT/fake.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q port "$OUT/fake.out" 2>/dev/null && break; sleep 0.1; done
FAKE_PORT="$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$OUT/fake.out")"
[[ -n "$FAKE_PORT" ]] || { echo "the fake did not start; see $OUT/fake.err" >&2; exit 1; }
{
  common_toml warm
  cat <<TOML
[backends.plain]
type = "a1111"
base_url = "http://127.0.0.1:$FAKE_PORT"
max_retries = 0
[backends.pool]
type = "a1111"
max_retries = 0
[backends.pool.pool]
command = ["$(command -v node)", "$FAKE", "--port", "{port}"]
min_instances = 1
start_timeout_ms = 30000
[templates.plain]
backend = "plain"
[templates.pool]
backend = "pool"
TOML
} > "$OUT/warm.toml"
WARM_PORT="$(start_pixelgate warm)"

timeout 600 node --input-type=module - "$COLD_PORT" "$WARM_PORT" "$FAKE_PORT" "$OUT/stats" "$RUNS" "$DELAY_MS" "$REQUESTS" <<'NODE'
import { readdirSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';

const [coldPort, warmPort, fakePort, statsDir, runs, delayMs, requests] = process.argv.slice(2).map((v, i) => (i === 3 ? v : Number(v)));
const agent = new (await import('node:http')).Agent({ keepAlive: true, maxSockets: 1 });

function call(port, path, { method = 'GET', body } = {}) {
  const started = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, agent, headers: body ? { 'content-type': 'application/json' } : {} }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks), ms: Number(process.hrtime.bigint() - started) / 1e6 }));
    });
    req.setTimeout(60_000, () => req.destroy(new Error(`${path} timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
async function poolStatus(port, name) {
  return JSON.parse((await call(port, '/admin/status')).body).pools[name];
}
function summary(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return { mean, p50: at(0.5), p90: at(0.9), p99: at(0.99), min: sorted[0], max: sorted.at(-1) };
}
const f = (ms) => ms.toFixed(1);

// (a)
const rows = [];
for (let run = 1; run <= runs; run++) {
  for (let i = 0; i < 200; i++) {
    if ((await poolStatus(coldPort, 'sd')).instance_list.length === 0) break;
    await sleep(50);
  }
  const response = await call(coldPort, `/generate-image?prompt=cold+run+${run}+${Date.now()}&width=64&height=64`);
  if (response.status !== 200) throw new Error(`cold run ${run}: HTTP ${response.status} ${response.body}`);
  const status = await poolStatus(coldPort, 'sd');
  const pid = status.instance_list[0]?.pid;
  const file = readdirSync(statsDir).map((name) => JSON.parse(readFileSync(join(statsDir, name), 'utf8'))).find((s) => s.pid === pid);
  const childUp = file.listening_at_ms - file.time_origin_ms; // Node start-up plus the startup delay
  rows.push({ run, request: response.ms, ready: status.cold_starts.last_ms, node: childUp - delayMs, pixelgate: status.cold_starts.last_ms - childUp });
}
console.log(`### (a) Cold starts: ${runs} runs, --startup-delay-ms ${delayMs}\n`);
console.log('| run | request total ms | request to ready ms | overhead (ready − delay) ms | of which Node.js start-up ms | of which pixelgate ms |');
console.log('|---:|---:|---:|---:|---:|---:|');
for (const r of rows) console.log(`| ${r.run} | ${f(r.request)} | ${r.ready} | ${r.ready - delayMs} | ${f(r.node)} | ${f(r.pixelgate)} |`);
const over = summary(rows.map((r) => r.ready - delayMs));
const ours = summary(rows.map((r) => r.pixelgate));
console.log(`\noverhead (ready − delay): mean ${f(over.mean)} ms, p50 ${f(over.p50)}, min ${f(over.min)}, max ${f(over.max)}`);
console.log(`pixelgate part: mean ${f(ours.mean)} ms, p50 ${f(ours.p50)}, min ${f(ours.min)}, max ${f(ours.max)}\n`);

// (b)
for (let i = 0; i < 100; i++) {
  if ((await poolStatus(warmPort, 'pool')).instances.ready === 1) break;
  await sleep(100);
}
const times = { direct: [], plain: [], pool: [] };
const warmup = 20;
for (let i = 0; i < requests + warmup; i++) {
  const prompt = `route ${i} ${Date.now()}`;
  const direct = await call(fakePort, '/sdapi/v1/txt2img', { method: 'POST', body: JSON.stringify({ prompt, width: 64, height: 64, seed: i, steps: 20, cfg_scale: 7, sampler_name: 'Euler a', batch_size: 1, n_iter: 1 }) });
  const plain = await call(warmPort, `/v1/images/plain?prompt=${encodeURIComponent(prompt)}&width=64&height=64`);
  const pool = await call(warmPort, `/v1/images/pool?prompt=${encodeURIComponent(prompt)}&width=64&height=64`);
  for (const [name, r] of Object.entries({ direct, plain, pool })) {
    if (r.status !== 200) throw new Error(`${name} request ${i}: HTTP ${r.status} ${r.body}`);
    if (i >= warmup) times[name].push(r.ms);
  }
}
console.log(`### (b) Warm routing: ${requests} sequential cache misses per path (after ${warmup} warm-up), one keep-alive connection\n`);
console.log('| path | mean ms | p50 | p90 | p99 |');
console.log('|---|---:|---:|---:|---:|');
const stats = Object.fromEntries(Object.entries(times).map(([name, values]) => [name, summary(values)]));
const labels = { direct: 'fake directly (POST txt2img)', plain: 'pixelgate → a1111 backend (base_url)', pool: 'pixelgate → warm pool' };
for (const [name, s] of Object.entries(stats)) console.log(`| ${labels[name]} | ${f(s.mean)} | ${f(s.p50)} | ${f(s.p90)} | ${f(s.p99)} |`);
console.log(`\npool − plain: mean ${f(stats.pool.mean - stats.plain.mean)} ms, p50 ${f(stats.pool.p50 - stats.plain.p50)} ms`);
console.log(`plain − direct (pixelgate's miss path): mean ${f(stats.plain.mean - stats.direct.mean)} ms, p50 ${f(stats.plain.p50 - stats.direct.p50)} ms`);
agent.destroy();
NODE
echo
echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(uname -sr); logs in $OUT"
