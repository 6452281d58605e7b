// The Stability AI adapter end to end: pixelgate with a "stability" backend pointed at the fake
// Stable Image server (tests/fakes/stability-fake.mjs), which runs in this process on loopback.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';

import { startFakeServer } from '../fakes/stability-fake.mjs';
import { API_KEY_ENV, Gateway, TEST_API_KEY, checkCompletePng, jsonBody } from './lib/harness.mjs';

// Bounds a whole generation, retries included. It leaves room for the one-second Retry-After tests.
const GENERATION_TIMEOUT_MS = 4000;
let stability;
let gateway;

function stabilityBackend(overrides = {}) {
  return {
    type: 'stability',
    base_url: stability.baseUrl,
    model: 'sd3.5-large',
    api_key_env: API_KEY_ENV,
    max_retries: 1,
    retry_base_delay_ms: 50,
    timeout_ms: 15_000,
    ...overrides,
  };
}

before(async () => {
  process.env.PG_TEST_STABILITY_WRONG_KEY = 'sk-not-the-fake-key-9876';
  stability = await startFakeServer({ apiKey: TEST_API_KEY });
  gateway = await Gateway.start(() => ({
    default_backend: 'stability',
    limits: { generation_timeout_ms: GENERATION_TIMEOUT_MS },
    backends: {
      stability: stabilityBackend(),
      ultra: stabilityBackend({ model: 'ultra' }),
      turbo: stabilityBackend({ model: 'sd3.5-large-turbo' }),
      short: stabilityBackend({ max_retries: 0, timeout_ms: 1000 }),
      wrongkey: stabilityBackend({ api_key_env: 'PG_TEST_STABILITY_WRONG_KEY' }),
    },
    templates: {
      ultra: { backend: 'ultra' },
      fog: { negative_prompt: 'fog' },
      turbofog: { backend: 'turbo', negative_prompt: 'fog' },
      turbomodel: { model: 'sd3.5-large-turbo', negative_prompt: 'fog' },
      short: { backend: 'short' },
      wrongkey: { backend: 'wrongkey' },
    },
  }));
});

after(async () => {
  await gateway?.close();
  await stability?.close();
});

beforeEach(async () => {
  await fakeCall('POST', '/__reset', {});
});

async function fakeCall(method, path, body) {
  const response = await fetch(`${stability.baseUrl}${path}`, {
    method,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.equal(response.status, 200, `fake ${method} ${path}`);
  return response.json();
}

const script = (entries) => fakeCall('POST', '/__control', { script: entries });
const stats = () => fakeCall('GET', '/__stats');
const generations = async () => (await stats()).generations;

/** Checks the shape that every pixelgate error shares and returns the parsed error object. */
function assertJsonError(response, status) {
  assert.equal(response.status, status, response.body.toString());
  assert.equal(response.headers['cache-control'], 'no-store');
  const { error } = jsonBody(response);
  assert.equal(typeof error.message, 'string');
  return error;
}

function pngSize(bytes) {
  return { width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
}

describe('stability success', { timeout: 60_000 }, () => {
  test('sd3 image served then cached', async () => {
    const path = '/generate-image?prompt=a+lighthouse+on+a+cliff&seed=42';
    const first = await gateway.get(path);
    assert.equal(first.status, 200, first.body.toString());
    checkCompletePng(first.body);
    assert.deepEqual(pngSize(first.body), { width: 1024, height: 1024 });
    assert.equal(first.headers['x-pixelgate-cache'], 'miss');

    const second = await gateway.get(path);
    assert.equal(second.status, 200);
    assert.equal(second.headers['x-pixelgate-cache'], 'hit');
    assert.ok(second.body.equals(first.body), 'the cached body is the generated one');
    assert.equal(await generations(), 1, 'the cache hit made no new call');
  });

  test('sd3 request fields follow reference', async () => {
    const response = await gateway.get('/generate-image?prompt=form+fields&seed=7');
    assert.equal(response.status, 200);
    const { last_request: last } = await stats();
    assert.equal(last.path, '/v2beta/stable-image/generate/sd3');
    assert.equal(last.headers.accept, 'image/*');
    assert.match(last.headers['content-type'], /^multipart\/form-data; boundary=/);
    assert.deepEqual(last.fields, {
      prompt: 'form fields', aspect_ratio: '1:1', seed: '7', output_format: 'png', model: 'sd3.5-large',
    });
  });

  test('negative prompt is sent', async () => {
    const response = await gateway.get('/generate-image?prompt=with+fog&template=fog');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal((await stats()).last_request.fields.negative_prompt, 'fog');
  });

  test('turbo backend drops negative prompt', async () => {
    const response = await gateway.get('/generate-image?prompt=turbo+fog&template=turbofog');
    assert.equal(response.status, 200, response.body.toString());
    const { last_request: last } = await stats();
    assert.equal(last.fields.model, 'sd3.5-large-turbo');
    assert.equal(last.fields.negative_prompt, undefined);
  });

  test('ultra uses ultra endpoint', async () => {
    const response = await gateway.get('/generate-image?prompt=ultra+path&template=ultra');
    assert.equal(response.status, 200, response.body.toString());
    const { last_request: last } = await stats();
    assert.equal(last.path, '/v2beta/stable-image/generate/ultra');
    assert.equal(last.fields.model, undefined);
  });
});

describe('stability validation', { timeout: 30_000 }, () => {
  for (const [name, path, param] of [
    ['inexact ratio', '/generate-image?prompt=x&size=1344x768', 'size'],
    ['undocumented wide size', '/generate-image?prompt=x&size=1600x900', 'size'],
    ['turbo model negative prompt', '/generate-image?prompt=x&template=turbomodel', 'negative_prompt'],
  ]) {
    test(`rejects ${name}`, async () => {
      const response = await gateway.get(path);
      const error = assertJsonError(response, 400);
      assert.equal(error.code, 'invalid_argument');
      assert.equal(error.param, param);
      assert.equal(await generations(), 0);
    });
  }
});

describe('stability failures', { timeout: 60_000 }, () => {
  test('moderation 403 gives 422', async () => {
    await script([{ status: 403 }]);
    const error = assertJsonError(await gateway.get('/generate-image?prompt=moderated'), 422);
    assert.equal(error.code, 'content_refused');
    assert.equal(await generations(), 1);
  });

  test('filtered finish reason gives 422', async () => {
    await script([{ kind: 'filtered' }]);
    const error = assertJsonError(await gateway.get('/generate-image?prompt=filtered+output'), 422);
    assert.equal(error.code, 'content_refused');
  });

  test('provider 400 gives 400', async () => {
    await script([{ status: 400, errors: ['prompt: is invalid'] }]);
    const error = assertJsonError(await gateway.get('/generate-image?prompt=provider+rejects'), 400);
    assert.equal(error.code, 'invalid_argument');
    assert.equal(error.param, 'prompt');
  });

  test('wrong key gives 502', async () => {
    const error = assertJsonError(await gateway.get('/generate-image?prompt=bad+key&template=wrongkey'), 502);
    assert.equal(error.code, 'backend_failed');
    assert.match(error.message, /API key/);
  });

  test('payment required gives 503', async () => {
    await script([{ status: 402, errors: ['insufficient balance'] }]);
    const error = assertJsonError(await gateway.get('/generate-image?prompt=no+credits'), 503);
    assert.equal(error.code, 'unavailable');
    assert.equal(await generations(), 1, 'an exhausted quota is not retried');
  });

  test('retry honours Retry-After', async () => {
    await script([{ status: 429, retry_after: 1 }]);
    const response = await gateway.get('/generate-image?prompt=rate+limited+once');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal(await generations(), 2);
    assert.ok(response.ms >= 950, `the retry waited ${response.ms} ms, expected about 1000`);
  });

  test('429 beyond retries gives 503', async () => {
    await script([{ status: 429, retry_after: 1 }, { status: 429, retry_after: 7 }]);
    const response = await gateway.get('/generate-image?prompt=rate+limited+twice');
    const error = assertJsonError(response, 503);
    assert.equal(error.code, 'unavailable');
    assert.equal(response.headers['retry-after'], '7');
    assert.equal(await generations(), 2);
  });

  test('500 then success retries', async () => {
    await script([{ status: 500 }]);
    const response = await gateway.get('/generate-image?prompt=server+error+once');
    assert.equal(response.status, 200);
    assert.equal(await generations(), 2);
    assert.match(gateway.stderrText(), /backend stability: retrying request \S+ in \d+ ms/);
  });

  test('hang gives 504 without retry', async () => {
    await script([{ kind: 'hang' }]);
    const response = await gateway.get('/generate-image?prompt=backend+hangs&template=short', { timeoutMs: 10_000 });
    const error = assertJsonError(response, 504);
    assert.equal(error.code, 'timed_out');
    assert.ok(response.ms < 3000, `the timeout took ${response.ms} ms with timeout_ms = 1000`);
    assert.equal(await generations(), 1);
  });

  for (const kind of ['not_image', 'wrong_size', 'truncated', 'wrong_content_type']) {
    test(`${kind} gives 502, not stored`, async () => {
      await script([{ kind }]);
      const path = `/generate-image?prompt=broken+output+${kind}`;
      const error = assertJsonError(await gateway.get(path), 502);
      assert.equal(error.code, 'backend_failed');

      const retried = await gateway.get(path);
      assert.equal(retried.status, 200);
      assert.equal(retried.headers['x-pixelgate-cache'], 'miss');
      assert.equal(await generations(), 2, 'the failure was not cached');
    });
  }

  test('api key never logged', async () => {
    await script([{ status: 500 }, { status: 500 }]);
    await gateway.get('/generate-image?prompt=logged+failure');
    assert.ok(!gateway.stderrText().includes(TEST_API_KEY), 'the key is not in the log');
  });
});
