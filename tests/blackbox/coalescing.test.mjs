// Request coalescing: concurrent identical requests share one backend generation, a failure
// reaches every waiter and is not cached, and a generation finishes and is stored even when
// its clients disconnect.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';

import { Gateway, jsonBody, openaiBackend, sha256Hex, waitFor } from './lib/harness.mjs';

let gateway;

before(async () => {
  gateway = await Gateway.start((fake) => ({ backends: { openai: openaiBackend(fake, { max_retries: 0 }) } }));
});

after(async () => {
  await gateway?.close();
});

beforeEach(async () => {
  await gateway.fake.reset();
});

async function generations() {
  return (await gateway.fake.stats()).generations;
}

/** Resolves once the fake has a generation request in flight. */
function generationStarted() {
  return waitFor(async () => (await gateway.fake.stats()).in_flight > 0, { timeoutMs: 5000, message: 'a generation in flight at the fake' });
}

/** Returns the cache key of `path` without generating: If-None-Match: * gets a 304 with the ETag. */
async function keyOf(path) {
  const response = await gateway.get(path, { headers: { 'if-none-match': '*' } });
  assert.equal(response.status, 304, 'If-None-Match: * answers 304');
  return response.headers.etag.replaceAll('"', '');
}

/** Starts a request that the test aborts later. The returned promise resolves even when aborted. */
function abortableRequest(path) {
  const controller = new AbortController();
  const settled = gateway.get(path, { signal: controller.signal }).then(
    (response) => ({ response }),
    (error) => ({ error }),
  );
  return { abort: () => controller.abort(), settled };
}

describe('coalescing', { timeout: 60_000 }, () => {
  test('200 requests, one generation', async () => {
    await gateway.fake.control({ delay_ms: 1500 });
    const path = '/generate-image?prompt=two+hundred+at+once';
    const responses = await Promise.all(Array.from({ length: 200 }, () => gateway.get(path, { timeoutMs: 20_000 })));

    assert.equal(await generations(), 1);
    const statuses = new Set(responses.map((response) => response.status));
    assert.deepEqual([...statuses], [200]);
    const digests = new Set(responses.map((response) => sha256Hex(response.body)));
    assert.equal(digests.size, 1, 'all bodies are identical');
    const etags = new Set(responses.map((response) => response.headers.etag));
    assert.equal(etags.size, 1, 'all ETags are identical');

    const states = responses.map((response) => response.headers['x-pixelgate-cache']);
    assert.equal(states.filter((state) => state === 'miss').length, 1);
    assert.equal(states.filter((state) => state === 'coalesced').length, 199);
  });

  test('failure reaches every waiter', async () => {
    await gateway.fake.control({ script: [{ status: 500, delay_ms: 1000 }] });
    const path = '/generate-image?prompt=shared+failure';
    const responses = await Promise.all(Array.from({ length: 20 }, () => gateway.get(path)));

    assert.equal(await generations(), 1);
    for (const response of responses) {
      assert.equal(response.status, 502);
      assert.equal(response.headers['cache-control'], 'no-store');
      assert.match(response.headers['content-type'], /^application\/json/);
      assert.equal(jsonBody(response).error.code, 'backend_failed');
    }

    const key = await keyOf(path);
    const stored = await gateway.get(`/images/${key}`);
    assert.equal(stored.status, 404, 'the failure stored nothing');

    const retried = await gateway.get(path);
    assert.equal(retried.status, 200);
    assert.equal(retried.headers['x-pixelgate-cache'], 'miss');
    assert.equal(await generations(), 2, 'the next request calls the backend again');
  });

  test('first client disconnects', async () => {
    await gateway.fake.control({ delay_ms: 1500 });
    const path = '/generate-image?prompt=leader+walks+away';
    const leader = abortableRequest(path);
    await generationStarted();
    leader.abort();
    assert.ok((await leader.settled).error, 'the aborted request has no response');

    const followers = await Promise.all(Array.from({ length: 4 }, () => gateway.get(path)));
    for (const response of followers) {
      assert.equal(response.status, 200);
      assert.equal(response.headers['x-pixelgate-cache'], 'coalesced');
    }
    assert.equal(await generations(), 1);

    const later = await gateway.get(path);
    assert.equal(later.status, 200);
    assert.equal(later.headers['x-pixelgate-cache'], 'hit');
    assert.ok(later.body.equals(followers[0].body));
    assert.equal(await generations(), 1);
  });

  test('all clients disconnect', async () => {
    await gateway.fake.control({ delay_ms: 1500 });
    const path = '/generate-image?prompt=everyone+walks+away';
    const clients = [abortableRequest(path), abortableRequest(path)];
    await generationStarted();
    for (const client of clients) {
      client.abort();
    }
    await Promise.all(clients.map((client) => client.settled));

    const key = await keyOf(path);
    await waitFor(async () => (await gateway.get(`/images/${key}`)).status === 200, {
      timeoutMs: 8000,
      intervalMs: 100,
      message: 'the abandoned generation to be stored',
    });

    const later = await gateway.get(path);
    assert.equal(later.status, 200);
    assert.equal(later.headers['x-pixelgate-cache'], 'hit');
    assert.equal(await generations(), 1);
  });
});
