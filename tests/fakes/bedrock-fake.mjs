#!/usr/bin/env node
// A fake Amazon Bedrock runtime for black-box tests: InvokeModel
// (POST /model/{modelId}/invoke) for the Titan Image Generator, Nova Canvas
// and Stability image models. It verifies every request's AWS Signature
// Version 4 with its own node:crypto implementation, so a signing bug in the
// gateway fails here the way it would fail at AWS. Core modules only.

import { createHash, createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

import { renderImagePng } from './openai-fake.mjs';

const HOST = '127.0.0.1';
const DEFAULTS = {
  accessKey: 'AKIDFAKEBEDROCK0001',
  secretKey: 'fake/secret+KEY=bedrock0001',
  sessionToken: '',
  region: 'us-east-1',
};
const SERVICE = 'bedrock';
const MAX_BODY_BYTES = 1024 * 1024;
const MAX_DELAY_MS = 10 * 60 * 1000;
const MAX_RECORDED_REQUESTS = 500;
// AWS accepts a request signed up to five minutes before or after its clock.
const MAX_CLOCK_SKEW_MS = 5 * 60 * 1000;

const USAGE = `usage: node tests/fakes/bedrock-fake.mjs [--port 0] [--access-key ID] [--secret-key KEY]
       [--session-token TOKEN] [--region us-east-1] [--verbose]`;

const SIGNATURE_MISMATCH =
  'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key ' +
  'and signing method. Consult the service documentation for details.';

// The sizes Titan Image Generator v1 and v2 accept.
const TITAN_SIZES = new Set([
  '1024x1024', '768x768', '512x512', '768x1152', '384x576', '1152x768', '576x384', '768x1280', '384x640',
  '1280x768', '640x384', '896x1152', '448x576', '1152x896', '576x448', '768x1408', '384x704', '1408x768',
  '704x384', '640x1408', '320x704', '1408x640', '704x320', '1152x640', '1173x640',
]);

// Stability aspect ratios and the size the fake renders for each.
export const STABILITY_RATIOS = {
  '1:1': [1024, 1024], '16:9': [1344, 768], '21:9': [1536, 640], '2:3': [832, 1216], '3:2': [1216, 832],
  '4:5': [896, 1088], '5:4': [1088, 896], '9:16': [768, 1344], '9:21': [640, 1536],
};

const MODELS = {
  'amazon.titan-image-generator-v1': 'titan',
  'amazon.titan-image-generator-v2:0': 'titan',
  'amazon.nova-canvas-v1:0': 'nova',
  'stability.sd3-5-large-v1:0': 'stability',
  'stability.stable-image-ultra-v1:0': 'stability',
  'stability.stable-image-ultra-v1:1': 'stability',
  'stability.stable-image-core-v1:0': 'stability',
  'stability.stable-image-core-v1:1': 'stability',
};

const DEFAULT_ERROR_TYPES = {
  400: 'ValidationException',
  403: 'AccessDeniedException',
  404: 'ResourceNotFoundException',
  408: 'ModelTimeoutException',
  424: 'ModelErrorException',
  429: 'ThrottlingException',
  500: 'InternalServerException',
  503: 'ServiceUnavailableException',
};
const DEFAULT_ERROR_STATUS = { ServiceQuotaExceededException: 400, ModelNotReadyException: 429 };
const SCRIPT_KINDS = ['empty_images', 'not_image', 'wrong_size', 'truncated', 'hang', 'content_filtered', 'inference_error'];

// ---------------------------------------------------------------------------
// Signature Version 4, written from AWS's "Create a signed AWS API request".
// ---------------------------------------------------------------------------

/** Percent-encodes UTF-8 bytes except A-Z a-z 0-9 - . _ ~ (and '/' when keepSlash). */
export function awsEncode(text, keepSlash) {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const char = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-._~]/.test(char) || (keepSlash && char === '/')) {
      out += char;
    } else {
      out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
    }
  }
  return out;
}

function hmac(key, data) {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

export function sha256Hex(data) {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Returns {canonicalRequest, stringToSign, signature} for a request as it arrived:
 * rawPath and rawQuery exactly as on the wire, headers as {lower-case name: [values]}.
 * Services other than S3 encode the wire path once more.
 */
export function computeSignature({ method, rawPath, rawQuery, headers, signedHeaders, payloadHash, date, region, service, secretKey }) {
  const canonicalUri = awsEncode(rawPath || '/', true);
  const pairs = [];
  for (const part of (rawQuery ?? '').split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const name = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
    const value = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1));
    pairs.push([awsEncode(name, false), awsEncode(value, false)]);
  }
  pairs.sort(comparePairs);
  const canonicalQuery = pairs.map(([n, v]) => `${n}=${v}`).join('&');
  const canonicalHeaders = signedHeaders
    .map((name) => `${name}:${(headers[name] ?? []).map((v) => v.trim().replace(/\s+/g, ' ')).join(',')}\n`)
    .join('');
  const canonicalRequest = [method, canonicalUri, canonicalQuery, canonicalHeaders, signedHeaders.join(';'), payloadHash].join('\n');
  const day = date.slice(0, 8);
  const scope = `${day}/${region}/${service}/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', date, scope, sha256Hex(canonicalRequest)].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${secretKey}`, day), region), service), 'aws4_request');
  return { canonicalRequest, stringToSign, signature: createHmac('sha256', key).update(stringToSign).digest('hex') };
}

/** Orders encoded query pairs by name and then by value, byte by byte. */
function comparePairs(a, b) {
  if (a[0] !== b[0]) {
    return a[0] < b[0] ? -1 : 1;
  }
  if (a[1] !== b[1]) {
    return a[1] < b[1] ? -1 : 1;
  }
  return 0;
}

/** Parses "20150830T123600Z" into a millisecond timestamp, or NaN. */
function parseAmzDate(text) {
  const match = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(text ?? '');
  if (!match) return Number.NaN;
  const [, y, mo, d, h, mi, s] = match.map(Number);
  return Date.UTC(y, mo - 1, d, h, mi, s);
}

function formatAmzDate(ms) {
  return new Date(ms).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
}

// ---------------------------------------------------------------------------
// Responses.
// ---------------------------------------------------------------------------

class AwsError extends Error {
  constructor(status, type, message, headers = {}) {
    super(message);
    this.status = status;
    this.type = type;
    this.headers = headers;
  }
}

function sendJson(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'x-amzn-requestid': randomUUID(),
    ...headers,
  });
  res.end(text);
}

function sendAwsError(res, error) {
  sendJson(res, error.status, { message: error.message }, { 'x-amzn-errortype': error.type, ...error.headers });
}

function invalid(message) {
  return new AwsError(400, 'ValidationException', `Malformed input request: ${message}, please reformat your input and try again.`);
}

function scriptedError(entry) {
  const type = entry.type ?? DEFAULT_ERROR_TYPES[entry.status] ?? 'InternalServerException';
  const status = entry.status ?? DEFAULT_ERROR_STATUS[type] ?? 400;
  const message = entry.message ?? `The fake Bedrock answered ${type} as scripted.`;
  const headers = { ...(entry.headers ?? {}) };
  if (entry.retry_after !== undefined && entry.retry_after !== null) headers['retry-after'] = String(entry.retry_after);
  return new AwsError(status, type, message, headers);
}

// ---------------------------------------------------------------------------
// Request validation per model family.
// ---------------------------------------------------------------------------

function codePoints(text) {
  return [...text].length;
}

function checkKeys(object, allowed, where) {
  for (const key of Object.keys(object)) {
    if (!allowed.includes(key)) throw invalid(`${where}: extraneous key [${key}] is not permitted`);
  }
}

function checkInteger(value, name, min, max) {
  if (!Number.isInteger(value)) throw invalid(`${name}: expected type: Integer, found: ${typeof value}`);
  if (value < min) throw invalid(`${name}: ${value} is not greater or equal to ${min}`);
  if (value > max) throw invalid(`${name}: ${value} is not less or equal to ${max}`);
}

function checkText(value, name, min, max) {
  if (typeof value !== 'string') throw invalid(`${name}: expected type: String, found: ${typeof value}`);
  const length = codePoints(value);
  if (length < min) throw invalid(`${name}: expected minLength: ${min}, actual: ${length}`);
  if (length > max) throw invalid(`${name}: expected maxLength: ${max}, actual: ${length}`);
}

/** Validates a Titan or Nova Canvas body; returns {prompt, width, height, count, seed}. */
function validateAmazonBody(family, body) {
  const limits = family === 'titan'
    ? { text: 512, seed: 2147483646 }
    : { text: 1024, seed: 858993459 };
  checkKeys(body, ['taskType', 'textToImageParams', 'imageGenerationConfig'], '#');
  if (body.taskType !== 'TEXT_IMAGE') throw invalid(`#/taskType: ${JSON.stringify(body.taskType)} is not a valid enum value`);
  const params = body.textToImageParams;
  if (typeof params !== 'object' || params === null) throw invalid('#: required key [textToImageParams] not found');
  checkKeys(params, ['text', 'negativeText'], '#/textToImageParams');
  checkText(params.text, '#/textToImageParams/text', 1, limits.text);
  if (params.negativeText !== undefined) checkText(params.negativeText, '#/textToImageParams/negativeText', 1, limits.text);

  const config = body.imageGenerationConfig ?? {};
  checkKeys(config, ['numberOfImages', 'width', 'height', 'cfgScale', 'seed', 'quality'], '#/imageGenerationConfig');
  const count = config.numberOfImages ?? 1;
  checkInteger(count, '#/imageGenerationConfig/numberOfImages', 1, 5);
  const width = config.width ?? 1024;
  const height = config.height ?? 1024;
  checkInteger(width, '#/imageGenerationConfig/width', 320, 4096);
  checkInteger(height, '#/imageGenerationConfig/height', 320, 4096);

  if (family === 'titan' && !TITAN_SIZES.has(`${width}x${height}`)) {
    throw new AwsError(400, 'ValidationException', `The provided image size ${width}x${height} is not supported by this model.`);
  }
  if (family === 'nova') {
    if (width % 16 !== 0 || height % 16 !== 0) throw invalid('#/imageGenerationConfig: width and height must be divisible by 16');
    if (width > 4 * height || height > 4 * width) throw invalid('#/imageGenerationConfig: the aspect ratio must be between 1:4 and 4:1');
    if (width * height > 4194304) throw invalid('#/imageGenerationConfig: the image must have at most 4194304 pixels');
  }
  if (config.cfgScale !== undefined) {
    if (typeof config.cfgScale !== 'number' || config.cfgScale < 1.1 || config.cfgScale > 10) {
      throw invalid('#/imageGenerationConfig/cfgScale: must be a number from 1.1 to 10');
    }
  }

  const seed = config.seed ?? (family === 'titan' ? 42 : 12);
  checkInteger(seed, '#/imageGenerationConfig/seed', 0, limits.seed);
  if (config.quality !== undefined && !['standard', 'premium'].includes(config.quality)) {
    throw invalid(`#/imageGenerationConfig/quality: ${JSON.stringify(config.quality)} is not a valid enum value`);
  }
  return { prompt: params.text, width, height, count, seed };
}

/** Validates a Stability body; returns {prompt, width, height, count, seed, outputFormat}. */
function validateStabilityBody(body) {
  checkKeys(body, ['prompt', 'negative_prompt', 'aspect_ratio', 'seed', 'output_format', 'mode'], '#');
  if (body.prompt === undefined) throw invalid('#: required key [prompt] not found');
  checkText(body.prompt, '#/prompt', 0, 10000);
  if (body.negative_prompt !== undefined) checkText(body.negative_prompt, '#/negative_prompt', 0, 10000);
  if (body.mode !== undefined && body.mode !== 'text-to-image') throw invalid('#/mode: only text-to-image is served by this fake');
  const ratio = body.aspect_ratio ?? '1:1';
  if (!STABILITY_RATIOS[ratio]) throw invalid(`#/aspect_ratio: ${JSON.stringify(ratio)} is not a valid enum value`);
  const seed = body.seed ?? 0;
  checkInteger(seed, '#/seed', 0, 4294967294);
  const outputFormat = body.output_format ?? 'png';
  if (!['png', 'jpeg'].includes(outputFormat)) throw invalid(`#/output_format: ${JSON.stringify(outputFormat)} is not a valid enum value`);
  if (outputFormat !== 'png') throw invalid('#/output_format: this fake encodes png only');
  const [width, height] = STABILITY_RATIOS[ratio];
  return { prompt: body.prompt, width, height, count: 1, seed };
}

function familyOf(modelId) {
  const bare = modelId.replace(/^(us|eu|apac|global)\./, '');
  return MODELS[bare];
}

// ---------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------

function maskSecret(value) {
  return typeof value === 'string' && value.length > 4 ? `***${value.slice(-4)}` : '***';
}

export async function startFakeServer({ port = 0, accessKey = DEFAULTS.accessKey, secretKey = DEFAULTS.secretKey,
  sessionToken = DEFAULTS.sessionToken, region = DEFAULTS.region, verbose = false } = {}) {
  const settings = { delay_ms: 0, script: [] };
  const stats = {
    invocations: 0, max_concurrent: 0, in_flight: 0, signature_failures: 0, last_request: null, requests: [],
  };
  const sockets = new Set();
  const pendingTimers = new Set();

  const wait = (ms) => new Promise((resolvePromise) => {
    const timer = setTimeout(() => {
      pendingTimers.delete(timer);
      resolvePromise();
    }, ms);
    pendingTimers.add(timer);
  });

  /** Throws an AwsError unless the request carries a valid signature for this fake's keys. */
  function verifySignature(req, rawPath, rawQuery, body) {
    const authorization = req.headers.authorization;
    if (!authorization) throw new AwsError(403, 'MissingAuthenticationTokenException', 'Missing Authentication Token');
    const match = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$/.exec(authorization);
    if (!match) {
      throw new AwsError(403, 'IncompleteSignatureException',
        `Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters. Authorization=${authorization.split(' ')[0]}`);
    }

    const [, keyId, day, scopeRegion, scopeService, signedList, signature] = match;
    if (keyId !== accessKey) throw new AwsError(403, 'UnrecognizedClientException', 'The security token included in the request is invalid.');
    const amzDate = req.headers['x-amz-date'];
    const signedHeaders = signedList.split(';');
    if (!amzDate || !signedHeaders.includes('host') || !signedHeaders.includes('x-amz-date')) {
      throw new AwsError(403, 'IncompleteSignatureException', 'Signature must cover the host and x-amz-date headers.');
    }

    const sorted = [...signedHeaders].sort();
    if (sorted.join(';') !== signedList) throw new AwsError(403, 'InvalidSignatureException', SIGNATURE_MISMATCH);
    const signedAt = parseAmzDate(amzDate);
    if (Number.isNaN(signedAt)) throw new AwsError(403, 'IncompleteSignatureException', `Date must be in ISO-8601 'basic format'. Got '${amzDate}'.`);

    const now = Date.now();
    if (signedAt < now - MAX_CLOCK_SKEW_MS) {
      throw new AwsError(403, 'InvalidSignatureException',
        `Signature expired: ${amzDate} is now earlier than ${formatAmzDate(now - MAX_CLOCK_SKEW_MS)} (${formatAmzDate(now)} - 5 min.)`);
    }
    if (signedAt > now + MAX_CLOCK_SKEW_MS) {
      throw new AwsError(403, 'InvalidSignatureException',
        `Signature not yet current: ${amzDate} is still later than ${formatAmzDate(now + MAX_CLOCK_SKEW_MS)} (${formatAmzDate(now)} + 5 min.)`);
    }

    if (day !== amzDate.slice(0, 8)) throw new AwsError(403, 'InvalidSignatureException', `Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '${day}' != '${amzDate.slice(0, 8)}', from '${amzDate}'.`);
    if (scopeRegion !== region) throw new AwsError(403, 'InvalidSignatureException', `Credential should be scoped to a valid region. `);
    if (scopeService !== SERVICE) throw new AwsError(403, 'InvalidSignatureException', `Credential should be scoped to correct service: '${SERVICE}'. `);
    if (sessionToken && req.headers['x-amz-security-token'] !== sessionToken) {
      throw new AwsError(403, 'UnrecognizedClientException', 'The security token included in the request is invalid.');
    }
    if (sessionToken && !signedHeaders.includes('x-amz-security-token')) throw new AwsError(403, 'InvalidSignatureException', SIGNATURE_MISMATCH);

    const headers = {};
    for (const name of signedHeaders) {
      const values = req.headersDistinct[name];
      if (!values) throw new AwsError(403, 'InvalidSignatureException', SIGNATURE_MISMATCH);
      headers[name] = values;
    }
    const expected = computeSignature({
      method: req.method, rawPath, rawQuery, headers, signedHeaders, payloadHash: sha256Hex(body), date: amzDate,
      region, service: SERVICE, secretKey,
    });
    if (!timingSafeEqual(Buffer.from(expected.signature), Buffer.from(signature))) {
      if (verbose) process.stderr.write(`bedrock-fake: canonical request was:\n${expected.canonicalRequest}\n`);
      throw new AwsError(403, 'InvalidSignatureException', SIGNATURE_MISMATCH);
    }
  }

  function record(req, rawPath, body) {
    const headers = {};
    for (const [name, value] of Object.entries(req.headers)) {
      headers[name] = ['authorization', 'x-amz-security-token'].includes(name) ? maskSecret(value) : value;
    }
    let parsed;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      parsed = body.toString('utf8');
    }
    stats.last_request = { method: req.method, path: rawPath, headers, body: parsed };
    stats.requests.push(parsed);
    if (stats.requests.length > MAX_RECORDED_REQUESTS) stats.requests.shift();
  }

  function successBody(family, parsed, kind) {
    let { width, height } = parsed;
    if (kind === 'wrong_size') {
      width = Math.max(1, Math.floor(width / 2));
      height = Math.max(1, Math.floor(height / 2));
    }
    const images = [];
    for (let index = 0; index < parsed.count; index += 1) {
      let png = renderImagePng(parsed.model, parsed.prompt, `${width}x${height}`, index);
      if (kind === 'truncated') png = png.subarray(0, Math.floor(png.length / 2));
      if (kind === 'not_image') png = Buffer.from('this is not an image');
      images.push(png.toString('base64'));
    }
    if (kind === 'empty_images') images.length = 0;
    if (family === 'stability') {
      return { seeds: images.map(() => parsed.seed), finish_reasons: images.map(() => null), images };
    }
    return { images, error: null };
  }

  async function handleInvoke(req, res, rawPath, rawQuery, body, modelId) {
    stats.invocations += 1;
    record(req, rawPath, body);
    verifySignature(req, rawPath, rawQuery, body);

    const entry = settings.script.shift();
    const delay = (entry?.delay_ms ?? 0) + settings.delay_ms;
    if (delay > 0) await wait(delay);
    if (entry?.kind === 'hang') {
      await new Promise((resolvePromise) => res.once('close', resolvePromise));
      return;
    }
    if (entry && entry.kind === undefined) throw scriptedError(entry);

    const family = familyOf(modelId);
    if (!family) throw new AwsError(400, 'ValidationException', 'The provided model identifier is invalid.');
    let json;
    try {
      json = JSON.parse(body.toString('utf8'));
    } catch (error) {
      throw invalid(`expected a JSON object (${error.message})`);
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) throw invalid('#: expected type: JSONObject');
    const parsed = family === 'stability' ? validateStabilityBody(json) : validateAmazonBody(family, json);
    parsed.model = modelId;

    if (entry?.kind === 'content_filtered') {
      if (family === 'stability') {
        sendJson(res, 200, { finish_reasons: ['Filter reason: prompt'] });
        return;
      }
      throw new AwsError(400, 'ValidationException', 'This request has been blocked by our content filters.');
    }
    if (entry?.kind === 'inference_error') {
      if (family === 'stability') {
        sendJson(res, 200, { seeds: [parsed.seed], finish_reasons: ['Inference error'], images: [] });
        return;
      }
      throw new AwsError(424, 'ModelErrorException', 'The model failed to process the request.');
    }
    sendJson(res, 200, successBody(family, parsed, entry?.kind), {
      'x-amzn-bedrock-invocation-latency': String(5 + (delay | 0)),
    });
  }

  function validateControl(update) {
    if (typeof update !== 'object' || update === null || Array.isArray(update)) throw new Error('expected a JSON object');
    for (const key of Object.keys(update)) {
      if (!['delay_ms', 'script'].includes(key)) throw new Error(`unknown key ${JSON.stringify(key)}`);
    }
    if (update.delay_ms !== undefined && (!Number.isInteger(update.delay_ms) || update.delay_ms < 0 || update.delay_ms > MAX_DELAY_MS)) {
      throw new Error(`delay_ms must be an integer from 0 to ${MAX_DELAY_MS}`);
    }
    if (update.script !== undefined) {
      if (!Array.isArray(update.script)) throw new Error('script must be an array');
      for (const entry of update.script) {
        if (typeof entry !== 'object' || entry === null) throw new Error('each script entry must be an object');
        if (entry.kind !== undefined && !SCRIPT_KINDS.includes(entry.kind)) throw new Error(`unknown script kind ${JSON.stringify(entry.kind)}`);
        if (entry.kind === undefined && entry.status === undefined && entry.type === undefined) {
          throw new Error('a script entry needs kind, status or type');
        }
      }
    }
  }

  async function handle(req, res) {
    const url = req.url ?? '/';
    const queryStart = url.indexOf('?');
    const rawPath = queryStart < 0 ? url : url.slice(0, queryStart);
    const rawQuery = queryStart < 0 ? '' : url.slice(queryStart + 1);

    const chunks = [];
    let size = 0;
    for await (const chunk of req) {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    }
    if (size > MAX_BODY_BYTES) {
      sendAwsError(res, new AwsError(413, 'ValidationException', 'Input is too long for requested model.'));
      return;
    }
    const body = Buffer.concat(chunks);

    if (rawPath === '/__control') {
      if (req.method === 'GET') return sendJson(res, 200, settings);
      try {
        const update = JSON.parse(body.toString('utf8') || '{}');
        validateControl(update);
        Object.assign(settings, update);
        return sendJson(res, 200, settings);
      } catch (error) {
        return sendJson(res, 400, { message: `bad control request: ${error.message}` });
      }
    }
    if (rawPath === '/__stats') return sendJson(res, 200, { ...stats, script_remaining: settings.script.length });
    if (rawPath === '/__reset') {
      Object.assign(settings, { delay_ms: 0, script: [] });
      Object.assign(stats, { invocations: 0, max_concurrent: stats.in_flight, signature_failures: 0, last_request: null, requests: [] });
      return sendJson(res, 200, settings);
    }
    if (rawPath === '/__expected') {
      const params = new URL(url, 'http://fake').searchParams;
      const png = renderImagePng(params.get('model') ?? '', params.get('prompt') ?? '', `${params.get('width')}x${params.get('height')}`, Number(params.get('index') ?? 0));
      return sendJson(res, 200, { sha256: sha256Hex(png), bytes: png.length });
    }

    const invoke = /^\/model\/([^/]+)\/invoke$/.exec(rawPath);
    if (!invoke) {
      return sendAwsError(res, new AwsError(404, 'UnknownOperationException', `No operation matches ${req.method} ${rawPath}.`));
    }
    if (req.method !== 'POST') return sendAwsError(res, new AwsError(405, 'UnknownOperationException', 'InvokeModel takes POST only.'));

    let modelId;
    try {
      modelId = decodeURIComponent(invoke[1]);
    } catch {
      return sendAwsError(res, invalid('the model identifier is not valid percent-encoding'));
    }
    stats.in_flight += 1;
    stats.max_concurrent = Math.max(stats.max_concurrent, stats.in_flight);
    try {
      await handleInvoke(req, res, rawPath, rawQuery, body, modelId);
    } catch (error) {
      if (!(error instanceof AwsError)) throw error;
      if (error.status === 403) stats.signature_failures += 1;
      if (verbose) process.stderr.write(`bedrock-fake: ${error.status} ${error.type}: ${error.message}\n`);
      if (!res.headersSent && !res.destroyed) sendAwsError(res, error);
    } finally {
      stats.in_flight -= 1;
    }
  }

  const server = createServer((req, res) => {
    if (verbose) process.stderr.write(`bedrock-fake: ${req.method} ${req.url}\n`);
    handle(req, res).catch((error) => {
      process.stderr.write(`bedrock-fake: ${error.stack ?? error}\n`);
      if (!res.headersSent) sendAwsError(res, new AwsError(500, 'InternalServerException', 'The fake failed.'));
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise((resolvePromise, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, resolvePromise);
  });
  const actualPort = server.address().port;
  return {
    port: actualPort,
    baseUrl: `http://${HOST}:${actualPort}`,
    close: () => new Promise((resolvePromise) => {
      for (const timer of pendingTimers) clearTimeout(timer);
      for (const socket of sockets) socket.destroy();
      server.close(() => resolvePromise());
    }),
  };
}

function parseArguments(argv) {
  const options = {};
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    const takeValue = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      i += 1;
      return argv[i];
    };
    if (flag === '--port') {
      const text = takeValue();
      if (!/^\d+$/.test(text) || Number(text) > 65535) throw new Error(`--port must be an integer from 0 to 65535, got ${JSON.stringify(text)}`);
      options.port = Number(text);
    } else if (flag === '--access-key') {
      options.accessKey = takeValue();
    } else if (flag === '--secret-key') {
      options.secretKey = takeValue();
    } else if (flag === '--session-token') {
      options.sessionToken = takeValue();
    } else if (flag === '--region') {
      options.region = takeValue();
    } else if (flag === '--verbose') {
      options.verbose = true;
    } else if (flag === '--help' || flag === '-h') {
      options.help = true;
    } else {
      throw new Error(`unknown argument ${JSON.stringify(flag)}`);
    }
  }
  return options;
}

async function main() {
  let options;
  try {
    options = parseArguments(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`bedrock-fake: ${error.message}\n${USAGE}\n`);
    process.exit(2);
  }
  if (options.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const fake = await startFakeServer(options);
  process.stdout.write(`{"port": ${fake.port}}\n`);
  process.stderr.write(`bedrock-fake: listening on ${fake.baseUrl}\n`);
  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`bedrock-fake: received ${signal}, stopping\n`);
    setTimeout(() => process.exit(0), 2000).unref();
    fake.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error) => {
    process.stderr.write(`bedrock-fake: failed to start: ${error.stack ?? error}\n`);
    process.exit(1);
  });
}
