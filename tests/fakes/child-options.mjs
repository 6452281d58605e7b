// Command-line options that the self-hosted fakes share when pixelgate's worker pools start
// them as child processes, and the stats file through which tests watch such a child.

import { renameSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

const MAX_DELAY_MS = 10 * 60 * 1000;
const HANG_MODES = ['start', 'requests'];
const COMMON_USAGE = '--port N, --startup-delay-ms N, --latency-ms N, --crash-after N, --hang start|requests, --stats-file PATH';

function integerOption(name, text, min, max) {
  if (!/^\d+$/.test(text ?? '') || Number(text) < min || Number(text) > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(text)}`);
  }
  return Number(text);
}

/**
 * Parses the shared options; any other argument is an error that lists them with
 * `extraUsage`, the fake's own options. Returns { port, startupDelayMs, latencyMs,
 * crashAfter, hang, statsFile }.
 */
export function parseChildOptions(argv, extraUsage = '') {
  const options = { port: 0, startupDelayMs: 0, latencyMs: 0, crashAfter: null, hang: null, statsFile: null };
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i];
    const value = argv[i + 1];
    if (name === '--port') options.port = integerOption(name, value, 0, 65535);
    else if (name === '--startup-delay-ms') options.startupDelayMs = integerOption(name, value, 0, MAX_DELAY_MS);
    else if (name === '--latency-ms') options.latencyMs = integerOption(name, value, 0, MAX_DELAY_MS);
    else if (name === '--crash-after') options.crashAfter = integerOption(name, value, 1, 1_000_000);
    else if (name === '--hang' && HANG_MODES.includes(value)) options.hang = value;
    else if (name === '--stats-file' && value) options.statsFile = value;
    else throw new Error(`unknown or malformed argument ${JSON.stringify(name)}; use ${COMMON_USAGE}${extraUsage ? `, ${extraUsage}` : ''}`);
    i++;
  }
  return options;
}

/**
 * Writes the process's state to `path` (when set) as JSON, replacing the file atomically on
 * each update: pid, phase ("starting", "listening"), port, time_origin_ms (when the process
 * started, epoch milliseconds), listening_at_ms, and the fake's counters.
 */
export function startStatsFile(path) {
  const state = { pid: process.pid, phase: 'starting', port: null, time_origin_ms: performance.timeOrigin, listening_at_ms: null, stats: null };
  const write = () => {
    if (!path) return;
    writeFileSync(`${path}.tmp`, `${JSON.stringify(state)}\n`);
    renameSync(`${path}.tmp`, path);
  };
  write();
  return {
    listening(port, stats) {
      state.phase = 'listening';
      state.port = port;
      state.listening_at_ms = Date.now();
      state.stats = summary(stats);
      write();
    },
    update(stats, extra = {}) {
      if (!stats) return;
      state.stats = summary(stats);
      Object.assign(state, extra);
      write();
    },
  };
}

// The counters only: request bodies would make every write large.
function summary(stats) {
  const { requests, last_request: lastRequest, violations, ...counters } = stats ?? {};
  return { ...counters, violations: violations?.length ?? 0 };
}
