// Delivery mode "redirect" and `pixelgate cache purge` with S3 storage: s3rver behind the
// signature-checking proxy, read back with @aws-sdk/client-s3. A presigned Location must be
// accepted by the store, a tampered one rejected, errors never redirected, and a purge by
// template must remove exactly that template's objects.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';

import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';

import { PIXELGATE_BIN, openaiBackend, request, startFake, startPixelgate, toToml } from './lib/harness.mjs';
import { startS3rver } from './lib/services.mjs';

const run = promisify(execFile);
const PREFIX = 'pics/';

let dir;
let fake;
let s3;
let s3client;
let env;

function configFor(extraStorage) {
  return {
    server: { port: 0, threads: 2 },
    storage: {
      kind: 's3',
      path: join(dir, 'local'),
      s3: { endpoint: s3.endpoint, bucket: s3.bucket, region: 'us-east-1', prefix: PREFIX },
      ...extraStorage,
    },
    logging: { level: 'info', format: 'json' },
    security: { mode: 'open' },
    rate_limits: { requests_per_second: 0, generations_per_minute: 0 },
    backends: { openai: openaiBackend(fake, { model: 'gpt-image-2' }) },
    templates: {
      hero: { prompt: 'a wide hero banner of {prompt}', version: '1' },
      icon: { prompt: 'a flat icon of {prompt}' },
    },
  };
}

async function startWith(name, extraStorage) {
  const path = join(dir, `${name}.toml`);
  await writeFile(path, toToml(configFor(extraStorage)));
  const server = await startPixelgate(path, { env });
  server.configPath = path;
  return server;
}

async function bucketNames() {
  const listed = await s3client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: PREFIX }));
  return (listed.Contents ?? []).map((entry) => entry.Key).sort();
}

async function bucketBytes(name) {
  const object = await s3client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: name }));
  return Buffer.from(await object.Body.transformToByteArray());
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pixelgate-delivery-'));
  fake = await startFake();
  s3 = await startS3rver();
  env = { AWS_ACCESS_KEY_ID: s3.credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey };
  s3client = new S3Client({ endpoint: s3.endpoint, region: 'us-east-1', forcePathStyle: true, credentials: s3.credentials });
});

after(async () => {
  s3client?.destroy();
  await s3?.close();
  await fake?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('redirect to presigned URLs', { timeout: 60_000 }, () => {
  let server;
  before(async () => {
    server = await startWith('presigned', { delivery: 'redirect', presign_seconds: 600 });
  });
  after(async () => {
    await server?.stop();
  });

  test('presigned redirect is accepted by the store', async () => {
    const response = await server.get('/generate-image?prompt=a+redirected+crane');
    assert.equal(response.status, 302);
    assert.equal(response.body.length, 0);
    assert.equal(response.headers['cache-control'], 'public, max-age=300');
    const key = response.headers['x-pixelgate-key'];
    assert.match(key, /^[0-9a-f]{64}$/);

    const location = new URL(response.headers.location);
    assert.equal(location.origin, s3.endpoint);
    assert.equal(location.pathname, `/${s3.bucket}/${PREFIX}${key}`);
    assert.equal(location.searchParams.get('X-Amz-Algorithm'), 'AWS4-HMAC-SHA256');
    assert.equal(location.searchParams.get('X-Amz-Expires'), '600');

    const before = (await s3.proxy.stats()).signature_failures;
    const fetched = await request(response.headers.location);
    assert.equal(fetched.status, 200, String(fetched.body));
    assert.ok(fetched.body.equals(await bucketBytes(`${PREFIX}${key}`)));
    assert.equal((await s3.proxy.stats()).signature_failures, before);
  });

  test('tampered presigned URL is rejected', async () => {
    const response = await server.get('/generate-image?prompt=a+redirected+crane');
    assert.equal(response.status, 302);
    const tampered = response.headers.location.replace('X-Amz-Expires=600', 'X-Amz-Expires=604800');
    assert.notEqual(tampered, response.headers.location);
    const fetched = await request(tampered);
    assert.equal(fetched.status, 403);
  });

  test('second request redirects without generating', async () => {
    const path = '/generate-image?prompt=a+second+redirect';
    const first = await server.get(path);
    const generations = (await fake.stats()).generations;
    const second = await server.get(path);
    assert.equal(second.status, 302);
    assert.equal(second.headers['x-pixelgate-key'], first.headers['x-pixelgate-key']);
    assert.equal((await fake.stats()).generations, generations);
  });

  test('stored image route redirects too', async () => {
    const generated = await server.get('/generate-image?prompt=a+permanent+link');
    const key = generated.headers['x-pixelgate-key'];
    const response = await server.get(`/images/${key}.png`);
    assert.equal(response.status, 302);
    assert.equal(new URL(response.headers.location).pathname, `/${s3.bucket}/${PREFIX}${key}`);
  });

  test('errors are never redirected', async () => {
    const response = await server.get('/generate-image?prompt=x&width=3');
    assert.equal(response.status, 400);
    assert.equal(response.headers.location, undefined);
    assert.equal(response.headers['cache-control'], 'no-store');

    const missing = await server.get(`/images/${'0'.repeat(64)}`);
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.location, undefined);
  });
});

describe('redirect to a CDN base URL', { timeout: 60_000 }, () => {
  let server;
  before(async () => {
    // A loopback address replaces the CDN host. Nothing is fetched from it.
    server = await startWith('cdn', { delivery: 'redirect', redirect_base_url: 'http://127.0.0.1:9/cdn' });
  });
  after(async () => {
    await server?.stop();
  });

  test('Location is base URL plus object name', async () => {
    const response = await server.get('/generate-image?prompt=a+cdn+hosted+kite');
    assert.equal(response.status, 302);
    const key = response.headers['x-pixelgate-key'];
    assert.equal(response.headers.location, `http://127.0.0.1:9/cdn/${PREFIX}${key}`);
    assert.equal(response.headers['cache-control'], 'public, max-age=31536000, immutable');
  });
});

describe('cache purge on S3', { timeout: 60_000 }, () => {
  let server;
  before(async () => {
    server = await startWith('purge', {});
  });
  after(async () => {
    await server?.stop();
  });

  test('purge by template removes only its images', async () => {
    const heroKeys = [];
    for (const prompt of ['a+valley', 'a+harbour']) {
      const response = await server.get(`/v1/images/hero?prompt=${prompt}`);
      assert.equal(response.status, 200);
      heroKeys.push(response.headers['x-pixelgate-key']);
    }
    const icon = await server.get('/v1/images/icon?prompt=a+gear');
    assert.equal(icon.status, 200);
    const iconKey = icon.headers['x-pixelgate-key'];
    const purge = (...args) => run(PIXELGATE_BIN, ['cache', 'purge', ...args, '--config', server.configPath], { env: { ...process.env, ...env }, timeout: 30_000 });

    const wrongVersion = await purge('--template', 'hero', '--version', '2');
    assert.match(wrongVersion.stdout, /removed 0 image/);

    const dryRun = await purge('--template', 'hero', '--dry-run', 'yes');
    assert.match(dryRun.stdout, /would remove 2 image/);
    for (const key of heroKeys) assert.ok((await bucketNames()).includes(`${PREFIX}${key}`));

    const { stdout } = await purge('--template', 'hero', '--version', '1');
    assert.match(stdout, /removed 2 image/);
    assert.match(stdout, /template:hero/);
    for (const key of heroKeys) assert.match(stdout, new RegExp(`/images/${key}\\.png`));

    const names = await bucketNames();
    for (const key of heroKeys) {
      assert.ok(!names.includes(`${PREFIX}${key}`), `${key} must be gone`);
      assert.ok(!names.includes(`${PREFIX}${key}.meta.json`), `${key}'s metadata must be gone`);
    }
    assert.ok(names.includes(`${PREFIX}${iconKey}`), 'the other template keeps its image');
    assert.ok(names.includes(`${PREFIX}${iconKey}.meta.json`));
  });

  test('purge rejects a malformed key', async () => {
    await assert.rejects(
      run(PIXELGATE_BIN, ['cache', 'purge', '--key', 'not-a-key', '--config', server.configPath], { env: { ...process.env, ...env }, timeout: 30_000 }),
      (error) => error.code === 2 && /not an image key/.test(error.stderr),
    );
  });
});
