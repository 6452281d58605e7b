#!/usr/bin/env node
// Fake AUTOMATIC1111 web UI API (POST /sdapi/v1/txt2img) for pixelgate's black-box tests.
//
//   node tests/fakes/a1111-fake.mjs [--port 0] [--auth user:password] [--verbose]
//        [--startup-delay-ms N] [--latency-ms N] [--crash-after N] [--hang start|requests]
//        [--stats-file PATH]
//
// It listens on 127.0.0.1 only and prints {"port": N} once listening. Like the real web UI
// it runs one generation at a time, and it fails loudly when calls overlap: the overlapping
// call gets 500 and /__stats records a violation. The other flags let pixelgate's worker
// pools start it as a child process (see tests/fakes/README.md, which also describes the
// control API).

import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

import { renderImagePng } from './openai-fake.mjs';
import { parseChildOptions, startStatsFile } from './child-options.mjs';

const HOST = '127.0.0.1';
const MAX_BODY_BYTES = 1024 * 1024;
const MAX_DELAY_MS = 10 * 60 * 1000;
const MAX_RECORDED = 200;
// The samplers of a stock web UI 1.10 install (GET /sdapi/v1/samplers).
export const SAMPLERS = ['DPM++ 2M', 'DPM++ SDE', 'DPM++ 2M SDE', 'DPM++ 3M SDE', 'Euler a', 'Euler', 'LMS', 'Heun', 'DPM2', 'DPM2 a', 'DPM++ 2S a', 'Restart', 'DDIM', 'PLMS', 'UniPC', 'LCM'];
// Fields of StableDiffusionProcessingTxt2Img that the fake checks, with their pydantic types.
const FIELD_TYPES = {
  prompt: 'string', negative_prompt: 'string', sampler_name: 'string', scheduler: 'string',
  width: 'integer', height: 'integer', steps: 'integer', seed: 'integer', batch_size: 'integer', n_iter: 'integer',
  cfg_scale: 'number', override_settings: 'object',
};
const SCRIPT_KINDS = ['hang', 'not_image', 'empty_images', 'bad_base64', 'wrong_size'];

function sendJson(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on('end', () => resolve(size > MAX_BODY_BYTES ? null : Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function defaultSettings() {
  return { delay_ms: 0, script: [] };
}

/** Checks one field against its pydantic type; returns a FastAPI validation item or null. */
function typeError(name, value) {
  const type = FIELD_TYPES[name];
  if (value === null || value === undefined || !type) return null;
  const ok = type === 'string' ? typeof value === 'string'
    : type === 'integer' ? Number.isInteger(value)
      : type === 'number' ? typeof value === 'number'
        : typeof value === 'object' && !Array.isArray(value);
  if (ok) return null;
  const messages = { string: 'str type expected', integer: 'value is not a valid integer', number: 'value is not a valid float', object: 'value is not a valid dict' };
  return { loc: ['body', name], msg: messages[type], type: `type_error.${type === 'number' ? 'float' : type === 'object' ? 'dict' : type === 'string' ? 'str' : 'integer'}` };
}

export class FakeA1111 {
  /**
   * `latencyMs` is the default delay of every txt2img call. `crashAfter` makes the process
   * call `exit()` once that many generation responses have been sent. `hang` is 'start' (no
   * request gets a response) or 'requests' (txt2img calls get none). `onChange`
   * runs after every change of the counters.
   */
  constructor({ auth = null, verbose = false, latencyMs = 0, crashAfter = null, hang = null, onChange = null, exit = null } = {}) {
    this.auth = auth;
    this.verbose = verbose;
    this.latencyMs = latencyMs;
    this.crashAfter = crashAfter;
    this.hang = hang;
    this.onChange = onChange ?? (() => {});
    this.exit = exit ?? (() => {});
    this.settings = { ...defaultSettings(), delay_ms: latencyMs };
    this.resetCounters();
    this.pending = new Set();
  }

  resetCounters() {
    this.stats = { txt2img: 0, completed: 0, in_flight: 0, max_concurrent: 0, violations: [], last_request: null, requests: [] };
  }

  async handle(req, res) {
    const url = new URL(req.url, `http://${HOST}`);
    if (this.verbose) process.stderr.write(`a1111-fake: ${req.method} ${url.pathname}\n`);
    if (this.hang === 'start') return; // A server stuck while loading sends no response at all.
    if (url.pathname === '/__stats' && req.method === 'GET') return sendJson(res, 200, this.stats);
    if (url.pathname === '/__reset' && req.method === 'POST') {
      await readBody(req);
      this.settings = { ...defaultSettings(), delay_ms: this.latencyMs };
      this.resetCounters();
      return sendJson(res, 200, this.settings);
    }
    if (url.pathname === '/__control') return this.control(req, res);
    if (url.pathname === '/sdapi/v1/options' && req.method === 'GET') {
      // A few of the web UI's settings; pixelgate's pools poll this route for readiness.
      return sendJson(res, 200, { sd_model_checkpoint: 'fake-model.safetensors [0000000000]', samples_format: 'png', CLIP_stop_at_last_layers: 1 });
    }
    if (url.pathname === '/sdapi/v1/samplers' && req.method === 'GET') {
      return sendJson(res, 200, SAMPLERS.map((name) => ({ name, aliases: [], options: {} })));
    }
    if (url.pathname === '/sdapi/v1/txt2img') {
      if (req.method !== 'POST') return sendJson(res, 405, { detail: 'Method Not Allowed' });
      return this.txt2img(req, res);
    }
    return sendJson(res, 404, { detail: 'Not Found' });
  }

  async control(req, res) {
    if (req.method === 'GET') return sendJson(res, 200, this.settings);
    if (req.method !== 'POST') return sendJson(res, 405, { detail: 'Method Not Allowed' });
    let body;
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      return sendJson(res, 400, { detail: '/__control takes a JSON object' });
    }
    for (const [key, value] of Object.entries(body ?? {})) {
      if (key === 'delay_ms' && Number.isInteger(value) && value >= 0 && value <= MAX_DELAY_MS) {
        this.settings.delay_ms = value;
      } else if (key === 'script' && Array.isArray(value) && value.every((entry) => (entry.kind && SCRIPT_KINDS.includes(entry.kind)) || Number.isInteger(entry.status))) {
        this.settings.script = value.slice();
      } else {
        return sendJson(res, 400, { detail: `/__control: unknown key or bad value for ${JSON.stringify(key)}` });
      }
    }
    return sendJson(res, 200, this.settings);
  }

  async txt2img(req, res) {
    // Counted on arrival, before the body is read, so overlapping calls are seen at once.
    this.stats.txt2img++;
    this.stats.in_flight++;
    this.stats.max_concurrent = Math.max(this.stats.max_concurrent, this.stats.in_flight);
    this.onChange();
    let ended = false;
    const finish = () => {
      if (!ended) {
        ended = true;
        this.stats.in_flight--;
        this.onChange();
      }
    };
    res.on('close', finish);
    const overlapping = this.stats.in_flight > 1;

    const text = await readBody(req);
    let body = null;
    try {
      body = text === null ? null : JSON.parse(text);
    } catch {
      body = text;
    }
    this.stats.last_request = { headers: { ...req.headers, authorization: req.headers.authorization ? '***' : undefined }, body };
    this.stats.requests.push(body);
    if (this.stats.requests.length > MAX_RECORDED) this.stats.requests.shift();

    if (overlapping) {
      const violation = `txt2img call ${this.stats.txt2img} arrived while ${this.stats.in_flight - 1} other call(s) ran`;
      this.stats.violations.push(violation);
      process.stderr.write(`a1111-fake: VIOLATION: ${violation}\n`);
      return sendJson(res, 500, { error: 'OverlapViolation', detail: '', body: '', errors: `a1111-fake: ${violation}; the web UI runs one job at a time` });
    }
    if (this.auth) {
      const expected = `Basic ${Buffer.from(this.auth).toString('base64')}`;
      if (req.headers.authorization !== expected) {
        return sendJson(res, 401, { detail: 'Incorrect username or password' }, { 'www-authenticate': 'Basic' });
      }
    }
    if (this.hang === 'requests') return; // Ends only when the client gives up or the fake stops.
    const entry = this.settings.script.shift();
    const delay = entry?.delay_ms ?? this.settings.delay_ms;
    if (entry?.kind === 'hang') return; // Ends only when the client gives up or the fake stops.
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    if (res.destroyed) return;

    if (text === null) return sendJson(res, 413, { detail: 'Request body too large' });
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      return sendJson(res, 422, { detail: [{ loc: ['body', 0], msg: 'Expecting value: line 1 column 1 (char 0)', type: 'value_error.jsondecode' }] });
    }
    const errors = Object.keys(FIELD_TYPES).map((name) => typeError(name, body[name])).filter(Boolean);
    if (errors.length > 0) return sendJson(res, 422, { detail: errors });
    if (entry?.status) return this.scriptedError(res, entry);
    if (body.sampler_name !== undefined && !SAMPLERS.includes(body.sampler_name)) {
      return sendJson(res, 404, { detail: 'Sampler not found' });
    }
    const width = body.width ?? 512;
    const height = body.height ?? 512;
    if (width < 64 || height < 64 || width > 8192 || height > 8192) {
      // The web UI passes such sizes on to torch, which fails inside the generation.
      return sendJson(res, 500, { error: 'RuntimeError', detail: '', body: '', errors: `fake: cannot generate ${width}x${height}` });
    }
    const seed = body.seed ?? -1;
    const prompt = body.prompt ?? '';
    let png = renderImagePng('a1111', `${prompt}\u0000${seed}`, `${width}x${height}`);
    let encoded = png.toString('base64');
    if (entry?.kind === 'not_image') encoded = Buffer.from('this is not an image').toString('base64');
    if (entry?.kind === 'bad_base64') encoded = '***not base64***';
    if (entry?.kind === 'wrong_size') {
      png = renderImagePng('a1111', `${prompt}\u0000${seed}`, `${width / 2}x${height / 2}`);
      encoded = png.toString('base64');
    }
    const images = entry?.kind === 'empty_images' ? [] : [encoded];
    const info = { prompt, negative_prompt: body.negative_prompt ?? '', seed, all_seeds: [seed], width, height, sampler_name: body.sampler_name ?? 'Euler a', cfg_scale: body.cfg_scale ?? 7, steps: body.steps ?? 50, batch_size: 1, job_timestamp: new Date().toISOString().replace(/\D/g, '').slice(0, 14) };
    this.stats.completed++;
    if (this.crashAfter !== null && this.stats.completed >= this.crashAfter) {
      // Exits once the response has been handed to the kernel, as a server that crashes between jobs.
      res.once('finish', () => this.exit(this.stats.completed));
    }
    return sendJson(res, 200, { images, parameters: body, info: JSON.stringify(info) });
  }

  scriptedError(res, entry) {
    const headers = entry.retry_after === undefined ? {} : { 'retry-after': String(entry.retry_after) };
    if (entry.status === 422) {
      return sendJson(res, 422, { detail: [{ loc: ['body', 'width'], msg: 'value is not a valid integer', type: 'type_error.integer' }] }, headers);
    }
    if (entry.status === 401) return sendJson(res, 401, { detail: 'Incorrect username or password' }, { 'www-authenticate': 'Basic', ...headers });
    if (entry.status === 404) return sendJson(res, 404, { detail: 'Not Found' }, headers);
    if (entry.status >= 500 && entry.status !== 500) return sendJson(res, entry.status, { detail: 'Service Unavailable' }, headers);
    // The web UI's API exception handler returns {"error", "detail", "body", "errors"}.
    return sendJson(res, entry.status, { error: 'OutOfMemoryError', detail: '', body: '', errors: 'CUDA out of memory. Tried to allocate 2.00 GiB' }, headers);
  }
}

export async function startFakeServer({ port = 0, auth = null, verbose = false, ...childOptions } = {}) {
  const fake = new FakeA1111({ auth, verbose, ...childOptions });
  const server = createServer((req, res) => {
    fake.handle(req, res).catch((error) => {
      process.stderr.write(`a1111-fake: unexpected error on ${req.method} ${req.url}: ${error.stack ?? error}\n`);
      if (!res.headersSent) sendJson(res, 500, { error: 'FakeError', detail: '', body: '', errors: String(error) });
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, resolve);
  });
  const actualPort = server.address().port;
  const close = () => new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
  return { port: actualPort, baseUrl: `http://${HOST}:${actualPort}`, fake, close };
}

function parseArguments(argv) {
  const options = { port: 0, auth: null, verbose: false };
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--auth' && (argv[i + 1] ?? '').includes(':')) options.auth = argv[++i];
    else if (argv[i] === '--verbose') options.verbose = true;
    else rest.push(argv[i]);
  }
  return { ...options, ...parseChildOptions(rest, '--auth user:password, --verbose') };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  let options;
  try {
    options = parseArguments(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`a1111-fake: ${error.message}\n`);
    process.exit(2);
  }
  const stats = startStatsFile(options.statsFile);
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
  if (options.startupDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, options.startupDelayMs));
  let server = null;
  server = await startFakeServer({
    ...options,
    onChange: () => stats.update(server?.fake.stats),
    exit: (completed) => {
      stats.update(server.fake.stats, { crashed_after: completed });
      process.stderr.write(`a1111-fake: exiting after ${completed} generation(s) (--crash-after)\n`);
      process.exit(3);
    },
  });
  stats.listening(server.port, server.fake.stats);
  process.stdout.write(`${JSON.stringify({ port: server.port })}\n`);
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.removeAllListeners(signal);
    process.on(signal, () => server.close().then(() => process.exit(0)));
  }
}
