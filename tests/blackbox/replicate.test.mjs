// The replicate backend through pixelgate, against tests/fakes/replicate-fake.mjs: sync mode
// and polling, failed and NSFW predictions, cancel on give-up, expired output URLs, errors,
// retries and malformed responses.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';

import { API_KEY_ENV, REPO_ROOT, TEST_API_KEY, checkCompletePng, jsonBody, request, sha256Hex, startPixelgate, toToml } from './lib/harness.mjs';
import { renderImagePng } from '../fakes/openai-fake.mjs';

const FAKE = join(REPO_ROOT, 'tests', 'fakes', 'replicate-fake.mjs');
const SCHNELL = 'black-forest-labs/flux-schnell';
const VERSION = 'c'.repeat(64);
// Bounds a whole generation, polls and retries included.
const GENERATION_TIMEOUT_MS = 3000;
let fake;
let pixelgate;
let dir;

/** Starts the fake as a child process and resolves once it prints its port. */
function startReplicateFake() {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FAKE, '--port', '0', '--api-key', TEST_API_KEY], { stdio: ['ignore', 'pipe', 'inherit'] });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error('the replicate fake did not start within 10 s')); }, 10_000);
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

function replicateBackend(overrides) {
  return {
    type: 'replicate', base_url: fake.baseUrl, model: SCHNELL, api_key_env: API_KEY_ENV,
    max_retries: 1, retry_base_delay_ms: 50, poll_interval_ms: 50, timeout_ms: 15_000,
    // Error tests follow each other, and an open circuit breaker would turn them all into 503.
    failure_threshold: 1000, ...overrides,
  };
}

before(async () => {
  fake = await startReplicateFake();
  dir = await mkdtemp(join(tmpdir(), 'pixelgate-replicate-'));
  const config = {
    default_backend: 'rep',
    server: { port: 0, threads: 2 },
    storage: { path: join(dir, 'storage') },
    logging: { level: 'info', format: 'json' },
    security: { mode: 'open' },
    rate_limits: { requests_per_second: 0, generations_per_minute: 0 },
    limits: { generation_timeout_ms: GENERATION_TIMEOUT_MS },
    backends: {
      rep: replicateBackend({}),
      version: replicateBackend({ model: 'stability-ai/sdxl', model_version: VERSION }),
      noretry: replicateBackend({ max_retries: 0 }),
    },
    templates: { version: { backend: 'version' }, noretry: { backend: 'noretry' } },
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

describe('replicate backend', { timeout: 60_000 }, () => {
  test('sync prediction serves exact PNG', async () => {
    const prompt = 'a lighthouse at dusk';
    const response = await pixelgate.get(`/generate-image?prompt=${encodeURIComponent(prompt)}&size=1344x768`);
    assert.equal(response.status, 200, response.body.toString());
    assert.deepEqual(checkCompletePng(response.body), { width: 1344, height: 768 });
    assert.equal(sha256Hex(response.body), sha256Hex(renderImagePng(SCHNELL, prompt, '1344x768', 0)));
    const stats = await fake.stats();
    assert.equal(stats.creates, 1);
    assert.equal(stats.polls, 0);
    assert.equal(stats.last_request.body.input.aspect_ratio, '16:9');
    assert.match(stats.last_request.headers.prefer, /^wait=[12]$/);
    assert.equal(stats.last_request.headers.authorization, `***${TEST_API_KEY.slice(-4)}`);
  });

  test('second request is cache hit', async () => {
    const path = '/generate-image?prompt=cached+replicate';
    assert.equal((await pixelgate.get(path)).status, 200);
    const second = await pixelgate.get(path);
    assert.equal(second.status, 200);
    assert.equal(second.headers['x-pixelgate-cache'], 'hit');
    assert.equal((await fake.stats()).creates, 1);
  });

  test('async prediction is polled to success', async () => {
    await fake.control({ max_sync_wait_ms: 0, processing_ms: 400 });
    const response = await pixelgate.get('/generate-image?prompt=slow+replicate');
    assert.equal(response.status, 200, response.body.toString());
    const stats = await fake.stats();
    assert.ok(stats.polls >= 3, `polls: ${stats.polls}`);
    assert.equal(stats.last_request.method, 'GET');
  });

  test('version backend sends width and height', async () => {
    const response = await pixelgate.get('/generate-image?prompt=a+version&size=768x512&template=version');
    assert.equal(response.status, 200, response.body.toString());
    const body = (await fake.stats()).last_request.body;
    assert.equal(body.version, VERSION);
    assert.equal(body.input.width, 768);
    assert.equal(body.input.height, 512);
  });

  test('failed prediction gives 502', async () => {
    await fake.control({ script: [{ outcome: 'failed', error: 'CUDA out of memory' }] });
    const error = assertError(await pixelgate.get('/generate-image?prompt=fails'), 502, 'backend_failed');
    assert.match(error.message, /CUDA out of memory/);
  });

  test('NSFW prediction gives 422', async () => {
    await fake.control({ script: [{ outcome: 'nsfw' }] });
    const error = assertError(await pixelgate.get('/generate-image?prompt=refused'), 422, 'content_refused');
    assert.equal(error.param, 'prompt');
  });

  test('give-up cancels the prediction', async () => {
    await fake.control({ max_sync_wait_ms: 0, processing_ms: 30_000 });
    const response = await pixelgate.get('/generate-image?prompt=never+finishes', { timeoutMs: 10_000 });
    assertError(response, 504, 'timed_out');
    assert.ok(response.ms < GENERATION_TIMEOUT_MS + 2500, `answered after ${response.ms} ms`);
    const stats = await fake.stats();
    assert.equal(stats.canceled_ids.length, 1);
    assert.equal(stats.cancels, 1);
  });

  test('expired output URL gives 502', async () => {
    await fake.control({ script: [{ kind: 'expired_url' }] });
    const path = '/generate-image?prompt=expired+output';
    assertError(await pixelgate.get(path), 502, 'backend_failed');
    assert.equal((await fake.stats()).file_requests, 1);
    assert.equal((await pixelgate.get(path)).status, 200, 'the failure was not cached');
  });

  test('retry honours Retry-After', async () => {
    await fake.control({ script: [{ status: 429, retry_after: 1 }] });
    const response = await pixelgate.get('/generate-image?prompt=throttled+once');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal((await fake.stats()).creates, 2);
    assert.ok(response.ms >= 950, `the retry waited ${response.ms} ms`);
  });

  test('throttled beyond retries gives 503', async () => {
    await fake.control({ script: [{ status: 429, retry_after: 1 }, { status: 429, retry_after: 1 }] });
    assertError(await pixelgate.get('/generate-image?prompt=throttled+twice'), 503, 'unavailable');
    assert.equal((await fake.stats()).creates, 2);
  });

  test('server error on create is not retried', async () => {
    await fake.control({ script: [{ status: 500 }] });
    assertError(await pixelgate.get('/generate-image?prompt=server+error'), 502, 'backend_failed');
    assert.equal((await fake.stats()).creates, 1);
  });

  test('bad token gives 502', async () => {
    await fake.control({ script: [{ status: 401 }] });
    const error = assertError(await pixelgate.get('/generate-image?prompt=bad+token'), 502, 'backend_failed');
    assert.match(error.message, /credentials/);
  });

  test('insufficient credit gives 503', async () => {
    await fake.control({ script: [{ status: 402 }] });
    const error = assertError(await pixelgate.get('/generate-image?prompt=no+credit'), 503, 'unavailable');
    assert.match(error.message, /quota/);
  });

  test('invalid input gives 400', async () => {
    await fake.control({ script: [{ status: 422, detail: '- input.prompt: prompt is required' }] });
    assertError(await pixelgate.get('/generate-image?prompt=invalid+input'), 400, 'invalid_argument');
  });

  test('unsupported size rejected before call', async () => {
    const error = assertError(await pixelgate.get('/generate-image?prompt=odd+size&size=1000x1000'), 400, 'invalid_argument');
    assert.equal(error.param, 'size');
    assert.equal((await fake.stats()).creates, 0);
  });

  test('hanging create gives 504', async () => {
    await fake.control({ script: [{ kind: 'hang' }] });
    const response = await pixelgate.get('/generate-image?prompt=hangs', { timeoutMs: 10_000 });
    assertError(response, 504, 'timed_out');
  });

  for (const kind of ['not_json', 'no_output', 'not_image']) {
    test(`${kind} gives 502, not stored`, async () => {
      await fake.control({ script: [{ kind }] });
      const path = `/generate-image?prompt=malformed+${kind}`;
      assertError(await pixelgate.get(path), 502, 'backend_failed');
      const retried = await pixelgate.get(path);
      assert.equal(retried.status, 200);
      assert.equal(retried.headers['x-pixelgate-cache'], 'miss');
      assert.equal((await fake.stats()).creates, 2);
    });
  }

  test('token never appears in logs', async () => {
    assert.ok(!pixelgate.stderrLines.join('\n').includes(TEST_API_KEY));
  });
});
