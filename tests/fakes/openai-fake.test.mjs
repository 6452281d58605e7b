// Tests for the fake OpenAI Images API server. Run with: node --test tests/fakes/
//
// The fake runs as a child process, exactly as the gateway's black-box tests start it.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { inflateSync } from 'node:zlib';
import * as zlib from 'node:zlib';

import { crc32, expectedImageSha256, renderImagePng } from './openai-fake.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const FAKE_PATH = join(HERE, 'openai-fake.mjs');
const OPENAI_CLIENT_PATH = join(HERE, '..', 'blackbox', 'node_modules', 'openai', 'index.mjs');
const API_KEY = 'sk-test-fake';
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

let fakeProcess;
let baseUrl;

function startFake() {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FAKE_PATH, '--port', '0', '--api-key', API_KEY], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`the fake did not print its port within 10 s; stderr: ${stderr}`));
    }, 10_000);
    child.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const newline = stdout.indexOf('\n');
      if (newline >= 0) {
        clearTimeout(timer);
        resolve({ child, firstLine: stdout.slice(0, newline), stdout: () => stdout });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the fake exited early with code ${code}; stderr: ${stderr}`));
    });
  });
}

function generate(body, { key = API_KEY, headers = {}, signal } = {}) {
  const allHeaders = { 'content-type': 'application/json', ...headers };
  if (key !== null) {
    allHeaders.authorization = `Bearer ${key}`;
  }
  return fetch(`${baseUrl}/v1/images/generations`, {
    method: 'POST',
    headers: allHeaders,
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal,
  });
}

async function control(settings) {
  const response = await fetch(`${baseUrl}/__control`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(settings),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

async function stats() {
  const response = await fetch(`${baseUrl}/__stats`);
  assert.equal(response.status, 200);
  return response.json();
}

async function expectedSha256(query) {
  const response = await fetch(`${baseUrl}/__expected?${new URLSearchParams(query)}`);
  assert.equal(response.status, 200, await response.clone().text());
  return (await response.json()).sha256;
}

function sha256(bytes) {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Parses a PNG strictly: signature, chunk CRCs, IHDR, and the inflated IDAT size. */
function parsePng(bytes) {
  assert.ok(bytes.subarray(0, 8).equals(PNG_SIGNATURE), 'PNG signature');

  const chunks = [];
  let offset = 8;
  while (offset < bytes.length) {
    assert.ok(offset + 12 <= bytes.length, `chunk header at byte ${offset} is truncated`);
    const length = bytes.readUInt32BE(offset);
    const type = bytes.toString('ascii', offset + 4, offset + 8);
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    const storedCrc = bytes.readUInt32BE(offset + 8 + length);
    const typeAndData = bytes.subarray(offset + 4, offset + 8 + length);
    // Node's own zlib.crc32 (Node >= 20.15) checks the fake's CRC-32 independently.
    const expectedCrc = typeof zlib.crc32 === 'function' ? zlib.crc32(typeAndData) : crc32(typeAndData);
    assert.equal(storedCrc, expectedCrc, `CRC of ${type} chunk`);
    chunks.push({ type, data });
    offset += 12 + length;
  }

  assert.equal(chunks[0].type, 'IHDR');
  assert.equal(chunks.at(-1).type, 'IEND');
  const ihdr = chunks[0].data;
  const width = ihdr.readUInt32BE(0);
  const height = ihdr.readUInt32BE(4);
  const bitDepth = ihdr[8];
  const colorType = ihdr[9];
  const channels = colorType === 6 ? 4 : 3;

  const idat = Buffer.concat(chunks.filter((chunk) => chunk.type === 'IDAT').map((chunk) => chunk.data));
  const scanlines = inflateSync(idat);
  assert.equal(scanlines.length, height * (1 + width * channels), 'inflated IDAT size');
  for (let y = 0; y < height; y++) {
    assert.equal(scanlines[y * (1 + width * channels)], 0, `filter byte of row ${y}`);
  }
  return { width, height, bitDepth, colorType, scanlines };
}

function countDistinctPixels({ width, height, colorType, scanlines }) {
  const channels = colorType === 6 ? 4 : 3;
  const stride = 1 + width * channels;
  const seen = new Set();
  for (let y = 0; y < height; y += 7) {
    for (let x = 0; x < width; x += 7) {
      const start = y * stride + 1 + x * channels;
      seen.add(scanlines.subarray(start, start + channels).toString('hex'));
    }
  }
  return seen.size;
}

before(async () => {
  fakeProcess = await startFake();
  baseUrl = `http://127.0.0.1:${JSON.parse(fakeProcess.firstLine).port}`;
});

after(async () => {
  if (fakeProcess.child.exitCode !== null) {
    return;
  }
  const exited = new Promise((resolve) => fakeProcess.child.once('exit', (code, signal) => resolve({ code, signal })));
  fakeProcess.child.kill('SIGTERM');
  const { code } = await exited;
  assert.equal(code, 0, 'the fake exits with status 0 on SIGTERM');
});

beforeEach(async () => {
  const response = await fetch(`${baseUrl}/__reset`, { method: 'POST' });
  assert.equal(response.status, 200);
});

describe('startup', () => {
  test('prints exactly the port line', () => {
    assert.match(fakeProcess.firstLine, /^\{"port": \d+\}$/);
    assert.equal(fakeProcess.stdout(), `${fakeProcess.firstLine}\n`);
  });
});

describe('generations', () => {
  test('gpt-image-1 returns b64_json PNGs and usage', async () => {
    const response = await generate({ model: 'gpt-image-1', prompt: 'a lighthouse at dusk', n: 2, size: '1536x1024', quality: 'low' });
    assert.equal(response.status, 200);
    assert.match(response.headers.get('x-request-id'), /^req_[0-9a-f]{32}$/);
    const body = await response.json();

    assert.ok(Number.isInteger(body.created));
    assert.equal(body.data.length, 2);
    for (const [index, item] of body.data.entries()) {
      assert.equal(item.url, undefined);
      assert.equal(item.revised_prompt, undefined);
      const png = parsePng(Buffer.from(item.b64_json, 'base64'));
      assert.equal(png.width, 1536);
      assert.equal(png.height, 1024);
      assert.equal(png.bitDepth, 8);
      assert.equal(png.colorType, 2);
      assert.ok(countDistinctPixels(png) >= 2, `image ${index} is not a single colour`);
    }
    assert.notEqual(body.data[0].b64_json, body.data[1].b64_json, 'the two images differ');

    assert.equal(body.size, '1536x1024');
    assert.equal(body.quality, 'low');
    assert.equal(body.output_format, 'png');
    assert.equal(body.usage.output_tokens, 2 * 400);
    assert.equal(body.usage.input_tokens, body.usage.input_tokens_details.text_tokens);
    assert.equal(body.usage.total_tokens, body.usage.input_tokens + body.usage.output_tokens);
  });

  test('gpt-image-1 size auto is 1024x1024', async () => {
    const response = await generate({ model: 'gpt-image-1', prompt: 'auto size' });
    assert.equal(response.status, 200);
    const body = await response.json();
    const png = parsePng(Buffer.from(body.data[0].b64_json, 'base64'));
    assert.equal(png.width, 1024);
    assert.equal(png.height, 1024);
    assert.equal(body.size, '1024x1024');
  });

  test('transparent background gives RGBA', async () => {
    const response = await generate({ model: 'gpt-image-1', prompt: 'a sticker', background: 'transparent' });
    assert.equal(response.status, 200);
    const body = await response.json();
    const bytes = Buffer.from(body.data[0].b64_json, 'base64');
    assert.equal(parsePng(bytes).colorType, 6);
    assert.equal(body.background, 'transparent');
    assert.equal(sha256(bytes), await expectedSha256({ model: 'gpt-image-1', prompt: 'a sticker', background: 'transparent' }));
  });

  test('dall-e-3 url downloads the PNG', async () => {
    const response = await generate({ model: 'dall-e-3', prompt: 'a red fox in snow', size: '1792x1024', quality: 'hd', style: 'natural' });
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.equal(body.usage, undefined);
    assert.equal(body.data.length, 1);
    const item = body.data[0];
    assert.equal(item.b64_json, undefined);
    assert.equal(typeof item.revised_prompt, 'string');
    assert.match(item.url, /^http:\/\/127\.0\.0\.1:\d+\/files\/img-[0-9a-f]+\.png\?se=\d+&sig=[\w-]+$/);

    const expiry = Number(new URL(item.url).searchParams.get('se'));
    const nowSeconds = Date.now() / 1000;
    assert.ok(expiry > nowSeconds + 3500, `se=${expiry} is about one hour ahead`);
    assert.ok(expiry <= nowSeconds + 3601, `se=${expiry} is at most one hour ahead`);

    const download = await fetch(item.url);
    assert.equal(download.status, 200);
    assert.equal(download.headers.get('content-type'), 'image/png');
    const bytes = Buffer.from(await download.arrayBuffer());
    const png = parsePng(bytes);
    assert.equal(png.width, 1792);
    assert.equal(png.height, 1024);
    assert.equal(sha256(bytes), await expectedSha256({ model: 'dall-e-3', prompt: 'a red fox in snow', size: '1792x1024' }));
    assert.equal((await stats()).file_downloads, 1);
  });

  test('dall-e-2 is the default model', async () => {
    const response = await generate({ prompt: 'a blue square', size: '256x256', response_format: 'b64_json', n: 3 });
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.equal(body.data.length, 3);
    const bytes = Buffer.from(body.data[2].b64_json, 'base64');
    assert.equal(parsePng(bytes).width, 256);
    assert.equal(sha256(bytes), expectedImageSha256('dall-e-2', 'a blue square', '256x256', 2));
  });

  test('gpt-image-only parameter selects gpt-image-1', async () => {
    const response = await generate({ prompt: 'no model given', output_format: 'png' });
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.ok(body.usage, 'usage is present, so gpt-image-1 answered');
    assert.ok(body.data[0].b64_json);
  });

  test('same inputs give identical bytes', async () => {
    await control({ created: 1700000000 });
    const request = { model: 'gpt-image-1', prompt: 'determinism check', size: '1024x1536' };
    const first = await (await generate(request)).text();
    const second = await (await generate(request)).text();
    assert.equal(first, second, 'with a pinned created time, the whole body repeats');

    const bytes = Buffer.from(JSON.parse(first).data[0].b64_json, 'base64');
    const served = await expectedSha256({ model: 'gpt-image-1', prompt: 'determinism check', size: '1024x1536', index: 0 });
    assert.equal(sha256(bytes), served);
    assert.equal(sha256(bytes), expectedImageSha256('gpt-image-1', 'determinism check', '1024x1536', 0));
  });

  test('renderer is fast at 1792x1024', () => {
    const started = process.hrtime.bigint();
    const png = renderImagePng('dall-e-3', `timing ${Math.random()}`, '1792x1024', 0);
    const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    assert.equal(parsePng(png).width, 1792);
    assert.ok(elapsedMs < 1000, `rendering took ${elapsedMs.toFixed(1)} ms`);
  });
});

describe('gpt-image-2 and later', () => {
  const newerModels = [
    'gpt-image-2',
    'gpt-image-2-2026-04-21',
    'gpt-image-2.5-sunburst',
    'gpt-image-2.5-flare-2026-09-08',
    'gpt-image-2.6-sunburst',
    'gpt-image-2.6-flare',
    'gpt-image-1.5',
    'gpt-image-1-mini',
    'chatgpt-image-latest',
  ];
  for (const model of newerModels) {
    test(`${model} returns a 1024x1024 PNG`, async () => {
      const response = await generate({ model, prompt: `default size for ${model}` });
      assert.equal(response.status, 200);
      const body = await response.json();
      const bytes = Buffer.from(body.data[0].b64_json, 'base64');
      const png = parsePng(bytes);
      assert.equal(png.width, 1024);
      assert.equal(png.height, 1024);
      assert.equal(body.size, '1024x1024');
      assert.equal(body.output_format, 'png');
      assert.equal(sha256(bytes), await expectedSha256({ model, prompt: `default size for ${model}` }));
    });
  }

  test('gpt-image-2 takes an arbitrary size', async () => {
    const response = await generate({ model: 'gpt-image-2', prompt: 'wide banner', size: '1536x864', quality: 'low' });
    assert.equal(response.status, 200);
    const body = await response.json();
    const bytes = Buffer.from(body.data[0].b64_json, 'base64');
    const png = parsePng(bytes);
    assert.equal(png.width, 1536);
    assert.equal(png.height, 864);
    assert.equal(body.size, '1536x864');
    assert.equal(sha256(bytes), expectedImageSha256('gpt-image-2', 'wide banner', '1536x864', 0));
    assert.ok(Number.isInteger(body.usage.output_tokens), 'output tokens are an integer');
    assert.ok(body.usage.output_tokens > 0, 'output tokens are estimated');
    assert.equal(body.usage.total_tokens, body.usage.input_tokens + body.usage.output_tokens);
  });

  const acceptedSizes = [
    ['gpt-image-2', '3840x2160'],
    ['gpt-image-2-2026-04-21', '2160x3840'],
    ['gpt-image-2.5-flare', '48x16'],
    ['gpt-image-2.6-sunburst', '1280x3840'],
    ['gpt-image-2.5-sunburst', '1536x1024'],
    ['gpt-image-2', 'auto'],
  ];
  for (const [model, size] of acceptedSizes) {
    test(`${model} accepts size ${size}`, async () => {
      const response = await generate({ model, prompt: 'size edge', size });
      assert.equal(response.status, 200, await response.clone().text());
      const body = await response.json();
      const png = parsePng(Buffer.from(body.data[0].b64_json, 'base64'));
      assert.equal(`${png.width}x${png.height}`, size === 'auto' ? '1024x1024' : size);
    });
  }

  const rejectedSizes = [
    { model: 'gpt-image-2', size: '1000x1000', why: 'not a multiple of 16' },
    { model: 'gpt-image-2', size: '1536x496', why: 'wider than 3:1' },
    { model: 'gpt-image-2.5-sunburst', size: '496x1536', why: 'taller than 1:3' },
    { model: 'gpt-image-2', size: '4096x2160', why: 'long edge over 3840' },
    { model: 'gpt-image-2.6-flare', size: '2176x2176', why: 'short edge over 2160' },
    { model: 'gpt-image-2', size: '0x16', why: 'zero width' },
    { model: 'gpt-image-2', size: 'large', why: 'not WIDTHxHEIGHT' },
    { model: 'gpt-image-1.5', size: '1536x864', why: 'fixed-size model' },
    { model: 'chatgpt-image-latest', size: '1792x1024', why: 'fixed-size model' },
  ];
  for (const { model, size, why } of rejectedSizes) {
    test(`${model} rejects ${size} (${why})`, async () => {
      const response = await generate({ model, prompt: 'p', size });
      assert.equal(response.status, 400);
      const { error } = await response.json();
      assert.equal(error.param, 'size');
      assert.equal(error.code, 'invalid_value');
      assert.equal(error.type, 'invalid_request_error');
    });
  }

  const qualityCases = [
    { model: 'gpt-image-2.5-sunburst', quality: 'xhigh', status: 200 },
    { model: 'gpt-image-2.5-flare-2026-09-08', quality: 'max', status: 200 },
    { model: 'gpt-image-2', quality: 'medium', status: 200 },
    { model: 'gpt-image-2', quality: 'xhigh', status: 400 },
    { model: 'gpt-image-2.6-flare', quality: 'max', status: 400 },
    { model: 'gpt-image-2', quality: 'hd', status: 400 },
  ];
  for (const { model, quality, status } of qualityCases) {
    test(`${model} quality ${quality} gives ${status}`, async () => {
      const response = await generate({ model, prompt: 'quality check', quality });
      assert.equal(response.status, status);
      const body = await response.json();
      if (status === 200) {
        assert.equal(body.quality, quality);
      } else {
        assert.equal(body.error.param, 'quality');
      }
    });
  }

  test('gpt-image-2 quality auto resolves', async () => {
    const response = await generate({ model: 'gpt-image-2', prompt: 'auto quality', quality: 'auto' });
    assert.equal(response.status, 200);
    assert.equal((await response.json()).quality, 'high');
  });

  for (const model of ['gpt-image-2', 'gpt-image-2.5-sunburst', 'gpt-image-2.6-flare', 'chatgpt-image-latest']) {
    test(`${model} rejects response_format`, async () => {
      const response = await generate({ model, prompt: 'p', response_format: 'b64_json' });
      assert.equal(response.status, 400);
      const { error } = await response.json();
      assert.equal(error.param, 'response_format');
      assert.equal(error.code, 'unknown_parameter');
    });
  }

  for (const model of ['gpt-image-3', 'gpt-image-2.5', 'gpt-image-2.7-flare', 'gpt-image-2-2026-04-22']) {
    test(`unknown model ${model} returns 404`, async () => {
      const response = await generate({ model, prompt: 'p' });
      assert.equal(response.status, 404);
      assert.equal((await response.json()).error.code, 'model_not_found');
    });
  }

  test('expected endpoint knows gpt-image-2', async () => {
    const response = await fetch(`${baseUrl}/__expected?model=gpt-image-2&prompt=p&size=1536x864`);
    assert.equal(response.status, 200);
    const expected = await response.json();
    assert.equal(expected.sha256, expectedImageSha256('gpt-image-2', 'p', '1536x864', 0));
    assert.equal(expected.width, 1536);
    assert.equal(expected.height, 864);
  });
});

describe('url expiry', () => {
  test('expired url returns 403 AuthenticationFailed', async () => {
    await control({ url_ttl_ms: 300 });
    const response = await generate({ model: 'dall-e-2', prompt: 'short-lived', size: '512x512' });
    assert.equal(response.status, 200);
    const { url } = (await response.json()).data[0];

    const early = await fetch(url);
    assert.equal(early.status, 200);
    await early.arrayBuffer();

    await new Promise((resolve) => setTimeout(resolve, 450));
    const late = await fetch(url);
    assert.equal(late.status, 403);
    assert.equal(late.headers.get('x-ms-error-code'), 'AuthenticationFailed');
    assert.match(late.headers.get('content-type'), /^application\/xml/);
    const xml = await late.text();
    assert.match(xml, /<Code>AuthenticationFailed<\/Code>/);
    assert.match(xml, /<AuthenticationErrorDetail>Signature not valid in the specified time frame/);
  });

  test('url_ttl_ms 0 expires urls at once', async () => {
    await control({ url_ttl_ms: 0 });
    const response = await generate({ model: 'dall-e-2', prompt: 'born expired', size: '256x256' });
    assert.equal(response.status, 200);
    const { url } = (await response.json()).data[0];
    const download = await fetch(url);
    assert.equal(download.status, 403);
    assert.equal(download.headers.get('x-ms-error-code'), 'AuthenticationFailed');
    await download.arrayBuffer();
  });

  test('control rejects negative url_ttl_ms', async () => {
    const response = await fetch(`${baseUrl}/__control`, { method: 'POST', body: JSON.stringify({ url_ttl_ms: -1 }) });
    assert.equal(response.status, 400);
    assert.equal((await response.json()).error.code, 'invalid_control');
  });

  test('tampered signature returns 403', async () => {
    const response = await generate({ model: 'dall-e-2', prompt: 'tamper', size: '256x256' });
    const { url } = (await response.json()).data[0];
    const tampered = new URL(url);
    tampered.searchParams.set('sig', 'forged');
    const download = await fetch(tampered);
    assert.equal(download.status, 403);
    assert.match(await download.text(), /<Code>AuthenticationFailed<\/Code>/);
  });

  test('unknown file returns 404 BlobNotFound', async () => {
    const download = await fetch(`${baseUrl}/files/img-0000.png?se=1&sig=x`);
    assert.equal(download.status, 404);
    assert.equal(download.headers.get('x-ms-error-code'), 'BlobNotFound');
  });
});

describe('authentication', () => {
  test('missing key returns 401', async () => {
    const response = await generate({ prompt: 'x' }, { key: null });
    assert.equal(response.status, 401);
    const { error } = await response.json();
    assert.equal(error.type, 'invalid_request_error');
    assert.equal(error.param, null);
    assert.equal(typeof error.message, 'string');
    assert.ok('code' in error);
  });

  test('wrong key returns 401 invalid_api_key', async () => {
    const response = await generate({ prompt: 'x' }, { key: 'sk-wrong-key-1234' });
    assert.equal(response.status, 401);
    const { error } = await response.json();
    assert.equal(error.code, 'invalid_api_key');
    assert.equal(error.type, 'invalid_request_error');
    assert.ok(!error.message.includes('sk-wrong-key-1234'), 'the message masks the key');
  });
});

describe('validation', () => {
  const cases = [
    { name: 'dall-e-3 size 512x512', body: { model: 'dall-e-3', prompt: 'p', size: '512x512' }, param: 'size' },
    { name: 'dall-e-2 size 1792x1024', body: { model: 'dall-e-2', prompt: 'p', size: '1792x1024' }, param: 'size' },
    { name: 'gpt-image-1 size 1792x1024', body: { model: 'gpt-image-1', prompt: 'p', size: '1792x1024' }, param: 'size' },
    { name: 'dall-e-3 n 2', body: { model: 'dall-e-3', prompt: 'p', n: 2 }, param: 'n' },
    { name: 'dall-e-2 n 11', body: { model: 'dall-e-2', prompt: 'p', n: 11 }, param: 'n' },
    { name: 'n 0', body: { model: 'gpt-image-1', prompt: 'p', n: 0 }, param: 'n' },
    { name: 'n as string', body: { model: 'dall-e-2', prompt: 'p', n: '2' }, param: 'n' },
    { name: 'dall-e-2 quality hd', body: { model: 'dall-e-2', prompt: 'p', quality: 'hd' }, param: 'quality' },
    { name: 'gpt-image-1 quality standard', body: { model: 'gpt-image-1', prompt: 'p', quality: 'standard' }, param: 'quality' },
    { name: 'dall-e-3 quality low', body: { model: 'dall-e-3', prompt: 'p', quality: 'low' }, param: 'quality' },
    { name: 'gpt-image-1 response_format', body: { model: 'gpt-image-1', prompt: 'p', response_format: 'b64_json' }, param: 'response_format', code: 'unknown_parameter' },
    { name: 'response_format png', body: { model: 'dall-e-2', prompt: 'p', response_format: 'png' }, param: 'response_format' },
    { name: 'dall-e-3 style bold', body: { model: 'dall-e-3', prompt: 'p', style: 'bold' }, param: 'style' },
    { name: 'missing prompt', body: { model: 'dall-e-2' }, param: 'prompt', code: 'missing_required_parameter' },
    { name: 'empty prompt', body: { model: 'dall-e-2', prompt: '' }, param: 'prompt' },
    { name: 'dall-e-2 prompt 1001', body: { model: 'dall-e-2', prompt: 'a'.repeat(1001) }, param: 'prompt', code: 'string_above_max_length' },
    { name: 'dall-e-3 prompt 4001', body: { model: 'dall-e-3', prompt: 'a'.repeat(4001) }, param: 'prompt', code: 'string_above_max_length' },
    { name: 'gpt-image-1 prompt 32001', body: { model: 'gpt-image-1', prompt: 'a'.repeat(32001) }, param: 'prompt', code: 'string_above_max_length' },
    { name: 'unknown parameter', body: { model: 'dall-e-2', prompt: 'p', colour: 'red' }, param: 'colour', code: 'unknown_parameter' },
  ];
  for (const { name, body, param, code } of cases) {
    test(`rejects ${name}`, async () => {
      const response = await generate(body);
      assert.equal(response.status, 400);
      const { error } = await response.json();
      assert.equal(error.type, 'invalid_request_error');
      assert.equal(error.param, param);
      if (code) {
        assert.equal(error.code, code);
      }
      assert.equal(typeof error.message, 'string');
    });
  }

  test('accepts prompts at the maximum length', async () => {
    for (const [model, max] of [['dall-e-2', 1000], ['dall-e-3', 4000], ['gpt-image-1', 32000]]) {
      const response = await generate({ model, prompt: 'a'.repeat(max), response_format: model === 'gpt-image-1' ? undefined : 'b64_json' });
      assert.equal(response.status, 200, `${model} with a ${max}-character prompt`);
      await response.arrayBuffer();
    }
  });

  test('unknown model returns 404 model_not_found', async () => {
    const response = await generate({ model: 'dall-e-9', prompt: 'p' });
    assert.equal(response.status, 404);
    const { error } = await response.json();
    assert.equal(error.code, 'model_not_found');
    assert.equal(error.type, 'invalid_request_error');
  });

  test('invalid JSON returns 400', async () => {
    const response = await generate('{"prompt": ');
    assert.equal(response.status, 400);
    const { error } = await response.json();
    assert.equal(error.type, 'invalid_request_error');
  });

  test('body over 1 MiB returns 413', async () => {
    const response = await generate({ model: 'dall-e-2', prompt: 'x'.repeat(1024 * 1024 + 10) });
    assert.equal(response.status, 413);
    const { error } = await response.json();
    assert.equal(typeof error.message, 'string');
    assert.equal((await stats()).generations, 1);
  });

  test('unknown path returns OpenAI-shaped 404', async () => {
    const response = await fetch(`${baseUrl}/v1/images/edits-nope`, { method: 'POST' });
    assert.equal(response.status, 404);
    const { error } = await response.json();
    assert.equal(error.type, 'invalid_request_error');
    assert.ok('param' in error);
    assert.ok('code' in error);
  });
});

describe('scripted responses', () => {
  test('429 carries Retry-After and rate-limit headers', async () => {
    await control({ script: [{ status: 429, retry_after: 3 }] });
    const limited = await generate({ prompt: 'rate limited' });
    assert.equal(limited.status, 429);
    assert.equal(limited.headers.get('retry-after'), '3');
    for (const name of ['limit-requests', 'remaining-requests', 'reset-requests', 'limit-tokens', 'remaining-tokens', 'reset-tokens']) {
      assert.ok(limited.headers.get(`x-ratelimit-${name}`), `x-ratelimit-${name} is present`);
    }
    const { error } = await limited.json();
    assert.equal(error.code, 'rate_limit_exceeded');

    const next = await generate({ prompt: 'after the script' });
    assert.equal(next.status, 200, 'the entry is used once');
    await next.arrayBuffer();
  });

  test('500 and content policy errors', async () => {
    await control({ script: [{ status: 500 }, { status: 400, code: 'content_policy_violation' }] });
    const serverError = await generate({ prompt: 'p' });
    assert.equal(serverError.status, 500);
    assert.equal((await serverError.json()).error.type, 'server_error');

    const refused = await generate({ prompt: 'p' });
    assert.equal(refused.status, 400);
    const { error } = await refused.json();
    assert.equal(error.code, 'content_policy_violation');
    assert.equal(error.type, 'invalid_request_error');
  });

  test('empty_data returns no images', async () => {
    await control({ script: [{ kind: 'empty_data' }] });
    const response = await generate({ model: 'gpt-image-1', prompt: 'p' });
    assert.equal(response.status, 200);
    assert.deepEqual((await response.json()).data, []);
  });

  test('not_image returns non-PNG bytes', async () => {
    await control({ script: [{ kind: 'not_image' }] });
    const response = await generate({ model: 'gpt-image-1', prompt: 'p' });
    const bytes = Buffer.from((await response.json()).data[0].b64_json, 'base64');
    assert.ok(bytes.length > 0);
    assert.ok(!bytes.subarray(0, 8).equals(PNG_SIGNATURE));
  });

  test('wrong_size returns a smaller PNG', async () => {
    await control({ script: [{ kind: 'wrong_size' }] });
    const response = await generate({ model: 'gpt-image-1', prompt: 'p', size: '1024x1536' });
    const png = parsePng(Buffer.from((await response.json()).data[0].b64_json, 'base64'));
    assert.equal(png.width, 512);
    assert.equal(png.height, 768);
  });

  test('truncated returns half a PNG', async () => {
    await control({ script: [{ kind: 'truncated' }] });
    const response = await generate({ model: 'gpt-image-1', prompt: 'p' });
    const bytes = Buffer.from((await response.json()).data[0].b64_json, 'base64');
    const whole = renderImagePng('gpt-image-1', 'p', '1024x1024', 0);
    assert.equal(bytes.length, Math.floor(whole.length / 2));
    assert.ok(whole.subarray(0, bytes.length).equals(bytes));
    assert.throws(() => parsePng(bytes));
  });

  test('force_url returns a url for b64 requests', async () => {
    await control({ script: [{ kind: 'force_url' }] });
    const response = await generate({ model: 'dall-e-2', prompt: 'p', response_format: 'b64_json' });
    const item = (await response.json()).data[0];
    assert.equal(item.b64_json, undefined);
    const download = await fetch(item.url);
    assert.equal(download.status, 200);
    assert.equal(sha256(Buffer.from(await download.arrayBuffer())), expectedImageSha256('dall-e-2', 'p', '1024x1024', 0));
  });

  test('hang holds the request until abort', async () => {
    await control({ script: [{ kind: 'hang' }] });
    await assert.rejects(generate({ prompt: 'p' }, { signal: AbortSignal.timeout(300) }), { name: 'TimeoutError' });
    let current = await stats();
    for (let attempt = 0; attempt < 50 && current.in_flight !== 0; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      current = await stats();
    }
    assert.equal(current.in_flight, 0, 'the aborted request is no longer in flight');
    assert.equal(current.generations, 1);
  });

  test('control rejects malformed script', async () => {
    const response = await fetch(`${baseUrl}/__control`, {
      method: 'POST',
      body: JSON.stringify({ script: [{ status: 200 }] }),
    });
    assert.equal(response.status, 400);
    const unknown = await fetch(`${baseUrl}/__control`, { method: 'POST', body: JSON.stringify({ delay: 5 }) });
    assert.equal(unknown.status, 400);
  });
});

describe('stats', () => {
  test('counts generations and redacts authorization', async () => {
    await generate({ prompt: 'one', response_format: 'b64_json' }).then((r) => r.arrayBuffer());
    await generate({ prompt: 'two', size: 'bad' }).then((r) => r.arrayBuffer());
    await generate({ prompt: 'three' }, { key: 'sk-nope' }).then((r) => r.arrayBuffer());

    const current = await stats();
    assert.equal(current.generations, 3);
    assert.equal(current.in_flight, 0);
    assert.equal(current.max_concurrent, 1);
    assert.deepEqual(current.requests.map((body) => body.prompt), ['one', 'two', 'three']);
    assert.equal(current.last_request.body.prompt, 'three');
    assert.equal(current.last_request.headers.authorization, '***nope');
    assert.equal(current.last_request.headers['content-type'], 'application/json');
  });

  test('max_concurrent sees parallel requests', async () => {
    await control({ delay_ms: 300 });
    const responses = await Promise.all([1, 2, 3].map((i) => generate({ prompt: `parallel ${i}`, response_format: 'b64_json' })));
    for (const response of responses) {
      assert.equal(response.status, 200);
      await response.arrayBuffer();
    }
    const current = await stats();
    assert.equal(current.max_concurrent, 3);
    assert.equal(current.generations, 3);
  });

  test('reset zeroes counters and settings', async () => {
    await control({ delay_ms: 5, url_ttl_ms: 10, script: [{ status: 500 }] });
    await generate({ prompt: 'p' }).then((r) => r.arrayBuffer());
    await fetch(`${baseUrl}/__reset`, { method: 'POST' });
    const current = await stats();
    assert.equal(current.generations, 0);
    assert.deepEqual(current.requests, []);
    assert.equal(current.last_request, null);
    const settings = await (await fetch(`${baseUrl}/__control`)).json();
    assert.deepEqual(settings, { delay_ms: 0, url_ttl_ms: 3600000, created: null, script: [] });
  });
});

describe('official openai client', () => {
  const clientInstalled = existsSync(OPENAI_CLIENT_PATH);
  const skip = clientInstalled ? false : 'openai is not installed; run "npm ci" in tests/blackbox';

  test('images.generate and APIError', { skip }, async () => {
    const { default: OpenAI } = await import(pathToFileURL(OPENAI_CLIENT_PATH).href);
    const client = new OpenAI({ apiKey: API_KEY, baseURL: `${baseUrl}/v1`, maxRetries: 0, timeout: 10_000 });

    const gptImage = await client.images.generate({ model: 'gpt-image-1', prompt: 'client check', size: '1024x1536', quality: 'medium' });
    const gptImageBytes = Buffer.from(gptImage.data[0].b64_json, 'base64');
    assert.equal(parsePng(gptImageBytes).height, 1536);
    assert.equal(sha256(gptImageBytes), expectedImageSha256('gpt-image-1', 'client check', '1024x1536', 0));
    assert.equal(gptImage.usage.output_tokens, 1584);

    const dallE3 = await client.images.generate({ model: 'dall-e-3', prompt: 'client url check', response_format: 'url' });
    const download = await fetch(dallE3.data[0].url);
    assert.equal(parsePng(Buffer.from(await download.arrayBuffer())).width, 1024);
    assert.equal(typeof dallE3.data[0].revised_prompt, 'string');

    const sent = (await stats()).last_request;
    assert.equal(sent.headers.authorization, `***${API_KEY.slice(-4)}`);
    assert.equal(sent.body.model, 'dall-e-3');

    const badSize = await client.images.generate({ model: 'dall-e-3', prompt: 'p', size: '256x256' }).then(
      () => assert.fail('a 256x256 dall-e-3 request must fail'),
      (error) => error,
    );
    assert.ok(badSize instanceof OpenAI.APIError, `got ${badSize?.constructor?.name}`);
    assert.ok(badSize instanceof OpenAI.BadRequestError);
    assert.equal(badSize.status, 400);
    assert.equal(badSize.param, 'size');
    assert.equal(badSize.code, 'invalid_value');
    assert.equal(badSize.type, 'invalid_request_error');

    const wrongKey = new OpenAI({ apiKey: 'sk-wrong', baseURL: `${baseUrl}/v1`, maxRetries: 0 });
    await assert.rejects(wrongKey.images.generate({ prompt: 'p' }), (error) => {
      assert.ok(error instanceof OpenAI.AuthenticationError);
      assert.equal(error.status, 401);
      assert.equal(error.code, 'invalid_api_key');
      return true;
    });

    const flexible = await client.images.generate({ model: 'gpt-image-2.5-sunburst', prompt: 'client flexible size', size: '1536x864', quality: 'xhigh' });
    const flexibleBytes = Buffer.from(flexible.data[0].b64_json, 'base64');
    assert.equal(sha256(flexibleBytes), expectedImageSha256('gpt-image-2.5-sunburst', 'client flexible size', '1536x864', 0));
    assert.equal(flexible.size, '1536x864');
    assert.equal(flexible.quality, 'xhigh');

    await control({ script: [{ status: 429, retry_after: 1 }] });
    await assert.rejects(client.images.generate({ prompt: 'p' }), (error) => {
      assert.ok(error instanceof OpenAI.RateLimitError);
      assert.equal(error.headers.get('retry-after'), '1');
      return true;
    });
  });
});
