// Worker pools ([backends.NAME.pool]) against the a1111 and sdcpp fakes, which pixelgate
// starts itself as child processes. Covered: cold starts, idle stops, min_instances, crash
// restarts with backoff, start deadlines, scaling limits and one call at a time per
// instance. Also the fallback and placeholder cold-start policies, /admin/status, and no
// orphan children after pixelgate is killed. Each fake writes its pid and counters to a
// stats file named after its port, which is how these tests see inside the children.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

import {
  REPO_ROOT, checkCompletePng, jsonBody, openaiBackend, sleep, startFake, startPixelgate, toToml, waitFor,
} from './lib/harness.mjs';

const A1111_FAKE = join(REPO_ROOT, 'tests', 'fakes', 'a1111-fake.mjs');
const SDCPP_FAKE = join(REPO_ROOT, 'tests', 'fakes', 'sdcpp-fake.mjs');
// Node takes a few hundred milliseconds to start a fake on a loaded two-core machine, so
// start deadlines here are generous unless a test is about them.
const START_TIMEOUT_MS = 15_000;

/**
 * Returns true while `pid` runs. A zombie (exited, not yet reaped by its new parent after
 * pixelgate died) counts as gone, because it keeps no port, memory or GPU.
 */
function isRunning(pid) {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if (error.code === 'ESRCH') return false;
    throw error;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Returns true once `pid` no longer exists at all: exited and reaped (no zombie). */
function isReaped(pid) {
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    if (error.code === 'ESRCH') return true;
    throw error;
  }
}

/** Returns the argv of a fake started by a pool, writing its stats to `dir`. */
function fakeCommand(fakePath, dir, flags = []) {
  return [process.execPath, fakePath, '--port', '{port}', '--stats-file', join(dir, 'fake-{port}.json'), ...flags];
}

/** Returns every stats file the pool's fakes wrote, parsed. */
async function readStats(dir) {
  const names = (await readdir(dir)).filter((name) => /^fake-\d+\.json$/.test(name));
  return Promise.all(names.map(async (name) => JSON.parse(await readFile(join(dir, name), 'utf8'))));
}

/** One pixelgate with its own folder and configuration; close() stops it and cleans up. */
class PoolWorld {
  static async start(build, { env = {} } = {}) {
    const world = new PoolWorld();
    world.dir = await mkdtemp(join(tmpdir(), 'pixelgate-pools-'));
    try {
      const config = await build(world.dir, world);
      const full = {
        server: { port: 0, threads: 4 },
        storage: { path: join(world.dir, 'storage') },
        logging: { level: 'info', format: 'json' },
        security: { mode: 'open' },
        rate_limits: { requests_per_second: 0, generations_per_minute: 0 },
        ...config,
        limits: { generation_timeout_ms: 20_000, max_concurrent_generations_per_key: 64, max_concurrent_generations: 64, ...config.limits },
      };
      await writeFile(join(world.dir, 'pixelgate.toml'), toToml(full));
      world.pixelgate = await startPixelgate(join(world.dir, 'pixelgate.toml'), { env });
    } catch (error) {
      await world.close();
      throw error;
    }
    return world;
  }

  get(path, options = {}) {
    return this.pixelgate.get(path, { timeoutMs: 30_000, ...options });
  }

  async status(name = 'sd') {
    const response = await this.pixelgate.get('/admin/status');
    assert.equal(response.status, 200, response.body.toString());
    const body = jsonBody(response);
    return name ? body.pools[name] : body;
  }

  /** Waits until the pool's status satisfies `check` and returns that status. */
  waitForStatus(check, message, timeoutMs = 20_000) {
    return waitFor(async () => {
      const status = await this.status();
      return check(status) ? status : null;
    }, { timeoutMs, intervalMs: 50, message });
  }

  stderr() {
    return this.pixelgate.stderrLines.join('\n');
  }

  /** Waits for a log line matching `pattern`; stderr may arrive after an HTTP response. */
  waitForLog(pattern, timeoutMs = 5000) {
    return waitFor(() => pattern.test(this.stderr()), { timeoutMs, message: `a log line matching ${pattern}` });
  }

  async close() {
    await this.pixelgate?.stop();
    await this.openai?.stop();
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }
}

function a1111Pool(dir, pool, flags = []) {
  return {
    type: 'a1111',
    max_retries: 0,
    timeout_ms: 10_000,
    failure_threshold: 1000,
    pool: { command: fakeCommand(A1111_FAKE, dir, flags), start_timeout_ms: START_TIMEOUT_MS, ready_poll_ms: 50, stop_grace_ms: 2000, ...pool },
  };
}

function readyInstances(status) {
  return status.instance_list.filter((instance) => instance.state === 'ready' || instance.state === 'busy');
}

describe('pool scale to zero', { timeout: 60_000 }, () => {
  let world;
  let firstPid;
  after(() => world?.close());

  test('first request cold-starts one instance', async () => {
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      backends: { sd: a1111Pool(dir, { min_instances: 0, max_instances: 1, idle_timeout_ms: 1500 }, ['--startup-delay-ms', '300']) },
    }));
    const before = await world.status();
    assert.equal(before.instance_list.length, 0, 'nothing runs before the first request');

    const response = await world.get('/generate-image?prompt=a+cold+start&width=64&height=64');
    assert.equal(response.status, 200, response.body.toString());
    assert.deepEqual(checkCompletePng(response.body), { width: 64, height: 64 });

    const status = await world.status();
    assert.equal(status.cold_starts.count, 1);
    assert.ok(status.cold_starts.last_ms >= 300, `the cold start took ${status.cold_starts.last_ms} ms, at least the fake's 300 ms delay`);
    assert.equal(readyInstances(status).length, 1);
    const stats = await readStats(world.dir);
    assert.equal(stats.length, 1);
    firstPid = stats[0].pid;
    assert.equal(status.instance_list[0].pid, firstPid);
    assert.equal(stats[0].stats.completed, 1);
    assert.ok(isRunning(firstPid));
  });

  test('idle timeout stops the instance', async () => {
    assert.ok(firstPid, 'the cold-start test ran first');
    const status = await world.waitForStatus((s) => s.instance_list.length === 0, 'the idle instance to stop');
    assert.equal(status.idle_stops, 1);
    // pixelgate reaps its children, so no zombie is left either.
    await waitFor(() => isReaped(firstPid), { timeoutMs: 5000, message: `pid ${firstPid} to exit and be reaped` });
    await world.waitForLog(/stopping instance 1 \(pid \d+, port \d+\) \(idle for \d+ ms\)/);
  });

  test('next request starts a new instance', async () => {
    const response = await world.get('/generate-image?prompt=after+idle&width=64&height=64');
    assert.equal(response.status, 200, response.body.toString());
    const status = await world.status();
    assert.equal(status.cold_starts.count, 2);
    assert.notEqual(status.instance_list[0].pid, firstPid);
  });
});

describe('pool min_instances', { timeout: 60_000 }, () => {
  let world;
  after(() => world?.close());

  test('min_instances keeps one warm', async () => {
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      backends: { sd: a1111Pool(dir, { min_instances: 1, max_instances: 2, idle_timeout_ms: 300 }) },
    }));
    const ready = await world.waitForStatus((s) => readyInstances(s).length === 1, 'the warm instance');
    const pid = ready.instance_list[0].pid;

    const response = await world.get('/generate-image?prompt=warm+pool&width=64&height=64');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal(response.headers['x-pixelgate-cache'], 'miss');

    await sleep(1200); // four idle timeouts
    const later = await world.status();
    assert.equal(readyInstances(later).length, 1);
    assert.equal(later.instance_list[0].pid, pid);
    assert.equal(later.idle_stops, 0);
    assert.equal(later.cold_starts.count, 1);
    assert.ok(isRunning(pid));
  });
});

describe('pool canary readiness', { timeout: 60_000 }, () => {
  let world;
  after(() => world?.close());

  test('ready_canary waits for one generation', async () => {
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      backends: { sd: a1111Pool(dir, { min_instances: 1, ready_canary: true }) },
    }));
    await world.waitForStatus((s) => readyInstances(s).length === 1, 'the instance to pass its canary');
    const [fake] = await readStats(world.dir);
    assert.equal(fake.stats.completed, 1, 'the canary generation ran before any request');
    const response = await world.get('/generate-image?prompt=after+canary&width=64&height=64');
    assert.equal(response.status, 200, response.body.toString());
  });
});

describe('pool crash restarts', { timeout: 60_000 }, () => {
  let world;
  after(() => world?.close());

  test('crash restarts with backoff', async () => {
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      backends: { sd: a1111Pool(dir, { min_instances: 1, max_instances: 1, restart_backoff_ms: 400, restart_backoff_max_ms: 5000 }, ['--crash-after', '1']) },
    }));
    const ready = await world.waitForStatus((s) => readyInstances(s).length === 1, 'the first instance');
    const firstPid = ready.instance_list[0].pid;

    const first = await world.get('/generate-image?prompt=crash+one&width=64&height=64');
    assert.equal(first.status, 200, first.body.toString());

    const restarted = await world.waitForStatus(
      (s) => s.crashes >= 1 && readyInstances(s).some((instance) => instance.pid !== firstPid),
      'a restarted instance',
    );
    assert.equal(restarted.restarts, 1);
    await waitFor(() => isReaped(firstPid), { timeoutMs: 5000, message: `crashed pid ${firstPid} to be reaped` });
    await world.waitForLog(/exited unexpectedly \(exit code 3\)/);
    await world.waitForLog(/crashed; restarting in 400 ms/);

    // The replacement crashes after its first generation too; the second delay doubles.
    const second = await world.get('/generate-image?prompt=crash+two&width=64&height=64');
    assert.equal(second.status, 200, second.body.toString());
    await world.waitForStatus((s) => s.crashes >= 2, 'the second crash');
    await world.waitForLog(/crashed; restarting in 800 ms if still needed \(2 consecutive failure\(s\)\)/);
  });

  test('request after a crash is served', async () => {
    // Whether the pool has noticed the crash yet or not, the request waits for or moves
    // to a working instance.
    const response = await world.get('/generate-image?prompt=crash+three&width=64&height=64');
    assert.equal(response.status, 200, response.body.toString());
    const stats = await readStats(world.dir);
    const total = stats.reduce((sum, fake) => sum + fake.stats.completed, 0);
    assert.equal(total, 3);
  });
});

describe('pool start deadline', { timeout: 60_000 }, () => {
  let world;
  after(() => world?.close());

  test('start past its deadline is killed', async () => {
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      limits: { generation_timeout_ms: 4000 },
      backends: { sd: a1111Pool(dir, { start_timeout_ms: 1500, restart_backoff_ms: 200, stop_grace_ms: 500 }, ['--hang', 'start']) },
    }));
    const response = await world.get('/generate-image?prompt=never+ready&width=64&height=64');
    assert.equal(response.status, 503, response.body.toString());
    assert.equal(jsonBody(response).error.code, 'cold_start');
    assert.ok(Number(response.headers['retry-after']) >= 1);

    const status = await world.status();
    assert.ok(status.failed_starts >= 1, JSON.stringify(status));
    await world.waitForLog(/did not become ready within start_timeout_ms \(1500 ms\); killing its process group/);
    const stats = await readStats(world.dir);
    assert.ok(stats.length >= 1);
    const killed = stats.filter((fake) => !status.instance_list.some((instance) => instance.pid === fake.pid));
    assert.ok(killed.length >= 1, 'at least one instance was killed and removed');
    for (const fake of killed) {
      await waitFor(() => isReaped(fake.pid), { timeoutMs: 5000, message: `pid ${fake.pid} to exit and be reaped` });
    }
    // With no request left, no restart is needed: the pool drains to zero.
    await world.waitForStatus((s) => s.instance_list.length === 0 && s.scheduled_restarts === 0, 'the pool to empty', 10_000);
  });
});

describe('pool scaling', { timeout: 60_000 }, () => {
  let world;
  after(() => world?.close());

  test('burst scales to max_instances and never beyond', async () => {
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      backends: { sd: a1111Pool(dir, { max_instances: 2, queue_size: 16 }, ['--latency-ms', '300']) },
    }));
    const paths = Array.from({ length: 6 }, (_, i) => `/generate-image?prompt=burst+${i}&width=64&height=64`);
    const responses = await Promise.all(paths.map((path) => world.get(path)));
    for (const response of responses) assert.equal(response.status, 200, response.body.toString());

    const status = await world.status();
    assert.equal(status.peak_instances, 2);
    assert.equal(status.instance_list.length, 2);
    const stats = await readStats(world.dir);
    assert.equal(stats.length, 2, 'exactly two processes were ever started');
  });

  test('concurrency-1 instance never overlaps', async () => {
    const stats = await readStats(world.dir);
    let completed = 0;
    for (const fake of stats) {
      assert.equal(fake.stats.violations, 0, `pid ${fake.pid} saw overlapping calls`);
      assert.ok(fake.stats.max_concurrent <= 1, `pid ${fake.pid} saw ${fake.stats.max_concurrent} calls at once`);
      completed += fake.stats.completed;
    }
    assert.equal(completed, 6);
  });

  test('full queue gives 503', async () => {
    await world.close();
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      backends: { sd: a1111Pool(dir, { max_instances: 1, queue_size: 1 }, ['--latency-ms', '1500']) },
    }));
    const warm = await world.get('/generate-image?prompt=queue+warm&width=64&height=64');
    assert.equal(warm.status, 200);
    const paths = Array.from({ length: 4 }, (_, i) => `/generate-image?prompt=queue+${i}&width=64&height=64`);
    const responses = await Promise.all(paths.map((path) => world.get(path)));
    const statuses = responses.map((response) => response.status).sort();
    // One runs, one waits, the rest find the queue full.
    assert.deepEqual(statuses, [200, 200, 503, 503], responses.map((r) => r.body.toString()).join('\n'));
    const rejected = responses.find((response) => response.status === 503);
    assert.equal(jsonBody(rejected).error.code, 'unavailable');
  });
});

describe('pool cold-start fallback', { timeout: 60_000 }, () => {
  let world;
  after(() => world?.close());

  test('cold pool answers from the fallback', async () => {
    world = await PoolWorld.start(async (dir, self) => {
      self.openai = await startFake();
      return {
        default_backend: 'sd',
        backends: {
          sd: a1111Pool(dir, {}, ['--startup-delay-ms', '1500']),
          openai: openaiBackend(self.openai),
        },
        templates: { default: { backend: 'sd', cold_start: 'fallback', max_cold_start_ms: 200, fallbacks: ['openai'] } },
      };
    });
    const path = '/generate-image?prompt=fallback+while+warming&width=1024&height=1024';
    const first = await world.get(path);
    assert.equal(first.status, 200, first.body.toString());
    assert.equal(first.headers['x-pixelgate-fallback'], 'openai');
    assert.equal(first.headers['cache-control'], 'no-store');
    assert.ok(first.ms < 1500, `the fallback answered in ${first.ms} ms, before the pool could start`);
    assert.equal((await world.openai.stats()).generations, 1);

    const status = await world.status();
    assert.equal(status.cold_start_rejections, 1);
    assert.equal(status.instance_list.length, 1, 'the pool warms while the fallback answers');

    await world.waitForStatus((s) => readyInstances(s).length === 1, 'the pool to become ready');
    const second = await world.get(path);
    assert.equal(second.status, 200, second.body.toString());
    assert.equal(second.headers['x-pixelgate-fallback'], undefined);
    assert.equal(second.headers['x-pixelgate-cache'], 'miss');
    const [fake] = await readStats(world.dir);
    assert.equal(fake.stats.completed, 1);
    assert.equal((await world.openai.stats()).generations, 1, 'the warm pool took the second request');
  });
});

describe('pool cold-start placeholder', { timeout: 60_000 }, () => {
  let world;
  after(() => world?.close());

  test('placeholder policy answers a no-store card', async () => {
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      backends: { sd: a1111Pool(dir, { expected_start_ms: 3000 }, ['--startup-delay-ms', '1500']) },
      templates: { default: { backend: 'sd', cold_start: 'placeholder', max_cold_start_ms: 100 } },
    }));
    const path = '/generate-image?prompt=placeholder+while+warming&width=256&height=128';
    const first = await world.get(path);
    assert.equal(first.status, 503);
    assert.equal(first.headers['content-type'], 'image/png');
    assert.equal(first.headers['cache-control'], 'no-store');
    assert.equal(first.headers['retry-after'], '3');
    assert.match(first.headers['x-pixelgate-warning'], /placeholder image while backend sd starts; retry in 3 s/);
    assert.deepEqual(checkCompletePng(first.body), { width: 256, height: 128 });

    await world.waitForStatus((s) => readyInstances(s).length === 1, 'the pool to become ready');
    const second = await world.get(path);
    assert.equal(second.status, 200, second.body.toString());
    assert.equal(second.headers['x-pixelgate-cache'], 'miss', 'the placeholder was never cached');
    assert.equal(second.headers['x-pixelgate-warning'], undefined);
  });
});

describe('pool sdcpp', { timeout: 60_000 }, () => {
  let world;
  after(() => world?.close());

  test('sdcpp pool cold-starts and restarts', async () => {
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      backends: {
        sd: {
          type: 'sdcpp',
          max_retries: 0,
          poll_interval_ms: 20,
          pool: { command: fakeCommand(SDCPP_FAKE, dir, ['--crash-after', '1']), start_timeout_ms: START_TIMEOUT_MS, ready_poll_ms: 50, restart_backoff_ms: 100 },
        },
      },
    }));
    const first = await world.get('/generate-image?prompt=sdcpp+pool&width=64&height=64');
    assert.equal(first.status, 200, `${first.body}\n${world.stderr()}`);
    const second = await world.get('/generate-image?prompt=sdcpp+pool+again&width=64&height=64');
    assert.equal(second.status, 200, `${second.body}\n${world.stderr()}`);
    const status = await world.status();
    assert.equal(status.type, 'sdcpp');
    assert.ok(status.cold_starts.count >= 2);
    const stats = await readStats(world.dir);
    assert.equal(stats.reduce((sum, fake) => sum + fake.stats.delivered, 0), 2);
  });
});

describe('pool admin status', { timeout: 60_000 }, () => {
  let world;
  after(() => world?.close());

  test('status needs the admin scope', async () => {
    const adminKey = 'pg_admin-key-for-tests-0123456789abcdef';
    const generateKey = 'pg_generate-key-for-tests-0123456789abc';
    const { createHash } = await import('node:crypto');
    const sha = (key) => createHash('sha256').update(key).digest('hex');
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      security: { mode: 'signed' },
      backends: { sd: a1111Pool(dir, {}) },
      api_keys: { ops: { sha256: sha(adminKey), scopes: ['admin'] }, app: { sha256: sha(generateKey), scopes: ['generate'] } },
    }));
    const none = await world.pixelgate.get('/admin/status');
    assert.equal(none.status, 401);
    assert.match(none.headers['www-authenticate'], /^Bearer/);
    const wrong = await world.pixelgate.get('/admin/status', { headers: { authorization: 'Bearer pg_not-a-key' } });
    assert.equal(wrong.status, 401);
    const generate = await world.pixelgate.get('/admin/status', { headers: { authorization: `Bearer ${generateKey}` } });
    assert.equal(generate.status, 403);
    assert.equal(jsonBody(generate).error.code, 'permission_denied');

    const admin = await world.pixelgate.get('/admin/status', { headers: { authorization: `Bearer ${adminKey}` } });
    assert.equal(admin.status, 200, admin.body.toString());
    assert.equal(admin.headers['cache-control'], 'no-store');
    const body = jsonBody(admin);
    assert.deepEqual(Object.keys(body.pools), ['sd']);
    assert.deepEqual(body.pools.sd.instances, { starting: 0, ready: 0, busy: 0, stopping: 0 });
    assert.equal(body.hot_cache.entries, 0);
    assert.equal(body.generations_in_flight, 0);
    const post = await world.pixelgate.get('/admin/status', { method: 'POST', headers: { authorization: `Bearer ${adminKey}` } });
    assert.equal(post.status, 405);
  });
});

describe('pool children and pixelgate', { timeout: 60_000 }, () => {
  let world;
  after(() => world?.close());

  test('SIGKILL leaves no orphan children', async () => {
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      backends: { sd: a1111Pool(dir, { min_instances: 2, max_instances: 2 }) },
    }));
    const status = await world.waitForStatus((s) => readyInstances(s).length === 2, 'two warm instances');
    const pids = status.instance_list.map((instance) => instance.pid);
    for (const pid of pids) assert.ok(isRunning(pid));

    world.pixelgate.child.kill('SIGKILL');
    for (const pid of pids) {
      await waitFor(() => !isRunning(pid), { timeoutMs: 5000, message: `child ${pid} to die with pixelgate` });
    }
  });

  test('SIGTERM stops children gracefully', async () => {
    await world.close();
    world = await PoolWorld.start((dir) => ({
      default_backend: 'sd',
      backends: { sd: a1111Pool(dir, { min_instances: 1 }) },
    }));
    const status = await world.waitForStatus((s) => readyInstances(s).length === 1, 'the warm instance');
    const pid = status.instance_list[0].pid;
    const exit = await world.pixelgate.stop();
    assert.equal(exit.code, 0);
    assert.equal(exit.forced, false);
    assert.ok(!isRunning(pid));
    assert.match(world.stderr(), /stopped \(exit code 0\)/, 'the fake exited on SIGTERM by itself');
  });
});
