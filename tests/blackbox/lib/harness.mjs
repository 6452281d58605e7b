// Shared helpers for pixelgate's black-box tests: start the fake OpenAI server and the
// pixelgate binary as child processes, write their configuration, talk HTTP over loopback,
// and clean up. Every wait here has a timeout, so a hung process fails a test instead of
// hanging the suite.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as zlib from 'node:zlib';

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(HERE, '..', '..', '..');
export const FAKE_PATH = join(REPO_ROOT, 'tests', 'fakes', 'openai-fake.mjs');
export const OPENAI_CLIENT_PATH = join(REPO_ROOT, 'tests', 'node_modules', 'openai', 'index.mjs');

const binSetting = process.env.PIXELGATE_BIN ?? 'build/pixelgate';
export const PIXELGATE_BIN = isAbsolute(binSetting) ? binSetting : resolve(REPO_ROOT, binSetting);

// A distinctive key, so that a test can search pixelgate's stderr for any leak of it.
export const TEST_API_KEY = 'sk-test-SECRET1234abcd';
export const API_KEY_ENV = 'PG_TEST_OPENAI_KEY';

export const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5000;
const DEFAULT_REQUEST_TIMEOUT_MS = 15_000;

// Children still running when the test process exits are killed, so that a crashed test
// file leaves no server behind.
const liveChildren = new Set();
process.on('exit', () => {
  for (const child of liveChildren) {
    child.kill('SIGKILL');
  }
});

export function sleep(ms) {
  return new Promise((resolvePromise) => setTimeout(resolvePromise, ms));
}

export function sha256Hex(bytes) {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Returns the Repr-Digest header value (RFC 9530) for `bytes`. */
export function reprDigest(bytes) {
  return `sha-256=:${createHash('sha256').update(bytes).digest('base64')}:`;
}

/** Polls `check` until it returns a truthy value and returns that value. Throws after `timeoutMs`. */
export async function waitFor(check, { timeoutMs = 5000, intervalMs = 25, message = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${message}`);
    }
    await sleep(intervalMs);
  }
}

function waitForExit(child, timeoutMs) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolvePromise) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolvePromise(null);
    }, timeoutMs);
    const onExit = (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal });
    };
    child.once('exit', onExit);
  });
}

/** Sends `signal`, waits up to `timeoutMs` for the exit, then SIGKILLs. Returns {code, signal, forced}. */
async function stopChild(child, { signal = 'SIGTERM', timeoutMs = STOP_TIMEOUT_MS } = {}) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return { code: child.exitCode, signal: child.signalCode, forced: false };
  }
  child.kill(signal);
  const exit = await waitForExit(child, timeoutMs);
  if (exit) {
    return { ...exit, forced: false };
  }
  child.kill('SIGKILL');
  const killed = await waitForExit(child, STOP_TIMEOUT_MS);
  return { code: killed?.code ?? null, signal: killed?.signal ?? 'SIGKILL', forced: true };
}

/**
 * Spawns a server process and resolves once its first stdout line parses as JSON.
 * Returns { child, first, stderrLines }; stderrLines keeps growing while the child runs.
 */
function spawnServer(command, args, { env, name }) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    liveChildren.add(child);
    child.once('exit', () => liveChildren.delete(child));

    const stderrLines = [];
    let stderrRest = '';
    let stdout = '';
    let settled = false;
    const fail = (message) => {
      if (settled) {
        return;
      }
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${name}: ${message}; stderr:\n${stderrLines.join('\n')}${stderrRest}`));
    };
    const timer = setTimeout(() => fail(`no start-up line on stdout within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);

    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      const parts = (stderrRest + chunk).split('\n');
      stderrRest = parts.pop();
      stderrLines.push(...parts);
    });
    child.stderr.on('end', () => {
      if (stderrRest) {
        stderrLines.push(stderrRest);
        stderrRest = '';
      }
    });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      if (settled) {
        return;
      }
      stdout += chunk;
      const newline = stdout.indexOf('\n');
      if (newline < 0) {
        return;
      }
      let first;
      try {
        first = JSON.parse(stdout.slice(0, newline));
      } catch {
        return fail(`the first stdout line is not JSON: ${JSON.stringify(stdout.slice(0, newline))}`);
      }
      settled = true;
      clearTimeout(timer);
      resolvePromise({ child, first, stderrLines });
    });
    child.once('error', (error) => fail(`cannot start: ${error.message}`));
    child.once('exit', (code, signal) => fail(`exited before listening (code ${code}, signal ${signal})`));
  });
}

// ---------------------------------------------------------------------------
// HTTP over loopback.
// ---------------------------------------------------------------------------

/**
 * Sends one request on a fresh connection (no keep-alive) and reads the whole response.
 * `target` is a URL string or a path on `port`. The path is sent byte for byte, so it may
 * carry malformed percent-escapes. Resolves to { status, headers, body (Buffer), ms }.
 */
export function request(target, { port, method = 'GET', headers = {}, body, timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS, signal } = {}) {
  let path = target;
  let targetPort = port;
  if (/^https?:\/\//.test(target)) {
    const url = new URL(target);
    path = `${url.pathname}${url.search}`;
    targetPort = Number(url.port);
  }
  const started = Date.now();
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest(
      { host: HOST, port: targetPort, path, method, headers, agent: false, signal },
      (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () => {
          clearTimeout(timer);
          resolvePromise({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), ms: Date.now() - started });
        });
        res.on('error', (error) => {
          clearTimeout(timer);
          reject(error);
        });
      },
    );
    const timer = setTimeout(() => req.destroy(new Error(`${method} ${path} timed out after ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    req.end(body);
  });
}

/** Parses a JSON response body, with the raw text in the error when it is not JSON. */
export function jsonBody(response) {
  const text = response.body.toString('utf8');
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`response ${response.status} is not JSON: ${text.slice(0, 300)}`);
  }
}

/**
 * A raw TCP connection for tests of connection handling. Data is collected as it arrives,
 * and `closed` resolves when the server closes the connection.
 */
export class RawConnection {
  static open(port, { timeoutMs = 5000 } = {}) {
    return new Promise((resolvePromise, reject) => {
      const socket = connect({ host: HOST, port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connecting to port ${port} timed out`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolvePromise(new RawConnection(socket));
      });
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
  }

  constructor(socket) {
    this.socket = socket;
    this.received = Buffer.alloc(0);
    this.isClosed = false;
    this.closed = new Promise((resolvePromise) => {
      socket.on('close', () => {
        this.isClosed = true;
        resolvePromise();
      });
    });
    socket.on('data', (chunk) => {
      this.received = Buffer.concat([this.received, chunk]);
    });
    // A reset from the server counts as a close, and the test checks the data that arrived before it.
    socket.on('error', () => {});
  }

  write(data) {
    return new Promise((resolvePromise) => {
      if (this.isClosed || this.socket.destroyed) {
        return resolvePromise(false);
      }
      this.socket.write(data, (error) => resolvePromise(!error));
    });
  }

  /** Resolves true when the server closes the connection within `timeoutMs`, else false. */
  async waitForClose(timeoutMs) {
    return Promise.race([this.closed.then(() => true), sleep(timeoutMs).then(() => false)]);
  }

  /**
   * Waits for one complete response (headers and a Content-Length body) at the start of the
   * received data, removes it, and returns { status, headers, body }. Header names are lower-case.
   */
  async readResponse({ timeoutMs = 5000, head = false } = {}) {
    const parsed = await waitFor(() => parseResponse(this.received, head) ?? (this.isClosed ? { incomplete: true } : null), {
      timeoutMs,
      intervalMs: 10,
      message: 'a complete HTTP response',
    });
    if (parsed.incomplete) {
      throw new Error(`the connection closed before a complete response; received: ${JSON.stringify(this.received.toString('latin1'))}`);
    }
    this.received = this.received.subarray(parsed.length);
    return parsed.response;
  }

  destroy() {
    this.socket.destroy();
  }
}

function parseResponse(data, head) {
  const end = data.indexOf('\r\n\r\n');
  if (end < 0) {
    return null;
  }
  const lines = data.subarray(0, end).toString('latin1').split('\r\n');
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0])?.[1]);
  const headers = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const bodyLength = head || status === 304 ? 0 : Number(headers['content-length'] ?? 0);
  const total = end + 4 + bodyLength;
  if (data.length < total) {
    return null;
  }
  return { length: total, response: { status, headers, body: data.subarray(end + 4, total) } };
}

// ---------------------------------------------------------------------------
// PNG checks.
// ---------------------------------------------------------------------------

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/**
 * Checks that `bytes` is a complete PNG: signature, every chunk's CRC, IHDR first and IEND
 * last. Returns { width, height }, or throws with the reason.
 */
export function checkCompletePng(bytes) {
  if (bytes.length < 8 || !bytes.subarray(0, 8).equals(PNG_SIGNATURE)) {
    throw new Error('not a PNG: the signature is missing');
  }
  const types = [];
  let width = 0;
  let height = 0;
  let offset = 8;
  while (offset < bytes.length) {
    if (offset + 12 > bytes.length) {
      throw new Error(`truncated PNG: a chunk header at byte ${offset} is cut off`);
    }
    const length = bytes.readUInt32BE(offset);
    const type = bytes.toString('ascii', offset + 4, offset + 8);
    if (offset + 12 + length > bytes.length) {
      throw new Error(`truncated PNG: the ${type} chunk at byte ${offset} is cut off`);
    }
    const stored = bytes.readUInt32BE(offset + 8 + length);
    if (stored !== zlib.crc32(bytes.subarray(offset + 4, offset + 8 + length))) {
      throw new Error(`corrupt PNG: CRC mismatch in the ${type} chunk`);
    }
    if (type === 'IHDR') {
      width = bytes.readUInt32BE(offset + 8);
      height = bytes.readUInt32BE(offset + 12);
    }
    types.push(type);
    offset += 12 + length;
  }
  if (types[0] !== 'IHDR' || types.at(-1) !== 'IEND') {
    throw new Error(`invalid PNG chunk order: ${types.join(', ')}`);
  }
  return { width, height };
}

// ---------------------------------------------------------------------------
// The fake OpenAI server.
// ---------------------------------------------------------------------------

/** Starts tests/fakes/openai-fake.mjs as a child process. */
export async function startFake({ apiKey = TEST_API_KEY } = {}) {
  const { child, first, stderrLines } = await spawnServer(process.execPath, [FAKE_PATH, '--port', '0', '--api-key', apiKey], {
    env: process.env,
    name: 'openai-fake',
  });
  const port = first.port;
  const baseUrl = `http://${HOST}:${port}`;

  const call = async (method, path, body) => {
    const response = await request(path, {
      port,
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status !== 200) {
      throw new Error(`fake ${method} ${path} returned ${response.status}: ${response.body}`);
    }
    return jsonBody(response);
  };

  return {
    port,
    baseUrl,
    child,
    stderrLines,
    control: (settings) => call('POST', '/__control', settings),
    reset: () => call('POST', '/__reset', {}),
    stats: () => call('GET', '/__stats'),
    /** Returns the sha256 hex of the PNG that the fake serves for these inputs. */
    expectedSha256: async ({ model, prompt, size, index = 0 }) =>
      (await call('GET', `/__expected?${new URLSearchParams({ model, prompt, size, index: String(index) })}`)).sha256,
    stop: () => stopChild(child),
  };
}

// ---------------------------------------------------------------------------
// pixelgate configuration and process.
// ---------------------------------------------------------------------------

function tomlValue(value) {
  if (typeof value === 'string') {
    return JSON.stringify(value);
  }
  if (typeof value === 'number' || typeof value === 'boolean') {
    return String(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map(tomlValue).join(', ')}]`;
  }
  throw new TypeError(`cannot write ${JSON.stringify(value)} as a TOML value`);
}

function tomlTable(name, table) {
  const lines = [`[${name}]`];
  const subTables = [];
  for (const [key, value] of Object.entries(table)) {
    if (value === undefined) {
      continue;
    }
    // A plain object becomes a sub-table, e.g. storage.s3.
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      subTables.push(tomlTable(`${name}.${key}`, value));
    } else {
      lines.push(`${key} = ${tomlValue(value)}`);
    }
  }
  return [lines.join('\n'), ...subTables].join('\n\n');
}

/**
 * Writes a pixelgate TOML configuration from a plain object: { server, storage, limits, logging,
 * security, rate_limits, budgets, jobs, webhooks, default_backend, and the named tables backends, templates and
 * api_keys, each {name: {...}} }.
 * Table values must be strings, numbers, booleans or arrays of them.
 */
export function toToml(config) {
  const parts = [];
  if (config.default_backend) {
    parts.push(`default_backend = ${tomlValue(config.default_backend)}`);
  }
  for (const section of ['server', 'storage', 'redis', 'limits', 'logging', 'security', 'rate_limits', 'budgets', 'jobs', 'webhooks']) {
    if (config[section]) {
      parts.push(tomlTable(section, config[section]));
    }
  }
  for (const group of ['backends', 'templates', 'api_keys']) {
    for (const [name, table] of Object.entries(config[group] ?? {})) {
      parts.push(tomlTable(`${group}.${name}`, table));
    }
  }
  return `${parts.join('\n\n')}\n`;
}

/** Returns an openai backend table that points at the fake. */
export function openaiBackend(fake, overrides = {}) {
  return {
    type: 'openai',
    base_url: `${fake.baseUrl}/v1`,
    model: 'gpt-image-2',
    api_key_env: API_KEY_ENV,
    max_retries: 0,
    retry_base_delay_ms: 50,
    timeout_ms: 15_000,
    ...overrides,
  };
}

/**
 * Builds the environment for pixelgate: this process's, without PIXELGATE_* and OPENAI_*
 * variables (they would override the test's configuration), plus the API key variable.
 */
function gatewayEnvironment(extra) {
  const env = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith('PIXELGATE_') && !name.startsWith('OPENAI_')) {
      env[name] = value;
    }
  }
  return { ...env, [API_KEY_ENV]: TEST_API_KEY, ...extra };
}

/** Starts `pixelgate serve --config FILE` and resolves once it prints its listening line. */
export async function startPixelgate(configPath, { env = {} } = {}) {
  const { child, first, stderrLines } = await spawnServer(PIXELGATE_BIN, ['serve', '--config', configPath], {
    env: gatewayEnvironment(env),
    name: 'pixelgate',
  });
  const port = first.listening?.port;
  if (!Number.isInteger(port) || port <= 0) {
    child.kill('SIGKILL');
    throw new Error(`pixelgate printed an unexpected start-up line: ${JSON.stringify(first)}`);
  }
  return {
    port,
    baseUrl: `http://${HOST}:${port}`,
    child,
    first,
    stderrLines,
    /** Returns the stderr lines that parse as JSON, parsed. */
    logs() {
      const parsed = [];
      for (const line of stderrLines) {
        try {
          parsed.push(JSON.parse(line));
        } catch {
          // Not a JSON line: the tests that care look at stderrLines.
        }
      }
      return parsed;
    },
    get: (path, options = {}) => request(path, { port, ...options }),
    stop: (options) => stopChild(child, options),
  };
}

/**
 * One test file's world: a temporary folder, the fake, and pixelgate with a configuration
 * built by `configure(fake, dir)`. Call close() from an after() hook.
 */
export class Gateway {
  static async start(configure) {
    const world = new Gateway();
    world.dir = await mkdtemp(join(tmpdir(), 'pixelgate-blackbox-'));
    world.storagePath = join(world.dir, 'storage');
    world.configPath = join(world.dir, 'pixelgate.toml');
    try {
      world.fake = await startFake();
      const config = configure(world.fake, world.dir);
      const server = { port: 0, threads: 2, ...config.server };
      const storage = { path: world.storagePath, ...config.storage };
      const logging = { level: 'info', format: 'json', ...config.logging };
      // These tests are about caching and the backend, so they run without URL signing, and
      // with the request and generation rate limits off (0), which would throttle the
      // coalescing and crash runs.
      const security = { mode: 'open', ...config.security };
      const rateLimits = { requests_per_second: 0, generations_per_minute: 0, ...config.rate_limits };
      await writeFile(world.configPath, toToml({ ...config, server, storage, logging, security, rate_limits: rateLimits }));
      await world.restart();
    } catch (error) {
      await world.close();
      throw error;
    }
    return world;
  }

  constructor() {
    this.pixelgate = null;
    this.fake = null;
    // stderr lines of every pixelgate process this world started, for log checks across restarts.
    this.allStderr = [];
  }

  get port() {
    return this.pixelgate.port;
  }

  get(path, options = {}) {
    return this.pixelgate.get(path, options);
  }

  /** Stops pixelgate (if running) with SIGTERM and starts it again on the same storage. */
  async restart() {
    if (this.pixelgate) {
      await this.stopGateway();
    }
    this.pixelgate = await startPixelgate(this.configPath);
    return this.pixelgate;
  }

  /** Stops pixelgate with `signal` and returns its exit { code, signal, forced }. */
  async stopGateway(options) {
    const current = this.pixelgate;
    const exit = await current.stop(options);
    // The last log lines may still be in the pipe when the exit event fires.
    const stderr = current.child.stderr;
    if (!stderr.closed) {
      await Promise.race([new Promise((resolvePromise) => stderr.once('close', resolvePromise)), sleep(2000)]);
    }
    if (!current.stderrCollected) {
      current.stderrCollected = true;
      this.allStderr.push(...current.stderrLines);
    }
    return exit;
  }

  /** Returns every stderr line of every pixelgate process so far, the running one included. */
  stderrText() {
    const running = this.pixelgate && !this.pixelgate.stderrCollected ? this.pixelgate.stderrLines : [];
    return [...this.allStderr, ...running].join('\n');
  }

  async listTmp() {
    return readdir(join(this.storagePath, 'tmp'));
  }

  async close() {
    if (this.pixelgate && this.pixelgate.child.exitCode === null && this.pixelgate.child.signalCode === null) {
      await this.pixelgate.stop();
    }
    if (this.fake) {
      await this.fake.stop();
    }
    if (this.dir) {
      await rm(this.dir, { recursive: true, force: true });
    }
  }
}
