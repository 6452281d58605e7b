// The Bedrock adapter end to end: pixelgate signs InvokeModel calls with SigV4, and the
// fake Bedrock runtime (tests/fakes/bedrock-fake.mjs) verifies every signature with its own
// implementation. Covers Nova Canvas, Titan and Stability bodies, each error class, timeouts,
// retries and malformed responses.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';

import { HOST, REPO_ROOT, checkCompletePng, jsonBody, request, sha256Hex, startPixelgate, toToml } from './lib/harness.mjs';

const FAKE_PATH = join(REPO_ROOT, 'tests', 'fakes', 'bedrock-fake.mjs');
const ACCESS_KEY = 'AKIDPIXELGATETEST01';
const SECRET_KEY = 'pixelgate/secret+KEY=SECRETbedrock9876';
const SESSION_TOKEN = 'session-token/with+chars=TOKEN5432';
const REGION = 'us-west-2';
const ENV = {
  PG_TEST_AWS_ACCESS_KEY: ACCESS_KEY,
  PG_TEST_AWS_SECRET_KEY: SECRET_KEY,
  PG_TEST_AWS_SESSION_TOKEN: SESSION_TOKEN,
  PG_TEST_AWS_WRONG_SECRET: 'not-the-right-secret-0000',
};
const GENERATION_TIMEOUT_MS = 4000;

let dir;
let fake;
let gateway;

/** Starts the fake as a child process and resolves with {child, port, baseUrl} once it prints its port. */
function startBedrockFake() {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [FAKE_PATH, '--port', '0', '--access-key', ACCESS_KEY, '--secret-key', SECRET_KEY,
      '--session-token', SESSION_TOKEN, '--region', REGION], { stdio: ['ignore', 'pipe', 'inherit'] });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('bedrock-fake printed no port within 10 s'));
    }, 10_000);
    let output = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk) => {
      output += chunk;
      if (!output.includes('\n')) return;
      clearTimeout(timer);
      const { port } = JSON.parse(output.slice(0, output.indexOf('\n')));
      resolvePromise({ child, port, baseUrl: `http://${HOST}:${port}` });
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`bedrock-fake exited early with code ${code}`));
    });
  });
}

async function fakeCall(method, path, body) {
  const response = await request(path, {
    port: fake.port,
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.equal(response.status, 200, `fake ${method} ${path}: ${response.body}`);
  return jsonBody(response);
}

const script = (entries) => fakeCall('POST', '/__control', { script: entries });
const stats = () => fakeCall('GET', '/__stats');

function bedrockBackend(model, overrides = {}) {
  return {
    type: 'bedrock',
    base_url: fake.baseUrl,
    model,
    region: REGION,
    access_key_env: 'PG_TEST_AWS_ACCESS_KEY',
    secret_key_env: 'PG_TEST_AWS_SECRET_KEY',
    session_token_env: 'PG_TEST_AWS_SESSION_TOKEN',
    max_retries: 1,
    retry_base_delay_ms: 50,
    timeout_ms: 15_000,
    failure_threshold: 1000,
    ...overrides,
  };
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pixelgate-bedrock-'));
  fake = await startBedrockFake();
  const config = {
    default_backend: 'nova',
    server: { port: 0, threads: 2 },
    storage: { path: join(dir, 'storage') },
    logging: { level: 'info', format: 'json' },
    security: { mode: 'open' },
    rate_limits: { requests_per_second: 0, generations_per_minute: 0 },
    limits: { generation_timeout_ms: GENERATION_TIMEOUT_MS },
    backends: {
      nova: bedrockBackend('amazon.nova-canvas-v1:0'),
      titan: bedrockBackend('amazon.titan-image-generator-v2:0'),
      sd: bedrockBackend('stability.sd3-5-large-v1:0'),
      short: bedrockBackend('amazon.nova-canvas-v1:0', { max_retries: 0, timeout_ms: 1000 }),
      wrongkey: bedrockBackend('amazon.nova-canvas-v1:0', { secret_key_env: 'PG_TEST_AWS_WRONG_SECRET', max_retries: 0 }),
    },
    templates: {
      titan: { backend: 'titan' },
      sd: { backend: 'sd', width: 1344, height: 768 },
      short: { backend: 'short' },
      wrongkey: { backend: 'wrongkey' },
    },
  };
  const configPath = join(dir, 'pixelgate.toml');
  await writeFile(configPath, toToml(config));
  gateway = await startPixelgate(configPath, { env: ENV });
});

after(async () => {
  await gateway?.stop();
  if (fake) {
    fake.child.kill('SIGTERM');
  }
  if (dir) await rm(dir, { recursive: true, force: true });
});

beforeEach(async () => {
  await fakeCall('POST', '/__reset', {});
});

function assertJsonError(response, status, code) {
  assert.equal(response.status, status, response.body.toString());
  assert.equal(response.headers['cache-control'], 'no-store');
  const { error } = jsonBody(response);
  assert.equal(error.code, code);
  return error;
}

describe('successful generations', { timeout: 60_000 }, () => {
  test('Nova PNG then cache hit', async () => {
    const prompt = 'a lighthouse in fog';
    const path = `/generate-image?prompt=${encodeURIComponent(prompt)}&width=1280&height=720`;
    const first = await gateway.get(path);
    assert.equal(first.status, 200, first.body.toString());
    assert.deepEqual(checkCompletePng(first.body), { width: 1280, height: 720 });
    const expected = await fakeCall('GET', `/__expected?${new URLSearchParams({ model: 'amazon.nova-canvas-v1:0', prompt, width: '1280', height: '720' })}`);
    assert.equal(sha256Hex(first.body), expected.sha256);

    const second = await gateway.get(path);
    assert.equal(second.status, 200);
    assert.equal(second.headers['x-pixelgate-cache'], 'hit');
    assert.equal((await stats()).invocations, 1);
  });

  test('Nova request is signed InvokeModel', async () => {
    const response = await gateway.get('/generate-image?prompt=signed+request+shape');
    assert.equal(response.status, 200, response.body.toString());
    const { last_request: last } = await stats();
    assert.equal(last.path, '/model/amazon.nova-canvas-v1%3A0/invoke');
    assert.equal(last.headers.host, `${HOST}:${fake.port}`);
    assert.match(last.headers['x-amz-date'], /^\d{8}T\d{6}Z$/);
    assert.equal(last.body.taskType, 'TEXT_IMAGE');
    assert.equal(last.body.textToImageParams.text, 'signed request shape');
    assert.equal(last.body.imageGenerationConfig.numberOfImages, 1);
  });

  test('Titan PNG of requested size', async () => {
    const response = await gateway.get('/generate-image?prompt=titan+orchard&template=titan&width=1152&height=768');
    assert.equal(response.status, 200, response.body.toString());
    assert.deepEqual(checkCompletePng(response.body), { width: 1152, height: 768 });
  });

  test('Stability sends aspect ratio', async () => {
    const response = await gateway.get('/generate-image?prompt=stability+harbour&template=sd');
    assert.equal(response.status, 200, response.body.toString());
    assert.deepEqual(checkCompletePng(response.body), { width: 1344, height: 768 });
    const { last_request: last } = await stats();
    assert.equal(last.path, '/model/stability.sd3-5-large-v1%3A0/invoke');
    assert.equal(last.body.aspect_ratio, '16:9');
    assert.equal(last.body.output_format, 'png');
  });

  test('unsupported size rejected before call', async () => {
    const response = await gateway.get('/generate-image?prompt=odd+titan+size&template=titan&width=1000&height=1000');
    const error = assertJsonError(response, 400, 'invalid_argument');
    assert.equal(error.param, 'size');
    assert.equal((await stats()).invocations, 0);
  });
});

describe('backend errors', { timeout: 60_000 }, () => {
  const cases = [
    { name: 'ValidationException gives 400', entry: { status: 400, type: 'ValidationException' }, status: 400, code: 'invalid_argument', calls: 1 },
    { name: 'AccessDeniedException gives 502', entry: { status: 403, type: 'AccessDeniedException' }, status: 502, code: 'backend_failed', calls: 1 },
    { name: 'quota exceeded gives 503', entry: { type: 'ServiceQuotaExceededException' }, status: 503, code: 'unavailable', calls: 1 },
    { name: 'ResourceNotFound gives 502', entry: { status: 404 }, status: 502, code: 'backend_failed', calls: 1 },
  ];
  for (const { name, entry, status, code, calls } of cases) {
    test(name, async () => {
      await script([entry]);
      const response = await gateway.get(`/generate-image?prompt=${encodeURIComponent(name)}`);
      assertJsonError(response, status, code);
      assert.equal((await stats()).invocations, calls);
    });
  }

  test('throttling beyond retries gives 503', async () => {
    await script([{ status: 429 }, { status: 429, retry_after: 2 }]);
    const response = await gateway.get('/generate-image?prompt=throttled+twice');
    assertJsonError(response, 503, 'unavailable');
    assert.equal(response.headers['retry-after'], '2');
    assert.equal((await stats()).invocations, 2);
  });

  test('retry honours Retry-After', async () => {
    await script([{ status: 429, retry_after: 1 }]);
    const response = await gateway.get('/generate-image?prompt=throttled+once');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal((await stats()).invocations, 2);
    assert.ok(response.ms >= 950, `the retry waited ${response.ms} ms, expected about 1000`);
  });

  test('InternalServerException then success', async () => {
    await script([{ status: 500 }]);
    const response = await gateway.get('/generate-image?prompt=internal+error+once');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal((await stats()).invocations, 2);
  });

  test('ServiceUnavailable twice gives 502', async () => {
    await script([{ status: 503 }, { status: 503 }]);
    const response = await gateway.get('/generate-image?prompt=unavailable+twice');
    assertJsonError(response, 502, 'backend_failed');
  });

  test('ModelTimeoutException twice gives 504', async () => {
    await script([{ status: 408 }, { status: 408 }]);
    const response = await gateway.get('/generate-image?prompt=model+timeout+twice');
    assertJsonError(response, 504, 'timed_out');
  });

  test('Nova content filter gives 422', async () => {
    await script([{ kind: 'content_filtered' }]);
    const response = await gateway.get('/generate-image?prompt=filtered+nova');
    const error = assertJsonError(response, 422, 'content_refused');
    assert.equal(error.param, 'prompt');
  });

  test('Stability filter reason gives 422', async () => {
    await script([{ kind: 'content_filtered' }]);
    const response = await gateway.get('/generate-image?prompt=filtered+stability&template=sd');
    assertJsonError(response, 422, 'content_refused');
  });

  test('bad signature gives 502', async () => {
    const response = await gateway.get('/generate-image?prompt=wrong+secret&template=wrongkey');
    const error = assertJsonError(response, 502, 'backend_failed');
    assert.match(error.message, /credentials/);
    assert.equal((await stats()).signature_failures, 1);
  });

  test('hang gives 504 in time', async () => {
    await script([{ kind: 'hang' }]);
    const response = await gateway.get('/generate-image?prompt=hanging+model&template=short', { timeoutMs: 10_000 });
    assertJsonError(response, 504, 'timed_out');
    assert.ok(response.ms < 5000, `the timeout took ${response.ms} ms with timeout_ms = 1000`);
  });

  for (const kind of ['empty_images', 'not_image', 'wrong_size', 'truncated']) {
    test(`${kind} gives 502, not stored`, async () => {
      await script([{ kind }]);
      const path = `/generate-image?prompt=broken+answer+${kind}`;
      assertJsonError(await gateway.get(path), 502, 'backend_failed');
      const retried = await gateway.get(path);
      assert.equal(retried.status, 200, retried.body.toString());
      assert.equal(retried.headers['x-pixelgate-cache'], 'miss');
      assert.equal((await stats()).invocations, 2);
    });
  }

  test('no secret in the logs', () => {
    const logs = gateway.stderrLines.join('\n');
    for (const secret of [SECRET_KEY, SESSION_TOKEN, ENV.PG_TEST_AWS_WRONG_SECRET]) {
      assert.ok(!logs.includes(secret), 'a secret appears in pixelgate stderr');
    }
  });
});
