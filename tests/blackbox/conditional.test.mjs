// Conditional requests (If-None-Match) and HEAD on /generate-image and /images/<key>.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { Gateway, openaiBackend, RawConnection } from './lib/harness.mjs';

const IMMUTABLE = 'public, max-age=31536000, immutable';
const GENERATE_PATH = '/generate-image?prompt=conditional+requests';
let gateway;
let original;
let key;
let routes;

before(async () => {
  gateway = await Gateway.start((fake) => ({ backends: { openai: openaiBackend(fake) } }));
  original = await gateway.get(GENERATE_PATH);
  assert.equal(original.status, 200, original.body.toString());
  key = original.headers['x-pixelgate-key'];
  routes = { generate: GENERATE_PATH, stored: `/images/${key}.png` };
});

after(async () => {
  await gateway?.close();
});

describe('conditional requests', { timeout: 30_000 }, () => {
  const matching = {
    'strong tag': (k) => `"${k}"`,
    'weak tag': (k) => `W/"${k}"`,
    'tag in a list': (k) => `"0123", "${k}", "4567"`,
    'weak tag in a list': (k) => `"0123" ,W/"${k}"`,
    'star': () => '*',
  };
  const notMatching = {
    'other tag': () => '"0123456789abcdef"',
    'unquoted tag': (k) => k,
    'tag prefix': (k) => `"${k.slice(0, 32)}"`,
  };

  for (const route of ['generate', 'stored']) {
    for (const [name, header] of Object.entries(matching)) {
      test(`${route}: ${name} gives 304`, async () => {
        const response = await gateway.get(routes[route], { headers: { 'if-none-match': header(key) } });
        assert.equal(response.status, 304);
        assert.equal(response.headers.etag, `"${key}"`);
        assert.equal(response.headers['cache-control'], IMMUTABLE);
        assert.equal(response.body.length, 0);
      });
    }

    for (const [name, header] of Object.entries(notMatching)) {
      test(`${route}: ${name} gives 200`, async () => {
        const response = await gateway.get(routes[route], { headers: { 'if-none-match': header(key) } });
        assert.equal(response.status, 200);
        assert.ok(response.body.equals(original.body));
        assert.equal(response.headers.etag, `"${key}"`);
      });
    }

    // RFC 9110 section 8.6: a 304 may carry Content-Length only when it equals the length of
    // the 200 body. A raw socket shows the header exactly as sent.
    test(`${route}: 304 omits Content-Length`, async () => {
      const connection = await RawConnection.open(gateway.port);
      try {
        await connection.write(`GET ${routes[route]} HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-None-Match: "${key}"\r\nConnection: close\r\n\r\n`);
        const response = await connection.readResponse();
        assert.equal(response.status, 304);
        assert.ok(
          !('content-length' in response.headers) || Number(response.headers['content-length']) === original.body.length,
          `Content-Length: ${response.headers['content-length']}`,
        );
      } finally {
        connection.destroy();
      }
    });

    test(`${route}: HEAD matches GET`, async () => {
      const head = await gateway.get(routes[route], { method: 'HEAD' });
      assert.equal(head.status, 200);
      assert.equal(head.body.length, 0);
      assert.equal(Number(head.headers['content-length']), original.body.length);
      assert.equal(head.headers.etag, original.headers.etag);
      assert.equal(head.headers['content-type'], 'image/png');
      assert.equal(head.headers['repr-digest'], original.headers['repr-digest']);
    });

    test(`${route}: 200 is immutable`, async () => {
      const response = await gateway.get(routes[route]);
      assert.equal(response.status, 200);
      assert.equal(response.headers['cache-control'], IMMUTABLE);
    });
  }

  test('star needs no generation', async () => {
    await gateway.fake.reset();
    const response = await gateway.get('/generate-image?prompt=never+generated', { headers: { 'if-none-match': '*' } });
    assert.equal(response.status, 304);
    assert.match(response.headers.etag, /^"[0-9a-f]{64}"$/);
    assert.equal((await gateway.fake.stats()).generations, 0);
  });
});
