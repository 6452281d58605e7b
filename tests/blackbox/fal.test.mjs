// The fal backend through pixelgate, against tests/fakes/fal-fake.mjs: queue states through
// polling, NSFW results, cancel on give-up, expired image URLs, errors, retries and malformed
// responses.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';

import { API_KEY_ENV, REPO_ROOT, TEST_API_KEY, checkCompletePng, jsonBody, request, sha256Hex, startPixelgate, toToml } from './lib/harness.mjs';
import { renderImagePng } from '../fakes/openai-fake.mjs';

const FAKE = join(REPO_ROOT, 'tests', 'fakes', 'fal-fake.mjs');
const SCHNELL = 'fal-ai/flux/schnell';
// Bounds a whole generation, polls and retries included.
const GENERATION_TIMEOUT_MS = 3000;
let fake;
let pixelgate;
let dir;

/** Starts the fake as a child process and resolves once it prints its port. */
function startFalFake() {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FAKE, '--port', '0', '--api-key', TEST_API_KEY], { stdio: ['ignore', 'pipe', 'inherit'] });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error('the fal fake did not start within 10 s')); }, 10_000);
    child.stdout.once('data', (chunk) => {
      clearTimeout(timer);
      const { port } = JSON.parse(chunk.toString().split('\n')[0]);
      const call = async (method, path, body) => jsonBody(await request(path, { port, method, headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body) }));
      resolve({
        port, child, baseUrl: `http://127.0.0.1:${port}`,
        control: (settings) => call('POST', '/__control', settings),
        reset: () => call('POST', '/__reset', {}),
        stats: () => call('GET', '/__stats'),
      });
    });
    child.once('error', reject);
  });
}

function falBackend(overrides) {
  return {
    type: 'fal', base_url: fake.baseUrl, model: SCHNELL, api_key_env: API_KEY_ENV,
    max_retries: 1, retry_base_delay_ms: 50, poll_interval_ms: 50, timeout_ms: 15_000,
    // Error tests follow each other, and an open circuit breaker would turn them all into 503.
    failure_threshold: 1000, ...overrides,
  };
}

before(async () => {
  fake = await startFalFake();
  dir = await mkdtemp(join(tmpdir(), 'pixelgate-fal-'));
  const config = {
    default_backend: 'fal',
    server: { port: 0, threads: 2 },
    storage: { path: join(dir, 'storage') },
    logging: { level: 'info', format: 'json' },
    security: { mode: 'open' },
    rate_limits: { requests_per_second: 0, generations_per_minute: 0 },
    limits: { generation_timeout_ms: GENERATION_TIMEOUT_MS },
    backends: { fal: falBackend({}) },
  };
  await writeFile(join(dir, 'pixelgate.toml'), toToml(config));
  pixelgate = await startPixelgate(join(dir, 'pixelgate.toml'));
});

after(async () => {
  await pixelgate?.stop();
  fake?.child.kill('SIGTERM');
  if (dir) await rm(dir, { recursive: true, force: true });
});

beforeEach(async () => {
  await fake.reset();
});

function assertError(response, status, code) {
  assert.equal(response.status, status, response.body.toString());
  const { error } = jsonBody(response);
  assert.equal(error.code, code);
  return error;
}

describe('fal backend', { timeout: 60_000 }, () => {
  test('queued request serves exact PNG', async () => {
    const prompt = 'a red fox in snow';
    const response = await pixelgate.get(`/generate-image?prompt=${encodeURIComponent(prompt)}&size=1024x576`);
    assert.equal(response.status, 200, response.body.toString());
    assert.deepEqual(checkCompletePng(response.body), { width: 1024, height: 576 });
    assert.equal(sha256Hex(response.body), sha256Hex(renderImagePng(SCHNELL, prompt, '1024x576', 0)));
    const stats = await fake.stats();
    assert.equal(stats.submits, 1);
    assert.equal(stats.results, 1);
    assert.equal(stats.requests[0].image_size, 'landscape_16_9');
    assert.equal(stats.requests[0].enable_safety_checker, true);
  });

  test('custom size sends width and height', async () => {
    const response = await pixelgate.get('/generate-image?prompt=custom+size&size=640x480');
    assert.equal(response.status, 200, response.body.toString());
    assert.deepEqual((await fake.stats()).requests[0].image_size, { width: 640, height: 480 });
  });

  test('second request is cache hit', async () => {
    const path = '/generate-image?prompt=cached+fal';
    assert.equal((await pixelgate.get(path)).status, 200);
    const second = await pixelgate.get(path);
    assert.equal(second.headers['x-pixelgate-cache'], 'hit');
    assert.equal((await fake.stats()).submits, 1);
  });

  test('queue states are polled through', async () => {
    await fake.control({ queue_ms: 300, processing_ms: 300 });
    const response = await pixelgate.get('/generate-image?prompt=slow+fal');
    assert.equal(response.status, 200, response.body.toString());
    const stats = await fake.stats();
    assert.ok(stats.status_polls >= 5, `status polls: ${stats.status_polls}`);
    assert.equal(stats.last_request.path.startsWith('/fal-ai/flux/requests/'), true);
  });

  test('failed status poll is retried', async () => {
    await fake.control({ script: [{ kind: 'poll_500' }] });
    const response = await pixelgate.get('/generate-image?prompt=poll+fails+once');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal((await fake.stats()).submits, 1);
  });

  test('NSFW result gives 422', async () => {
    await fake.control({ script: [{ outcome: 'nsfw' }] });
    const error = assertError(await pixelgate.get('/generate-image?prompt=refused'), 422, 'content_refused');
    assert.equal(error.param, 'prompt');
    assert.equal((await fake.stats()).file_requests, 0);
  });

  test('give-up cancels the request', async () => {
    await fake.control({ queue_ms: 30_000 });
    const response = await pixelgate.get('/generate-image?prompt=stuck+in+queue', { timeoutMs: 10_000 });
    assertError(response, 504, 'timed_out');
    assert.ok(response.ms < GENERATION_TIMEOUT_MS + 2500, `answered after ${response.ms} ms`);
    const stats = await fake.stats();
    assert.equal(stats.cancels, 1);
    assert.equal(stats.canceled_ids.length, 1);
  });

  test('expired image URL gives 502', async () => {
    await fake.control({ script: [{ kind: 'expired_url' }] });
    const path = '/generate-image?prompt=expired+image';
    assertError(await pixelgate.get(path), 502, 'backend_failed');
    assert.equal((await fake.stats()).file_requests, 1);
    assert.equal((await pixelgate.get(path)).status, 200, 'the failure was not cached');
  });

  test('runner validation error gives 400', async () => {
    await fake.control({ script: [{ result_status: 422, detail: 'prompt is too long' }] });
    const error = assertError(await pixelgate.get('/generate-image?prompt=invalid+at+runner'), 400, 'invalid_argument');
    assert.match(error.message, /prompt is too long/);
  });

  test('runner failure gives 502', async () => {
    await fake.control({ script: [{ result_status: 500 }] });
    assertError(await pixelgate.get('/generate-image?prompt=runner+fails'), 502, 'backend_failed');
  });

  test('retry honours Retry-After', async () => {
    await fake.control({ script: [{ status: 429, retry_after: 1 }] });
    const response = await pixelgate.get('/generate-image?prompt=throttled+once');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal((await fake.stats()).submits, 2);
    assert.ok(response.ms >= 950, `the retry waited ${response.ms} ms`);
  });

  test('throttled beyond retries gives 503', async () => {
    await fake.control({ script: [{ status: 429, retry_after: 1 }, { status: 429, retry_after: 1 }] });
    assertError(await pixelgate.get('/generate-image?prompt=throttled+twice'), 503, 'unavailable');
  });

  test('server error on submit not retried', async () => {
    await fake.control({ script: [{ status: 500 }] });
    assertError(await pixelgate.get('/generate-image?prompt=submit+fails'), 502, 'backend_failed');
    assert.equal((await fake.stats()).submits, 1);
  });

  test('bad key gives 502', async () => {
    await fake.control({ script: [{ status: 401 }] });
    const error = assertError(await pixelgate.get('/generate-image?prompt=bad+key'), 502, 'backend_failed');
    assert.match(error.message, /credentials/);
  });

  test('exhausted balance gives 503', async () => {
    await fake.control({ script: [{ status: 403, detail: 'User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing.' }] });
    const error = assertError(await pixelgate.get('/generate-image?prompt=no+balance'), 503, 'unavailable');
    assert.match(error.message, /quota/);
  });

  test('odd size rejected before submit', async () => {
    const error = assertError(await pixelgate.get('/generate-image?prompt=odd&size=1000x600'), 400, 'invalid_argument');
    assert.equal(error.param, 'size');
    assert.equal((await fake.stats()).submits, 0);
  });

  test('hanging submit gives 504', async () => {
    await fake.control({ script: [{ kind: 'hang' }] });
    assertError(await pixelgate.get('/generate-image?prompt=hangs', { timeoutMs: 10_000 }), 504, 'timed_out');
  });

  for (const kind of ['not_json', 'no_images']) {
    test(`${kind} gives 502, not stored`, async () => {
      await fake.control({ script: [{ kind }] });
      const path = `/generate-image?prompt=malformed+${kind}`;
      assertError(await pixelgate.get(path), 502, 'backend_failed');
      const retried = await pixelgate.get(path);
      assert.equal(retried.status, 200);
      assert.equal(retried.headers['x-pixelgate-cache'], 'miss');
      assert.equal((await fake.stats()).submits, 2);
    });
  }

  test('key never appears in logs', async () => {
    assert.ok(!pixelgate.stderrLines.join('\n').includes(TEST_API_KEY));
  });
});
