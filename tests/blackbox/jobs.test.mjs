// Asynchronous jobs against the real binary: POST /v1/jobs and polling, the queue,
// idempotency keys, restarts, `Prefer: wait=N` on the synchronous routes, and signed
// webhooks checked with the standardwebhooks package. Every server here listens on
// 127.0.0.1, and every webhook goes to a receiver on 127.0.0.1.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { Webhook } from 'standardwebhooks';

import { HOST, checkCompletePng, jsonBody, openaiBackend, request, sha256Hex, sleep, startFake, startPixelgate, toToml, waitFor } from './lib/harness.mjs';

const MODEL = 'gpt-image-2';
const SECRET_ENV = 'PG_TEST_WEBHOOK_SECRET';
const SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const ALICE_KEY = 'pg-jobs-blackbox-alice-0001';
const BOB_KEY = 'pg-jobs-blackbox-bob-0002';

let dir;
let fake;
let configPath;
let strictConfigPath;
let pixelgate;
let receiver;

function baseConfig(storagePath, webhooks) {
  return {
    server: { port: 0, threads: 2 },
    storage: { path: storagePath },
    logging: { level: 'info', format: 'json' },
    security: { mode: 'open' },
    rate_limits: { requests_per_second: 0, generations_per_minute: 0 },
    jobs: { max_running: 1, max_wait_seconds: 5 },
    webhooks,
    backends: { openai: openaiBackend(fake) },
    api_keys: { alice: { sha256: sha256Hex(ALICE_KEY) }, bob: { sha256: sha256Hex(BOB_KEY) } },
  };
}

async function startGateway(path = configPath) {
  return startPixelgate(path, { env: { [SECRET_ENV]: SECRET } });
}

/** Starts a webhook receiver on 127.0.0.1 that records each request and responds with scripted statuses (default 200). */
async function startReceiver() {
  const received = [];
  const statuses = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      received.push({ url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      const status = statuses.length > 0 ? statuses.shift() : 200;
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(status === 200 ? 'ok' : 'scripted failure');
    });
  });
  await new Promise((resolvePromise) => server.listen(0, HOST, resolvePromise));
  return {
    url: `http://${HOST}:${server.address().port}`,
    received,
    statuses,
    /** Returns the requests for one job, in arrival order. */
    forJob: (id) => received.filter((entry) => JSON.parse(entry.body).data?.id === id),
    close: () => new Promise((resolvePromise) => server.close(resolvePromise)),
  };
}

async function postJob(body, headers = {}) {
  return pixelgate.get('/v1/jobs', {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

async function getJob(id, headers = {}) {
  const response = await pixelgate.get(`/v1/jobs/${id}`, { headers });
  assert.equal(response.status, 200, `GET /v1/jobs/${id}: ${response.body}`);
  return jsonBody(response);
}

async function waitForStatus(id, expected, timeoutMs = 15_000, headers = {}) {
  return waitFor(
    async () => {
      const job = await getJob(id, headers);
      return expected.includes(job.status) ? job : null;
    },
    { timeoutMs, intervalMs: 50, message: `job ${id} to reach ${expected.join(' or ')}` },
  );
}

async function generations() {
  return (await fake.stats()).generations;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pixelgate-jobs-'));
  fake = await startFake();
  receiver = await startReceiver();
  configPath = join(dir, 'pixelgate.toml');
  await writeFile(
    configPath,
    toToml(baseConfig(join(dir, 'storage'), { secret_env: SECRET_ENV, allow_private_addresses: true, base_delay_ms: 50, max_attempts: 4, timeout_ms: 3000 })),
  );
  strictConfigPath = join(dir, 'strict.toml');
  await writeFile(strictConfigPath, toToml(baseConfig(join(dir, 'strict-storage'), { secret_env: SECRET_ENV })));
  pixelgate = await startGateway();
});

after(async () => {
  await pixelgate?.stop();
  await fake?.stop();
  await receiver?.close();
  if (dir) {
    await rm(dir, { recursive: true, force: true });
  }
});

describe('jobs', { timeout: 120_000 }, () => {
  test('job succeeds and its URL serves the image', async () => {
    const response = await postJob({ model: MODEL, prompt: 'job basic', size: '1024x1024' });
    assert.equal(response.status, 202, String(response.body));
    const created = jsonBody(response);
    assert.match(created.id, /^job_[A-Za-z0-9_-]{22}$/);
    assert.ok(['queued', 'running', 'succeeded'].includes(created.status), created.status);
    assert.equal(created.status_url, `${pixelgate.baseUrl}/v1/jobs/${created.id}`);
    assert.equal(response.headers.location, created.status_url);
    assert.equal(response.headers['cache-control'], 'no-store');

    const done = await waitForStatus(created.id, ['succeeded']);
    assert.equal(done.images.length, 1);
    assert.match(done.images[0].url, new RegExp(`^${pixelgate.baseUrl}/images/[0-9a-f]{64}\\.png$`));
    const image = await request(done.images[0].url);
    assert.equal(image.status, 200);
    assert.equal(image.headers['content-type'], 'image/png');
    checkCompletePng(image.body);
    assert.equal(sha256Hex(image.body), await fake.expectedSha256({ model: MODEL, prompt: 'job basic', size: '1024x1024' }));
  });

  test('only the creating principal reads a job', async () => {
    const alice = { authorization: `Bearer ${ALICE_KEY}` };
    const created = jsonBody(await postJob({ model: MODEL, prompt: 'job private', size: '1024x1024' }, alice));
    assert.equal((await getJob(created.id, alice)).id, created.id);
    for (const headers of [{ authorization: `Bearer ${BOB_KEY}` }, {}]) {
      const other = await pixelgate.get(`/v1/jobs/${created.id}`, { headers });
      assert.equal(other.status, 404, JSON.stringify(headers));
      assert.equal(jsonBody(other).error.code, 'not_found');
    }
    const unknown = await pixelgate.get('/v1/jobs/job_AAAAAAAAAAAAAAAAAAAAAA', { headers: alice });
    assert.equal(unknown.status, 404);
    await waitForStatus(created.id, ['succeeded'], 15_000, alice);
  });

  test('queue position while the only slot is busy', async () => {
    await fake.control({ delay_ms: 1500 });
    try {
      const first = jsonBody(await postJob({ model: MODEL, prompt: 'job queue first', size: '1024x1024' }));
      await waitForStatus(first.id, ['running']);
      const secondResponse = await postJob({ model: MODEL, prompt: 'job queue second', size: '1024x1024' });
      assert.equal(secondResponse.status, 202);
      const second = jsonBody(secondResponse);
      assert.equal(second.status, 'queued');
      assert.equal(second.position, 1);
      const polled = await getJob(second.id);
      assert.equal(polled.status, 'queued');
      assert.equal(polled.position, 1);

      await waitForStatus(first.id, ['succeeded']);
      const finished = await waitForStatus(second.id, ['succeeded']);
      assert.equal(finished.position, undefined);
    } finally {
      await fake.control({ delay_ms: 0 });
    }
  });

  test('transient outage defers the job', async () => {
    await fake.control({ script: [{ status: 429, retry_after: 1 }] });
    const before = await generations();
    const created = jsonBody(await postJob({ model: MODEL, prompt: 'job after a provider outage', size: '1024x1024' }));
    await waitFor(async () => (await generations()) === before + 1, { timeoutMs: 10_000, message: 'the first call' });
    await sleep(200);
    const waiting = await getJob(created.id);
    assert.notEqual(waiting.status, 'failed', 'a 429 from the provider must not fail the job');

    const done = await waitForStatus(created.id, ['failed', 'succeeded'], 20_000);
    assert.equal(done.status, 'succeeded', JSON.stringify(done));
    assert.equal(await generations(), before + 2, 'one failed call, one successful call');
  });

  test('failed job reports the error and its webhook', async () => {
    await fake.control({ script: [{ status: 400, message: 'scripted rejection', param: 'prompt' }] });
    const created = jsonBody(
      await postJob({ model: MODEL, prompt: 'job failure', size: '1024x1024', webhook_url: `${receiver.url}/failed` }),
    );
    const failed = await waitForStatus(created.id, ['failed', 'succeeded']);
    assert.equal(failed.status, 'failed');
    assert.equal(failed.error.code, 'invalid_argument');
    assert.match(failed.error.message, /scripted rejection/);
    assert.equal(failed.error.param, 'prompt');
    assert.equal(failed.images, undefined);

    const [delivery] = await waitFor(() => (receiver.forJob(created.id).length > 0 ? receiver.forJob(created.id) : null), {
      message: 'the image.failed webhook',
    });
    const event = new Webhook(SECRET).verify(delivery.body, delivery.headers);
    assert.equal(event.type, 'image.failed');
    assert.equal(event.data.status, 'failed');
    assert.deepEqual(event.data.error, failed.error);
  });

  test('idempotency key returns the same job once', async () => {
    const body = { model: MODEL, prompt: 'job idempotent', size: '1024x1024' };
    const before = await generations();
    const first = await postJob(body, { 'idempotency-key': '"order-42"' });
    assert.equal(first.status, 202);
    const id = jsonBody(first).id;
    const again = await postJob(body, { 'idempotency-key': '"order-42"' });
    assert.ok([200, 202].includes(again.status), `replay status ${again.status}`);
    assert.equal(jsonBody(again).id, id);

    await waitForStatus(id, ['succeeded']);
    const replay = await postJob(body, { 'idempotency-key': '"order-42"' });
    assert.equal(replay.status, 200);
    assert.equal(jsonBody(replay).id, id);
    assert.equal(jsonBody(replay).status, 'succeeded');
    assert.equal((await generations()) - before, 1, 'one generation for three requests with the same key');

    const changed = await postJob({ ...body, prompt: 'job idempotent changed' }, { 'idempotency-key': '"order-42"' });
    assert.equal(changed.status, 422);
    const error = jsonBody(changed).error;
    assert.equal(error.code, 'idempotency_key_reused');
    assert.equal(error.param, 'Idempotency-Key');
    assert.equal((await generations()) - before, 1);
  });

  test('Prefer wait turns a slow image into a job on the same flight', async () => {
    await fake.control({ delay_ms: 2500 });
    try {
      const before = await generations();
      const path = '/generate-image?prompt=job+prefer+slow&size=1024x1024';
      const [deferred, plain] = await Promise.all([
        pixelgate.get(path, { headers: { prefer: 'wait=1' } }),
        sleep(200).then(() => pixelgate.get(path)),
      ]);
      assert.equal(deferred.status, 202, String(deferred.body));
      assert.ok(deferred.ms < 2400, `the 202 came after ${deferred.ms} ms, before the image was ready`);
      assert.ok(deferred.ms >= 900, `the 202 came after ${deferred.ms} ms, not after the 1 s wait`);
      assert.equal(deferred.headers['preference-applied'], 'wait=1');
      assert.equal(deferred.headers['cache-control'], 'no-store');
      const job = jsonBody(deferred);
      assert.equal(job.status, 'running');
      assert.equal(deferred.headers.location, job.status_url);

      // The request without the header waited for the same generation.
      assert.equal(plain.status, 200);
      assert.equal(plain.headers['x-pixelgate-cache'], 'coalesced');

      const done = await waitForStatus(job.id, ['succeeded']);
      assert.equal(done.images[0].key, plain.headers['x-pixelgate-key']);
      const image = await request(done.images[0].url);
      assert.ok(image.body.equals(plain.body));
      assert.equal((await generations()) - before, 1, 'one backend call in total');

      const generationsRoute = await pixelgate.get('/v1/images/generations', {
        method: 'POST',
        headers: { 'content-type': 'application/json', prefer: 'respond-async, wait=1' },
        body: JSON.stringify({ model: MODEL, prompt: 'job prefer post', size: '1024x1024' }),
      });
      assert.equal(generationsRoute.status, 202);
      assert.equal(generationsRoute.headers['preference-applied'], 'wait=1');
      const postJobDone = await waitForStatus(jsonBody(generationsRoute).id, ['succeeded']);
      assert.equal(postJobDone.images.length, 1);
      assert.equal((await generations()) - before, 2);
    } finally {
      await fake.control({ delay_ms: 0 });
    }

    // A fast response is sent as usual, without Preference-Applied.
    const fast = await pixelgate.get('/generate-image?prompt=job+prefer+slow&size=1024x1024', { headers: { prefer: 'wait=1' } });
    assert.equal(fast.status, 200);
    assert.equal(fast.headers['x-pixelgate-cache'], 'hit');
    assert.equal(fast.headers['preference-applied'], undefined);
  });

  test('webhook is signed per Standard Webhooks', async () => {
    const created = jsonBody(
      await postJob({ model: MODEL, prompt: 'job webhook', size: '1024x1024', webhook_url: `${receiver.url}/hook?token=abc` }),
    );
    const deliveries = await waitFor(() => (receiver.forJob(created.id).length > 0 ? receiver.forJob(created.id) : null), {
      timeoutMs: 15_000,
      message: 'the webhook',
    });
    const delivery = deliveries[0];
    assert.equal(delivery.url, '/hook?token=abc');
    assert.equal(delivery.headers['content-type'], 'application/json');
    assert.equal(delivery.headers['webhook-id'], `msg_${created.id}`);
    assert.match(delivery.headers['webhook-signature'], /^v1,[A-Za-z0-9+/]{43}=$/);
    const event = new Webhook(SECRET).verify(delivery.body, delivery.headers);
    assert.equal(event.type, 'image.succeeded');
    assert.equal(event.data.id, created.id);
    assert.equal(event.data.status, 'succeeded');
    const job = await getJob(created.id);
    assert.equal(event.data.images[0].url, job.images[0].url);
    assert.throws(() => new Webhook(`whsec_${randomBytes(32).toString('base64')}`).verify(delivery.body, delivery.headers));
    await waitFor(async () => (await getJob(created.id)).webhook?.state === 'delivered', { message: 'webhook state delivered' });
  });

  test('webhook retried after a 500 with the same id', async () => {
    receiver.statuses.push(500);
    const created = jsonBody(
      await postJob({ model: MODEL, prompt: 'job webhook retry', size: '1024x1024', webhook_url: `${receiver.url}/retry` }),
    );
    const deliveries = await waitFor(() => (receiver.forJob(created.id).length >= 2 ? receiver.forJob(created.id) : null), {
      timeoutMs: 15_000,
      message: 'two webhook attempts',
    });
    assert.equal(deliveries.length, 2);
    assert.equal(deliveries[0].headers['webhook-id'], deliveries[1].headers['webhook-id']);
    assert.equal(deliveries[0].body, deliveries[1].body);
    for (const delivery of deliveries) {
      new Webhook(SECRET).verify(delivery.body, delivery.headers);
    }
    const job = await waitFor(async () => {
      const current = await getJob(created.id);
      return current.webhook?.state === 'delivered' ? current : null;
    }, { message: 'webhook state delivered' });
    assert.equal(job.webhook.attempts, 2);
  });

  test('default config rejects a loopback webhook at creation', async () => {
    const strict = await startGateway(strictConfigPath);
    try {
      const before = await generations();
      for (const url of ['http://127.0.0.1:9/hook', 'http://localhost:9/hook', 'http://[::1]:9/hook', 'http://10.0.0.1/hook']) {
        const response = await request('/v1/jobs', {
          port: strict.port,
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: MODEL, prompt: 'job strict', size: '1024x1024', webhook_url: url }),
        });
        assert.equal(response.status, 400, url);
        const error = jsonBody(response).error;
        assert.equal(error.param, 'webhook_url', url);
        assert.match(error.message, /loopback|private/, url);
      }
      const scheme = await request('/v1/jobs', {
        port: strict.port,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, prompt: 'job strict', webhook_url: 'ftp://example.com/hook' }),
      });
      assert.equal(scheme.status, 400);
      assert.equal(jsonBody(scheme).error.param, 'webhook_url');
      assert.equal(await generations(), before, 'no job ran');
    } finally {
      await strict.stop();
    }
  });

  test('jobs survive a crash and a graceful stop', async () => {
    await fake.control({ delay_ms: 1500 });
    try {
      // A crash while one job runs and one waits: both finish after the restart.
      const running = jsonBody(await postJob({ model: MODEL, prompt: 'job restart running', size: '1024x1024' }));
      await waitForStatus(running.id, ['running']);
      const queued = jsonBody(await postJob({ model: MODEL, prompt: 'job restart queued', size: '1024x1024' }));
      assert.equal(queued.status, 'queued');
      await pixelgate.stop({ signal: 'SIGKILL' });
      pixelgate = await startGateway();
      const first = await waitForStatus(running.id, ['succeeded', 'failed'], 20_000);
      const second = await waitForStatus(queued.id, ['succeeded', 'failed'], 20_000);
      assert.equal(first.status, 'succeeded');
      assert.equal(second.status, 'succeeded');
      assert.equal((await request(first.images[0].url)).status, 200);

      // A graceful stop finishes the running job and keeps the queued one for the next start.
      const busy = jsonBody(await postJob({ model: MODEL, prompt: 'job stop running', size: '1024x1024' }));
      await waitForStatus(busy.id, ['running']);
      const waiting = jsonBody(await postJob({ model: MODEL, prompt: 'job stop queued', size: '1024x1024' }));
      const exit = await pixelgate.stop({ signal: 'SIGTERM', timeoutMs: 15_000 });
      assert.equal(exit.forced, false);
      pixelgate = await startGateway();
      assert.equal((await getJob(busy.id)).status, 'succeeded', 'the running job finished before the stop');
      assert.equal((await waitForStatus(waiting.id, ['succeeded', 'failed'], 20_000)).status, 'succeeded');
    } finally {
      await fake.control({ delay_ms: 0 });
    }
  });
});
