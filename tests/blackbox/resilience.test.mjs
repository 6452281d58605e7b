// Routing through pixelgate: a failing primary backend falls back to the next one, the
// fallback's image is never cacheable as the requested URL's response, the circuit breaker
// stops calling a failing backend, and a content refusal is returned from the refusal cache.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';

import { Gateway, jsonBody, openaiBackend, sleep } from './lib/harness.mjs';

let gateway;

before(async () => {
  gateway = await Gateway.start((fake) => ({
    default_backend: 'openai',
    backends: {
      openai: openaiBackend(fake, { max_retries: 0, failure_threshold: 100 }),
      flaky: openaiBackend(fake, { max_retries: 0, failure_threshold: 2, open_ms: 1500 }),
      draft: { type: 'placeholder' },
    },
    templates: {
      resilient: { backend: 'openai', fallbacks: ['draft'] },
      breaker: { backend: 'flaky', fallbacks: ['draft'] },
      unprotected: { backend: 'flaky' },
    },
  }));
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

describe('fallbacks', () => {
  test('failing primary uses fallback', async () => {
    await gateway.fake.control({ script: [{ status: 500 }] });
    const response = await gateway.get('/v1/images/resilient?prompt=fallback+fox');
    assert.equal(response.status, 200);
    assert.equal(response.headers['x-pixelgate-fallback'], 'draft');
    assert.equal(response.headers['cache-control'], 'no-store');
  });

  test('fallback ETag is its own key', async () => {
    await gateway.fake.control({ script: [{ status: 503 }] });
    const response = await gateway.get('/v1/images/resilient?prompt=fallback+owl');
    assert.equal(response.status, 200);
    assert.equal(response.headers.etag, `"${response.headers['x-pixelgate-key']}"`);
    const stored = await gateway.get(`/images/${response.headers['x-pixelgate-key']}.png`);
    assert.equal(stored.status, 200);
    assert.deepEqual(stored.body, response.body);
    // The permanent URL carries the key and the placeholder warning too.
    assert.equal(stored.headers['x-pixelgate-key'], response.headers['x-pixelgate-key']);
    assert.equal(stored.headers['x-pixelgate-warning'], 'placeholder image, not AI-generated');
  });

  test('next request retries primary', async () => {
    await gateway.fake.control({ script: [{ status: 500 }] });
    const first = await gateway.get('/v1/images/resilient?prompt=fallback+hare');
    assert.equal(first.headers['x-pixelgate-fallback'], 'draft');
    const second = await gateway.get('/v1/images/resilient?prompt=fallback+hare');
    assert.equal(second.status, 200);
    assert.equal(second.headers['x-pixelgate-fallback'], undefined);
    assert.equal(second.headers['cache-control'], 'public, max-age=31536000, immutable');
    assert.equal(await generations(), 2);
  });

  test('bad request does not fall back', async () => {
    await gateway.fake.control({ script: [{ status: 400, code: 'invalid_value', param: 'prompt' }] });
    const response = await gateway.get('/v1/images/resilient?prompt=fallback+mole');
    assert.equal(response.status, 400);
    assert.equal(jsonBody(response).error.code, 'invalid_argument');
  });
});

describe('circuit breaker', () => {
  test('open circuit skips the backend', async () => {
    await gateway.fake.control({ script: [{ status: 500 }, { status: 500 }] });
    for (const prompt of ['circuit+one', 'circuit+two']) {
      const response = await gateway.get(`/v1/images/breaker?prompt=${prompt}`);
      assert.equal(response.headers['x-pixelgate-fallback'], 'draft');
    }
    assert.equal(await generations(), 2);

    const skipped = await gateway.get('/v1/images/breaker?prompt=circuit+three');
    assert.equal(skipped.headers['x-pixelgate-fallback'], 'draft');
    assert.equal(await generations(), 2, 'an open circuit must not call the backend');

    const withoutFallback = await gateway.get('/v1/images/unprotected?prompt=circuit+four');
    assert.equal(withoutFallback.status, 503);
    assert.ok(Number(withoutFallback.headers['retry-after']) >= 1);
    assert.equal(await generations(), 2);
  });

  test('circuit recovers after probe', async () => {
    await sleep(1600);  // open_ms = 1500
    const probe = await gateway.get('/v1/images/unprotected?prompt=circuit+five');
    assert.equal(probe.status, 200);
    assert.equal(probe.headers['x-pixelgate-cache'], 'miss');
    assert.equal(await generations(), 1);
  });
});

describe('refusal cache', () => {
  test('refusal is not sent twice', async () => {
    await gateway.fake.control({ script: [{ status: 400, code: 'content_policy_violation' }] });
    const first = await gateway.get('/generate-image?prompt=refused+thing');
    assert.equal(first.status, 422);
    assert.equal(jsonBody(first).error.code, 'content_refused');
    const second = await gateway.get('/generate-image?prompt=refused+thing');
    assert.equal(second.status, 422);
    assert.equal(await generations(), 1);
  });
});
