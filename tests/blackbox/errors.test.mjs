// Error handling: backend failures scripted at the fake OpenAI server (rate limits, refusals,
// broken images, URL outputs, hangs), request validation, unknown templates and wrong
// methods. Every error response must be JSON with Cache-Control: no-store.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';

import { Gateway, jsonBody, openaiBackend, reprDigest, sha256Hex } from './lib/harness.mjs';

const MODEL = 'gpt-image-2';
// Bounds a whole generation, retries included. It leaves room for the one-second Retry-After tests.
const GENERATION_TIMEOUT_MS = 3000;
let gateway;

before(async () => {
  gateway = await Gateway.start((fake) => ({
    default_backend: 'openai',
    limits: { generation_timeout_ms: GENERATION_TIMEOUT_MS },
    backends: {
      openai: openaiBackend(fake, { model: MODEL, max_retries: 1, retry_base_delay_ms: 50 }),
      short: openaiBackend(fake, { model: MODEL, max_retries: 0, timeout_ms: 1000 }),
      dalle3: openaiBackend(fake, { model: 'dall-e-3', max_retries: 0 }),
      patient: openaiBackend(fake, { model: MODEL, max_retries: 2, timeout_ms: 60_000 }),
    },
    templates: {
      short: { backend: 'short' },
      patient: { backend: 'patient' },
      dalle3: { backend: 'dalle3' },
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

/** Checks the shape that every pixelgate error shares and returns the parsed error object. */
function assertJsonError(response, status) {
  assert.equal(response.status, status, response.body.toString());
  assert.equal(response.headers['cache-control'], 'no-store');
  assert.match(response.headers['content-type'], /^application\/json/);
  const { error } = jsonBody(response);
  assert.equal(typeof error.message, 'string');
  assert.ok('param' in error, 'error.param is present');
  return error;
}

describe('backend failures', { timeout: 60_000 }, () => {
  test('retry honours Retry-After', async () => {
    await gateway.fake.control({ script: [{ status: 429, retry_after: 1 }] });
    const response = await gateway.get('/generate-image?prompt=rate+limited+once');
    assert.equal(response.status, 200);
    assert.equal(await generations(), 2);
    assert.ok(response.ms >= 950, `the retry waited ${response.ms} ms, expected about 1000`);
  });

  test('500 then success retries', async () => {
    await gateway.fake.control({ script: [{ status: 500 }] });
    const response = await gateway.get('/generate-image?prompt=server+error+once');
    assert.equal(response.status, 200);
    assert.equal(response.headers['x-pixelgate-cache'], 'miss');
    assert.equal(await generations(), 2);
  });

  test('429 beyond retries gives 503', async () => {
    await gateway.fake.control({ script: [{ status: 429, retry_after: 1 }, { status: 429, retry_after: 7 }] });
    const response = await gateway.get('/generate-image?prompt=rate+limited+twice');
    const error = assertJsonError(response, 503);
    assert.equal(error.code, 'unavailable');
    assert.equal(response.headers['retry-after'], '7');
    assert.equal(await generations(), 2);
  });

  test('content policy gives 422', async () => {
    await gateway.fake.control({ script: [{ status: 400, code: 'content_policy_violation' }] });
    const response = await gateway.get('/generate-image?prompt=refused+prompt');
    const error = assertJsonError(response, 422);
    assert.equal(error.code, 'content_refused');
    assert.equal(error.param, 'prompt');
  });

  for (const kind of ['empty_data', 'not_image', 'wrong_size', 'truncated']) {
    test(`${kind} gives 502, not stored`, async () => {
      await gateway.fake.control({ script: [{ kind }] });
      const path = `/generate-image?prompt=broken+output+${kind}`;
      const failed = await gateway.get(path);
      const error = assertJsonError(failed, 502);
      assert.equal(error.code, 'backend_failed');

      const retried = await gateway.get(path);
      assert.equal(retried.status, 200);
      assert.equal(retried.headers['x-pixelgate-cache'], 'miss');
      assert.equal(await generations(), 2, 'the failure was not cached');
    });
  }

  for (const [template, model] of [['default', MODEL], ['dalle3', 'dall-e-3']]) {
    test(`${model} url output is downloaded`, async () => {
      await gateway.fake.control({ script: [{ kind: 'force_url' }] });
      const prompt = `url output for ${model}`;
      const response = await gateway.get(`/generate-image?prompt=${encodeURIComponent(prompt)}&template=${template}`);
      assert.equal(response.status, 200, response.body.toString());
      assert.equal(sha256Hex(response.body), await gateway.fake.expectedSha256({ model, prompt, size: '1024x1024' }));
      assert.equal(response.headers['repr-digest'], reprDigest(response.body));

      const stats = await gateway.fake.stats();
      assert.equal(stats.file_downloads, 1);
      const fakeOrigin = `127.0.0.1:${gateway.fake.port}`;
      assert.ok(!response.body.includes(fakeOrigin), 'the body does not carry the fake URL');
      assert.ok(!JSON.stringify(response.headers).includes(fakeOrigin), 'no header carries the fake URL');
    });
  }

  test('expired url gives 502', async () => {
    await gateway.fake.control({ url_ttl_ms: 0, script: [{ kind: 'force_url' }] });
    const path = '/generate-image?prompt=url+already+expired';
    const response = await gateway.get(path);
    const error = assertJsonError(response, 502);
    assert.equal(error.code, 'backend_failed');
    assert.equal((await gateway.fake.stats()).file_requests, 1);

    const retried = await gateway.get(path);
    assert.equal(retried.status, 200, 'the failure was not cached');
  });

  test('hang gives 504 in time', async () => {
    await gateway.fake.control({ script: [{ kind: 'hang' }] });
    const response = await gateway.get('/generate-image?prompt=backend+hangs&template=short', { timeoutMs: 10_000 });
    const error = assertJsonError(response, 504);
    assert.equal(error.code, 'timed_out');
    assert.ok(response.ms < 5000, `the timeout took ${response.ms} ms with timeout_ms = 1000`);
  });

  test('hang hits generation timeout', async () => {
    await gateway.fake.control({ script: [{ kind: 'hang' }, { kind: 'hang' }, { kind: 'hang' }] });
    const response = await gateway.get('/generate-image?prompt=backend+hangs+long&template=patient', { timeoutMs: 15_000 });
    const error = assertJsonError(response, 504);
    assert.equal(error.code, 'timed_out');
    assert.ok(response.ms >= GENERATION_TIMEOUT_MS - 100, `the timeout came after ${response.ms} ms`);
    assert.ok(response.ms < GENERATION_TIMEOUT_MS + 3000, `the timeout took ${response.ms} ms with generation_timeout_ms = ${GENERATION_TIMEOUT_MS}`);
  });
});

describe('request validation', { timeout: 30_000 }, () => {
  const badRequests = [
    { name: 'missing prompt', path: '/generate-image?width=512', param: 'prompt' },
    { name: 'empty prompt', path: '/generate-image?prompt=', param: 'prompt' },
    { name: 'unknown parameter', path: '/generate-image?prompt=x&colour=red', param: 'colour' },
    { name: 'repeated parameter', path: '/generate-image?prompt=x&prompt=y', param: 'prompt' },
    { name: 'width below range', path: '/generate-image?prompt=x&width=10', param: 'width' },
    { name: 'height above range', path: '/generate-image?prompt=x&height=5000', param: 'height' },
    { name: 'width not a number', path: '/generate-image?prompt=x&width=wide', param: 'width' },
    { name: 'newline in prompt', path: '/generate-image?prompt=line%0Abreak', param: 'prompt' },
    { name: 'C1 control in prompt', path: '/generate-image?prompt=a%C2%85b', param: 'prompt' },
    { name: 'invalid UTF-8', path: '/generate-image?prompt=%FF', param: 'prompt' },
    { name: 'overlong UTF-8', path: '/generate-image?prompt=%C0%AF', param: 'prompt' },
    { name: 'prompt over 4000 characters', path: `/generate-image?prompt=${'a'.repeat(4001)}`, param: 'prompt' },
    { name: 'size not WIDTHxHEIGHT', path: '/generate-image?prompt=x&size=big', param: 'size' },
    { name: 'size with width', path: '/generate-image?prompt=x&size=512x512&width=512', param: 'size' },
    { name: 'size unsupported by gpt-image-2', path: '/generate-image?prompt=x&size=1000x1000', param: 'size' },
    { name: 'size unsupported by dall-e-3', path: '/generate-image?prompt=x&size=512x512&template=dalle3', param: 'size' },
    { name: 'seed not a number', path: '/generate-image?prompt=x&seed=lucky', param: 'seed' },
    { name: 'template on template route', path: '/v1/images/default?prompt=x&template=dalle3', param: 'template' },
  ];
  for (const { name, path, param } of badRequests) {
    test(`rejects ${name}`, async () => {
      const error = assertJsonError(await gateway.get(path), 400);
      assert.equal(error.code, 'invalid_argument');
      assert.equal(error.param, param);
      assert.equal(await generations(), 0);
    });
  }

  // 2000 CJK characters are 6000 bytes of UTF-8, within limits.max_prompt_chars (4000) and
  // max_prompt_bytes (16000); percent-encoded they make an 18 KB request line, which the
  // default server.header_limit_bytes must allow.
  test('long CJK prompt accepted', async () => {
    const response = await gateway.get(`/generate-image?prompt=${encodeURIComponent('猫'.repeat(2000))}`);
    assert.equal(response.status, 200, response.body.toString().slice(0, 200));
  });

  // A malformed percent-escape is rejected with the parameter named.
  for (const [name, path] of [['malformed escape', '/generate-image?prompt=%zz'], ['truncated escape', '/generate-image?prompt=50%']]) {
    test(`rejects ${name}`, async () => {
      const error = assertJsonError(await gateway.get(path), 400);
      assert.equal(error.code, 'invalid_argument');
      assert.equal(await generations(), 0);
    });

    test(`${name} names param`, async () => {
      const error = assertJsonError(await gateway.get(path), 400);
      assert.equal(error.param, 'prompt');
    });
  }

  for (const path of ['/generate-image?prompt=x&template=nope', '/v1/images/nope?prompt=x']) {
    test(`unknown template ${path.split('?')[0]}`, async () => {
      const error = assertJsonError(await gateway.get(path), 404);
      assert.equal(error.code, 'not_found');
      assert.equal(error.param, 'template');
      assert.equal(await generations(), 0);
    });
  }

  test('unknown route returns 404', async () => {
    const error = assertJsonError(await gateway.get('/no/such/route'), 404);
    assert.equal(error.code, 'not_found');
  });

  const wrongMethods = [
    { method: 'POST', path: '/generate-image?prompt=x', allow: 'GET, HEAD' },
    { method: 'PUT', path: '/v1/images/default?prompt=x', allow: 'GET, HEAD' },
    { method: 'DELETE', path: `/images/${'a'.repeat(64)}.png`, allow: 'GET, HEAD', route: '/images/KEY.png' },
    { method: 'GET', path: '/v1/images/generations', allow: 'POST' },
    { method: 'POST', path: '/healthz', allow: 'GET, HEAD' },
  ];
  for (const { method, path, allow, route = path.split('?')[0] } of wrongMethods) {
    test(`${method} ${route} gives 405`, async () => {
      const response = await gateway.get(path, { method });
      const error = assertJsonError(response, 405);
      assert.equal(error.code, 'method_not_allowed');
      assert.equal(response.headers.allow, allow);
      assert.equal(await generations(), 0);
    });
  }
});
