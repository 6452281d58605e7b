// The a1111 backend against tests/fakes/a1111-fake.mjs: success and caching, basic auth,
// error mapping, retries, timeouts, malformed responses, and one call at a time per instance.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';

import { startFakeServer } from '../fakes/a1111-fake.mjs';
import { checkCompletePng, jsonBody, startPixelgate, toToml } from './lib/harness.mjs';

const AUTH = 'pixel:gate-secret-pw';
let fake;
let pixelgate;
let dir;

before(async () => {
  fake = await startFakeServer({ auth: AUTH });
  dir = await mkdtemp(join(tmpdir(), 'pixelgate-a1111-'));
  const backend = (overrides) => ({ type: 'a1111', base_url: fake.baseUrl, api_key_env: 'PG_TEST_A1111_AUTH', max_retries: 1, retry_base_delay_ms: 50, timeout_ms: 10_000, queue_size: 64, failure_threshold: 1000, ...overrides });
  const config = {
    default_backend: 'a1111',
    server: { port: 0, threads: 4 },
    storage: { path: join(dir, 'storage') },
    logging: { level: 'info', format: 'json' },
    security: { mode: 'open' },
    rate_limits: { requests_per_second: 0, generations_per_minute: 0 },
    limits: { generation_timeout_ms: 4000, max_concurrent_generations_per_key: 64, max_concurrent_generations: 64 },
    backends: {
      a1111: backend({}),
      noretry: backend({ max_retries: 0 }),
      short: backend({ max_retries: 0, timeout_ms: 700 }),
      down: backend({ base_url: 'http://127.0.0.1:9', max_retries: 0 }),
    },
    templates: { noretry: { backend: 'noretry' }, short: { backend: 'short' }, down: { backend: 'down' } },
  };
  await writeFile(join(dir, 'pixelgate.toml'), toToml(config));
  pixelgate = await startPixelgate(join(dir, 'pixelgate.toml'), { env: { PG_TEST_A1111_AUTH: AUTH } });
});

after(async () => {
  await pixelgate?.stop();
  await fake?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

beforeEach(async () => {
  fake.fake.settings = { delay_ms: 0, script: [] };
  fake.fake.resetCounters();
});

function assertError(response, status, code) {
  assert.equal(response.status, status, response.body.toString());
  const { error } = jsonBody(response);
  assert.equal(error.code, code);
  return error;
}

describe('a1111 backend', { timeout: 60_000 }, () => {
  test('success returns the requested PNG', async () => {
    const response = await pixelgate.get('/generate-image?prompt=a+red+fox&width=512&height=768');
    assert.equal(response.status, 200, response.body.toString());
    assert.deepEqual(checkCompletePng(response.body), { width: 512, height: 768 });
    const sent = fake.fake.stats.last_request.body;
    assert.equal(sent.prompt, 'a red fox');
    assert.equal(sent.batch_size, 1);
    assert.equal(sent.n_iter, 1);
    assert.equal(sent.sampler_name, 'Euler a');
    assert.equal(sent.steps, 20);
    assert.ok(Number.isInteger(sent.seed), 'the seed is sent as an integer');
  });

  test('second request hits the cache', async () => {
    const first = await pixelgate.get('/generate-image?prompt=cache+me&width=512&height=512');
    assert.equal(first.status, 200);
    const second = await pixelgate.get('/generate-image?prompt=cache+me&width=512&height=512');
    assert.equal(second.status, 200);
    assert.equal(second.headers['x-pixelgate-cache'], 'hit');
    assert.equal(fake.fake.stats.txt2img, 1);
  });

  test('basic auth header is sent', async () => {
    await pixelgate.get('/generate-image?prompt=auth+check&width=512&height=512');
    assert.equal(fake.fake.stats.last_request.headers.authorization, '***');
    assert.equal(fake.fake.stats.completed, 1);
  });

  test('concurrent calls never overlap', async () => {
    fake.fake.settings.delay_ms = 40;
    const prompts = Array.from({ length: 12 }, (_, i) => `/generate-image?prompt=parallel+${i}&width=512&height=512`);
    const responses = await Promise.all(prompts.map((path) => pixelgate.get(path, { timeoutMs: 20_000 })));
    for (const response of responses) assert.equal(response.status, 200, response.body.toString());
    assert.equal(fake.fake.stats.max_concurrent, 1);
    assert.deepEqual(fake.fake.stats.violations, []);
    assert.equal(fake.fake.stats.completed, 12);
  });

  test('validation 422 gives 400', async () => {
    fake.fake.settings.script = [{ status: 422 }];
    const error = assertError(await pixelgate.get('/generate-image?prompt=bad+body&width=512&height=512'), 400, 'invalid_argument');
    assert.equal(error.param, 'width');
  });

  test('unaligned width is rejected early', async () => {
    const error = assertError(await pixelgate.get('/generate-image?prompt=odd+size&width=500&height=512'), 400, 'invalid_argument');
    assert.equal(error.param, 'width');
    assert.equal(fake.fake.stats.txt2img, 0);
  });

  test('500 then success retries', async () => {
    fake.fake.settings.script = [{ status: 500 }];
    const response = await pixelgate.get('/generate-image?prompt=oom+once&width=512&height=512');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal(fake.fake.stats.txt2img, 2);
  });

  test('500 without retries gives 502', async () => {
    fake.fake.settings.script = [{ status: 500 }];
    const error = assertError(await pixelgate.get('/generate-image?prompt=oom+final&width=512&height=512&template=noretry'), 502, 'backend_failed');
    assert.match(error.message, /CUDA out of memory/);
  });

  test('retry honours Retry-After', async () => {
    fake.fake.settings.script = [{ status: 503, retry_after: 1 }];
    const response = await pixelgate.get('/generate-image?prompt=busy+once&width=512&height=512');
    assert.equal(response.status, 200);
    assert.ok(response.ms >= 950, `the retry waited ${response.ms} ms, expected about 1000`);
  });

  test('bad credentials give 502', async () => {
    fake.fake.settings.script = [{ status: 401 }];
    const error = assertError(await pixelgate.get('/generate-image?prompt=wrong+password&width=512&height=512'), 502, 'backend_failed');
    assert.match(error.message, /credentials/);
    assert.ok(!pixelgate.stderrLines.join('\n').includes('gate-secret-pw'), 'the password never reaches the log');
  });

  test('refused connection gives 503', async () => {
    const response = await pixelgate.get('/generate-image?prompt=server+down&width=512&height=512&template=down');
    assertError(response, 503, 'unavailable');
    assert.ok(Number(response.headers['retry-after']) > 0);
  });

  test('hang times out with 504', async () => {
    fake.fake.settings.script = [{ kind: 'hang' }];
    assertError(await pixelgate.get('/generate-image?prompt=hang+forever&width=512&height=512&template=short'), 504, 'timed_out');
  });

  for (const kind of ['not_image', 'empty_images', 'bad_base64', 'wrong_size']) {
    test(`malformed answer ${kind} gives 502`, async () => {
      fake.fake.settings.script = [{ kind }];
      const prompt = `malformed+${kind}`;
      assertError(await pixelgate.get(`/generate-image?prompt=${prompt}&width=512&height=512&template=noretry`), 502, 'backend_failed');
      const again = await pixelgate.get(`/generate-image?prompt=${prompt}&width=512&height=512&template=noretry`);
      assert.equal(again.headers['x-pixelgate-cache'], 'miss', 'nothing was stored');
    });
  }
});
