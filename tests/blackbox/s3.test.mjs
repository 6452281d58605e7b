// pixelgate with [storage] kind = "s3" against s3rver 3.7, a real S3-compatible server on
// loopback. Every request passes through tests/fakes/s3-fault-proxy.mjs, which verifies its
// SigV4 signature (s3rver 3.7 checks only the access key id), injects S3 errors and emulates
// AWS's conditional PUT. The AWS SDK for JavaScript (@aws-sdk/client-s3) reads and writes
// the bucket through the same proxy as an independent client.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { promisify } from 'node:util';

import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';

import { renderImagePng } from '../fakes/openai-fake.mjs';
import { startS3FaultProxy } from '../fakes/s3-fault-proxy.mjs';
import {
  API_KEY_ENV, HOST, PIXELGATE_BIN, TEST_API_KEY, checkCompletePng, openaiBackend, request, sha256Hex, startFake,
  startPixelgate, toToml, waitFor,
} from './lib/harness.mjs';

const execFileAsync = promisify(execFile);

const BUCKET = 'pixelgate-images';
// s3rver's built-in account. The proxy also requires the session token, which s3rver ignores.
const ACCESS_KEY = 'S3RVER';
const SECRET_KEY = 'S3RVER';
const SESSION_TOKEN = 'session/token+x=';
const S3_ENV = {
  AWS_ACCESS_KEY_ID: ACCESS_KEY,
  AWS_SECRET_ACCESS_KEY: SECRET_KEY,
  AWS_SESSION_TOKEN: SESSION_TOKEN,
  AWS_REGION: 'us-east-1',
  AWS_DEFAULT_REGION: 'us-east-1',
};

let dir;
let s3server;
let proxy;
let fake;
let client;
const gateways = [];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pixelgate-s3-'));
  // serviceEndpoint "localhost" lets s3rver read the bucket from a Host of <bucket>.s3.localhost.
  s3server = new S3rver({
    address: HOST, port: 0, silent: true, directory: join(dir, 's3rver'), serviceEndpoint: 'localhost',
    configureBuckets: [{ name: BUCKET }],
  });
  const { port: s3port } = await s3server.run();
  proxy = await startS3FaultProxy({ targetPort: s3port, accessKey: ACCESS_KEY, secretKey: SECRET_KEY, sessionToken: SESSION_TOKEN });
  fake = await startFake();
  client = new S3Client({
    endpoint: proxy.baseUrl,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY, sessionToken: SESSION_TOKEN },
    // s3rver 3.7 predates the flexible checksums that newer SDKs send by default.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 1,
  });
});

after(async () => {
  for (const gateway of gateways) await gateway.stop();
  client?.destroy();
  await fake?.stop();
  await proxy?.close();
  await s3server?.close().catch(() => {});
  if (dir) await rm(dir, { recursive: true, force: true });
});

beforeEach(async () => {
  await fake.reset();
  await proxy.reset();
});

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

function tomlSection(name, table) {
  const lines = Object.entries(table).map(([key, value]) => `${key} = ${typeof value === 'string' ? JSON.stringify(value) : String(value)}`);
  return `[${name}]\n${lines.join('\n')}\n`;
}

/** Writes a configuration named `name` and starts pixelgate on it. `s3` overrides [storage.s3]. */
async function startGateway(name, s3 = {}, { storage = {}, env = {} } = {}) {
  const configPath = join(dir, `${name}.toml`);
  const s3Table = {
    endpoint: proxy.baseUrl, bucket: BUCKET, region: 'us-east-1', addressing: 'path', max_attempts: 3,
    connect_timeout_ms: 2000, timeout_ms: 10_000, ...s3,
  };
  const text = toToml({
    server: { port: 0, threads: 2 },
    // No hot cache, so that every hit is read from the bucket.
    storage: { kind: 's3', path: join(dir, `${name}-state`), hot_cache_bytes: 0, ...storage },
    logging: { level: 'debug', format: 'json' },
    security: { mode: 'open' },
    rate_limits: { requests_per_second: 0, generations_per_minute: 0 },
    backends: { openai: openaiBackend(fake) },
  }) + tomlSection('storage.s3', s3Table);
  await writeFile(configPath, text);
  // NOTE: with kind = "s3" nothing creates storage.path, where the budget ledger lives by
  // default, and start-up fails without it; the test creates it.
  await mkdir(join(dir, `${name}-state`), { recursive: true });
  const gateway = await startPixelgate(configPath, { env: { ...S3_ENV, ...env } });
  gateway.configPath = configPath;
  gateway.prefix = s3Table.prefix ?? '';
  gateways.push(gateway);
  return gateway;
}

/** Runs a pixelgate command with `gateway`'s configuration and returns its stdout. */
async function runPixelgate(gateway, args) {
  const env = { ...process.env, ...S3_ENV, [API_KEY_ENV]: TEST_API_KEY };
  const { stdout } = await execFileAsync(PIXELGATE_BIN, [...args, '--config', gateway.configPath], { env, timeout: 20_000 });
  return stdout;
}

/** Returns the image key pixelgate gives `prompt` on the default template, without generating. */
async function keyFor(gateway, prompt) {
  return JSON.parse(await runPixelgate(gateway, ['templates', 'render', 'default', '--prompt', prompt])).key;
}

function generate(gateway, prompt) {
  return gateway.get(`/generate-image?prompt=${encodeURIComponent(prompt)}`);
}

async function getObject(name) {
  const out = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: name }));
  return { body: Buffer.from(await out.Body.transformToByteArray()), contentType: out.ContentType, metadata: out.Metadata };
}

async function objectExists(name) {
  try {
    await client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: name }));
    return true;
  } catch (error) {
    if (error.name === 'NotFound' || error.$metadata?.httpStatusCode === 404) return false;
    throw error;
  }
}

async function putImage(name, bytes, metadata) {
  await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: name, Body: bytes, ContentType: 'image/png', Metadata: metadata }));
}

async function putSidecar(name, json) {
  await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: `${name}.meta.json`, Body: JSON.stringify(json), ContentType: 'application/json' }));
}

async function generations() {
  return (await fake.stats()).generations;
}

function logLines(gateway, pattern) {
  return gateway.logs().filter((line) => line.logger === 'pixelgate' && pattern.test(line.msg ?? ''));
}

/** Requests of `method` on the object `name` that the proxy saw, in order. */
async function proxied(method, name) {
  return (await proxy.stats()).log.filter((entry) => entry.method === method && decodeURIComponent(entry.path) === `/${BUCKET}/${name}`);
}

async function assertNoSignatureFailures() {
  const stats = await proxy.stats();
  assert.equal(stats.signature_failures, 0, `the proxy rejected a signature: ${JSON.stringify(stats.last_signature_failure)}`);
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

describe('S3 storage', { timeout: 120_000 }, () => {
  let gateway;
  before(async () => {
    gateway = await startGateway('main', { prefix: 'plain/' });
  });

  test('start-up logs the store without secrets', () => {
    const lines = logLines(gateway, /^storage: using s3:/);
    assert.equal(lines.length, 1);
    assert.equal(lines[0].msg, `storage: using s3:${proxy.baseUrl}/${BUCKET} (path addressing, region us-east-1, prefix "plain/")`);
  });

  test('image, metadata headers and sidecar land in the bucket', async () => {
    const response = await generate(gateway, 'a red kite over dunes');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal(response.headers['x-pixelgate-cache'], 'miss');
    const key = response.headers['x-pixelgate-key'];
    const name = `plain/${key}`;

    const stored = await getObject(name);
    assert.ok(stored.body.equals(response.body), 'the object has the bytes pixelgate served');
    assert.equal(stored.contentType, 'image/png');
    assert.equal(stored.metadata.sha256, sha256Hex(response.body));
    assert.equal(stored.metadata.template, 'default');
    assert.equal(stored.metadata.backend, 'openai');

    const sidecar = JSON.parse((await getObject(`${name}.meta.json`)).body.toString('utf8'));
    assert.equal(sidecar.key, key);
    assert.equal(sidecar.sha256, sha256Hex(response.body));
    assert.equal(sidecar.content_type, 'image/png');
    assert.equal(sidecar.spec.backend, 'openai');
    assert.equal(sidecar.spec.prompt, 'a red kite over dunes');
    if (sidecar.spec.template_version) {
      assert.equal(stored.metadata['template-version'], sidecar.spec.template_version);
    } else {
      assert.equal(stored.metadata['template-version'], undefined);
    }

    // The sidecar goes first, unconditionally; the image last, create-only.
    const puts = (await proxy.stats()).log.filter((entry) => entry.method === 'PUT');
    assert.deepEqual(puts.map((entry) => decodeURIComponent(entry.path)), [`/${BUCKET}/${name}.meta.json`, `/${BUCKET}/${name}`]);
    assert.deepEqual(puts.map((entry) => entry.if_none_match), [null, '*']);

    await proxy.reset();
    const again = await generate(gateway, 'a red kite over dunes');
    assert.equal(again.headers['x-pixelgate-cache'], 'hit');
    assert.ok(again.body.equals(response.body));
    assert.equal(await generations(), 1);
    assert.equal((await proxied('GET', name)).length, 1, 'a hit costs one GET');
    assert.equal((await proxy.stats()).requests.GET, 1, 'and no sidecar read');
    assert.ok(logLines(gateway, new RegExp(`^storage: S3 PUT plain/${key} \\(key ${key}\\), attempt 1 of 3$`)).length >= 1,
      'the upload start is logged at debug level');
    await assertNoSignatureFailures();
  });

  test('object written by the AWS SDK is a cache hit', async () => {
    const prompt = 'a lantern written by another client';
    const key = await keyFor(gateway, prompt);
    const bytes = renderImagePng('sdk-writer', prompt, '1024x1024');
    await putSidecar(`plain/${key}`, { key, sha256: sha256Hex(bytes), content_type: 'image/png', spec: { backend: 'openai', template: 'default' } });
    await putImage(`plain/${key}`, bytes, { sha256: sha256Hex(bytes), template: 'default', backend: 'openai' });

    const response = await generate(gateway, prompt);
    assert.equal(response.status, 200, response.body.toString());
    assert.equal(response.headers['x-pixelgate-cache'], 'hit');
    assert.equal(response.headers['x-pixelgate-key'], key);
    assert.ok(response.body.equals(bytes), 'pixelgate serves the bytes the SDK wrote');
    assert.equal(await generations(), 0, 'no backend call');
    await assertNoSignatureFailures();
  });

  test('object with a wrong SHA-256 is never served', async () => {
    const prompt = 'a damaged object';
    const key = await keyFor(gateway, prompt);
    const bytes = renderImagePng('sdk-writer', prompt, '1024x1024');
    await putImage(`plain/${key}`, bytes, { sha256: sha256Hex(Buffer.from('other bytes')) });

    const response = await generate(gateway, prompt);
    assert.equal(response.status, 200, response.body.toString());
    assert.equal(response.headers['x-pixelgate-cache'], 'miss', 'the damaged object is replaced by a new generation');
    assert.ok(!response.body.equals(bytes));
    assert.equal(await generations(), 1);
    assert.equal(logLines(gateway, new RegExp(`does not match its recorded SHA-256.*${key}|${key}.*does not match its recorded SHA-256`)).length, 1);
    // s3rver ignores If-None-Match, so the regenerated image replaced the damaged one.
    assert.ok((await getObject(`plain/${key}`)).body.equals(response.body));
  });

  test('500 then 503 on uploads are retried', async () => {
    await proxy.control({ script: [{ status: 500, methods: ['PUT'] }, { status: 503, methods: ['PUT'], retry_after: 1 }] });
    const response = await generate(gateway, 'a kite after two store errors');
    assert.equal(response.status, 200, response.body.toString());
    assert.ok(response.ms >= 900, `the 503's Retry-After of 1 s was honoured (took ${response.ms} ms)`);
    const key = response.headers['x-pixelgate-key'];

    const stats = await proxy.stats();
    assert.equal(stats.faults, 2);
    assert.equal(stats.requests.PUT, 4, 'sidecar: 500, 503, 200; image: 200');
    assert.deepEqual(stats.log.filter((entry) => entry.method === 'PUT').map((entry) => entry.fault), ['InternalError', 'SlowDown', null, null]);
    assert.ok((await getObject(`plain/${key}`)).body.equals(response.body));
    assert.equal(logLines(gateway, new RegExp(`^storage: S3 PUT plain/${key}\\.meta\\.json \\(key ${key}\\) failed: HTTP 500 InternalError.*retrying in \\d+ ms \\(attempt 2 of 3\\)$`)).length, 1);
    assert.equal(logLines(gateway, new RegExp(`^storage: S3 PUT plain/${key}\\.meta\\.json \\(key ${key}\\) failed: HTTP 503 SlowDown.*retrying in 1000 ms \\(attempt 3 of 3\\)$`)).length, 1);
  });

  test('a read error is retried and still a hit', async () => {
    const first = await generate(gateway, 'a kite read twice');
    const key = first.headers['x-pixelgate-key'];
    await proxy.reset();
    await proxy.control({ script: [{ status: 503, methods: ['GET'] }] });
    const response = await generate(gateway, 'a kite read twice');
    assert.equal(response.headers['x-pixelgate-cache'], 'hit');
    assert.ok(response.body.equals(first.body));
    assert.equal((await proxied('GET', `plain/${key}`)).length, 2);
    assert.equal(await generations(), 1);
  });

  test('persistent 500 still serves the image, later requests regenerate', async () => {
    await proxy.control({ persistent: { status: 500, methods: ['PUT'] } });
    const response = await generate(gateway, 'a kite the store lost');
    assert.equal(response.status, 200, response.body.toString());
    checkCompletePng(response.body);
    const key = response.headers['x-pixelgate-key'];
    assert.equal((await proxy.stats()).requests.PUT, 3, 'the sidecar upload, tried max_attempts times; no image upload');
    assert.equal(logLines(gateway, new RegExp(`^storage: storing ${key} .*failed after 3 attempt\\(s\\): HTTP 500 InternalError`)).length, 1);

    await proxy.control({ persistent: null });
    assert.equal(await objectExists(`plain/${key}`), false);
    const later = await generate(gateway, 'a kite the store lost');
    assert.equal(later.status, 200);
    assert.equal(later.headers['x-pixelgate-cache'], 'miss');
    assert.equal(await generations(), 2);
    assert.ok((await getObject(`plain/${key}`)).body.equals(later.body));
  });

  test('create-only conflict keeps the stored object and serves', async () => {
    const prompt = 'a kite raced by another writer';
    const key = await keyFor(gateway, prompt);
    const name = `plain/${key}`;
    await proxy.control({ aws_conditional_put: true });
    await fake.control({ delay_ms: 1500 });

    const pending = generate(gateway, prompt);
    await waitFor(async () => (await proxied('GET', name)).some((entry) => entry.status === 404), { timeoutMs: 5000, message: 'the miss' });
    const other = renderImagePng('other-writer', prompt, '1024x1024');
    await putImage(name, other, { sha256: sha256Hex(other) });
    const response = await pending;

    assert.equal(response.status, 200, response.body.toString());
    assert.equal(response.headers['x-pixelgate-cache'], 'miss');
    assert.ok(!response.body.equals(other), 'the client gets the image generated for it');
    const conflicts = (await proxied('PUT', name)).filter((entry) => entry.status === 412);
    assert.equal(conflicts.length, 1);
    assert.equal((await proxy.stats()).precondition_failures, 1);
    assert.equal(logLines(gateway, new RegExp(`^storage: ${name} already exists in the bucket \\(key ${key}\\); keeping the stored object$`)).length, 1);
    assert.ok((await getObject(name)).body.equals(other), 'the first writer\'s object is kept');

    const hit = await generate(gateway, prompt);
    assert.equal(hit.headers['x-pixelgate-cache'], 'hit');
    assert.ok(hit.body.equals(other));
  });

  test('readyz writes and deletes a probe object', async () => {
    const ready = await gateway.get('/readyz');
    assert.equal(ready.status, 200, ready.body.toString());
    assert.deepEqual((await proxied('PUT', 'plain/.pixelgate-probe')).map((entry) => entry.status), [200]);
    assert.equal((await proxied('DELETE', 'plain/.pixelgate-probe')).length, 1);
    assert.equal(await objectExists('plain/.pixelgate-probe'), false);

    await proxy.control({ persistent: { status: 503, methods: ['PUT'] } });
    const notReady = await gateway.get('/readyz');
    assert.equal(notReady.status, 503);
    assert.equal((await proxied('PUT', 'plain/.pixelgate-probe')).length, 2, 'one try, no retries');
  });

  test('second process on the same bucket serves without a backend call', async () => {
    const first = await generate(gateway, 'a kite that outlives its process');
    assert.equal(first.status, 200);
    const second = await startGateway('second', { prefix: 'plain/' });
    try {
      const response = await generate(second, 'a kite that outlives its process');
      assert.equal(response.status, 200);
      assert.equal(response.headers['x-pixelgate-cache'], 'hit');
      assert.ok(response.body.equals(first.body));
      assert.equal(await generations(), 1);
    } finally {
      await second.stop();
    }
  });

  test('redirect delivery points at a working presigned URL', async () => {
    const first = await generate(gateway, 'a kite behind a presigned URL');
    const key = first.headers['x-pixelgate-key'];
    const redirecting = await startGateway('redirect', { prefix: 'plain/' }, { storage: { delivery: 'redirect', presign_seconds: 600 } });
    try {
      const response = await redirecting.get(`/images/${key}`);
      assert.equal(response.status, 302, response.body.toString());
      const location = new URL(response.headers.location);
      assert.equal(location.origin, proxy.baseUrl);
      assert.equal(location.pathname, `/${BUCKET}/plain/${key}`);
      assert.equal(location.searchParams.get('X-Amz-Expires'), '600');
      assert.equal(location.searchParams.get('X-Amz-Security-Token'), SESSION_TOKEN);

      const fetched = await request(response.headers.location);
      assert.equal(fetched.status, 200, fetched.body.toString());
      assert.ok(fetched.body.equals(first.body), 'the presigned URL serves the image');
      await assertNoSignatureFailures();

      const tampered = new URL(response.headers.location);
      tampered.searchParams.set('X-Amz-Expires', '601');
      assert.equal((await request(tampered.href)).status, 403, 'the proxy checks the query signature');
    } finally {
      await redirecting.stop();
    }
  });

  test('wrong secret fails at once with the S3 error', async () => {
    const wrong = await startGateway('wrong-secret', { prefix: 'plain/' }, { env: { AWS_SECRET_ACCESS_KEY: 'not-the-secret' } });
    try {
      const response = await generate(wrong, 'a kite with bad credentials');
      assert.equal(response.status, 503, 'a store that rejects the credentials is an outage: no paid generation');
      const stats = await proxy.stats();
      assert.equal(stats.requests.GET, 1, 'the rejected read is not retried');
      assert.equal(stats.requests.PUT, undefined);
      assert.equal(await generations(), 0);
      assert.equal(logLines(wrong, /^storage: S3 GET plain\/[0-9a-f]{64} failed: HTTP 403 SignatureDoesNotMatch: .*; check the credentials in AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN/).length, 1);
    } finally {
      await wrong.stop();
    }
  });

  test('rejected upload fails at once, image still served', async () => {
    await proxy.control({ persistent: { status: 403, methods: ['PUT'] } });
    const response = await generate(gateway, 'a kite the bucket refused');
    assert.equal(response.status, 200, response.body.toString());
    checkCompletePng(response.body);
    const key = response.headers['x-pixelgate-key'];
    assert.equal((await proxy.stats()).requests.PUT, 1, 'a 403 is not retried');
    assert.equal(logLines(gateway, new RegExp(`^storage: storing ${key} .*failed: S3 PUT plain/${key}\\.meta\\.json failed: HTTP 403 AccessDenied: Access Denied; check the credentials`)).length, 1);
  });
});

describe('S3 object names', { timeout: 120_000 }, () => {
  const prefixes = ['a b/', 'plus+eq=at@tilde~pct%/', 'ünïcødé/', 'emoji😀/'];
  for (const prefix of prefixes) {
    test(`prefix ${JSON.stringify(prefix)}`, async () => {
      const gateway = await startGateway(`prefix-${prefixes.indexOf(prefix)}`, { prefix });
      try {
        const prompt = `a kite under ${prefix}`;
        const response = await generate(gateway, prompt);
        assert.equal(response.status, 200, response.body.toString());
        const key = response.headers['x-pixelgate-key'];
        assert.ok((await getObject(`${prefix}${key}`)).body.equals(response.body), 'the object name is prefix + key');

        const hit = await generate(gateway, prompt);
        assert.equal(hit.headers['x-pixelgate-cache'], 'hit', 'read back from the bucket');
        assert.ok(hit.body.equals(response.body));
        await assertNoSignatureFailures();

        const listed = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }));
        assert.deepEqual(listed.Contents.map((item) => item.Key).sort(), [`${prefix}${key}`, `${prefix}${key}.meta.json`]);

        // cache purge lists the bucket (ListObjectsV2), reads the sidecar and deletes both objects.
        const dryRun = await runPixelgate(gateway, ['cache', 'purge', '--template', 'default', '--dry-run', 'yes']);
        assert.match(dryRun, /would remove 1 image\(s\)/);
        const purged = await runPixelgate(gateway, ['cache', 'purge', '--key', key]);
        assert.match(purged, /removed 1 image\(s\)/);
        assert.equal(await objectExists(`${prefix}${key}`), false);
        assert.equal(await objectExists(`${prefix}${key}.meta.json`), false);
        await assertNoSignatureFailures();
      } finally {
        await gateway.stop();
      }
    });
  }

  test('virtual-host addressing', async () => {
    const endpoint = `http://s3.localhost:${proxy.port}`;
    const gateway = await startGateway('virtual', { endpoint, addressing: 'virtual', prefix: 'vhost/' });
    try {
      const response = await generate(gateway, 'a kite on a virtual host');
      assert.equal(response.status, 200, response.body.toString());
      const key = response.headers['x-pixelgate-key'];
      assert.ok((await getObject(`vhost/${key}`)).body.equals(response.body));
      const hit = await generate(gateway, 'a kite on a virtual host');
      assert.equal(hit.headers['x-pixelgate-cache'], 'hit');

      const puts = (await proxy.stats()).log.filter((entry) => entry.method === 'PUT' && entry.path.startsWith('/vhost/'));
      assert.deepEqual(puts.map((entry) => entry.path), [`/vhost/${key}.meta.json`, `/vhost/${key}`], 'the bucket is in the host name');
      await assertNoSignatureFailures();
    } finally {
      await gateway.stop();
    }
  });
});

test('no secret reaches the logs', () => {
  assert.ok(gateways.length > 0);
  for (const gateway of gateways) {
    const text = gateway.stderrLines.join('\n');
    for (const secret of [SECRET_KEY, ACCESS_KEY, SESSION_TOKEN, 'not-the-secret']) {
      assert.ok(!text.includes(secret), `a pixelgate log contains ${JSON.stringify(secret)}`);
    }
  }
});
