#!/usr/bin/env node
// Fake OpenAI Images API (POST /v1/images/generations) for pixelgate's black-box tests.
//
//   node tests/fakes/openai-fake.mjs [--port 0] [--api-key sk-test-fake] [--verbose]
//
// The server listens on 127.0.0.1 only and prints one line, {"port": N}, to stdout once it
// accepts connections. tests/fakes/README.md describes the control API (/__control,
// /__stats, /__reset, /__expected) and which OpenAI behaviours are confirmed or inferred.
// The module also exports startFakeServer() and the PNG helpers for in-process use.

import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';
import { deflateSync } from 'node:zlib';

const HOST = '127.0.0.1';
const DEFAULT_API_KEY = 'sk-test-fake';
const MAX_BODY_BYTES = 1024 * 1024;
// Past this many bytes an oversized body is no longer drained, and the connection is closed.
const MAX_DRAINED_BYTES = 64 * MAX_BODY_BYTES;
// Image URLs of dall-e-2 and dall-e-3 are valid for 60 minutes, as the API reference states.
const DEFAULT_URL_TTL_MS = 60 * 60 * 1000;
const MAX_RECORDED_REQUESTS = 500;
const MAX_STORED_FILES = 2000;
const MAX_CACHED_IMAGES = 32;
const MAX_DELAY_MS = 10 * 60 * 1000;
const MAX_EXPECTED_EDGE_PIXELS = 4096;

// ---------------------------------------------------------------------------
// Models and their documented limits (openai-node's ImageGenerateParams doc comments).
// ---------------------------------------------------------------------------

const COMMON_PARAMETERS = ['prompt', 'model', 'n', 'size', 'quality', 'user', 'safety_identifier'];

const DALL_E_2 = {
  family: 'dall-e',
  sizes: ['256x256', '512x512', '1024x1024'],
  defaultSize: '1024x1024',
  qualities: ['standard', 'auto'],
  maxImages: 10,
  maxPromptChars: 1000,
  revisesPrompt: false,
  parameters: [...COMMON_PARAMETERS, 'response_format'],
};

const DALL_E_3 = {
  family: 'dall-e',
  sizes: ['1024x1024', '1792x1024', '1024x1792'],
  defaultSize: '1024x1024',
  qualities: ['standard', 'hd', 'auto'],
  maxImages: 1,
  maxPromptChars: 4000,
  revisesPrompt: true,
  parameters: [...COMMON_PARAMETERS, 'response_format', 'style'],
};

const GPT_IMAGE = {
  family: 'gpt-image',
  sizes: ['1024x1024', '1536x1024', '1024x1536', 'auto'],
  defaultSize: 'auto',
  qualities: ['low', 'medium', 'high', 'auto'],
  maxImages: 10,
  maxPromptChars: 32000,
  revisesPrompt: false,
  parameters: [
    ...COMMON_PARAMETERS,
    'background',
    'moderation',
    'output_compression',
    'output_format',
    'partial_images',
    'stream',
  ],
};

// gpt-image-2 and later take any WIDTHxHEIGHT within FLEXIBLE_SIZE_LIMITS, plus the standard GPT
// image sizes and auto. The 2.5 models add the xhigh and max qualities.
const GPT_IMAGE_FLEXIBLE = { ...GPT_IMAGE, flexibleSize: true };
const GPT_IMAGE_FLEXIBLE_XHIGH = { ...GPT_IMAGE_FLEXIBLE, qualities: ['low', 'medium', 'high', 'xhigh', 'max', 'auto'] };

// From the size and quality doc comments of openai-node 7.60.0: both edges divisible by 16, an
// aspect ratio from 1:3 to 3:1, and at most 3840x2160 in either orientation.
// NOTE: the API also applies "the model's current pixel and edge limits", which are not
// published, so the fake accepts every size inside these bounds.
const FLEXIBLE_SIZE_LIMITS = { multiple: 16, maxAspectRatio: 3, maxLongEdge: 3840, maxShortEdge: 2160 };

const MODELS = {
  'dall-e-2': DALL_E_2,
  'dall-e-3': DALL_E_3,
  'gpt-image-1': GPT_IMAGE,
  'gpt-image-1-mini': GPT_IMAGE,
  'gpt-image-1.5': GPT_IMAGE,
  'chatgpt-image-latest': GPT_IMAGE,
  'gpt-image-2': GPT_IMAGE_FLEXIBLE,
  'gpt-image-2-2026-04-21': GPT_IMAGE_FLEXIBLE,
};

// openai-node 7.60.0 lists gpt-image-2.5-sunburst, gpt-image-2.5-flare, their 2026-09-08
// snapshots, gpt-image-2.6-sunburst and gpt-image-2.6-flare. The fake accepts every name in
// these two series, so new snapshot names work without a change here.
const MODEL_SERIES = [
  { pattern: /^gpt-image-2\.5-[a-z0-9]+(-[a-z0-9]+)*$/, spec: GPT_IMAGE_FLEXIBLE_XHIGH },
  { pattern: /^gpt-image-2\.6-[a-z0-9]+(-[a-z0-9]+)*$/, spec: GPT_IMAGE_FLEXIBLE },
];

/** Returns the rules for a model name, or undefined for a model that the fake does not serve. */
export function modelSpec(modelName) {
  if (Object.hasOwn(MODELS, modelName)) {
    return MODELS[modelName];
  }
  return MODEL_SERIES.find((series) => series.pattern.test(modelName))?.spec;
}

// The API reference states that a request without `model` uses dall-e-2 "unless a parameter
// specific to gpt-image-1 is used". These are the parameters it documents as gpt-image-1 only.
const GPT_IMAGE_ONLY_PARAMETERS = ['background', 'moderation', 'output_compression', 'output_format'];

// Output image tokens per image, from OpenAI's published gpt-image-1 table (quality x size).
const OUTPUT_TOKENS = {
  low: { '1024x1024': 272, '1024x1536': 408, '1536x1024': 400 },
  medium: { '1024x1024': 1056, '1024x1536': 1584, '1536x1024': 1568 },
  high: { '1024x1024': 4160, '1024x1536': 6240, '1536x1024': 6208 },
};

// NOTE: the real API picks the quality and background for "auto" itself, so these values are guesses.
const AUTO_QUALITY = 'high';
const AUTO_BACKGROUND = 'opaque';
const AUTO_SIZE = '1024x1024';

const SCRIPT_KINDS = ['empty_data', 'not_image', 'wrong_size', 'truncated', 'hang', 'force_url'];
const SCRIPT_ERROR_FIELDS = ['status', 'code', 'message', 'type', 'param', 'retry_after', 'retry_after_ms', 'headers', 'delay_ms'];
const SCRIPT_KIND_FIELDS = ['kind', 'delay_ms'];

// ---------------------------------------------------------------------------
// PNG encoding: 8-bit RGB or RGBA, one IDAT chunk, filter type 0 on every scanline.
// ---------------------------------------------------------------------------

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const PNG_COLOR_TYPE_RGB = 2;
const PNG_COLOR_TYPE_RGBA = 6;

const CRC32_TABLE = buildCrc32Table();

function buildCrc32Table() {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) {
      c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    }
    table[n] = c >>> 0;
  }
  return table;
}

/** Computes the CRC-32 (ISO 3309, as PNG uses it) over the concatenation of `buffers`. */
export function crc32(...buffers) {
  let crc = 0xffffffff;
  for (const buffer of buffers) {
    for (let i = 0; i < buffer.length; i++) {
      crc = CRC32_TABLE[(crc ^ buffer[i]) & 0xff] ^ (crc >>> 8);
    }
  }
  return (crc ^ 0xffffffff) >>> 0;
}

function pngChunk(type, data) {
  const typeBytes = Buffer.from(type, 'ascii');
  const header = Buffer.alloc(8);
  header.writeUInt32BE(data.length, 0);
  typeBytes.copy(header, 4);
  const trailer = Buffer.alloc(4);
  trailer.writeUInt32BE(crc32(typeBytes, data), 0);
  return Buffer.concat([header, data, trailer]);
}

/**
 * Encodes raw scanlines (each one filter byte followed by the pixels) as a PNG file.
 * The compression level is fixed so that the same scanlines always give the same bytes.
 */
export function encodePng(width, height, scanlines, hasAlpha) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = hasAlpha ? PNG_COLOR_TYPE_RGBA : PNG_COLOR_TYPE_RGB;
  ihdr[10] = 0; // compression method: deflate
  ihdr[11] = 0; // filter method: adaptive, with filter type 0 (None) on every line
  ihdr[12] = 0; // no interlacing
  return Buffer.concat([
    PNG_SIGNATURE,
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(scanlines, { level: 6 })),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

// ---------------------------------------------------------------------------
// Deterministic images.
// ---------------------------------------------------------------------------

/** Parses "WIDTHxHEIGHT" or "auto" (1024x1024) into { width, height }, or returns null for anything else. */
export function parseImageSize(size) {
  const match = /^(\d{1,5})x(\d{1,5})$/.exec(size === 'auto' ? AUTO_SIZE : String(size));
  if (!match) {
    return null;
  }
  const width = Number(match[1]);
  const height = Number(match[2]);
  if (width < 1 || height < 1) {
    return null;
  }
  return { width, height };
}

function contrastingColor(base, candidate) {
  const distance = Math.abs(base[0] - candidate[0]) + Math.abs(base[1] - candidate[1]) + Math.abs(base[2] - candidate[2]);
  return distance >= 192 ? candidate : base.map((channel) => 255 - channel);
}

function stripeBounds(length, stripeCount) {
  // The edge is cut into 2 * stripeCount + 1 equal bands, and every odd band is a stripe.
  const band = Math.max(1, Math.floor(length / (2 * stripeCount + 1)));
  const bounds = [];
  for (let k = 0; k < stripeCount; k++) {
    const start = (2 * k + 1) * band;
    if (start >= length) {
      break;
    }
    bounds.push([start, Math.min(length, start + band)]);
  }
  return bounds;
}

function fillPixels(row, pixel, firstPixel, endPixel) {
  row.fill(pixel, 1 + firstPixel * pixel.length, 1 + endPixel * pixel.length);
}

/**
 * Renders the PNG that the fake returns for image `index` of a request.
 * The bytes depend only on the arguments: a background colour and stripes derived from
 * sha256 of [model, prompt, "WIDTHxHEIGHT", index]. With `transparent`, the PNG is RGBA
 * and the background has alpha 0.
 */
export function renderImagePng(model, prompt, size, index = 0, { transparent = false } = {}) {
  const dimensions = parseImageSize(size);
  if (!dimensions) {
    throw new RangeError(`invalid image size ${JSON.stringify(size)}: expected WIDTHxHEIGHT or auto`);
  }
  const { width, height } = dimensions;
  const digest = createHash('sha256')
    .update(JSON.stringify([model, prompt, `${width}x${height}`, index]))
    .digest();

  const background = [digest[0], digest[1], digest[2]];
  const stripe = contrastingColor(background, [digest[3], digest[4], digest[5]]);
  const stripeCount = 3 + (digest[6] % 6);
  const vertical = (digest[7] & 1) === 1;
  const backgroundPixel = Buffer.from(transparent ? [...background, 0] : background);
  const stripePixel = Buffer.from(transparent ? [...stripe, 255] : stripe);

  const stride = 1 + width * backgroundPixel.length;
  const scanlines = Buffer.allocUnsafe(stride * height);
  const backgroundRow = Buffer.alloc(stride);
  fillPixels(backgroundRow, backgroundPixel, 0, width);

  if (vertical) {
    const row = Buffer.from(backgroundRow);
    for (const [start, end] of stripeBounds(width, stripeCount)) {
      fillPixels(row, stripePixel, start, end);
    }
    for (let y = 0; y < height; y++) {
      row.copy(scanlines, y * stride);
    }
  } else {
    const stripeRow = Buffer.alloc(stride);
    fillPixels(stripeRow, stripePixel, 0, width);
    const isStripe = new Uint8Array(height);
    for (const [start, end] of stripeBounds(height, stripeCount)) {
      isStripe.fill(1, start, end);
    }
    for (let y = 0; y < height; y++) {
      (isStripe[y] ? stripeRow : backgroundRow).copy(scanlines, y * stride);
    }
  }
  return encodePng(width, height, scanlines, transparent);
}

/** Returns the sha256 hex of the PNG that renderImagePng() produces for these arguments. */
export function expectedImageSha256(model, prompt, size, index = 0, options = {}) {
  return createHash('sha256').update(renderImagePng(model, prompt, size, index, options)).digest('hex');
}

// ---------------------------------------------------------------------------
// OpenAI-shaped errors.
// ---------------------------------------------------------------------------

function apiError(status, message, { type = 'invalid_request_error', param = null, code = null, headers = {} } = {}) {
  return { status, headers, body: { error: { message, type, param, code } } };
}

function quoteList(values) {
  const quoted = values.map((value) => `'${value}'`);
  if (quoted.length <= 2) {
    return quoted.join(' and ');
  }
  return `${quoted.slice(0, -1).join(', ')}, and ${quoted[quoted.length - 1]}`;
}

function invalidValue(param, value, supported, modelName) {
  const scope = modelName ? ` for ${modelName}` : '';
  return apiError(400, `Invalid value for '${param}': ${JSON.stringify(value)}. Supported values${scope} are ${quoteList(supported)}.`, {
    param,
    code: 'invalid_value',
  });
}

function invalidType(param, expected, value) {
  const actual = Array.isArray(value) ? 'array' : typeof value;
  return apiError(400, `Invalid type for '${param}': expected ${expected}, but got ${actual}.`, { param, code: 'invalid_type' });
}

function maskApiKey(key) {
  if (key.length <= 8) {
    return '*'.repeat(key.length);
  }
  return `${key.slice(0, 3)}${'*'.repeat(Math.min(20, key.length - 7))}${key.slice(-4)}`;
}

/** Builds the OpenAI error for a scripted failure such as {"status": 429, "retry_after": 1}. */
function scriptedError(entry) {
  const status = entry.status;
  let defaults;
  if (status === 400 && entry.code === 'content_policy_violation') {
    defaults = { type: 'invalid_request_error', code: 'content_policy_violation', message: 'The request was rejected by the safety system because the prompt may contain disallowed content.' };
  } else if (status === 400) {
    defaults = { type: 'invalid_request_error', code: null, message: 'Scripted bad request from the fake OpenAI server.' };
  } else if (status === 401) {
    defaults = { type: 'invalid_request_error', code: 'invalid_api_key', message: 'Incorrect API key provided (scripted by the fake OpenAI server).' };
  } else if (status === 403) {
    defaults = { type: 'invalid_request_error', code: null, message: 'The API key has no access to this resource (scripted by the fake OpenAI server).' };
  } else if (status === 404) {
    defaults = { type: 'invalid_request_error', code: 'model_not_found', message: 'The model does not exist or the API key has no access to it (scripted by the fake OpenAI server).' };
  } else if (status === 429 && entry.code === 'insufficient_quota') {
    defaults = { type: 'insufficient_quota', code: 'insufficient_quota', message: 'The quota for this API key is exhausted (scripted by the fake OpenAI server).' };
  } else if (status === 429) {
    defaults = { type: 'requests', code: 'rate_limit_exceeded', message: 'Rate limit reached for images per minute (scripted by the fake OpenAI server). Retry after the Retry-After delay.' };
  } else if (status === 503) {
    defaults = { type: 'server_error', code: null, message: 'The engine is overloaded (scripted by the fake OpenAI server). Retry the request later.' };
  } else if (status >= 500) {
    defaults = { type: 'server_error', code: null, message: 'The server failed while processing the request (scripted by the fake OpenAI server). Retry the request.' };
  } else {
    defaults = { type: 'invalid_request_error', code: null, message: `Scripted HTTP ${status} from the fake OpenAI server.` };
  }

  const headers = {};
  if (status === 429 && entry.code !== 'insufficient_quota') {
    const retryAfter = entry.retry_after === undefined ? 1 : entry.retry_after;
    if (retryAfter !== null) {
      headers['retry-after'] = String(retryAfter);
    }
    // Header names and value formats from OpenAI's rate-limit guide ("1s", "6m0s").
    headers['x-ratelimit-limit-requests'] = '5';
    headers['x-ratelimit-remaining-requests'] = '0';
    headers['x-ratelimit-reset-requests'] = `${retryAfter ?? 1}s`;
    headers['x-ratelimit-limit-tokens'] = '100000';
    headers['x-ratelimit-remaining-tokens'] = '100000';
    headers['x-ratelimit-reset-tokens'] = '0s';
  }
  if (entry.retry_after_ms !== undefined && entry.retry_after_ms !== null) {
    headers['retry-after-ms'] = String(entry.retry_after_ms);
  }
  Object.assign(headers, entry.headers ?? {});

  return apiError(status, entry.message ?? defaults.message, {
    type: entry.type ?? defaults.type,
    param: entry.param ?? null,
    code: entry.code === undefined ? defaults.code : entry.code,
    headers,
  });
}

// ---------------------------------------------------------------------------
// Request validation for POST /v1/images/generations.
// ---------------------------------------------------------------------------

function isPresent(value) {
  return value !== undefined && value !== null;
}

function resolveModelName(body) {
  if (isPresent(body.model)) {
    return body.model;
  }
  return GPT_IMAGE_ONLY_PARAMETERS.some((name) => isPresent(body[name])) ? 'gpt-image-1' : 'dall-e-2';
}

function checkInteger(body, param, min, max, modelName) {
  const value = body[param];
  if (!Number.isInteger(value)) {
    return invalidType(param, 'an integer', value);
  }
  if (value < min) {
    return apiError(400, `Invalid '${param}': ${value} is below the minimum of ${min}.`, { param, code: 'integer_below_min_value' });
  }
  if (value > max) {
    const scope = modelName ? ` for ${modelName}` : '';
    return apiError(400, `Invalid '${param}': ${value} is above the maximum of ${max}${scope}.`, { param, code: 'integer_above_max_value' });
  }
  return null;
}

function checkEnum(body, param, supported, modelName) {
  const value = body[param];
  if (typeof value !== 'string') {
    return invalidType(param, 'a string', value);
  }
  return supported.includes(value) ? null : invalidValue(param, value, supported, modelName);
}

function checkPrompt(body, modelName, spec) {
  const prompt = body.prompt;
  if (!isPresent(prompt)) {
    return apiError(400, "Missing required parameter: 'prompt'.", { param: 'prompt', code: 'missing_required_parameter' });
  }
  if (typeof prompt !== 'string') {
    return invalidType('prompt', 'a string', prompt);
  }
  if (prompt.length === 0) {
    return apiError(400, "Invalid 'prompt': the string is empty.", { param: 'prompt', code: 'string_below_min_length' });
  }
  const length = [...prompt].length;
  if (length > spec.maxPromptChars) {
    return apiError(
      400,
      `Invalid 'prompt': the string has ${length} characters, but ${modelName} accepts at most ${spec.maxPromptChars}.`,
      { param: 'prompt', code: 'string_above_max_length' },
    );
  }
  return null;
}

/**
 * Validates a generation request body against the documented per-model rules.
 * Returns { error } with an OpenAI-shaped error, or { request } with every default resolved.
 */
export function validateGenerationRequest(body) {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    return { error: apiError(400, 'The request body must be a JSON object.') };
  }

  const modelName = resolveModelName(body);
  if (typeof modelName !== 'string') {
    return { error: invalidType('model', 'a string', modelName) };
  }
  const spec = modelSpec(modelName);
  if (!spec) {
    // NOTE: status and code follow OpenAI's usual response for an unknown model. The Images
    // reference does not document this case.
    return {
      error: apiError(404, `The model '${modelName}' does not exist or the API key has no access to it.`, {
        code: 'model_not_found',
      }),
    };
  }

  for (const [name, value] of Object.entries(body)) {
    if (isPresent(value) && !spec.parameters.includes(name)) {
      return {
        error: apiError(400, `Unknown parameter: '${name}' is not supported by ${modelName}.`, {
          param: name,
          code: 'unknown_parameter',
        }),
      };
    }
  }

  const checks = [
    () => checkPrompt(body, modelName, spec),
    () => (isPresent(body.n) ? checkInteger(body, 'n', 1, spec.maxImages, modelName) : null),
    () => (isPresent(body.size) ? checkSize(body, spec, modelName) : null),
    () => (isPresent(body.quality) ? checkEnum(body, 'quality', spec.qualities, modelName) : null),
    () => (isPresent(body.response_format) ? checkEnum(body, 'response_format', ['url', 'b64_json']) : null),
    () => (isPresent(body.style) ? checkEnum(body, 'style', ['vivid', 'natural']) : null),
    () => (isPresent(body.background) ? checkEnum(body, 'background', ['transparent', 'opaque', 'auto']) : null),
    () => (isPresent(body.moderation) ? checkEnum(body, 'moderation', ['low', 'auto']) : null),
    () => checkOutputFormat(body),
    () => (isPresent(body.output_compression) ? checkInteger(body, 'output_compression', 0, 100) : null),
    () => (isPresent(body.partial_images) ? checkInteger(body, 'partial_images', 0, 3) : null),
    () => checkStream(body),
    () => (isPresent(body.user) && typeof body.user !== 'string' ? invalidType('user', 'a string', body.user) : null),
    () =>
      isPresent(body.safety_identifier) && typeof body.safety_identifier !== 'string'
        ? invalidType('safety_identifier', 'a string', body.safety_identifier)
        : null,
  ];
  for (const check of checks) {
    const error = check();
    if (error) {
      return { error };
    }
  }

  const requestedSize = body.size ?? spec.defaultSize;
  const size = requestedSize === 'auto' ? AUTO_SIZE : requestedSize;
  const requestedQuality = body.quality ?? 'auto';
  const requestedBackground = body.background ?? 'auto';
  return {
    request: {
      model: modelName,
      family: spec.family,
      revisesPrompt: spec.revisesPrompt,
      prompt: body.prompt,
      n: body.n ?? 1,
      size,
      quality: requestedQuality === 'auto' && spec.family === 'gpt-image' ? AUTO_QUALITY : requestedQuality,
      background: requestedBackground === 'auto' ? AUTO_BACKGROUND : requestedBackground,
      // dall-e-2 and dall-e-3 return URLs unless asked for b64_json, and GPT image models always return b64_json.
      responseFormat: spec.family === 'gpt-image' ? 'b64_json' : body.response_format ?? 'url',
    },
  };
}

function checkSize(body, spec, modelName) {
  if (!spec.flexibleSize || typeof body.size !== 'string' || spec.sizes.includes(body.size)) {
    return checkEnum(body, 'size', spec.sizes, modelName);
  }
  const dimensions = /^(\d{1,5})x(\d{1,5})$/.exec(body.size);
  const { multiple, maxAspectRatio, maxLongEdge, maxShortEdge } = FLEXIBLE_SIZE_LIMITS;
  const invalidSize = (reason) =>
    apiError(400, `Invalid value for 'size': ${JSON.stringify(body.size)}. ${reason}`, { param: 'size', code: 'invalid_value' });
  if (!dimensions) {
    return invalidSize(`${modelName} accepts auto, 1024x1024, 1536x1024, 1024x1536 or WIDTHxHEIGHT in pixels.`);
  }
  const width = Number(dimensions[1]);
  const height = Number(dimensions[2]);
  const longEdge = Math.max(width, height);
  const shortEdge = Math.min(width, height);
  if (width === 0 || height === 0 || width % multiple !== 0 || height % multiple !== 0) {
    return invalidSize(`Width and height must be positive multiples of ${multiple}.`);
  }
  if (longEdge > maxAspectRatio * shortEdge) {
    return invalidSize(`The aspect ratio must be between 1:${maxAspectRatio} and ${maxAspectRatio}:1.`);
  }
  if (longEdge > maxLongEdge || shortEdge > maxShortEdge) {
    return invalidSize(`The maximum size for ${modelName} is ${maxLongEdge}x${maxShortEdge} (or ${maxShortEdge}x${maxLongEdge}).`);
  }
  return null;
}

function checkOutputFormat(body) {
  if (!isPresent(body.output_format)) {
    return null;
  }
  const error = checkEnum(body, 'output_format', ['png', 'jpeg', 'webp']);
  if (error) {
    return error;
  }
  if (body.output_format !== 'png') {
    // NOTE: jpeg and webp are valid in the OpenAI API, but this fake only encodes PNG.
    return apiError(400, `The fake OpenAI server only encodes png, so output_format '${body.output_format}' is not implemented. Send png.`, {
      param: 'output_format',
      code: 'unsupported_value',
    });
  }
  return null;
}

function checkStream(body) {
  if (!isPresent(body.stream)) {
    return null;
  }
  if (typeof body.stream !== 'boolean') {
    return invalidType('stream', 'a boolean', body.stream);
  }
  if (body.stream) {
    // NOTE: the OpenAI API streams partial images as server-sent events, but this fake does not.
    return apiError(400, 'The fake OpenAI server does not implement streaming. Send stream: false.', {
      param: 'stream',
      code: 'unsupported_value',
    });
  }
  return null;
}

// NOTE: OpenAI publishes output tokens only for gpt-image-1's sizes and qualities. For other
// sizes this scales the 1024x1024 figure by pixel area, and xhigh and max count as high.
function estimateOutputTokens(request) {
  const perSquare = (OUTPUT_TOKENS[request.quality] ?? OUTPUT_TOKENS.high)['1024x1024'];
  const { width, height } = parseImageSize(request.size);
  return Math.max(1, Math.round((perSquare * width * height) / (1024 * 1024)));
}

function usageFor(request) {
  const textTokens = Math.max(1, Math.ceil([...request.prompt].length / 4));
  const perImage = OUTPUT_TOKENS[request.quality]?.[request.size] ?? estimateOutputTokens(request);
  const outputTokens = perImage * request.n;
  return {
    input_tokens: textTokens,
    input_tokens_details: { image_tokens: 0, text_tokens: textTokens },
    output_tokens: outputTokens,
    total_tokens: textTokens + outputTokens,
  };
}

// ---------------------------------------------------------------------------
// Azure Blob Storage responses for image URLs.
// ---------------------------------------------------------------------------

function escapeXml(text) {
  return text.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]);
}

function azureTimestamp(date) {
  // Azure writes seven fractional digits, for example 2019-06-13T09:22:53.9093129Z.
  return date.toISOString().replace(/\.(\d{3})Z$/, '.$10000Z');
}

function azureError(status, code, message, detail) {
  const requestId = randomUUID();
  const fullMessage = `${message}\nRequestId:${requestId}\nTime:${azureTimestamp(new Date())}`;
  const detailXml = detail ? `<AuthenticationErrorDetail>${escapeXml(detail)}</AuthenticationErrorDetail>` : '';
  const body = `\uFEFF<?xml version="1.0" encoding="utf-8"?><Error><Code>${code}</Code><Message>${escapeXml(fullMessage)}</Message>${detailXml}</Error>`;
  return {
    status,
    headers: {
      'content-type': 'application/xml',
      'x-ms-error-code': code,
      'x-ms-request-id': requestId,
      server: 'Microsoft-HTTPAPI/2.0',
    },
    body,
  };
}

// Azure Storage's own wording for a SAS that fails authentication.
const AZURE_AUTH_FAILED_MESSAGE =
  'Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.';

// ---------------------------------------------------------------------------
// HTTP plumbing.
// ---------------------------------------------------------------------------

function readBody(req, limitBytes) {
  return new Promise((resolve) => {
    const chunks = [];
    let receivedBytes = 0;
    let settled = false;
    const settle = (result) => {
      if (!settled) {
        settled = true;
        resolve(result);
      }
    };
    req.on('data', (chunk) => {
      receivedBytes += chunk.length;
      if (receivedBytes <= limitBytes) {
        chunks.push(chunk);
        return;
      }
      chunks.length = 0;
      if (receivedBytes > MAX_DRAINED_BYTES) {
        req.pause();
        settle({ tooLarge: true, closeConnection: true, receivedBytes });
      }
    });
    req.on('end', () => {
      if (receivedBytes > limitBytes) {
        settle({ tooLarge: true, closeConnection: false, receivedBytes });
      } else {
        settle({ tooLarge: false, body: Buffer.concat(chunks), receivedBytes });
      }
    });
    req.on('close', () => settle({ aborted: true }));
    req.on('error', () => settle({ aborted: true }));
  });
}

function newRequestId() {
  return `req_${randomBytes(16).toString('hex')}`;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function isClosed(res) {
  return res.destroyed || res.writableEnded;
}

function sendJson(res, status, body, headers = {}) {
  if (isClosed(res)) {
    return;
  }
  const payload = Buffer.from(`${JSON.stringify(body, null, 2)}\n`);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': payload.length,
    ...headers,
  });
  res.end(payload);
}

function redactHeaders(headers) {
  const redacted = {};
  for (const [name, value] of Object.entries(headers)) {
    const secret = ['authorization', 'proxy-authorization', 'api-key', 'x-api-key'].includes(name);
    if (secret && typeof value === 'string') {
      redacted[name] = value.length > 4 ? `***${value.slice(-4)}` : '***';
    } else {
      redacted[name] = value;
    }
  }
  return redacted;
}

function bearerToken(header) {
  const match = /^Bearer\s+(.+)$/i.exec(header ?? '');
  return match ? match[1].trim() : null;
}

function defaultSettings() {
  return { delay_ms: 0, url_ttl_ms: DEFAULT_URL_TTL_MS, created: null, script: [] };
}

function emptyStats() {
  return {
    generations: 0,
    maxConcurrent: 0,
    fileDownloads: 0,
    fileRequests: 0,
    lastRequest: null,
    requests: [],
  };
}

// ---------------------------------------------------------------------------
// Control API validation.
// ---------------------------------------------------------------------------

function checkNonNegativeNumber(name, value, max) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > max) {
    return `${name} must be a number from 0 to ${max}, but got ${JSON.stringify(value)}`;
  }
  return null;
}

function validateScriptEntry(entry, position) {
  const where = `script[${position}]`;
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
    return `${where} must be an object such as {"status": 429} or {"kind": "hang"}`;
  }
  if (entry.delay_ms !== undefined) {
    const problem = checkNonNegativeNumber(`${where}.delay_ms`, entry.delay_ms, MAX_DELAY_MS);
    if (problem) {
      return problem;
    }
  }
  if (entry.kind !== undefined) {
    if (!SCRIPT_KINDS.includes(entry.kind)) {
      return `${where}.kind must be one of ${SCRIPT_KINDS.join(', ')}, but got ${JSON.stringify(entry.kind)}`;
    }
    const extra = Object.keys(entry).filter((key) => !SCRIPT_KIND_FIELDS.includes(key));
    return extra.length ? `${where} has fields that a "kind" entry does not take: ${extra.join(', ')}` : null;
  }

  const extra = Object.keys(entry).filter((key) => !SCRIPT_ERROR_FIELDS.includes(key));
  if (extra.length) {
    return `${where} has unknown fields: ${extra.join(', ')}`;
  }
  if (!Number.isInteger(entry.status) || entry.status < 400 || entry.status > 599) {
    return `${where}.status must be an HTTP error status from 400 to 599, or the entry needs a "kind"`;
  }
  for (const field of ['code', 'param']) {
    if (entry[field] !== undefined && entry[field] !== null && typeof entry[field] !== 'string') {
      return `${where}.${field} must be a string or null`;
    }
  }
  for (const field of ['message', 'type']) {
    if (entry[field] !== undefined && typeof entry[field] !== 'string') {
      return `${where}.${field} must be a string`;
    }
  }
  for (const field of ['retry_after', 'retry_after_ms']) {
    if (entry[field] !== undefined && entry[field] !== null) {
      const problem = checkNonNegativeNumber(`${where}.${field}`, entry[field], 86400 * 1000);
      if (problem) {
        return problem;
      }
    }
  }
  if (entry.headers !== undefined) {
    const headers = entry.headers;
    if (headers === null || typeof headers !== 'object' || Array.isArray(headers)) {
      return `${where}.headers must be an object of header names to string values`;
    }
    for (const [name, value] of Object.entries(headers)) {
      if (typeof value !== 'string' || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) {
        return `${where}.headers["${name}"] must be a valid header name with a string value`;
      }
    }
  }
  return null;
}

function validateControlPatch(patch) {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) {
    return 'the control body must be a JSON object';
  }
  const known = ['delay_ms', 'url_ttl_ms', 'script', 'created'];
  const unknown = Object.keys(patch).filter((key) => !known.includes(key));
  if (unknown.length) {
    return `unknown control settings: ${unknown.join(', ')} (known: ${known.join(', ')})`;
  }
  if (patch.delay_ms !== undefined) {
    const problem = checkNonNegativeNumber('delay_ms', patch.delay_ms, MAX_DELAY_MS);
    if (problem) {
      return problem;
    }
  }
  if (patch.url_ttl_ms !== undefined) {
    const ttl = patch.url_ttl_ms;
    // 0 makes every new URL expired at once, for tests of expired downloads.
    if (typeof ttl !== 'number' || !Number.isFinite(ttl) || ttl < 0) {
      return `url_ttl_ms must be a number of milliseconds from 0 up, but got ${JSON.stringify(ttl)}`;
    }
  }
  if (patch.created !== undefined && patch.created !== null && !Number.isInteger(patch.created)) {
    return `created must be an integer Unix time in seconds or null, but got ${JSON.stringify(patch.created)}`;
  }
  if (patch.script !== undefined) {
    if (!Array.isArray(patch.script)) {
      return 'script must be an array of one-shot responses';
    }
    for (let i = 0; i < patch.script.length; i++) {
      const problem = validateScriptEntry(patch.script[i], i);
      if (problem) {
        return problem;
      }
    }
  }
  return null;
}

// ---------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------

class FakeOpenAIImages {
  constructor({ apiKey, verbose }) {
    this.apiKey = apiKey;
    this.verbose = verbose;
    this.settings = defaultSettings();
    this.stats = emptyStats();
    this.inFlight = 0;
    this.files = new Map();
    this.imageCache = new Map();
    this.port = null;
  }

  log(message) {
    if (this.verbose) {
      process.stderr.write(`openai-fake: ${message}\n`);
    }
  }

  async handle(req, res) {
    const url = new URL(req.url, `http://${HOST}`);
    const path = url.pathname;
    this.log(`${req.method} ${path}`);

    if (path === '/v1/images/generations') {
      return req.method === 'POST' ? this.handleGeneration(req, res) : this.methodNotAllowed(req, res, 'POST');
    }
    if (path.startsWith('/files/')) {
      return req.method === 'GET' || req.method === 'HEAD' ? this.handleFile(req, res, url) : this.methodNotAllowed(req, res, 'GET, HEAD');
    }
    if (path === '/__control') {
      if (req.method === 'POST') {
        return this.handleControl(req, res);
      }
      return req.method === 'GET' ? sendJson(res, 200, this.publicSettings()) : this.methodNotAllowed(req, res, 'GET, POST');
    }
    if (path === '/__stats') {
      return req.method === 'GET' ? sendJson(res, 200, this.publicStats()) : this.methodNotAllowed(req, res, 'GET');
    }
    if (path === '/__reset') {
      return req.method === 'POST' ? this.handleReset(res) : this.methodNotAllowed(req, res, 'POST');
    }
    if (path === '/__expected') {
      return req.method === 'GET' ? this.handleExpected(res, url) : this.methodNotAllowed(req, res, 'GET');
    }
    const error = apiError(404, `Unknown request URL: ${req.method} ${path}. This fake serves POST /v1/images/generations.`, {
      code: 'unknown_url',
    });
    return sendJson(res, error.status, error.body, { 'x-request-id': newRequestId() });
  }

  methodNotAllowed(req, res, allowed) {
    const error = apiError(405, `Method ${req.method} is not allowed on ${req.url.split('?')[0]}. Use ${allowed}.`, {
      code: 'method_not_allowed',
    });
    sendJson(res, error.status, error.body, { allow: allowed, 'x-request-id': newRequestId() });
  }

  trackInFlight(res) {
    this.inFlight++;
    this.stats.maxConcurrent = Math.max(this.stats.maxConcurrent, this.inFlight);
    res.once('close', () => {
      this.inFlight--;
    });
  }

  recordRequest(headers, body) {
    this.stats.lastRequest = { headers, body };
    this.stats.requests.push(body);
    if (this.stats.requests.length > MAX_RECORDED_REQUESTS) {
      this.stats.requests.splice(0, this.stats.requests.length - MAX_RECORDED_REQUESTS);
    }
  }

  async handleGeneration(req, res) {
    const startedAt = Date.now();
    this.stats.generations++;
    this.trackInFlight(res);

    const received = await readBody(req, MAX_BODY_BYTES);
    if (received.aborted) {
      return;
    }

    let body = null;
    let bodyIsJson = false;
    if (!received.tooLarge) {
      const text = received.body.toString('utf8');
      try {
        body = JSON.parse(text);
        bodyIsJson = true;
      } catch {
        body = text.length > 65536 ? `${text.slice(0, 65536)}...` : text;
      }
    }
    this.recordRequest(redactHeaders(req.headers), body);

    // Decide the outcome first, so that the delay comes before every kind of response.
    let failure = null;
    let entry = null;
    if (received.tooLarge) {
      failure = apiError(413, `The request body has ${received.receivedBytes} bytes, but the limit is ${MAX_BODY_BYTES} bytes (1 MiB).`, {
        code: 'request_too_large',
        headers: received.closeConnection ? { connection: 'close' } : {},
      });
    } else {
      failure = this.checkAuthorization(req.headers.authorization);
      if (!failure) {
        entry = this.settings.script.shift() ?? null;
      }
    }

    const delayMs = this.settings.delay_ms + (entry?.delay_ms ?? 0);
    if (delayMs > 0) {
      await sleep(delayMs);
    }
    if (isClosed(res)) {
      return;
    }

    const headers = () => ({
      'x-request-id': newRequestId(),
      'openai-version': '2020-10-01',
      'openai-processing-ms': String(Date.now() - startedAt),
    });

    if (!failure && entry?.status) {
      failure = scriptedError(entry);
    }
    if (failure) {
      this.log(`generation -> ${failure.status} ${failure.body.error.code ?? failure.body.error.type}`);
      return sendJson(res, failure.status, failure.body, { ...headers(), ...failure.headers });
    }
    if (entry?.kind === 'hang') {
      // The response stays open until the client closes the connection or the server stops.
      this.log('generation -> hang');
      return;
    }

    const validation = bodyIsJson
      ? validateGenerationRequest(body)
      : {
          error: apiError(400, 'The request body is not valid JSON. Send a JSON object with Content-Type: application/json.', {
            code: 'invalid_json',
          }),
        };
    if (validation.error) {
      const error = validation.error;
      this.log(`generation -> ${error.status} ${error.body.error.code} (${error.body.error.param})`);
      return sendJson(res, error.status, error.body, headers());
    }

    const responseBody = this.buildGenerationResponse(validation.request, entry?.kind ?? null);
    this.log(`generation -> 200 ${validation.request.model} n=${validation.request.n} ${entry?.kind ?? ''}`);
    return sendJson(res, 200, responseBody, headers());
  }

  checkAuthorization(header) {
    if (!header) {
      // Observed OpenAI responses for a missing key carry code null.
      return apiError(401, "No API key was provided. Send it in the Authorization header as 'Bearer <key>'.");
    }
    const token = bearerToken(header);
    if (token !== this.apiKey) {
      const maskedKey = token ? maskApiKey(token) : '(not a Bearer token)';
      return apiError(401, `Incorrect API key provided: ${maskedKey}. Check the key that the client sends.`, {
        code: 'invalid_api_key',
      });
    }
    return null;
  }

  imageBytes(request, index, kind) {
    const transparent = request.background === 'transparent';
    if (kind === 'not_image') {
      return Buffer.from(`This is not an image: scripted not_image response ${index} from the fake OpenAI server.\n`);
    }
    if (kind === 'wrong_size') {
      const { width, height } = parseImageSize(request.size);
      const wrongSize = `${Math.max(1, Math.floor(width / 2))}x${Math.max(1, Math.floor(height / 2))}`;
      return this.cachedImage(request.model, request.prompt, wrongSize, index, transparent);
    }
    const png = this.cachedImage(request.model, request.prompt, request.size, index, transparent);
    if (kind === 'truncated') {
      return png.subarray(0, Math.floor(png.length / 2));
    }
    return png;
  }

  cachedImage(model, prompt, size, index, transparent) {
    const key = JSON.stringify([model, prompt, size, index, transparent]);
    let png = this.imageCache.get(key);
    if (png) {
      this.imageCache.delete(key);
    } else {
      png = renderImagePng(model, prompt, size, index, { transparent });
    }
    this.imageCache.set(key, png);
    if (this.imageCache.size > MAX_CACHED_IMAGES) {
      this.imageCache.delete(this.imageCache.keys().next().value);
    }
    return png;
  }

  buildGenerationResponse(request, kind) {
    const created = this.settings.created ?? Math.floor(Date.now() / 1000);
    const asUrl = kind === 'force_url' || request.responseFormat === 'url';
    const data = [];
    if (kind !== 'empty_data') {
      for (let index = 0; index < request.n; index++) {
        const bytes = this.imageBytes(request, index, kind);
        const item = asUrl ? { url: this.storeFile(bytes) } : { b64_json: bytes.toString('base64') };
        if (request.revisesPrompt) {
          item.revised_prompt = `A detailed, vivid illustration of the following scene: ${request.prompt}`;
        }
        data.push(item);
      }
    }

    if (request.family !== 'gpt-image') {
      return { created, data };
    }
    return {
      created,
      background: request.background,
      data,
      output_format: 'png',
      quality: request.quality,
      size: request.size,
      usage: usageFor(request),
    };
  }

  storeFile(bytes) {
    const now = Date.now();
    for (const [id, file] of this.files) {
      if (file.expiresAtMs > now && this.files.size < MAX_STORED_FILES) {
        break;
      }
      this.files.delete(id);
    }
    const id = `img-${randomBytes(12).toString('hex')}`;
    const expiresAtMs = now + this.settings.url_ttl_ms;
    const signature = randomBytes(24).toString('base64url');
    const expiry = Math.ceil(expiresAtMs / 1000);
    this.files.set(id, { bytes, createdAtMs: now, expiresAtMs, signature, expiry });
    return `http://${HOST}:${this.port}/files/${id}.png?se=${expiry}&sig=${signature}`;
  }

  handleFile(req, res, url) {
    this.stats.fileRequests++;
    const match = /^\/files\/(img-[0-9a-f]+)\.png$/.exec(url.pathname);
    const file = match ? this.files.get(match[1]) : undefined;
    let failure = null;
    if (!file) {
      failure = azureError(404, 'BlobNotFound', 'The specified blob does not exist.');
    } else if (url.searchParams.get('sig') !== file.signature || url.searchParams.get('se') !== String(file.expiry)) {
      failure = azureError(403, 'AuthenticationFailed', AZURE_AUTH_FAILED_MESSAGE, 'Signature did not match the signed resource and expiry.');
    } else if (Date.now() >= file.expiresAtMs) {
      const start = new Date(file.createdAtMs).toUTCString();
      const expiry = new Date(file.expiresAtMs).toUTCString();
      const current = new Date().toUTCString();
      failure = azureError(
        403,
        'AuthenticationFailed',
        AZURE_AUTH_FAILED_MESSAGE,
        `Signature not valid in the specified time frame: Start [${start}] - Expiry [${expiry}] - Current [${current}]`,
      );
    }

    if (failure) {
      this.log(`file ${url.pathname} -> ${failure.status} ${failure.headers['x-ms-error-code']}`);
      const payload = Buffer.from(failure.body);
      res.writeHead(failure.status, { ...failure.headers, 'content-length': payload.length });
      res.end(req.method === 'HEAD' ? undefined : payload);
      return;
    }

    this.stats.fileDownloads++;
    res.writeHead(200, {
      'content-type': 'image/png',
      'content-length': file.bytes.length,
      etag: `"0x${createHash('sha256').update(file.bytes).digest('hex').slice(0, 16).toUpperCase()}"`,
      'last-modified': new Date(file.createdAtMs).toUTCString(),
      'x-ms-blob-type': 'BlockBlob',
      'x-ms-request-id': randomUUID(),
    });
    res.end(req.method === 'HEAD' ? undefined : file.bytes);
  }

  async handleControl(req, res) {
    const received = await readBody(req, MAX_BODY_BYTES);
    if (received.aborted) {
      return;
    }
    if (received.tooLarge) {
      const error = apiError(413, `The control body is larger than ${MAX_BODY_BYTES} bytes.`, { code: 'request_too_large' });
      return sendJson(res, error.status, error.body);
    }
    let patch;
    try {
      patch = JSON.parse(received.body.toString('utf8'));
    } catch {
      const error = apiError(400, 'The control body is not valid JSON.', { code: 'invalid_json' });
      return sendJson(res, error.status, error.body);
    }
    const problem = validateControlPatch(patch);
    if (problem) {
      const error = apiError(400, `Invalid control request: ${problem}.`, { code: 'invalid_control' });
      return sendJson(res, error.status, error.body);
    }
    const next = { ...this.settings, ...patch };
    next.script = structuredClone(next.script);
    this.settings = next;
    this.log(`control -> ${JSON.stringify(patch)}`);
    return sendJson(res, 200, this.publicSettings());
  }

  handleReset(res) {
    this.settings = defaultSettings();
    this.stats = emptyStats();
    this.stats.maxConcurrent = this.inFlight;
    this.log('reset');
    sendJson(res, 200, { reset: true });
  }

  handleExpected(res, url) {
    const query = url.searchParams;
    const model = query.get('model') || 'dall-e-2';
    const prompt = query.get('prompt') ?? '';
    const size = query.get('size') || modelSpec(model)?.defaultSize || '1024x1024';
    const indexText = query.get('index') ?? '0';
    const background = query.get('background') ?? 'opaque';
    const dimensions = parseImageSize(size);
    const index = Number(indexText);

    let problem = null;
    if (!dimensions || dimensions.width > MAX_EXPECTED_EDGE_PIXELS || dimensions.height > MAX_EXPECTED_EDGE_PIXELS) {
      problem = `size must be WIDTHxHEIGHT with edges up to ${MAX_EXPECTED_EDGE_PIXELS} pixels, or auto, but got ${JSON.stringify(size)}`;
    } else if (!/^\d+$/.test(indexText) || !Number.isSafeInteger(index)) {
      problem = `index must be a non-negative integer, but got ${JSON.stringify(indexText)}`;
    } else if (!['opaque', 'transparent', 'auto'].includes(background)) {
      problem = `background must be opaque, transparent or auto, but got ${JSON.stringify(background)}`;
    }
    if (problem) {
      const error = apiError(400, `Invalid /__expected query: ${problem}.`, { code: 'invalid_query' });
      return sendJson(res, error.status, error.body);
    }

    const resolvedSize = `${dimensions.width}x${dimensions.height}`;
    const png = this.cachedImage(model, prompt, resolvedSize, index, background === 'transparent');
    return sendJson(res, 200, {
      sha256: createHash('sha256').update(png).digest('hex'),
      bytes: png.length,
      width: dimensions.width,
      height: dimensions.height,
      model,
      size: resolvedSize,
      index,
    });
  }

  publicSettings() {
    return {
      delay_ms: this.settings.delay_ms,
      url_ttl_ms: this.settings.url_ttl_ms,
      created: this.settings.created,
      script: this.settings.script,
    };
  }

  publicStats() {
    return {
      generations: this.stats.generations,
      max_concurrent: this.stats.maxConcurrent,
      in_flight: this.inFlight,
      file_downloads: this.stats.fileDownloads,
      file_requests: this.stats.fileRequests,
      script_remaining: this.settings.script.length,
      last_request: this.stats.lastRequest,
      requests: this.stats.requests,
    };
  }
}

/**
 * Starts the fake on 127.0.0.1. `port` 0 picks an ephemeral port.
 * Resolves to { port, baseUrl, close() }, where close() also ends hanging responses.
 */
export async function startFakeServer({ port = 0, apiKey = DEFAULT_API_KEY, verbose = false } = {}) {
  const fake = new FakeOpenAIImages({ apiKey, verbose });
  const server = createServer((req, res) => {
    fake.handle(req, res).catch((error) => {
      process.stderr.write(`openai-fake: unexpected error on ${req.method} ${req.url}: ${error.stack ?? error}\n`);
      if (!res.headersSent) {
        const failure = apiError(500, 'The fake OpenAI server failed unexpectedly. See its stderr for the stack trace.', { type: 'server_error' });
        sendJson(res, failure.status, failure.body);
      } else {
        res.destroy();
      }
    });
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, () => {
      server.off('error', reject);
      resolve();
    });
  });
  fake.port = server.address().port;

  const close = () =>
    new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  return { port: fake.port, baseUrl: `http://${HOST}:${fake.port}`, close };
}

// ---------------------------------------------------------------------------
// Command line.
// ---------------------------------------------------------------------------

const USAGE = `Usage: node tests/fakes/openai-fake.mjs [--port N] [--api-key KEY] [--verbose]

  --port N       TCP port on 127.0.0.1 to listen on; 0 (the default) picks a free port.
  --api-key KEY  API key that requests must send as "Authorization: Bearer KEY"
                 (default ${DEFAULT_API_KEY}).
  --verbose      Log every request to stderr.

Prints {"port": N} on stdout once listening, and exits on SIGTERM or SIGINT.`;

function parseArguments(argv) {
  const options = { port: 0, apiKey: DEFAULT_API_KEY, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inlineValue] = argv[i].split(/=(.*)/s, 2);
    const takeValue = () => {
      if (inlineValue !== undefined) {
        return inlineValue;
      }
      if (i + 1 >= argv.length) {
        throw new Error(`${flag} needs a value`);
      }
      return argv[++i];
    };
    if (flag === '--port') {
      const text = takeValue();
      const port = Number(text);
      if (!/^\d+$/.test(text) || port > 65535) {
        throw new Error(`--port must be an integer from 0 to 65535, but got ${JSON.stringify(text)}`);
      }
      options.port = port;
    } else if (flag === '--api-key') {
      options.apiKey = takeValue();
      if (!options.apiKey) {
        throw new Error('--api-key must not be empty');
      }
    } else if (flag === '--verbose') {
      options.verbose = true;
    } else if (flag === '--help' || flag === '-h') {
      options.help = true;
    } else {
      throw new Error(`unknown argument ${JSON.stringify(argv[i])}`);
    }
  }
  return options;
}

async function main() {
  let options;
  try {
    options = parseArguments(process.argv.slice(2));
  } catch (error) {
    process.stderr.write(`openai-fake: ${error.message}\n${USAGE}\n`);
    process.exit(2);
  }
  if (options.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }

  const fake = await startFakeServer(options);
  process.stdout.write(`{"port": ${fake.port}}\n`);
  process.stderr.write(`openai-fake: listening on ${fake.baseUrl}\n`);

  let stopping = false;
  const stop = (signal) => {
    if (stopping) {
      return;
    }
    stopping = true;
    process.stderr.write(`openai-fake: received ${signal}, stopping\n`);
    // Exit even if a connection refuses to close within 2 s.
    setTimeout(() => process.exit(0), 2000).unref();
    fake.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error) => {
    process.stderr.write(`openai-fake: failed to start: ${error.stack ?? error}\n`);
    process.exit(1);
  });
}
