// A fake of Stability AI's Stable Image generate endpoints (REST v2beta) for black-box tests:
// POST /v2beta/stable-image/generate/{ultra,core,sd3} with multipart/form-data bodies.
// Node.js 20 or later, core modules only. See tests/fakes/README.md.

import { randomBytes, randomInt } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

import { renderImagePng } from './openai-fake.mjs';

const MAX_BODY_BYTES = 10 * 1024 * 1024; // the reference's 10 MiB request limit
const MAX_PROMPT_CHARS = 10000;
const MAX_SEED = 4294967294;
const MAX_DELAY_MS = 600_000;
const KEPT_REQUESTS = 500;

const ASPECT_RATIOS = ['16:9', '1:1', '21:9', '2:3', '3:2', '4:5', '5:4', '9:16', '9:21'];
const OUTPUT_FORMATS = ['jpeg', 'png', 'webp'];
const SD3_MODELS = ['sd3.5-large', 'sd3.5-large-turbo', 'sd3.5-medium', 'sd3-large', 'sd3-large-turbo', 'sd3-medium'];
const STYLE_PRESETS = [
  '3d-model', 'analog-film', 'anime', 'cinematic', 'comic-book', 'digital-art', 'enhance', 'fantasy-art', 'isometric',
  'line-art', 'low-poly', 'modeling-compound', 'neon-punk', 'origami', 'photographic', 'pixel-art', 'tile-texture',
];
const ENDPOINTS = new Set(['ultra', 'core', 'sd3']);
const KINDS = new Set(['filtered', 'not_image', 'wrong_size', 'truncated', 'hang', 'json_no_image', 'wrong_content_type']);

/**
 * Returns the pixel size the fake serves for `ratio` on `endpoint`. The reference documents only
 * 1024x1024 for 1:1 on Ultra and SD3 ("1 megapixel, default 1024x1024"). Every other size here is
 * the fake's own guess: about 1 megapixel (1.5 for Core) with sides that are multiples of 64.
 */
export function servedSize(endpoint, ratio) {
  if (ratio === '1:1' && endpoint !== 'core') {
    return { width: 1024, height: 1024 };
  }
  const [w, h] = ratio.split(':').map(Number);
  const pixels = endpoint === 'core' ? 1.5 * 1024 * 1024 : 1024 * 1024;
  const unit = Math.sqrt(pixels / (w * h));
  return { width: Math.round((w * unit) / 64) * 64, height: Math.round((h * unit) / 64) * 64 };
}

function defaultSettings() {
  return { delay_ms: 0, script: [] };
}

function errorBody(name, errors) {
  return { id: randomBytes(16).toString('hex'), name, errors };
}

function redact(value) {
  return typeof value === 'string' ? `***${value.slice(-4)}` : value;
}

function sendJson(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function readBody(req, limit) {
  return new Promise((resolvePromise, reject) => {
    const chunks = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        tooLarge = true;
        chunks.length = 0;
      } else if (!tooLarge) {
        chunks.push(chunk);
      }
    });
    req.on('end', () => resolvePromise(tooLarge ? null : Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function sleep(ms, signal) {
  return new Promise((resolvePromise) => {
    const timer = setTimeout(resolvePromise, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      resolvePromise();
    });
  });
}

/** Checks the form fields against the endpoint's schema; returns an error message or null. */
function validateFields(endpoint, fields) {
  const prompt = fields.prompt;
  if (prompt === undefined || prompt.length === 0) return 'prompt: is required';
  if ([...prompt].length > MAX_PROMPT_CHARS) return 'prompt: must be at most 10000 characters';
  if (fields.negative_prompt !== undefined && [...fields.negative_prompt].length > MAX_PROMPT_CHARS) {
    return 'negative_prompt: must be at most 10000 characters';
  }
  if (fields.aspect_ratio !== undefined && !ASPECT_RATIOS.includes(fields.aspect_ratio)) {
    return `aspect_ratio: must be one of ${ASPECT_RATIOS.join(', ')}`;
  }
  if (fields.seed !== undefined) {
    const seed = Number(fields.seed);
    if (!/^\d+$/.test(fields.seed) || !Number.isSafeInteger(seed) || seed > MAX_SEED) {
      return `seed: must be an integer between 0 and ${MAX_SEED}`;
    }
  }
  if (fields.output_format !== undefined && !OUTPUT_FORMATS.includes(fields.output_format)) {
    return `output_format: must be one of ${OUTPUT_FORMATS.join(', ')}`;
  }
  if (fields.output_format !== undefined && fields.output_format !== 'png') {
    return 'output_format: this fake encodes png only';
  }
  if (endpoint === 'sd3') {
    if (fields.model !== undefined && !SD3_MODELS.includes(fields.model)) {
      return `model: must be one of ${SD3_MODELS.join(', ')}`;
    }
    if (fields.mode !== undefined && fields.mode !== 'text-to-image') {
      return 'mode: this fake serves text-to-image only';
    }
  } else if (fields.model !== undefined) {
    return 'model: is not a parameter of this endpoint';
  }
  if (fields.style_preset !== undefined) {
    if (endpoint !== 'core') return 'style_preset: is not a parameter of this endpoint';
    if (!STYLE_PRESETS.includes(fields.style_preset)) return `style_preset: must be one of ${STYLE_PRESETS.join(', ')}`;
  }
  return null;
}

/** Starts the fake; resolves to {port, baseUrl, close}. */
export async function startFakeServer({ port = 0, apiKey = 'sk-test-fake', verbose = false } = {}) {
  let settings = defaultSettings();
  let stats = { generations: 0, max_concurrent: 0, in_flight: 0, last_request: null, requests: [] };
  const hangs = new AbortController();
  const sockets = new Set();

  function resetStats() {
    stats = { generations: 0, max_concurrent: 0, in_flight: stats.in_flight, last_request: null, requests: [] };
  }

  function applyControl(update) {
    if (update === null || typeof update !== 'object' || Array.isArray(update)) return 'body must be a JSON object';
    for (const [key, value] of Object.entries(update)) {
      if (key === 'delay_ms') {
        if (!Number.isInteger(value) || value < 0 || value > MAX_DELAY_MS) return `delay_ms must be 0 to ${MAX_DELAY_MS}`;
      } else if (key === 'script') {
        if (!Array.isArray(value) || value.some((entry) => entry === null || typeof entry !== 'object')) {
          return 'script must be an array of objects';
        }
        const bad = value.find((entry) => (entry.kind !== undefined && !KINDS.has(entry.kind)) ||
          (entry.status !== undefined && (!Number.isInteger(entry.status) || entry.status < 400 || entry.status > 599)));
        if (bad) return `script entry ${JSON.stringify(bad)} has an unknown kind or a status outside 400-599`;
      } else {
        return `unknown control key ${JSON.stringify(key)}`;
      }
    }
    settings = { ...settings, ...update, script: update.script ? [...update.script] : settings.script };
    return null;
  }

  async function handleGenerate(req, res, endpoint) {
    stats.generations += 1;
    stats.in_flight += 1;
    stats.max_concurrent = Math.max(stats.max_concurrent, stats.in_flight);
    try {
      const body = await readBody(req, MAX_BODY_BYTES);
      const headers = { ...req.headers, authorization: redact(req.headers.authorization) };
      const record = { path: req.url, headers, fields: null };
      stats.last_request = record;
      if (body === null) {
        sendJson(res, 413, errorBody('payload_too_large', ['payloads cannot be larger than 10MiB in size']));
        return;
      }
      if (req.headers.authorization !== `Bearer ${apiKey}`) {
        sendJson(res, 401, errorBody('unauthorized', ['authorization: invalid or missing header value']));
        return;
      }
      const contentType = req.headers['content-type'] ?? '';
      let fields = {};
      if (!contentType.startsWith('multipart/form-data')) {
        sendJson(res, 400, errorBody('bad_request', ['content-type: must be multipart/form-data']));
        return;
      }
      try {
        const form = await new Response(body, { headers: { 'content-type': contentType } }).formData();
        for (const [name, value] of form.entries()) {
          fields[name] = typeof value === 'string' ? value : `<file ${value.size} bytes>`;
        }
      } catch {
        sendJson(res, 400, errorBody('bad_request', ['body: is not valid multipart/form-data']));
        return;
      }
      record.fields = fields;
      stats.requests.push(fields);
      if (stats.requests.length > KEPT_REQUESTS) stats.requests.shift();

      const entry = settings.script.shift() ?? {};
      const delay = (entry.delay_ms ?? 0) + settings.delay_ms;
      if (entry.kind === 'hang') {
        await sleep(MAX_DELAY_MS, hangs.signal);
        res.destroy();
        return;
      }
      if (delay > 0) await sleep(delay, hangs.signal);
      if (entry.status !== undefined) {
        sendScriptedError(res, entry);
        return;
      }
      const accept = req.headers.accept ?? 'image/*';
      if (accept !== 'image/*' && accept !== 'application/json') {
        sendJson(res, 400, errorBody('bad_request', ['accept: must be image/* or application/json']));
        return;
      }
      const problem = validateFields(endpoint, fields);
      if (problem) {
        sendJson(res, 400, errorBody('bad_request', [problem]));
        return;
      }
      sendImage(res, endpoint, fields, accept, entry.kind);
    } finally {
      stats.in_flight -= 1;
    }
  }

  function sendScriptedError(res, entry) {
    const names = { 400: 'bad_request', 401: 'unauthorized', 402: 'payment_required', 403: 'content_moderation',
      404: 'not_found', 413: 'payload_too_large', 422: 'invalid_language', 429: 'rate_limit_exceeded' };
    const messages = {
      403: 'Your request was flagged by our content moderation system, as a result your request was denied and you were not charged.',
      422: 'English is the only supported language for this service.',
      429: 'You have exceeded the rate limit of 150 requests within a 10 second period.',
    };
    const name = entry.name ?? names[entry.status] ?? 'internal_error';
    const errors = entry.errors ?? [messages[entry.status] ?? (entry.status >= 500 ? 'An unexpected server error has occurred.' : 'some-field: is invalid')];
    const headers = { ...(entry.headers ?? {}) };
    if (entry.retry_after !== undefined && entry.retry_after !== null) headers['retry-after'] = String(entry.retry_after);
    sendJson(res, entry.status, errorBody(name, errors), headers);
  }

  function sendImage(res, endpoint, fields, accept, kind) {
    const model = endpoint === 'sd3' ? fields.model ?? 'sd3.5-large' : endpoint;
    const { width, height } = servedSize(endpoint, fields.aspect_ratio ?? '1:1');
    const requestedSeed = Number(fields.seed ?? 0);
    const seed = requestedSeed === 0 ? randomInt(1, MAX_SEED) : requestedSeed;
    const size = kind === 'wrong_size' ? `${width / 2}x${height / 2}` : `${width}x${height}`;
    let bytes = renderImagePng(model, fields.prompt, size, seed);
    if (kind === 'not_image') bytes = Buffer.from('this is not an image');
    if (kind === 'truncated') bytes = bytes.subarray(0, Math.floor(bytes.length / 2));
    const finishReason = kind === 'filtered' ? 'CONTENT_FILTERED' : 'SUCCESS';
    if (accept === 'application/json') {
      const body = { finish_reason: finishReason, seed };
      if (kind !== 'json_no_image') body.image = bytes.toString('base64');
      sendJson(res, 200, body);
      return;
    }
    const contentType = kind === 'wrong_content_type' ? 'text/html' : 'image/png';
    res.writeHead(200, { 'content-type': contentType, 'content-length': bytes.length, 'finish-reason': finishReason, seed: String(seed) });
    res.end(bytes);
  }

  async function handle(req, res) {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (verbose) process.stderr.write(`${req.method} ${url.pathname}\n`);
    const match = /^\/v2beta\/stable-image\/generate\/([a-z0-9]+)$/.exec(url.pathname);
    if (match && ENDPOINTS.has(match[1])) {
      if (req.method !== 'POST') {
        sendJson(res, 405, errorBody('method_not_allowed', [`${req.method}: use POST`]));
        return;
      }
      await handleGenerate(req, res, match[1]);
      return;
    }
    if (url.pathname === '/__control') {
      if (req.method === 'GET') {
        sendJson(res, 200, settings);
        return;
      }
      let update;
      try {
        update = JSON.parse((await readBody(req, MAX_BODY_BYTES))?.toString() ?? '');
      } catch {
        sendJson(res, 400, { error: 'body is not JSON' });
        return;
      }
      const problem = applyControl(update);
      sendJson(res, problem ? 400 : 200, problem ? { error: problem } : settings);
      return;
    }
    if (url.pathname === '/__stats' && req.method === 'GET') {
      sendJson(res, 200, { ...stats, script_remaining: settings.script.length });
      return;
    }
    if (url.pathname === '/__reset' && req.method === 'POST') {
      await readBody(req, MAX_BODY_BYTES);
      settings = defaultSettings();
      resetStats();
      sendJson(res, 200, settings);
      return;
    }
    sendJson(res, 404, errorBody('not_found', [`${url.pathname}: no such route`]));
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((error) => {
      if (!res.headersSent) sendJson(res, 500, errorBody('internal_error', [String(error)]));
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise((resolvePromise) => server.listen(port, '127.0.0.1', resolvePromise));
  const actualPort = server.address().port;
  return {
    port: actualPort,
    baseUrl: `http://127.0.0.1:${actualPort}`,
    close: () => new Promise((resolvePromise) => {
      hangs.abort();
      for (const socket of sockets) socket.destroy();
      server.closeAllConnections();
      server.close(() => resolvePromise());
    }),
  };
}

function parseArgs(argv) {
  const options = { port: 0, apiKey: 'sk-test-fake', verbose: false };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--port') options.port = Number(argv[++i]);
    else if (argv[i] === '--api-key') options.apiKey = argv[++i];
    else if (argv[i] === '--verbose') options.verbose = true;
    else throw new Error(`unknown argument ${argv[i]}; use --port N, --api-key KEY or --verbose`);
  }
  return options;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const fake = await startFakeServer(parseArgs(process.argv.slice(2)));
  process.stdout.write(`${JSON.stringify({ port: fake.port })}\n`);
  const stop = async () => {
    await fake.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
