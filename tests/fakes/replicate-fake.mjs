#!/usr/bin/env node
// Fake Replicate HTTP API (predictions on official models and on versions) for pixelgate's
// black-box tests.
//
//   node tests/fakes/replicate-fake.mjs [--port 0] [--api-key r8_test_fake] [--verbose]
//
// The server listens on 127.0.0.1 only and prints one line, {"port": N}, to stdout once it
// accepts connections. tests/fakes/README.md describes the control API and what was confirmed.

import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

import { renderImagePng } from './openai-fake.mjs';

const HOST = '127.0.0.1';
const DEFAULT_API_KEY = 'r8_test_fake';
const MAX_BODY_BYTES = 1024 * 1024;
// Replicate's output URLs stay valid for an hour.
const DEFAULT_URL_TTL_MS = 60 * 60 * 1000;
const MAX_DELAY_MS = 10 * 60 * 1000;
const MAX_PREDICTIONS = 2000;
const MAX_RECORDED_REQUESTS = 500;

// black-forest-labs/flux-schnell and flux-dev: input names, choices and sizes from
// replicate/cog-flux's predict.py.
const FLUX_ASPECT_RATIOS = {
  '1:1': [1024, 1024], '16:9': [1344, 768], '21:9': [1536, 640], '3:2': [1216, 832], '2:3': [832, 1216],
  '4:5': [896, 1088], '5:4': [1088, 896], '9:16': [768, 1344], '9:21': [640, 1536],
};
const FLUX_COMMON = ['prompt', 'aspect_ratio', 'num_outputs', 'seed', 'output_format', 'output_quality', 'disable_safety_checker'];
const MODELS = {
  // Current flux-schnell versions also take num_inference_steps (1 to 4), go_fast and megapixels.
  'black-forest-labs/flux-schnell': { kind: 'flux', maxSteps: 4, inputs: [...FLUX_COMMON, 'num_inference_steps', 'go_fast', 'megapixels'] },
  'black-forest-labs/flux-dev': { kind: 'flux', maxSteps: 50, inputs: [...FLUX_COMMON, 'num_inference_steps', 'guidance', 'image', 'prompt_strength'] },
};
// Any 64-hex version id is served as a generic text-to-image model with width and height inputs.
const GENERIC_INPUTS = ['prompt', 'negative_prompt', 'width', 'height', 'seed', 'num_outputs', 'num_inference_steps', 'guidance_scale', 'scheduler'];

const SCRIPT_FIELDS = ['status', 'retry_after', 'detail', 'outcome', 'error', 'kind', 'delay_ms', 'processing_ms'];

function problem(status, title, detail, extra = {}) {
  return { status, body: { title, detail, status, ...extra } };
}

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
  return { delay_ms: 0, processing_ms: 0, max_sync_wait_ms: null, url_ttl_ms: DEFAULT_URL_TTL_MS, script: [] };
}

function newStats() {
  return { creates: 0, polls: 0, cancels: 0, canceled_ids: [], file_downloads: 0, file_requests: 0, max_concurrent: 0, in_flight: 0, last_request: null, requests: [] };
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** Checks one input object against a model's inputs; returns a 422 problem or null. */
function validateInput(model, input) {
  const invalid = (type, field, description) =>
    problem(422, 'Input validation failed', `- input.${field}: ${description}`, { invalid_fields: [{ type, field: `input.${field}`, description }] });
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    return problem(422, 'Input validation failed', '- input: Invalid type. Expected: object', { invalid_fields: [{ type: 'invalid_type', field: 'input', description: 'Invalid type. Expected: object' }] });
  }
  const allowed = model.kind === 'flux' ? model.inputs : GENERIC_INPUTS;
  for (const name of Object.keys(input)) {
    // NOTE: a real Cog model ignores unknown inputs; the fake rejects them so that a wrong name fails a test.
    if (!allowed.includes(name)) return invalid('additional_property_not_allowed', name, `Additional property ${name} is not allowed`);
  }
  if (typeof input.prompt !== 'string' || input.prompt.length === 0) return invalid('required', 'prompt', 'prompt is required');
  if (input.seed !== undefined && !Number.isInteger(input.seed)) return invalid('invalid_type', 'seed', 'Invalid type. Expected: integer');
  if (input.num_outputs !== undefined && !(Number.isInteger(input.num_outputs) && input.num_outputs >= 1 && input.num_outputs <= 4)) {
    return invalid('number_one_of', 'num_outputs', 'Must be between 1 and 4');
  }
  if (model.kind === 'flux') {
    if (input.aspect_ratio !== undefined && !Object.hasOwn(FLUX_ASPECT_RATIOS, input.aspect_ratio)) {
      return invalid('enum', 'aspect_ratio', `aspect_ratio must be one of the following: ${Object.keys(FLUX_ASPECT_RATIOS).map((r) => `"${r}"`).join(', ')}`);
    }
    if (input.output_format !== undefined && !['webp', 'jpg', 'png'].includes(input.output_format)) {
      return invalid('enum', 'output_format', 'output_format must be one of the following: "webp", "jpg", "png"');
    }
    if (input.num_inference_steps !== undefined && !(Number.isInteger(input.num_inference_steps) && input.num_inference_steps >= 1 && input.num_inference_steps <= model.maxSteps)) {
      return invalid('number_one_of', 'num_inference_steps', `Must be between 1 and ${model.maxSteps}`);
    }
    if (input.megapixels !== undefined && input.megapixels !== '1') {
      // NOTE: megapixels "0.25" is valid on Replicate, but its sizes are not published, so the fake serves "1" only.
      return invalid('enum', 'megapixels', 'the fake serves megapixels "1" only');
    }
    if (input.guidance !== undefined && !(typeof input.guidance === 'number' && input.guidance >= 0 && input.guidance <= 10)) {
      return invalid('number_one_of', 'guidance', 'Must be between 0 and 10');
    }
  } else {
    for (const edge of ['width', 'height']) {
      if (input[edge] !== undefined && !(Number.isInteger(input[edge]) && input[edge] >= 64 && input[edge] <= 2048)) {
        return invalid('number_one_of', edge, 'Must be an integer between 64 and 2048');
      }
    }
  }
  return null;
}

/** Returns the size that a valid input produces, as "WIDTHxHEIGHT". */
function outputSize(model, input) {
  if (model.kind === 'flux') {
    const [w, h] = FLUX_ASPECT_RATIOS[input.aspect_ratio ?? '1:1'];
    return `${w}x${h}`;
  }
  return `${input.width ?? 1024}x${input.height ?? 1024}`;
}

/** Starts the fake; resolves to {port, baseUrl, close}. */
export function startFakeServer({ port = 0, apiKey = DEFAULT_API_KEY, verbose = false } = {}) {
  let settings = defaultSettings();
  let stats = newStats();
  const predictions = new Map();
  const files = new Map();
  const sockets = new Set();
  const shutdown = new AbortController();
  let baseUrl = '';

  const predictionJson = (p) => {
    refresh(p);
    return {
      id: p.id, model: p.model, version: p.version, input: p.input, logs: '', output: p.status === 'succeeded' ? p.output : null,
      data_removed: false, error: p.status === 'failed' ? p.error : null, status: p.status, source: 'api',
      created_at: p.createdAt, started_at: p.status === 'starting' ? null : p.createdAt, completed_at: ['succeeded', 'failed', 'canceled'].includes(p.status) ? new Date().toISOString() : null,
      urls: { get: `${baseUrl}/v1/predictions/${p.id}`, cancel: `${baseUrl}/v1/predictions/${p.id}/cancel`, web: `https://replicate.com/p/${p.id}` },
      metrics: p.status === 'succeeded' ? { predict_time: p.processingMs / 1000, image_count: p.output.length } : {},
    };
  };

  // Moves a prediction along its timeline: starting, then processing, then its outcome.
  function refresh(p) {
    if (p.status !== 'starting' && p.status !== 'processing') return;
    const age = Date.now() - p.createdMs;
    if (age >= p.processingMs) {
      p.status = p.outcome.status;
      if (p.status === 'succeeded') p.output = p.outcome.output();
    } else if (age >= p.processingMs / 2) {
      p.status = 'processing';
    }
  }

  function storeFile(png, { expired = false, notImage = false } = {}) {
    const id = randomBytes(16).toString('hex');
    files.set(id, { bytes: notImage ? Buffer.from('this is not an image') : png, expires: expired ? Date.now() - 1 : Date.now() + settings.url_ttl_ms });
    return `${baseUrl}/files/${id}/out-0.png`;
  }

  async function createPrediction(req, body, modelName, version) {
    const entry = settings.script.length > 0 ? settings.script.shift() : null;
    const delay = entry?.delay_ms ?? settings.delay_ms;
    if (delay > 0) await sleep(delay, shutdown.signal);
    if (entry?.kind === 'hang') {
      await new Promise((resolve) => { req.socket.once('close', resolve); shutdown.signal.addEventListener('abort', resolve, { once: true }); });
      return null;
    }
    if (entry?.status) {
      const headers = {};
      if (entry.status === 429) headers['retry-after'] = String(entry.retry_after ?? 1);
      const titles = { 401: 'Unauthenticated', 402: 'Insufficient credit', 404: 'Not found', 422: 'Input validation failed', 429: 'Request was throttled' };
      const detail = entry.detail ?? (entry.status === 429 ? `Request was throttled. Expected available in ${entry.retry_after ?? 1} second.` : `Scripted HTTP ${entry.status} from the fake Replicate server.`);
      return { ...problem(entry.status, titles[entry.status] ?? (entry.status >= 500 ? 'Internal server error' : 'Error'), detail), headers };
    }
    if (entry?.kind === 'not_json') return { status: 201, raw: 'this is not JSON' };

    let model;
    if (version !== undefined) {
      if (typeof version !== 'string' || !/^[0-9a-f]{64}$/.test(version)) {
        return problem(422, 'Invalid version or not permitted', 'The specified version does not exist (or perhaps you don\'t have permission to use it?)');
      }
      model = { kind: 'generic' };
    } else {
      model = MODELS[modelName];
      if (!model) return problem(404, 'Not found', `The model ${modelName} does not exist or is not an official model.`);
    }
    const failure = validateInput(model, body.input);
    if (failure) return failure;
    if (model.kind === 'flux' && (body.input.output_format ?? 'webp') !== 'png') {
      return problem(422, 'Input validation failed', '- input.output_format: the fake encodes png only', { invalid_fields: [{ type: 'enum', field: 'input.output_format', description: 'the fake encodes png only' }] });
    }

    const size = outputSize(model, body.input);
    const count = body.input.num_outputs ?? 1;
    const outcome = { status: 'succeeded', output: () => Array.from({ length: count }, (_, i) => storeFile(renderImagePng(modelName ?? version, body.input.prompt, size, i))) };
    if (entry?.outcome === 'failed') Object.assign(outcome, { status: 'failed', error: entry.error ?? 'Prediction failed (scripted by the fake Replicate server).' });
    if (entry?.outcome === 'nsfw') Object.assign(outcome, { status: 'failed', error: 'All generated images contained NSFW content. Try running it again with a different prompt.' });
    if (entry?.outcome === 'canceled') Object.assign(outcome, { status: 'canceled' });
    if (entry?.kind === 'expired_url') outcome.output = () => [storeFile(renderImagePng(modelName ?? version, body.input.prompt, size, 0), { expired: true })];
    if (entry?.kind === 'not_image') outcome.output = () => [storeFile(null, { notImage: true })];
    if (entry?.kind === 'no_output') outcome.output = () => null;

    const id = randomBytes(13).toString('hex').slice(0, 26);
    const p = { id, model: modelName ?? 'community/model', version: version ?? 'hidden', input: body.input, status: 'starting', createdMs: Date.now(), createdAt: new Date().toISOString(), processingMs: entry?.processing_ms ?? settings.processing_ms, outcome, error: outcome.error };
    if (predictions.size >= MAX_PREDICTIONS) predictions.delete(predictions.keys().next().value);
    predictions.set(id, p);

    // Sync mode: hold the call until the prediction finishes or the wait runs out.
    const prefer = req.headers.prefer;
    if (prefer !== undefined) {
      const match = /^wait(?:=(\d+))?$/.exec(prefer.trim());
      if (!match || (match[1] !== undefined && (Number(match[1]) < 1 || Number(match[1]) > 60))) {
        predictions.delete(id);
        return problem(400, 'Invalid Prefer header', 'Prefer must be "wait" or "wait=n" with n from 1 to 60 seconds.');
      }
      let waitMs = (match[1] === undefined ? 60 : Number(match[1])) * 1000;
      if (settings.max_sync_wait_ms !== null) waitMs = Math.min(waitMs, settings.max_sync_wait_ms);
      const until = Date.now() + waitMs;
      while (Date.now() < until && !shutdown.signal.aborted) {
        refresh(p);
        if (!['starting', 'processing'].includes(p.status)) break;
        await sleep(Math.min(20, until - Date.now()), shutdown.signal);
      }
    }
    return { status: 201, body: predictionJson(p) };
  }

  async function handle(req, res, raw) {
    const url = new URL(req.url, 'http://fake');
    const send = (answer) => {
      if (!answer) return;
      const headers = { 'content-type': answer.raw ? 'text/plain' : (answer.status >= 400 ? 'application/problem+json' : 'application/json'), ...answer.headers };
      res.writeHead(answer.status, headers);
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

    const fileMatch = /^\/files\/([0-9a-f]{32})\/out-0\.png$/.exec(url.pathname);
    if (fileMatch && req.method === 'GET') {
      stats.file_requests++;
      const file = files.get(fileMatch[1]);
      // NOTE: the status of an expired replicate.delivery URL is not documented; the fake returns 404.
      if (!file || file.expires < Date.now()) return send({ status: 404, raw: 'Not Found' });
      stats.file_downloads++;
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': file.bytes.length });
      return res.end(file.bytes);
    }

    const modelRoute = /^\/v1\/models\/([^/]+)\/([^/]+)\/predictions$/.exec(url.pathname);
    const getRoute = /^\/v1\/predictions\/([a-z0-9]+)$/.exec(url.pathname);
    const cancelRoute = /^\/v1\/predictions\/([a-z0-9]+)\/cancel$/.exec(url.pathname);
    const isCreate = (modelRoute || url.pathname === '/v1/predictions') && req.method === 'POST';
    if (!modelRoute && !getRoute && !cancelRoute && url.pathname !== '/v1/predictions') return send(problem(404, 'Not found', 'The requested resource could not be found.'));
    if (isCreate) stats.creates++;
    else if (getRoute && req.method === 'GET') stats.polls++;
    else if (cancelRoute && req.method === 'POST') stats.cancels++;
    else return send(problem(405, 'Method not allowed', `${req.method} is not allowed on ${url.pathname}.`));

    const body = json();
    const headers = { ...req.headers };
    if (headers.authorization) headers.authorization = `***${headers.authorization.slice(-4)}`;
    stats.last_request = { method: req.method, path: url.pathname, headers, body: body ?? raw.toString('utf8') };
    if (isCreate) {
      stats.requests.push(body ?? null);
      if (stats.requests.length > MAX_RECORDED_REQUESTS) stats.requests.shift();
    }
    if (req.headers.authorization !== `Bearer ${apiKey}`) return send(problem(401, 'Unauthenticated', 'You did not pass a valid authentication token'));

    if (getRoute || cancelRoute) {
      const p = predictions.get((getRoute ?? cancelRoute)[1]);
      if (!p) return send(problem(404, 'Not found', 'The requested resource could not be found.'));
      if (cancelRoute) {
        refresh(p);
        stats.canceled_ids.push(p.id);
        if (p.status === 'starting' || p.status === 'processing') p.status = 'canceled';
      }
      return send({ status: 200, body: predictionJson(p) });
    }
    if (raw.length > MAX_BODY_BYTES) return send(problem(413, 'Request too large', 'The request body is over 1 MiB.'));
    if (typeof body !== 'object' || body === null) return send(problem(400, 'Invalid JSON', 'The request body is not a JSON object.'));
    if (modelRoute) {
      if (body.version !== undefined) return send(problem(422, 'Input validation failed', 'version is not allowed when creating a prediction on an official model'));
      return send(await trackConcurrency(() => createPrediction(req, body, `${modelRoute[1]}/${modelRoute[2]}`, undefined)));
    }
    if (body.version === undefined) return send(problem(422, 'Input validation failed', '- version: version is required'));
    return send(await trackConcurrency(() => createPrediction(req, body, undefined, body.version)));
  }

  async function trackConcurrency(work) {
    stats.in_flight++;
    stats.max_concurrent = Math.max(stats.max_concurrent, stats.in_flight);
    try {
      return await work();
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
        res.end(JSON.stringify({ title: 'Internal fake error', detail: String(error), status: 500 }));
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
