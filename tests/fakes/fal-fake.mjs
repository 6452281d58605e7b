#!/usr/bin/env node
// Fake fal queue API (submit, status, result, cancel) for pixelgate's black-box tests.
//
//   node tests/fakes/fal-fake.mjs [--port 0] [--api-key fal-test-fake] [--verbose]
//
// The server listens on 127.0.0.1 only and prints one line, {"port": N}, to stdout once it
// accepts connections. tests/fakes/README.md describes the control API and what was confirmed.

import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

import { renderImagePng } from './openai-fake.mjs';

const HOST = '127.0.0.1';
const DEFAULT_API_KEY = 'fal-test-fake';
const MAX_BODY_BYTES = 1024 * 1024;
const DEFAULT_URL_TTL_MS = 60 * 60 * 1000;
const MAX_DELAY_MS = 10 * 60 * 1000;
const MAX_REQUESTS_KEPT = 2000;
const MAX_RECORDED_BODIES = 500;
const MAX_EDGE = 14142;

// image_size presets of the FLUX models' ImageSize enum.
const PRESETS = {
  square_hd: [1024, 1024], square: [512, 512], portrait_4_3: [768, 1024], portrait_16_9: [576, 1024],
  landscape_4_3: [1024, 768], landscape_16_9: [1024, 576],
};
const COMMON_INPUTS = ['prompt', 'image_size', 'num_inference_steps', 'seed', 'sync_mode', 'num_images', 'enable_safety_checker', 'output_format', 'acceleration'];
const MODELS = {
  'fal-ai/flux/schnell': { maxSteps: 12, defaultSize: 'landscape_4_3', inputs: COMMON_INPUTS },
  'fal-ai/flux/dev': { maxSteps: 50, defaultSize: 'landscape_4_3', inputs: [...COMMON_INPUTS, 'guidance_scale'] },
};
const SCRIPT_FIELDS = ['status', 'retry_after', 'detail', 'outcome', 'result_status', 'kind', 'delay_ms', 'queue_ms', 'processing_ms'];

function parseArgs(argv) {
  const options = { port: 0, apiKey: DEFAULT_API_KEY, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--port') options.port = Number(argv[++i]);
    else if (argv[i] === '--api-key') options.apiKey = argv[++i];
    else if (argv[i] === '--verbose') options.verbose = true;
    else throw new Error(`unknown argument ${argv[i]}; use --port, --api-key or --verbose`);
  }
  return options;
}

function defaultSettings() {
  return { delay_ms: 0, queue_ms: 0, processing_ms: 0, url_ttl_ms: DEFAULT_URL_TTL_MS, script: [] };
}

function newStats() {
  return { submits: 0, status_polls: 0, results: 0, cancels: 0, canceled_ids: [], file_downloads: 0, file_requests: 0, max_concurrent: 0, in_flight: 0, last_request: null, requests: [] };
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

function validationError(field, msg, type) {
  return { status: 422, body: { detail: [{ loc: ['body', field], msg, type }] } };
}

/** Validates an input as the model's runner does; returns a 422 response or null. */
function validateInput(model, input) {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) return validationError('body', 'Input should be a valid dictionary', 'dict_type');
  for (const name of Object.keys(input)) {
    // NOTE: fal's runners ignore unknown fields as far as we know; the fake rejects them so that a wrong name fails a test.
    if (!model.inputs.includes(name)) return validationError(name, 'Extra inputs are not permitted', 'extra_forbidden');
  }
  if (typeof input.prompt !== 'string') return validationError('prompt', 'Field required', 'missing');

  const size = input.image_size ?? model.defaultSize;
  if (typeof size === 'string') {
    if (!Object.hasOwn(PRESETS, size)) return validationError('image_size', `Input should be ${Object.keys(PRESETS).map((p) => `'${p}'`).join(', ')}`, 'enum');
  } else if (typeof size === 'object' && size !== null) {
    for (const edge of ['width', 'height']) {
      if (!(Number.isInteger(size[edge]) && size[edge] > 0 && size[edge] <= MAX_EDGE)) {
        return { status: 422, body: { detail: [{ loc: ['body', 'image_size', edge], msg: `Input should be less than or equal to ${MAX_EDGE}`, type: 'less_than_equal' }] } };
      }
    }
  } else {
    return validationError('image_size', 'Input should be a valid dictionary or a preset name', 'union_type');
  }

  if (input.num_inference_steps !== undefined && !(Number.isInteger(input.num_inference_steps) && input.num_inference_steps >= 1 && input.num_inference_steps <= model.maxSteps)) {
    return validationError('num_inference_steps', `Input should be between 1 and ${model.maxSteps}`, 'less_than_equal');
  }
  if (input.seed !== undefined && !Number.isInteger(input.seed)) return validationError('seed', 'Input should be a valid integer', 'int_type');
  if (input.num_images !== undefined && !(Number.isInteger(input.num_images) && input.num_images >= 1 && input.num_images <= 4)) {
    return validationError('num_images', 'Input should be between 1 and 4', 'less_than_equal');
  }
  if (input.output_format !== undefined && !['jpeg', 'png'].includes(input.output_format)) return validationError('output_format', "Input should be 'jpeg' or 'png'", 'enum');
  if (input.output_format === 'jpeg') return validationError('output_format', 'the fake encodes png only', 'enum');
  if (input.guidance_scale !== undefined && !(typeof input.guidance_scale === 'number' && input.guidance_scale >= 1 && input.guidance_scale <= 20)) {
    return validationError('guidance_scale', 'Input should be between 1 and 20', 'less_than_equal');
  }
  return null;
}

function imageSize(model, input) {
  const size = input.image_size ?? model.defaultSize;
  return typeof size === 'string' ? PRESETS[size] : [size.width, size.height];
}

/** Starts the fake; resolves to {port, baseUrl, close}. */
export function startFakeServer({ port = 0, apiKey = DEFAULT_API_KEY, verbose = false } = {}) {
  let settings = defaultSettings();
  let stats = newStats();
  const requests = new Map();
  const files = new Map();
  const sockets = new Set();
  const shutdown = new AbortController();
  let baseUrl = '';

  function storeFile(bytes, expired) {
    const id = randomUUID().replaceAll('-', '');
    files.set(id, { bytes, expires: expired ? Date.now() - 1 : Date.now() + settings.url_ttl_ms });
    return `${baseUrl}/files/${id}/image.png`;
  }

  function stateOf(r) {
    if (r.canceled) return 'COMPLETED';
    const age = Date.now() - r.createdMs;
    if (age < r.queueMs) return 'IN_QUEUE';
    if (age < r.queueMs + r.processingMs) return 'IN_PROGRESS';
    return 'COMPLETED';
  }

  function urls(r) {
    const base = `${baseUrl}/${r.app}/requests/${r.id}`;
    return { response_url: base, status_url: `${base}/status`, cancel_url: `${base}/cancel` };
  }

  // Runs the model once, on the first result request, and keeps the response.
  function result(r) {
    if (r.result) return r.result;
    const failure = validateInput(r.model, r.input);
    if (failure) return (r.result = failure);
    if (r.entry?.result_status) return (r.result = { status: r.entry.result_status, body: { detail: r.entry.detail ?? `Scripted HTTP ${r.entry.result_status} from the fake fal runner.` } });
    if (r.entry?.kind === 'not_json') return (r.result = { status: 200, raw: 'this is not JSON' });
    const [width, height] = imageSize(r.model, r.input);
    const count = r.input.num_images ?? 1;
    const nsfw = r.entry?.outcome === 'nsfw';
    const seed = Number.isInteger(r.input.seed) ? r.input.seed : 12345;
    const images = r.entry?.kind === 'no_images' ? [] : Array.from({ length: count }, (_, i) => ({
      url: storeFile(renderImagePng(r.modelId, nsfw ? '' : r.input.prompt, `${width}x${height}`, i), r.entry?.kind === 'expired_url'),
      width, height, content_type: 'image/png',
    }));
    return (r.result = { status: 200, body: { images, timings: { inference: r.processingMs / 1000 }, seed, has_nsfw_concepts: images.map(() => nsfw), prompt: r.input.prompt } });
  }

  async function handle(req, res, raw) {
    const url = new URL(req.url, 'http://fake');
    const send = (answer) => {
      if (!answer) return;
      res.writeHead(answer.status, { 'content-type': answer.raw ? 'text/plain' : 'application/json', ...answer.headers });
      res.end(answer.raw ?? JSON.stringify(answer.body));
    };
    const json = () => { try { return JSON.parse(raw.toString('utf8')); } catch { return undefined; } };

    if (url.pathname === '/__control' && req.method === 'POST') {
      const update = json();
      if (typeof update !== 'object' || update === null) return send({ status: 400, body: { error: 'control body must be a JSON object' } });
      for (const [key, value] of Object.entries(update)) {
        if (!Object.hasOwn(settings, key)) return send({ status: 400, body: { error: `unknown control key ${key}` } });
        if (key === 'script' && !(Array.isArray(value) && value.every((e) => e && typeof e === 'object' && Object.keys(e).every((k) => SCRIPT_FIELDS.includes(k))))) {
          return send({ status: 400, body: { error: `script must be an array of objects with keys among ${SCRIPT_FIELDS.join(', ')}` } });
        }
        if (key === 'delay_ms' && !(Number.isInteger(value) && value >= 0 && value <= MAX_DELAY_MS)) return send({ status: 400, body: { error: 'delay_ms must be an integer from 0 to 600000' } });
      }
      settings = { ...settings, ...update };
      return send({ status: 200, body: settings });
    }
    if (url.pathname === '/__stats' && req.method === 'GET') return send({ status: 200, body: { ...stats, script_remaining: settings.script.length } });
    if (url.pathname === '/__reset' && req.method === 'POST') {
      settings = defaultSettings();
      stats = newStats();
      return send({ status: 200, body: settings });
    }
    const fileMatch = /^\/files\/([0-9a-f]{32})\/image\.png$/.exec(url.pathname);
    if (fileMatch && req.method === 'GET') {
      stats.file_requests++;
      const file = files.get(fileMatch[1]);
      // NOTE: how long fal's media URLs last, and what an expired one returns, is not documented; the fake returns 404.
      if (!file || file.expires < Date.now()) return send({ status: 404, raw: 'Not Found' });
      stats.file_downloads++;
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': file.bytes.length });
      return res.end(file.bytes);
    }

    const headers = { ...req.headers };
    if (headers.authorization) headers.authorization = `***${headers.authorization.slice(-4)}`;
    const body = json();
    stats.last_request = { method: req.method, path: url.pathname, headers, body: body ?? raw.toString('utf8') };

    const queueRoute = /^\/([^/]+)\/([^/]+)\/requests\/([0-9a-f-]+)(\/status|\/cancel)?$/.exec(url.pathname);
    if (queueRoute) {
      const [, owner, alias, id, suffix] = queueRoute;
      if (suffix === '/status' && req.method === 'GET') stats.status_polls++;
      else if (suffix === '/cancel' && req.method === 'PUT') stats.cancels++;
      else if (suffix === undefined && req.method === 'GET') stats.results++;
      else return send({ status: 405, body: { detail: 'Method Not Allowed' } });
      if (req.headers.authorization !== `Key ${apiKey}`) return send({ status: 401, body: { detail: 'Authentication is required to perform this action.' } });
      const r = requests.get(id);
      // Status, result and cancel paths name the app without the model's sub-path.
      if (!r || r.app !== `${owner}/${alias}`) return send({ status: 404, body: { detail: `Request ${id} not found` } });
      const state = stateOf(r);
      // The official client reads the request id of a result from this header.
      const sendFor = (answer) => send({ ...answer, headers: { ...answer.headers, 'x-fal-request-id': r.id } });
      if (suffix === '/status') {
        if (r.entry?.kind === 'poll_500' && !r.pollFailed) {
          r.pollFailed = true;
          return send({ status: 500, body: { detail: 'Internal Server Error' } });
        }
        const answer = { status: state, request_id: r.id, ...urls(r) };
        if (state === 'IN_QUEUE') answer.queue_position = 0;
        if (state !== 'IN_QUEUE') answer.logs = url.searchParams.get('logs') === '1' ? [] : null;
        return sendFor({ status: 200, body: answer });
      }
      if (suffix === '/cancel') {
        stats.canceled_ids.push(r.id);
        if (state === 'COMPLETED') return send({ status: 400, body: { status: 'ALREADY_COMPLETED' } });
        r.canceled = true;
        return send({ status: 202, body: { status: 'CANCELLATION_REQUESTED' } });
      }
      if (state !== 'COMPLETED') return send({ status: 400, body: { detail: 'Request is still in progress' } });
      if (r.canceled) return send({ status: 400, body: { detail: 'Request was cancelled' } });
      return sendFor(result(r));
    }

    // Submit: POST /{owner}/{alias}[/{path}].
    const submitRoute = /^\/([^/_][^/]*)\/([^/]+)(\/[^/]+)*$/.exec(url.pathname);
    if (!submitRoute) return send({ status: 404, body: { detail: 'Not Found' } });
    if (req.method !== 'POST') return send({ status: 405, body: { detail: 'Method Not Allowed' } });
    stats.submits++;
    stats.requests.push(body ?? null);
    if (stats.requests.length > MAX_RECORDED_BODIES) stats.requests.shift();
    if (req.headers.authorization !== `Key ${apiKey}`) return send({ status: 401, body: { detail: 'Authentication is required to perform this action.' } });
    stats.in_flight++;
    stats.max_concurrent = Math.max(stats.max_concurrent, stats.in_flight);
    try {
      const entry = settings.script.length > 0 ? settings.script.shift() : null;
      const delay = entry?.delay_ms ?? settings.delay_ms;
      if (delay > 0) await sleep(delay, shutdown.signal);
      if (entry?.kind === 'hang') {
        await new Promise((resolve) => { req.socket.once('close', resolve); shutdown.signal.addEventListener('abort', resolve, { once: true }); });
        return undefined;
      }
      if (entry?.status) {
        const extra = entry.status === 429 ? { 'retry-after': String(entry.retry_after ?? 1) } : {};
        return send({ status: entry.status, headers: extra, body: { detail: entry.detail ?? `Scripted HTTP ${entry.status} from the fake fal queue.` } });
      }
      if (raw.length > MAX_BODY_BYTES) return send({ status: 413, body: { detail: 'Request body is over 1 MiB' } });
      if (typeof body !== 'object' || body === null) return send({ status: 422, body: { detail: [{ loc: ['body'], msg: 'Input should be a valid dictionary', type: 'dict_type' }] } });
      const modelId = url.pathname.slice(1);
      const model = MODELS[modelId];
      if (!model) return send({ status: 404, body: { detail: `Application '${modelId}' not found` } });
      const id = randomUUID();
      const r = {
        id, modelId, model, app: `${submitRoute[1]}/${submitRoute[2]}`, input: body, entry, createdMs: Date.now(),
        queueMs: entry?.queue_ms ?? settings.queue_ms, processingMs: entry?.processing_ms ?? settings.processing_ms,
      };
      if (requests.size >= MAX_REQUESTS_KEPT) requests.delete(requests.keys().next().value);
      requests.set(id, r);
      return send({ status: 200, headers: { 'x-fal-request-id': id }, body: { status: 'IN_QUEUE', request_id: id, ...urls(r), queue_position: 0 } });
    } finally {
      stats.in_flight--;
    }
  }

  const server = createServer((req, res) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES + 1) chunks.push(chunk);
    });
    req.on('end', () => {
      if (verbose) process.stderr.write(`${req.method} ${req.url}\n`);
      handle(req, res, Buffer.concat(chunks)).catch((error) => {
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ detail: `fake error: ${error}` }));
      });
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, () => {
      const actual = server.address().port;
      baseUrl = `http://${HOST}:${actual}`;
      resolve({
        port: actual,
        baseUrl,
        close: () => new Promise((done) => {
          shutdown.abort();
          for (const socket of sockets) socket.destroy();
          server.close(() => done());
        }),
      });
    });
  });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const options = parseArgs(process.argv.slice(2));
  const fake = await startFakeServer(options);
  process.stdout.write(`${JSON.stringify({ port: fake.port })}\n`);
  const stop = () => fake.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
