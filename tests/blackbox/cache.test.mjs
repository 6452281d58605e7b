// Cache behaviour of GET /generate-image against the fake OpenAI server (model gpt-image-2):
// hits and misses, URL forms that must share a cache key, seeds, digests, persistence
// across a restart, and GET /images/<key>.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';

import { Gateway, jsonBody, openaiBackend, reprDigest, sha256Hex } from './lib/harness.mjs';

const MODEL = 'gpt-image-2';
let gateway;

before(async () => {
  gateway = await Gateway.start((fake) => ({ backends: { openai: openaiBackend(fake, { model: MODEL }) } }));
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

async function lastPrompt() {
  return (await gateway.fake.stats()).last_request.body.prompt;
}

describe('cache', { timeout: 60_000 }, () => {
  test('miss then hit', async () => {
    const first = await gateway.get('/generate-image?prompt=a+lighthouse+at+dusk');
    assert.equal(first.status, 200);
    assert.equal(first.headers['x-pixelgate-cache'], 'miss');
    assert.equal(first.headers['content-type'], 'image/png');
    assert.match(first.headers['server-timing'], /generate;dur=[\d.]+/);
    assert.match(first.headers['server-timing'], /total;dur=[\d.]+$/);

    const second = await gateway.get('/generate-image?prompt=a+lighthouse+at+dusk');
    assert.equal(second.status, 200);
    assert.equal(second.headers['x-pixelgate-cache'], 'hit');
    assert.ok(second.body.equals(first.body), 'the hit has the same bytes');
    assert.equal(second.headers.etag, first.headers.etag);
    assert.equal(second.headers.etag, `"${first.headers['x-pixelgate-key']}"`);
    assert.equal(await generations(), 1);
  });

  // Each pair of paths must resolve to the same cache key, so the second request is a hit.
  const equivalent = [
    { name: 'parameter order', a: '/generate-image?prompt=order+check&width=512&height=768', b: '/generate-image?height=768&width=512&prompt=order+check', prompt: 'order check' },
    { name: 'plus and %20', a: '/generate-image?prompt=plus+and+space', b: '/generate-image?prompt=plus%20and%20space', prompt: 'plus and space' },
    { name: 'emoji hex case', a: '/generate-image?prompt=%F0%9F%8E%A8+palette', b: '/generate-image?prompt=%f0%9f%8e%a8%20palette', prompt: '\u{1F3A8} palette' },
    { name: 'CJK hex case', a: '/generate-image?prompt=%E7%8C%AB%E3%81%A8%E7%8A%AC', b: '/generate-image?prompt=%e7%8c%ab%e3%81%a8%e7%8a%ac', prompt: '猫と犬' },
    { name: 'size and width/height', a: '/generate-image?prompt=size+forms&size=512x768', b: '/generate-image?prompt=size+forms&width=512&height=768', prompt: 'size forms' },
    { name: 'default template named', a: '/generate-image?prompt=template+named', b: '/generate-image?prompt=template+named&template=default', prompt: 'template named' },
    { name: 'style alias of template', a: '/generate-image?prompt=style+alias&template=default', b: '/generate-image?style=default&prompt=style+alias', prompt: 'style alias' },
    { name: 'empty pairs ignored', a: '/generate-image?prompt=empty+pairs', b: '/generate-image?&prompt=empty+pairs&&', prompt: 'empty pairs' },
    { name: 'encoded parameter name', a: '/generate-image?prompt=encoded+name', b: '/generate-image?pr%6Fmpt=encoded+name', prompt: 'encoded name' },
    { name: 'template route', a: '/generate-image?prompt=template+route', b: '/v1/images/default?prompt=template+route', prompt: 'template route' },
    { name: 'default size spelled out', a: '/generate-image?prompt=default+size', b: '/generate-image?prompt=default+size&width=1024&height=1024', prompt: 'default size' },
  ];
  for (const { name, a, b, prompt } of equivalent) {
    test(`equivalent URLs: ${name}`, async () => {
      const first = await gateway.get(a);
      assert.equal(first.status, 200, first.body.toString());
      assert.equal(first.headers['x-pixelgate-cache'], 'miss');
      assert.equal(await lastPrompt(), prompt, 'the fake received the decoded prompt');

      const second = await gateway.get(b);
      assert.equal(second.status, 200, second.body.toString());
      assert.equal(second.headers['x-pixelgate-key'], first.headers['x-pixelgate-key']);
      assert.equal(second.headers['x-pixelgate-cache'], 'hit');
      assert.ok(second.body.equals(first.body), 'both URLs serve the same bytes');
      assert.equal(await generations(), 1);
    });
  }

  test('%25 decodes to percent sign', async () => {
    const response = await gateway.get('/generate-image?prompt=80%25+off');
    assert.equal(response.status, 200);
    assert.equal(await lastPrompt(), '80% off');
  });

  test('%2B reaches the fake as plus', async () => {
    const response = await gateway.get('/generate-image?prompt=1%2B1+equals+2');
    assert.equal(response.status, 200);
    const prompt = await lastPrompt();
    assert.ok(Buffer.from(prompt, 'utf8').equals(Buffer.from('1+1 equals 2', 'utf8')), `the fake received ${JSON.stringify(prompt)}`);
  });

  test('%26 and %3D stay in prompt', async () => {
    const response = await gateway.get('/generate-image?prompt=salt+%26+pepper+%3D+taste');
    assert.equal(response.status, 200);
    assert.equal(await lastPrompt(), 'salt & pepper = taste');
  });

  test('%2520 decodes once', async () => {
    const response = await gateway.get('/generate-image?prompt=literal%2520escape');
    assert.equal(response.status, 200);
    assert.equal(await lastPrompt(), 'literal%20escape');
  });

  test('%2B and + differ', async () => {
    const plus = await gateway.get('/generate-image?prompt=c%2B%2B+code');
    const spaces = await gateway.get('/generate-image?prompt=c+++code');
    assert.equal(plus.status, 200);
    assert.equal(spaces.status, 200);
    assert.notEqual(plus.headers['x-pixelgate-key'], spaces.headers['x-pixelgate-key']);
  });

  test('seed=random bypasses the cache', async () => {
    const first = await gateway.get('/generate-image?prompt=random+seed+check&seed=random');
    const second = await gateway.get('/generate-image?prompt=random+seed+check&seed=random');
    assert.equal(first.status, 200);
    assert.equal(second.status, 200);
    assert.equal(first.headers['cache-control'], 'no-store');
    assert.equal(second.headers['cache-control'], 'no-store');
    assert.notEqual(first.headers['x-pixelgate-key'], second.headers['x-pixelgate-key']);
    assert.equal(await generations(), 2);

    const deterministic = await gateway.get('/generate-image?prompt=random+seed+check');
    assert.equal(deterministic.status, 200);
    assert.equal(deterministic.headers['x-pixelgate-cache'], 'miss', 'random seeds do not fill the deterministic key');
    assert.equal(await generations(), 3);
  });

  test('explicit seed changes the key', async () => {
    const implicit = await gateway.get('/generate-image?prompt=seed+key+check');
    const seeded = await gateway.get('/generate-image?prompt=seed+key+check&seed=42');
    assert.equal(implicit.status, 200);
    assert.equal(seeded.status, 200);
    assert.notEqual(seeded.headers['x-pixelgate-key'], implicit.headers['x-pixelgate-key']);
    assert.equal(seeded.headers['x-pixelgate-cache'], 'miss');

    const again = await gateway.get('/generate-image?prompt=seed+key+check&seed=42');
    assert.equal(again.headers['x-pixelgate-cache'], 'hit');
    assert.equal(again.headers['x-pixelgate-key'], seeded.headers['x-pixelgate-key']);
  });

  test('body matches expected sha256', async () => {
    const response = await gateway.get('/generate-image?prompt=digest+check&size=1536x864');
    assert.equal(response.status, 200);
    const expected = await gateway.fake.expectedSha256({ model: MODEL, prompt: 'digest check', size: '1536x864' });
    assert.equal(sha256Hex(response.body), expected);
    assert.equal(response.headers['repr-digest'], reprDigest(response.body));
    assert.equal(Number(response.headers['content-length']), response.body.length);
  });

  test('restart serves hit from disk', async () => {
    const first = await gateway.get('/generate-image?prompt=survives+a+restart');
    assert.equal(first.status, 200);
    assert.equal(first.headers['x-pixelgate-cache'], 'miss');

    await gateway.restart();
    const second = await gateway.get('/generate-image?prompt=survives+a+restart');
    assert.equal(second.status, 200);
    assert.equal(second.headers['x-pixelgate-cache'], 'hit');
    assert.ok(second.body.equals(first.body), 'the stored bytes are served');
    assert.equal(second.headers['repr-digest'], reprDigest(first.body));
    assert.equal(await generations(), 1);
  });

  test('stored image by key', async () => {
    const generated = await gateway.get('/generate-image?prompt=fetch+by+key');
    assert.equal(generated.status, 200);
    const key = generated.headers['x-pixelgate-key'];
    assert.match(key, /^[0-9a-f]{64}$/);

    for (const path of [`/images/${key}.png`, `/images/${key}`]) {
      const stored = await gateway.get(path);
      assert.equal(stored.status, 200, path);
      assert.ok(stored.body.equals(generated.body), `${path} serves the same bytes`);
      assert.equal(stored.headers['content-type'], 'image/png', path);
      assert.equal(stored.headers.etag, generated.headers.etag, path);
      assert.equal(stored.headers['repr-digest'], reprDigest(generated.body), path);
      assert.equal(stored.headers['x-pixelgate-key'], key, path);
      assert.equal(stored.headers['x-pixelgate-warning'], undefined, `${path}: a model drew this image`);
    }
    assert.equal(await generations(), 1);
  });

  test('unknown key returns 404', async () => {
    const response = await gateway.get(`/images/${'0'.repeat(64)}.png`);
    assert.equal(response.status, 404);
    assert.match(response.headers['content-type'], /^application\/json/);
    assert.equal(response.headers['cache-control'], 'no-store');
    assert.equal(jsonBody(response).error.code, 'not_found');
    assert.equal(await generations(), 0);
  });
});
