// The sdcpp backend against tests/fakes/sdcpp-fake.mjs: the native async job API (submit,
// poll, cancel), one job at a time per instance, error mapping, timeouts and malformed results.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';

import { startFakeServer } from '../fakes/sdcpp-fake.mjs';
import { checkCompletePng, jsonBody, startPixelgate, toToml } from './lib/harness.mjs';

let fake;
let pixelgate;
let dir;

before(async () => {
  fake = await startFakeServer();
  dir = await mkdtemp(join(tmpdir(), 'pixelgate-sdcpp-'));
  const backend = (overrides) => ({ type: 'sdcpp', base_url: fake.baseUrl, poll_interval_ms: 20, max_retries: 1, retry_base_delay_ms: 50, timeout_ms: 5000, queue_size: 64, failure_threshold: 1000, ...overrides });
  const config = {
    default_backend: 'sdcpp',
    server: { port: 0, threads: 4 },
    storage: { path: join(dir, 'storage') },
    logging: { level: 'info', format: 'json' },
    security: { mode: 'open' },
    rate_limits: { requests_per_second: 0, generations_per_minute: 0 },
    limits: { generation_timeout_ms: 4000, max_concurrent_generations_per_key: 64, max_concurrent_generations: 64 },
    backends: { sdcpp: backend({}), quick: backend({}) },
    templates: { tuned: { steps: 8, guidance: 3.5, sampler: 'euler', negative_prompt: 'noise' }, quick: { backend: 'quick' }, badsampler: { sampler: 'not_a_sampler' } },
  };
  await writeFile(join(dir, 'pixelgate.toml'), toToml(config));
  pixelgate = await startPixelgate(join(dir, 'pixelgate.toml'));
});

after(async () => {
  await pixelgate?.stop();
  await fake?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  fake.fake.settings = { delay_ms: 0, script: [] };
  fake.fake.resetCounters();
});

function assertError(response, status, code) {
  assert.equal(response.status, status, response.body.toString());
  const { error } = jsonBody(response);
  assert.equal(error.code, code);
  return error;
}

describe('sdcpp backend', { timeout: 60_000 }, () => {
  test('success returns the requested PNG', async () => {
    fake.fake.settings.delay_ms = 60;
    const response = await pixelgate.get('/generate-image?prompt=a+small+robot&width=768&height=512');
    assert.equal(response.status, 200, response.body.toString());
    assert.deepEqual(checkCompletePng(response.body), { width: 768, height: 512 });
    assert.ok(fake.fake.stats.polls >= 2, 'the adapter polled until the job completed');
  });

  test('spec settings reach sample_params', async () => {
    await pixelgate.get('/generate-image?prompt=tuned+robot&width=512&height=512&template=tuned&seed=9');
    const sent = fake.fake.stats.last_request;
    assert.equal(sent.negative_prompt, 'noise');
    assert.equal(sent.seed, 9);
    assert.equal(sent.batch_count, 1);
    assert.deepEqual(sent.sample_params, { sample_steps: 8, sample_method: 'euler', guidance: { txt_cfg: 3.5 } });
  });

  test('second request hits the cache', async () => {
    assert.equal((await pixelgate.get('/generate-image?prompt=cache+robot&width=512&height=512')).status, 200);
    const second = await pixelgate.get('/generate-image?prompt=cache+robot&width=512&height=512');
    assert.equal(second.headers['x-pixelgate-cache'], 'hit');
    assert.equal(fake.fake.stats.submissions, 1);
  });

  test('concurrent jobs never overlap', async () => {
    fake.fake.settings.delay_ms = 30;
    const paths = Array.from({ length: 10 }, (_, i) => `/generate-image?prompt=parallel+robot+${i}&width=512&height=512`);
    const responses = await Promise.all(paths.map((path) => pixelgate.get(path, { timeoutMs: 20_000 })));
    for (const response of responses) assert.equal(response.status, 200, response.body.toString());
    assert.equal(fake.fake.stats.max_concurrent, 1);
    assert.deepEqual(fake.fake.stats.violations, []);
  });

  test('invalid parameters give 400', async () => {
    const error = assertError(await pixelgate.get('/generate-image?prompt=bad+sampler&width=512&height=512&template=badsampler'), 400, 'invalid_argument');
    assert.match(error.message, /invalid generation parameters/);
  });

  test('full queue retries then succeeds', async () => {
    fake.fake.settings.script = [{ status: 429 }];
    assert.equal((await pixelgate.get('/generate-image?prompt=queue+full+once&width=512&height=512')).status, 200);
    assert.equal(fake.fake.stats.submissions, 2);
  });

  test('failed job gives 502', async () => {
    fake.fake.settings.script = [{ kind: 'failed' }];
    const error = assertError(await pixelgate.get('/generate-image?prompt=job+fails&width=512&height=512'), 502, 'backend_failed');
    assert.match(error.message, /generation_failed/);
  });

  test('submission 500 is not retried', async () => {
    fake.fake.settings.script = [{ status: 500 }];
    assertError(await pixelgate.get('/generate-image?prompt=submit+fails&width=512&height=512'), 502, 'backend_failed');
    assert.equal(fake.fake.stats.submissions, 1);
  });

  test('stuck job times out and cancels', async () => {
    fake.fake.settings.script = [{ kind: 'stuck' }];
    assertError(await pixelgate.get('/generate-image?prompt=stuck+job&width=512&height=512&template=quick'), 504, 'timed_out');
    assert.equal(fake.fake.stats.cancels, 1);
  });

  for (const kind of ['gone', 'not_image', 'no_images']) {
    test(`malformed result ${kind} gives 502`, async () => {
      fake.fake.settings.script = [{ kind }];
      const path = `/generate-image?prompt=malformed+${kind}&width=512&height=512`;
      assertError(await pixelgate.get(path), 502, 'backend_failed');
      const again = await pixelgate.get(path);
      assert.equal(again.headers['x-pixelgate-cache'], 'miss', 'nothing was stored');
    });
  }
});
