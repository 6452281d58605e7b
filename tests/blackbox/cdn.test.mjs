// pixelgate behind a real shared cache: Debian's Varnish running deploy/varnish/pixelgate.vcl.
// A repeated image request must be a Varnish hit that never reaches pixelgate. Errors must
// never be kept, and responses that needed an API key must not be shared. After
// `pixelgate cache purge` and a surrogate-key ban, Varnish must fetch from pixelgate again.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, beforeEach, describe, test } from 'node:test';

import { Gateway, PIXELGATE_BIN, openaiBackend, sha256Hex, sleep } from './lib/harness.mjs';
import { startVarnish } from './lib/varnish.mjs';

const run = promisify(execFile);
const API_KEY = 'pg_cdnTestKeyAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';

let gateway;
let varnish;

before(async () => {
  gateway = await Gateway.start((fake) => ({
    backends: { openai: openaiBackend(fake, { model: 'gpt-image-2' }) },
    // Raw prompts need a key; the "badge" template is public.
    security: { mode: 'templates', public_templates: ['badge'] },
    templates: { badge: { prompt: 'a round badge showing {prompt}' } },
    api_keys: { site: { sha256: sha256Hex(Buffer.from(API_KEY)), scopes: ['generate'] } },
  }));
  varnish = await startVarnish(gateway.port);
});

after(async () => {
  await varnish?.stop();
  await gateway?.close();
});

beforeEach(async () => {
  await gateway.fake.reset();
});

/** Access-log lines pixelgate wrote for `path` so far. */
function pixelgateRequests(path) {
  return gateway.pixelgate.logs().filter((line) => line.logger === 'access' && line.path === path).length;
}

async function settledRequests(path) {
  // The access line is written right after the response; give it a moment.
  await sleep(100);
  return pixelgateRequests(path);
}

describe('Varnish in front of pixelgate', { timeout: 120_000 }, () => {
  test('second request is a Varnish hit', async () => {
    const path = '/v1/images/badge?prompt=a+fox';
    const before = await settledRequests('/v1/images/badge');
    const first = await varnish.get(path);
    assert.equal(first.status, 200);
    assert.equal(first.headers['x-cache'], 'MISS');
    assert.equal(first.headers['x-pixelgate-cache'], 'miss');
    assert.equal(first.headers['cache-control'], 'public, max-age=31536000, immutable');
    assert.equal(first.headers['surrogate-key'], undefined, 'tags stay inside the CDN');

    const second = await varnish.get(path);
    assert.equal(second.status, 200);
    assert.equal(second.headers['x-cache'], 'HIT');
    assert.ok(second.body.equals(first.body));
    assert.equal(second.headers.etag, first.headers.etag);
    assert.equal(await settledRequests('/v1/images/badge'), before + 1, 'pixelgate saw only the first request');
    assert.equal((await gateway.fake.stats()).generations, 1);

    // A site cookie does not turn the request into a pass.
    const withCookie = await varnish.get(path, { headers: { cookie: 'session=abc' } });
    assert.equal(withCookie.headers['x-cache'], 'HIT');
    assert.equal(await settledRequests('/v1/images/badge'), before + 1);
  });

  test('reordered parameters share an object', async () => {
    const first = await varnish.get('/v1/images/badge?prompt=an+owl&width=512&height=512');
    assert.equal(first.status, 200);
    const second = await varnish.get('/v1/images/badge?height=512&prompt=an+owl&width=512');
    assert.equal(second.headers['x-cache'], 'HIT');
    assert.ok(second.body.equals(first.body));
  });

  test('revalidation gets a complete 304', async () => {
    const first = await varnish.get('/v1/images/badge?prompt=a+heron');
    const revalidated = await varnish.get('/v1/images/badge?prompt=a+heron', {
      headers: { 'if-none-match': first.headers.etag },
    });
    assert.equal(revalidated.status, 304);
    assert.equal(revalidated.headers.etag, first.headers.etag);
    assert.equal(revalidated.headers['cache-control'], 'public, max-age=31536000, immutable');
    assert.equal(revalidated.body.length, 0);
  });

  test('backend error is not cached', async () => {
    await gateway.fake.control({ script: [{ status: 500 }, { status: 500 }, { status: 500 }, { status: 500 }] });
    const path = '/v1/images/badge?prompt=a+broken+lamp';
    const failed = await varnish.get(path);
    assert.ok(failed.status >= 500, `expected a 5xx, got ${failed.status}`);
    assert.equal(failed.headers['cache-control'], 'no-store');

    await gateway.fake.control({ script: [] });
    const before = await settledRequests('/v1/images/badge');
    const retried = await varnish.get(path);
    assert.equal(retried.status, 200);
    assert.equal(retried.headers['x-cache'], 'MISS');
    assert.equal(await settledRequests('/v1/images/badge'), before + 1);
  });

  test('client error is not cached', async () => {
    const path = '/v1/images/badge?prompt=a+cat&width=5';
    const before = await settledRequests('/v1/images/badge');
    for (let i = 0; i < 2; i += 1) {
      const response = await varnish.get(path);
      assert.equal(response.status, 400);
      assert.equal(response.headers['cache-control'], 'no-store');
      assert.equal(response.headers['x-cache'], 'MISS');
    }
    assert.equal(await settledRequests('/v1/images/badge'), before + 2);
  });

  test('API-key response stays private', async () => {
    const path = '/generate-image?prompt=a+private+logo';
    const keyed = await varnish.get(path, { headers: { authorization: `Bearer ${API_KEY}` } });
    assert.equal(keyed.status, 200);
    assert.equal(keyed.headers['cache-control'], 'private, max-age=31536000, immutable');

    const anonymous = await varnish.get(path);
    assert.equal(anonymous.status, 403, 'without the key the request must reach pixelgate and be refused');
    assert.equal(anonymous.headers['x-cache'], 'MISS');
  });

  test('purge and ban refetch the image', async () => {
    const path = '/v1/images/badge?prompt=a+purged+moth';
    const first = await varnish.get(path);
    assert.equal(first.status, 200);
    const key = first.headers['x-pixelgate-key'];
    assert.equal((await varnish.get(path)).headers['x-cache'], 'HIT');

    const { stdout } = await run(PIXELGATE_BIN, ['cache', 'purge', '--key', key, '--config', gateway.configPath], {
      timeout: 30_000,
    });
    assert.match(stdout, /removed 1 image/);
    assert.match(stdout, new RegExp(`/images/${key}\\.png`));
    assert.match(stdout, new RegExp(`key:${key}`));

    const ban = await varnish.get('/', { method: 'BAN', headers: { 'x-purge-surrogate-key': `key:${key}` } });
    assert.equal(ban.status, 200, `BAN failed: ${ban.body}`);

    const objectPath = join(gateway.storagePath, 'objects', key.slice(0, 2), key.slice(2, 4), key);
    await assert.rejects(stat(objectPath), { code: 'ENOENT' }, 'the image must be gone from the store');

    const before = await settledRequests('/v1/images/badge');
    const after = await varnish.get(path);
    assert.equal(after.status, 200);
    assert.equal(after.headers['x-cache'], 'MISS', 'the banned object must not be served');
    assert.equal(await settledRequests('/v1/images/badge'), before + 1, 'the request reached pixelgate again');
    assert.ok(after.body.equals(first.body));
  });
});
