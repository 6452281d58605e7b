// The comfyui backend against tests/fakes/comfyui-fake.mjs with the shipped example
// workflow: typed placeholders, polling, /view, node errors, execution errors, timeouts
// and malformed results.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';

import { startFakeServer } from '../fakes/comfyui-fake.mjs';
import { REPO_ROOT, checkCompletePng, jsonBody, startPixelgate, toToml } from './lib/harness.mjs';

const WORKFLOW = join(REPO_ROOT, 'config', 'examples', 'comfyui-txt2img.json');
let fake;
let pixelgate;
let dir;

before(async () => {
  fake = await startFakeServer();
  dir = await mkdtemp(join(tmpdir(), 'pixelgate-comfyui-'));
  const backend = (overrides) => ({ type: 'comfyui', base_url: fake.baseUrl, workflow: WORKFLOW, poll_interval_ms: 30, max_retries: 1, retry_base_delay_ms: 50, timeout_ms: 5000, failure_threshold: 1000, ...overrides });
  const config = {
    default_backend: 'comfyui',
    server: { port: 0, threads: 2 },
    storage: { path: join(dir, 'storage') },
    logging: { level: 'info', format: 'json' },
    security: { mode: 'open' },
    rate_limits: { requests_per_second: 0, generations_per_minute: 0 },
    limits: { generation_timeout_ms: 1500 },
    backends: { comfyui: backend({}) },
    templates: { sampled: { sampler: 'euler' }, tuned: { steps: 30, guidance: 5.5, negative_prompt: 'blurry' } },
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

describe('comfyui backend', { timeout: 60_000 }, () => {
  test('success returns the requested PNG', async () => {
    fake.fake.settings.delay_ms = 100;
    const response = await pixelgate.get('/generate-image?prompt=a+lighthouse&width=640&height=384');
    assert.equal(response.status, 200, response.body.toString());
    assert.deepEqual(checkCompletePng(response.body), { width: 640, height: 384 });
    assert.ok(fake.fake.stats.history_polls >= 2, 'the adapter polled until the prompt finished');
    assert.equal(fake.fake.stats.views, 1);
  });

  test('placeholders become typed values', async () => {
    await pixelgate.get('/generate-image?prompt=typed+values&width=512&height=512&template=tuned&seed=77');
    const graph = fake.fake.stats.last_request.prompt;
    assert.equal(graph['6'].inputs.text, 'typed values');
    assert.equal(graph['7'].inputs.text, 'blurry');
    assert.equal(graph['5'].inputs.width, 512);
    assert.equal(graph['3'].inputs.seed, 77);
    assert.equal(graph['3'].inputs.steps, 30);
    assert.equal(graph['3'].inputs.cfg, 5.5);
    assert.match(fake.fake.stats.last_request.client_id, /^pixelgate-/);
  });

  test('second request hits the cache', async () => {
    assert.equal((await pixelgate.get('/generate-image?prompt=cache+me&width=512&height=512')).status, 200);
    const second = await pixelgate.get('/generate-image?prompt=cache+me&width=512&height=512');
    assert.equal(second.headers['x-pixelgate-cache'], 'hit');
    assert.equal(fake.fake.stats.prompts, 1);
  });

  test('node errors give 502 quickly', async () => {
    fake.fake.settings.script = [{ kind: 'node_errors' }];
    const response = await pixelgate.get('/generate-image?prompt=missing+checkpoint&width=512&height=512');
    const error = assertError(response, 502, 'backend_failed');
    assert.match(error.message, /node 4 \(CheckpointLoaderSimple\): Value not in list/);
    assert.ok(response.ms < 1000, `answered in ${response.ms} ms, before the deadline`);
  });

  test('execution error gives 502', async () => {
    fake.fake.settings.script = [{ kind: 'execution_error' }];
    const error = assertError(await pixelgate.get('/generate-image?prompt=out+of+memory&width=512&height=512'), 502, 'backend_failed');
    assert.match(error.message, /OutOfMemoryError/);
  });

  test('fixed sampler is rejected early', async () => {
    const error = assertError(await pixelgate.get('/generate-image?prompt=sampler+set&width=512&height=512&template=sampled'), 400, 'invalid_argument');
    assert.equal(error.param, 'sampler');
    assert.equal(fake.fake.stats.prompts, 0);
  });

  test('server error is not retried', async () => {
    fake.fake.settings.script = [{ status: 500 }];
    assertError(await pixelgate.get('/generate-image?prompt=server+error&width=512&height=512'), 502, 'backend_failed');
    assert.equal(fake.fake.stats.prompts, 1);
  });

  test('hang times out and cancels', async () => {
    fake.fake.settings.script = [{ kind: 'hang' }];
    assertError(await pixelgate.get('/generate-image?prompt=never+finishes&width=512&height=512'), 504, 'timed_out');
    assert.equal(fake.fake.stats.interrupts, 1);
    assert.equal(fake.fake.stats.queue_deletes, 1);
  });

  for (const kind of ['no_images', 'missing_file', 'not_image']) {
    test(`malformed result ${kind} gives 502`, async () => {
      fake.fake.settings.script = [{ kind }];
      const path = `/generate-image?prompt=malformed+${kind}&width=512&height=512`;
      assertError(await pixelgate.get(path), 502, 'backend_failed');
      const again = await pixelgate.get(path);
      assert.equal(again.headers['x-pixelgate-cache'], 'miss', 'nothing was stored');
    });
  }
});
