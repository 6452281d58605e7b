// Several pixelgate replicas share one Redis (Debian redis-server) and one S3-compatible
// store (s3rver), as they would behind a load balancer. Identical requests spread across
// them make one backend call, and a rate limit holds for all of them together. A replica
// killed while it holds a generation lease is replaced by another once the lease expires.
// While Redis is unreachable, hits keep working and new generations are rejected.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';

import { openaiBackend, sleep, startFake, startPixelgate, toToml, waitFor } from './lib/harness.mjs';
import { startRedis, startS3rver } from './lib/services.mjs';

const LEASE_TTL_MS = 1000;

/** Starts a fake backend, Redis, s3rver and `count` pixelgate processes on one configuration. */
async function startCluster(count, { rateLimits = {}, fakeDelayMs = 0 } = {}) {
  const cluster = { replicas: [] };
  cluster.dir = await mkdtemp(join(tmpdir(), 'pixelgate-replicas-'));
  cluster.fake = await startFake();
  await cluster.fake.control({ delay_ms: fakeDelayMs });

  cluster.redis = await startRedis();
  cluster.s3 = await startS3rver();

  cluster.configPath = join(cluster.dir, 'pixelgate.toml');
  const config = {
    server: { port: 0, threads: 2 },
    storage: {
      kind: 's3',
      path: join(cluster.dir, 'local'),
      s3: { endpoint: cluster.s3.endpoint, bucket: cluster.s3.bucket, region: 'us-east-1', prefix: 'img/' },
    },
    redis: { url: cluster.redis.url, lease_ttl_ms: LEASE_TTL_MS, lease_poll_ms: 50, command_timeout_ms: 300 },
    logging: { level: 'info', format: 'json' },
    security: { mode: 'open' },
    rate_limits: { requests_per_second: 0, generations_per_minute: 0, ...rateLimits },
    backends: { openai: openaiBackend(cluster.fake, { model: 'gpt-image-2', timeout_ms: 30_000 }) },
  };
  await writeFile(cluster.configPath, toToml(config));
  cluster.env = {
    AWS_ACCESS_KEY_ID: cluster.s3.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: cluster.s3.credentials.secretAccessKey,
  };

  for (let i = 0; i < count; i += 1) {
    cluster.replicas.push(await startPixelgate(cluster.configPath, { env: cluster.env }));
  }

  cluster.s3client = new S3Client({
    endpoint: cluster.s3.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: cluster.s3.credentials,
  });

  cluster.close = async () => {
    for (const replica of cluster.replicas) {
      if (replica.child.exitCode === null && replica.child.signalCode === null) await replica.stop();
    }
    cluster.s3client.destroy();
    await cluster.fake.stop();
    await cluster.redis.close();
    await cluster.s3.close();
    await rm(cluster.dir, { recursive: true, force: true });
  };
  return cluster;
}

async function s3Bytes(cluster, key) {
  const object = await cluster.s3client.send(new GetObjectCommand({ Bucket: cluster.s3.bucket, Key: `img/${key}` }));
  return Buffer.from(await object.Body.transformToByteArray());
}

describe('three replicas, one Redis, one bucket', { timeout: 180_000 }, () => {
  let cluster;
  before(async () => {
    cluster = await startCluster(3, { fakeDelayMs: 1500 });
  });
  after(async () => {
    await cluster?.close();
  });

  test('300 requests make one call', async () => {
    const path = '/generate-image?prompt=a+lighthouse+shared+by+replicas';
    const responses = await Promise.all(
      Array.from({ length: 300 }, (_, i) => cluster.replicas[i % 3].get(path, { timeoutMs: 60_000 })),
    );
    for (const response of responses) assert.equal(response.status, 200, String(response.body));
    const first = responses[0].body;
    assert.ok(responses.every((response) => response.body.equals(first)), 'all 300 bodies are identical');
    assert.equal((await cluster.fake.stats()).generations, 1);

    // One replica generated the image, and the bucket contains exactly those bytes.
    const states = new Set(responses.map((response) => response.headers['x-pixelgate-cache']));
    assert.ok(states.has('miss'));
    assert.ok((await s3Bytes(cluster, responses[0].headers['x-pixelgate-key'])).equals(first));
    assert.equal((await cluster.s3.proxy.stats()).signature_failures, 0, 'every S3 request was signed correctly');
  });

  test('other replica reads shared store', async () => {
    const path = '/generate-image?prompt=made+on+replica+zero';
    const generated = await cluster.replicas[0].get(path);
    assert.equal(generated.status, 200);
    const generations = (await cluster.fake.stats()).generations;
    const elsewhere = await cluster.replicas[2].get(path);
    assert.equal(elsewhere.status, 200);
    assert.equal(elsewhere.headers['x-pixelgate-cache'], 'hit');
    assert.ok(elsewhere.body.equals(generated.body));
    assert.equal((await cluster.fake.stats()).generations, generations);
  });

  test('dead lease holder is replaced', async () => {
    await cluster.fake.control({ delay_ms: 4000 });
    const path = '/generate-image?prompt=an+orphaned+generation';
    const before = (await cluster.fake.stats()).generations;
    const holder = cluster.replicas[0];
    const doomed = holder.get(path, { timeoutMs: 30_000 }).catch((error) => error);
    await waitFor(async () => (await cluster.fake.stats()).in_flight === 1, {
      timeoutMs: 10_000,
      message: 'the first replica to call the backend',
    });
    // The second replica finds the lease held and waits for the image.
    const waiting = cluster.replicas[1].get(path, { timeoutMs: 30_000 });
    await sleep(300);
    assert.equal((await cluster.fake.stats()).generations, before + 1, 'the waiter must not call the backend');

    holder.child.kill('SIGKILL');
    const failed = await doomed;
    assert.ok(failed instanceof Error, 'the killed replica cannot answer');

    await cluster.fake.control({ delay_ms: 0 });
    const takeover = await waiting;
    assert.equal(takeover.status, 200, String(takeover.body));
    assert.equal((await cluster.fake.stats()).generations, before + 2, 'at most one more generation');
    assert.ok((await s3Bytes(cluster, takeover.headers['x-pixelgate-key'])).equals(takeover.body));
  });

  test('Redis outage keeps hits, rejects misses', async () => {
    const replica = cluster.replicas[2];
    const cached = await replica.get('/generate-image?prompt=cached+before+the+outage');
    assert.equal(cached.status, 200);

    await cluster.redis.stop();
    try {
      const hit = await replica.get('/generate-image?prompt=cached+before+the+outage');
      assert.equal(hit.status, 200);
      assert.ok(hit.body.equals(cached.body));
      // Another replica reads it from the bucket: no Redis needed for that either.
      const storeHit = await cluster.replicas[1].get('/generate-image?prompt=cached+before+the+outage');
      assert.equal(storeHit.status, 200);

      const generations = (await cluster.fake.stats()).generations;
      const rejected = await replica.get('/generate-image?prompt=new+during+the+outage');
      assert.equal(rejected.status, 503);
      assert.ok(Number(rejected.headers['retry-after']) > 0);
      assert.equal(rejected.headers['cache-control'], 'no-store');
      assert.equal((await cluster.fake.stats()).generations, generations, 'no backend call while Redis is down');

      const ready = await replica.get('/readyz');
      assert.equal(ready.status, 503);
    } finally {
      await cluster.redis.start();
    }
    const recovered = await waitFor(
      async () => (await replica.get('/generate-image?prompt=new+during+the+outage')).status === 200,
      { timeoutMs: 10_000, intervalMs: 200, message: 'generations to resume after Redis is back' },
    );
    assert.ok(recovered);
  });
});

describe('a rate limit shared by two replicas', { timeout: 60_000 }, () => {
  let cluster;
  before(async () => {
    // A burst of 5 that refills one token in 1000 s: at most 5 requests in this test.
    cluster = await startCluster(2, { rateLimits: { requests_per_second: 0.001, burst: 5 } });
  });
  after(async () => {
    await cluster?.close();
  });

  test('burst holds across replicas', async () => {
    const path = '/generate-image?prompt=a+rate+limited+kite';
    const statuses = [];
    for (let i = 0; i < 12; i += 1) {
      const response = await cluster.replicas[i % 2].get(path);
      statuses.push(response.status);
      if (response.status === 429) {
        assert.ok(Number(response.headers['retry-after']) > 0);
        assert.match(response.headers.ratelimit, /r=0/);
      }
    }
    assert.equal(statuses.filter((status) => status === 200).length, 5, statuses.join(','));
    assert.equal(statuses.filter((status) => status === 429).length, 7, statuses.join(','));
  });
});
