// Black-box tests of admission against the fake OpenAI server, in `signed` and `templates` mode.
// Signed URLs: the CLI and both example signers against the verifier, accepted and rejected
// variants, single-byte mutations, expiry and key rotation.
// Then API keys, the `templates` mode, request and generation rate limits, trusted proxies,
// spend budgets across a restart, and the generation concurrency cap.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { Agent, request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { promisify } from 'node:util';

import { signUrl } from '../../examples/signing/sign.mjs';
import {
  API_KEY_ENV,
  HOST,
  PIXELGATE_BIN,
  REPO_ROOT,
  TEST_API_KEY,
  jsonBody,
  openaiBackend,
  request,
  sleep,
  startFake,
  startPixelgate,
} from './lib/harness.mjs';

const execFileAsync = promisify(execFile);

const MODEL = 'gpt-image-2';
const SIGNING_DIR = join(REPO_ROOT, 'examples', 'signing');
const CLI_TIMEOUT_MS = 10_000;

// Signing secrets reach pixelgate (and `pixelgate sign`) through these variables only.
const SIGNING_KEYS = {
  k0: { env: 'PG_TEST_SIGNING_K0', secret: 'k0-secret-0123456789abcdef' },
  k1: { env: 'PG_TEST_SIGNING_K1', secret: 'k1-secret-fedcba9876543210' },
};
const RATE_LIMITS_OFF = { requests_per_second: 0, generations_per_minute: 0 };

let fake;

before(async () => {
  fake = await startFake();
});

after(async () => {
  await fake?.stop();
});

beforeEach(async () => {
  await fake.reset();
});

async function generations() {
  return (await fake.stats()).generations;
}

// ---------------------------------------------------------------------------
// Configuration, processes and signers.
// ---------------------------------------------------------------------------

function tomlValue(value) {
  if (Array.isArray(value)) {
    return `[${value.map(tomlValue).join(', ')}]`;
  }
  if (typeof value === 'string') {
    return JSON.stringify(value);
  }
  if (typeof value === 'number' || typeof value === 'boolean') {
    return String(value);
  }
  throw new TypeError(`cannot write ${JSON.stringify(value)} as a TOML value`);
}

/** Writes `[name]` (or `[[name]]` when `repeated`) followed by the table's keys. */
function tomlTable(name, table, repeated = false) {
  const lines = [repeated ? `[[${name}]]` : `[${name}]`];
  for (const [key, value] of Object.entries(table)) {
    if (value !== undefined) {
      lines.push(`${key} = ${tomlValue(value)}`);
    }
  }
  return lines.join('\n');
}

/** Returns the environment for pixelgate and its CLI: no PIXELGATE_* or OPENAI_* overrides, plus the secrets. */
function childEnvironment() {
  const env = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith('PIXELGATE_') && !name.startsWith('OPENAI_')) {
      env[name] = value;
    }
  }
  env[API_KEY_ENV] = TEST_API_KEY;
  for (const { env: variable, secret } of Object.values(SIGNING_KEYS)) {
    env[variable] = secret;
  }
  return env;
}

async function runCli(args) {
  const { stdout } = await execFileAsync(PIXELGATE_BIN, args, { env: childEnvironment(), timeout: CLI_TIMEOUT_MS });
  return stdout;
}

/** Returns a new API key from `pixelgate keys new` as { key, sha256 }. */
async function newApiKey(name) {
  const output = await runCli(['keys', 'new', '--name', name]);
  const key = /^\s*(pg_[A-Za-z0-9_-]+)\s*$/m.exec(output)?.[1];
  const sha256 = /^sha256 = "([0-9a-f]{64})"$/m.exec(output)?.[1];
  if (!key || !sha256) {
    throw new Error(`unexpected output of pixelgate keys new:\n${output}`);
  }
  return { key, sha256 };
}

/** Signs with the Python example signer. `expiresAt` is Unix seconds or undefined. */
async function pythonSign(pathAndQuery, keyId, secret, expiresAt) {
  const script = [
    'import sys',
    'sys.path.insert(0, sys.argv[1])',
    'from sign import sign_url',
    'exp = int(sys.argv[5]) if len(sys.argv) > 5 else None',
    'print(sign_url(sys.argv[2], sys.argv[3], sys.argv[4], exp))',
  ].join('\n');
  const args = ['-c', script, SIGNING_DIR, pathAndQuery, keyId, secret];
  if (expiresAt !== undefined) {
    args.push(String(expiresAt));
  }
  // PYTHONDONTWRITEBYTECODE keeps __pycache__ out of examples/signing.
  const env = { ...process.env, PYTHONDONTWRITEBYTECODE: '1' };
  const { stdout } = await execFileAsync('python3', args, { env, timeout: CLI_TIMEOUT_MS });
  return stdout.trim();
}

/**
 * A temporary folder and a pixelgate with the signing keys k0 and k1, the fake as its only
 * backend, and the sections given. The mode is `signed` unless `security.mode` sets another.
 */
class World {
  static async start(options = {}) {
    const world = new World();
    world.dir = await mkdtemp(join(tmpdir(), 'pixelgate-admission-'));
    world.storagePath = join(world.dir, 'storage');
    world.configPath = join(world.dir, 'pixelgate.toml');
    try {
      await writeFile(world.configPath, world.configText(options));
      await world.restart();
    } catch (error) {
      await world.close();
      throw error;
    }
    return world;
  }

  constructor() {
    this.pixelgate = null;
    this.earlierStderr = [];
  }

  configText({ security = {}, rateLimits = RATE_LIMITS_OFF, limits, budgets, costs = [], apiKeys = {}, templates = {}, backend = {} }) {
    const parts = [
      `default_backend = "openai"`,
      tomlTable('server', { port: 0, threads: 2 }),
      tomlTable('storage', { path: this.storagePath }),
      tomlTable('logging', { level: 'info', format: 'json' }),
      tomlTable('security', { mode: 'signed', default_signing_key: 'k0', ...security }),
    ];
    for (const [id, { env }] of Object.entries(SIGNING_KEYS)) {
      parts.push(tomlTable(`security.signing_keys.${id}`, { secret_env: env }));
    }
    parts.push(tomlTable('rate_limits', rateLimits));
    if (limits) {
      parts.push(tomlTable('limits', limits));
    }
    if (budgets) {
      parts.push(tomlTable('budgets', budgets));
    }
    for (const row of costs) {
      parts.push(tomlTable('costs', row, true));
    }
    parts.push(tomlTable('backends.openai', openaiBackend(fake, { model: MODEL, ...backend })));
    for (const [name, table] of Object.entries(templates)) {
      parts.push(tomlTable(`templates.${name}`, table));
    }
    for (const [name, table] of Object.entries(apiKeys)) {
      parts.push(tomlTable(`api_keys.${name}`, table));
    }
    return `${parts.join('\n\n')}\n`;
  }

  get port() {
    return this.pixelgate.port;
  }

  get(path, options = {}) {
    return request(path, { port: this.port, ...options });
  }

  /** Signs with `pixelgate sign` against this world's configuration. */
  async sign(pathAndQuery, { expires, key } = {}) {
    const args = ['sign', pathAndQuery, '--config', this.configPath];
    if (expires) {
      args.push('--expires', expires);
    }
    if (key) {
      args.push('--key', key);
    }
    return (await runCli(args)).trim();
  }

  async restart() {
    if (this.pixelgate) {
      await this.stopGateway();
    }
    this.pixelgate = await startPixelgate(this.configPath, { env: childEnvironment() });
  }

  async stopGateway() {
    const current = this.pixelgate;
    this.pixelgate = null;
    await current.stop();
    const stderr = current.child.stderr;
    if (!stderr.closed) {
      await Promise.race([new Promise((resolvePromise) => stderr.once('close', resolvePromise)), sleep(2000)]);
    }
    this.earlierStderr.push(...current.stderrLines);
  }

  /** Returns every stderr line of every pixelgate process of this world so far. */
  stderrText() {
    return [...this.earlierStderr, ...(this.pixelgate?.stderrLines ?? [])].join('\n');
  }

  async close() {
    if (this.pixelgate) {
      await this.stopGateway();
    }
    if (this.dir) {
      await rm(this.dir, { recursive: true, force: true });
    }
  }
}

/** Checks status, JSON content type, Cache-Control and the error code, and returns the error object. */
function assertJsonError(response, status, code) {
  assert.equal(response.status, status, response.body.toString());
  assert.match(response.headers['content-type'], /^application\/json/);
  assert.equal(response.headers['cache-control'], 'no-store');
  const { error } = jsonBody(response);
  assert.equal(error.code, code);
  return error;
}

/** Returns the value of the query parameter `name` in a raw path and query. */
function rawParam(pathAndQuery, name) {
  const query = pathAndQuery.slice(pathAndQuery.indexOf('?') + 1);
  const piece = query.split('&').find((part) => part.startsWith(`${name}=`));
  return piece?.slice(name.length + 1);
}

/** Returns true when the path of a raw path and query is /generate-image or /v1/images/{template}. */
function isImageRoute(pathAndQuery) {
  const path = pathAndQuery.split('?')[0];
  return path === '/generate-image' || (path.startsWith('/v1/images/') && path !== '/v1/images/generations');
}

// Characters that RFC 3986 allows in a request target (origin-form), besides '%' escapes.
const TARGET_CHARACTERS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*$/;

/**
 * Returns the statuses a mutated signed URL may get. While the path is an image route, the
 * signature check comes first, so 403. Once it is not, 404. Either may be 400 instead when
 * the request target is malformed: a character RFC 3986 forbids, or no leading '/'.
 */
function allowedMutationStatuses(url) {
  const allowed = [isImageRoute(url) ? 403 : 404];
  if (!url.startsWith('/') || !TARGET_CHARACTERS.test(url)) {
    allowed.push(400);
  }
  return allowed;
}

function countBy(values) {
  const counts = {};
  for (const value of values) {
    counts[value] = (counts[value] ?? 0) + 1;
  }
  return counts;
}

// ---------------------------------------------------------------------------
// 1-3: signed URLs.
// ---------------------------------------------------------------------------

describe('signed URLs', { timeout: 120_000 }, () => {
  let world;

  before(async () => {
    world = await World.start();
  });

  after(async () => {
    await world?.close();
  });

  test('unsigned request is rejected', async () => {
    const response = await world.get('/generate-image?prompt=an+unsigned+request');
    const error = assertJsonError(response, 403, 'permission_denied');
    assert.equal(error.param, 'sig');
    assert.equal(await generations(), 0);
  });

  test('CLI-signed URL is accepted', async () => {
    const url = await world.sign('/generate-image?prompt=signed by the command line');
    const response = await world.get(url);
    assert.equal(response.status, 200, response.body.toString());
    assert.equal(response.headers['x-pixelgate-cache'], 'miss');
    assert.equal(await generations(), 1);
  });

  test('example signers match the CLI', async () => {
    const input = '/generate-image?prompt=three signers agree&width=512&height=512';
    const { secret } = SIGNING_KEYS.k0;
    const cliUrl = await world.sign(input);
    const nodeUrl = signUrl(input, 'k0', secret);
    const pythonUrl = await pythonSign(input, 'k0', secret);

    const cli = await world.get(cliUrl);
    const node = await world.get(nodeUrl);
    const python = await world.get(pythonUrl);
    assert.equal(cli.status, 200, cli.body.toString());
    assert.equal(node.status, 200, node.body.toString());
    assert.equal(python.status, 200, python.body.toString());
    assert.equal(node.headers.etag, cli.headers.etag);
    assert.equal(python.headers.etag, cli.headers.etag);
    assert.equal(rawParam(nodeUrl, 'sig'), rawParam(cliUrl, 'sig'));
    assert.equal(rawParam(pythonUrl, 'sig'), rawParam(cliUrl, 'sig'));
    assert.equal(await generations(), 1);
  });

  test('example signers with expiry agree', async () => {
    const input = '/generate-image?prompt=expiring signers agree';
    const expiresAt = Math.floor(Date.now() / 1000) + 3600;
    const { secret } = SIGNING_KEYS.k1;
    const node = await world.get(signUrl(input, 'k1', secret, expiresAt));
    const python = await world.get(await pythonSign(input, 'k1', secret, expiresAt));
    assert.equal(node.status, 200, node.body.toString());
    assert.equal(python.status, 200, python.body.toString());
    assert.equal(python.headers.etag, node.headers.etag);
  });

  // Each variant rewrites a CLI-signed URL in a way that docs/signing.md accepts.
  const unchanged = (url) => url;
  const accepted = [
    { name: '+ instead of %20', input: '/generate-image?prompt=plus for space', change: (url) => url.replaceAll('%20', '+') },
    { name: '%7E instead of ~', input: '/generate-image?prompt=tilde~check', change: (url) => url.replace('~', '%7E') },
    { name: '/ instead of %2F', input: '/generate-image?prompt=slash/check', change: (url) => url.replace('%2F', '/') },
    {
      name: 'parameters reordered',
      input: '/generate-image?prompt=reordered&width=512&height=768',
      change: (url) => {
        const [path, query] = url.split('?');
        return `${path}?${query.split('&').reverse().join('&')}`;
      },
    },
    { name: 'non-ASCII prompt', input: '/generate-image?prompt=雪 🐶 on a hill', change: unchanged, prompt: '雪 🐶 on a hill' },
  ];
  for (const { name, input, change, prompt } of accepted) {
    test(`accepted variant: ${name}`, async () => {
      const signed = await world.sign(input);
      const changed = change(signed);
      if (change !== unchanged) {
        assert.notEqual(changed, signed, 'the change applies');
      }
      const response = await world.get(changed);
      assert.equal(response.status, 200, `${changed}: ${response.body}`);
      if (prompt) {
        assert.equal((await fake.stats()).last_request.body.prompt, prompt);
      }
    });
  }

  const rejected = [
    { name: 'lower-case hex escape', input: '/generate-image?prompt=slash/check', change: (url) => url.replace('%2F', '%2f') },
    { name: 'added parameter', input: '/generate-image?prompt=added+parameter', change: (url) => `${url}&width=512` },
    { name: 'unknown kid', input: '/generate-image?prompt=unknown+kid', change: (url) => url.replace('kid=k0', 'kid=k9') },
    { name: 'changed prompt', input: '/generate-image?prompt=changed+prompt', change: (url) => url.replace('changed', 'altered') },
  ];
  for (const { name, input, change } of rejected) {
    test(`rejected variant: ${name}`, async () => {
      const signed = await world.sign(input);
      const changed = change(signed);
      assert.notEqual(changed, signed);
      const response = await world.get(changed);
      assertJsonError(response, 403, 'permission_denied');
      assert.equal(await generations(), 0);
    });
  }

  test('single-byte mutations are rejected', async (t) => {
    const base = await world.sign('/generate-image?prompt=a red fox&width=512');
    // A fixed-seed generator picks the replacement characters, so every run sends the same URLs.
    let seed = 0x2545f491;
    const nextPrintable = () => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return 0x20 + (seed % 95);
    };
    const mutants = [];
    const skipped = [];
    for (let i = 0; i < base.length; i++) {
      const original = base.charCodeAt(i);
      let swapped = nextPrintable();
      while (swapped === original || swapped === original + 1) {
        swapped = nextPrintable();
      }
      for (const code of [original + 1, swapped]) {
        const url = base.slice(0, i) + String.fromCharCode(code) + base.slice(i + 1);
        // A request line cannot carry a space, a control character or non-ASCII, and a
        // client never sends the fragment after '#'.
        if (code <= 0x20 || code >= 0x7f || code === 0x23) {
          skipped.push({ position: i, code });
        } else {
          mutants.push({ position: i, code, url });
        }
      }
    }

    const deadline = Date.now() + 60_000;
    const results = [];
    for (const mutant of mutants) {
      assert.ok(Date.now() < deadline, 'the mutation loop finished within 60 s');
      const response = await world.get(mutant.url, { timeoutMs: 5000 });
      results.push({ ...mutant, status: response.status });
    }

    const counts = countBy(results.map(({ status }) => status));
    const onPath = countBy(results.map(({ url, status }) => `${isImageRoute(url) ? 'image route' : 'other path'} ${status}`));
    t.diagnostic(`${mutants.length} mutations sent, ${skipped.length} skipped; by status: ${JSON.stringify(counts)}; ${JSON.stringify(onPath)}`);
    const not4xx = results.filter(({ status }) => status < 400 || status > 499);
    assert.deepEqual(not4xx, [], 'every mutation gets a 4xx');
    const onImageRoute = results.filter(({ url }) => isImageRoute(url));
    const elsewhere = results.filter(({ url }) => !isImageRoute(url));
    const unexpected = (list) => list.filter(({ url, status }) => !allowedMutationStatuses(url).includes(status));
    assert.deepEqual(unexpected(onImageRoute), [], 'image routes get 403, or 400 for a malformed target');
    assert.deepEqual(unexpected(elsewhere), [], 'other paths get 404, or 400 for a malformed target');
    assert.equal(await generations(), 0);

    const original = await world.get(base);
    assert.equal(original.status, 200, 'the unmutated URL is valid');
  });

  test('expired URL is rejected', async () => {
    const expiredAt = Math.floor(Date.now() / 1000) - 60;
    const url = signUrl('/generate-image?prompt=long+expired', 'k0', SIGNING_KEYS.k0.secret, expiredAt);
    const response = await world.get(url);
    const error = assertJsonError(response, 403, 'permission_denied');
    assert.match(error.message, /expired at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/);
    assert.equal(await generations(), 0);
  });

  test('--expires 1s URL expires', async () => {
    const url = await world.sign('/generate-image?prompt=short+lived', { expires: '1s' });
    const exp = Number(rawParam(url, 'exp'));
    // The URL stays valid until the clock passes exp, so the test waits for that second to end.
    await sleep(Math.max(0, (exp + 1) * 1000 - Date.now()) + 100);
    const response = await world.get(url);
    const error = assertJsonError(response, 403, 'permission_denied');
    assert.match(error.message, /expired at/);
    assert.equal(await generations(), 0);
  });

  test('rotation accepts k0 and k1', async () => {
    const byOld = await world.sign('/generate-image?prompt=rotation+old+key', { key: 'k0', expires: '1h' });
    const byNew = await world.sign('/generate-image?prompt=rotation+new+key', { key: 'k1', expires: '1h' });
    assert.equal(rawParam(byOld, 'kid'), 'k0');
    assert.equal(rawParam(byNew, 'kid'), 'k1');
    assert.equal((await world.get(byOld)).status, 200);
    assert.equal((await world.get(byNew)).status, 200);
  });

  test('k0 signature under kid k1 fails', async () => {
    const byOld = await world.sign('/generate-image?prompt=kid+swap', { key: 'k0' });
    const response = await world.get(byOld.replace('kid=k0', 'kid=k1'));
    assertJsonError(response, 403, 'permission_denied');
  });
});

// ---------------------------------------------------------------------------
// 4: API keys.
// ---------------------------------------------------------------------------

describe('API keys', { timeout: 60_000 }, () => {
  let world;
  let shop;
  let admin;
  let stranger;

  before(async () => {
    shop = await newApiKey('shop');
    admin = await newApiKey('ops');
    stranger = await newApiKey('stranger');
    world = await World.start({
      apiKeys: {
        shop: { sha256: shop.sha256, scopes: ['generate'] },
        ops: { sha256: admin.sha256, scopes: ['admin'] },
      },
    });
  });

  after(async () => {
    await world?.close();
  });

  test('valid key needs no signature', async () => {
    const response = await world.get('/generate-image?prompt=by+api+key', { headers: { authorization: `Bearer ${shop.key}` } });
    assert.equal(response.status, 200, response.body.toString());
    assert.equal(await generations(), 1);
  });

  test('valid key on JSON route', async () => {
    const response = await world.get('/v1/images/generations', {
      method: 'POST',
      headers: { authorization: `Bearer ${shop.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'json route with a key', size: '1024x1024' }),
    });
    assert.equal(response.status, 200, response.body.toString());
  });

  test('unknown key gets 401', async () => {
    const response = await world.get('/generate-image?prompt=wrong+key', { headers: { authorization: `Bearer ${stranger.key}` } });
    assertJsonError(response, 401, 'unauthenticated');
    assert.match(response.headers['www-authenticate'] ?? '', /^Bearer /);
    assert.equal(await generations(), 0);
  });

  test('key without generate scope', async () => {
    const response = await world.get('/generate-image?prompt=admin+scope', { headers: { authorization: `Bearer ${admin.key}` } });
    assertJsonError(response, 403, 'permission_denied');
    assert.equal(await generations(), 0);
  });

  test('JSON route without key', async () => {
    const response = await world.get('/v1/images/generations', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'no key at all' }),
    });
    assertJsonError(response, 401, 'unauthenticated');
    assert.match(response.headers['www-authenticate'] ?? '', /^Bearer /);
    assert.equal(await generations(), 0);
  });

  test('logs never show full keys', async () => {
    // One more rejected request, so that the log has a line about the stranger's key.
    await world.get('/generate-image?prompt=wrong+key+again', { headers: { authorization: `Bearer ${stranger.key}` } });
    await world.stopGateway();
    const log = world.stderrText();
    assert.ok(log.length > 0, 'pixelgate wrote a log');
    assert.ok(!log.includes(shop.key), 'the valid key is not logged');
    assert.ok(!log.includes(admin.key), 'the admin key is not logged');
    assert.ok(!log.includes(stranger.key), 'the unknown key is not logged');
    // At most the last 4 characters: no 5-character piece of the key appears anywhere.
    const pieces = [];
    for (let i = 0; i + 5 <= stranger.key.length; i++) {
      if (log.includes(stranger.key.slice(i, i + 5))) {
        pieces.push(stranger.key.slice(i, i + 5));
      }
    }
    assert.deepEqual(pieces, [], 'no 5-character piece of the unknown key is logged');
    assert.ok(log.includes(stranger.key.slice(-4)), 'the rejection names the last 4 characters');
  });
});

// ---------------------------------------------------------------------------
// 5: templates mode.
// ---------------------------------------------------------------------------

describe('templates mode', { timeout: 60_000 }, () => {
  let world;

  before(async () => {
    world = await World.start({
      security: { mode: 'templates', public_templates: ['hero'] },
      templates: { hero: { prompt: 'hero banner of {prompt}', width: 1536, height: 640 } },
    });
  });

  after(async () => {
    await world?.close();
  });

  test('public template route is open', async () => {
    const response = await world.get('/v1/images/hero?prompt=x');
    assert.equal(response.status, 200, response.body.toString());
    assert.equal((await fake.stats()).last_request.body.prompt, 'hero banner of x');
  });

  test('free prompt needs a signature', async () => {
    const response = await world.get('/generate-image?prompt=x');
    assertJsonError(response, 403, 'permission_denied');
    assert.equal(await generations(), 0);
  });

  test('template=hero parameter is open', async () => {
    const response = await world.get('/generate-image?prompt=x&template=hero');
    assert.equal(response.status, 200, response.body.toString());
  });

  test('non-public template is rejected', async () => {
    const response = await world.get('/v1/images/default?prompt=x');
    assertJsonError(response, 403, 'permission_denied');
    assert.equal(await generations(), 0);
  });

  test('signed free prompt is accepted', async () => {
    const response = await world.get(await world.sign('/generate-image?prompt=signed+in+templates+mode'));
    assert.equal(response.status, 200, response.body.toString());
  });
});

// ---------------------------------------------------------------------------
// 6: rate limits.
// ---------------------------------------------------------------------------

describe('request rate limit', { timeout: 60_000 }, () => {
  let world;

  before(async () => {
    world = await World.start({ rateLimits: { requests_per_second: 1, burst: 3, generations_per_minute: 0 } });
  });

  after(async () => {
    await world?.close();
  });

  test('fourth quick request gets 429', async () => {
    const url = await world.sign('/generate-image?prompt=request+rate');
    const statuses = [];
    let last;
    for (let i = 0; i < 4; i++) {
      last = await world.get(url);
      statuses.push(last.status);
    }
    assert.deepEqual(statuses, [200, 200, 200, 429]);
    assertJsonError(last, 429, 'rate_limited');
    assert.match(last.headers['retry-after'] ?? '', /^[1-9]\d*$/);
    assert.match(last.headers['ratelimit-policy'] ?? '', /^"requests";q=3;w=\d+$/);
    assert.match(last.headers.ratelimit ?? '', /^"requests";r=0;t=\d+$/);
  });
});

describe('generation rate limit', { timeout: 60_000 }, () => {
  let world;

  before(async () => {
    world = await World.start({ rateLimits: { requests_per_second: 0, generations_per_minute: 1, generation_burst: 2 } });
  });

  after(async () => {
    await world?.close();
  });

  test('third new prompt gets 429', async () => {
    const first = await world.get(await world.sign('/generate-image?prompt=generation+one'));
    const second = await world.get(await world.sign('/generate-image?prompt=generation+two'));
    const third = await world.get(await world.sign('/generate-image?prompt=generation+three'));
    assert.equal(first.status, 200, first.body.toString());
    assert.equal(second.status, 200, second.body.toString());
    assertJsonError(third, 429, 'rate_limited');
    assert.match(third.headers['retry-after'] ?? '', /^[1-9]\d*$/);
    assert.equal(await generations(), 2);

    const hit = await world.get(await world.sign('/generate-image?prompt=generation+one'));
    assert.equal(hit.status, 200, hit.body.toString());
    assert.equal(hit.headers['x-pixelgate-cache'], 'hit');
    assert.equal(await generations(), 2);
  });

  test('generation 429 has RateLimit headers', async () => {
    // docs/errors.md: for rate_limited, "RateLimit-Policy and RateLimit say which" limit.
    const response = await world.get(await world.sign('/generate-image?prompt=generation+four'));
    assertJsonError(response, 429, 'rate_limited');
    assert.match(response.headers['ratelimit-policy'] ?? '', /^"generations";q=2;w=\d+$/);
    assert.match(response.headers.ratelimit ?? '', /^"generations";r=0;t=\d+$/);
  });
});

describe('client address buckets', { timeout: 60_000 }, () => {
  // A tight limit: one request, then one more every 10 s.
  const tight = { requests_per_second: 0.1, burst: 1, generations_per_minute: 0 };
  let trusted;
  let untrusted;
  let url;

  before(async () => {
    trusted = await World.start({ rateLimits: tight, security: { trusted_proxies: ['127.0.0.1'] } });
    untrusted = await World.start({ rateLimits: tight });
    url = await trusted.sign('/generate-image?prompt=client+buckets');
  });

  after(async () => {
    await trusted?.close();
    await untrusted?.close();
  });

  const from = (address) => ({ headers: { 'x-forwarded-for': address } });

  test('trusted proxy separates clients', async () => {
    const first = await trusted.get(url, from('203.0.113.1'));
    const again = await trusted.get(url, from('203.0.113.1'));
    const other = await trusted.get(url, from('203.0.113.2'));
    assert.equal(first.status, 200, first.body.toString());
    assertJsonError(again, 429, 'rate_limited');
    assert.equal(other.status, 200, other.body.toString());
  });

  test('untrusted X-Forwarded-For is ignored', async () => {
    const first = await untrusted.get(url, from('203.0.113.1'));
    const other = await untrusted.get(url, from('203.0.113.2'));
    assert.equal(first.status, 200, first.body.toString());
    assertJsonError(other, 429, 'rate_limited');
  });
});

// ---------------------------------------------------------------------------
// 7: budgets.
// ---------------------------------------------------------------------------

/** Sends one GET through `agent` and resolves to { status, headers, body }, or { status: 'error', error }. */
function agentGet(port, path, agent, timeoutMs) {
  return new Promise((resolvePromise) => {
    const req = httpRequest({ host: HOST, port, path, agent }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        clearTimeout(timer);
        resolvePromise({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) });
      });
      res.on('error', (error) => {
        clearTimeout(timer);
        resolvePromise({ status: 'error', error: error.message });
      });
    });
    const timer = setTimeout(() => req.destroy(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (error) => {
      clearTimeout(timer);
      resolvePromise({ status: 'error', error: error.message });
    });
    req.end();
  });
}

describe('budgets', { timeout: 90_000 }, () => {
  let world;
  let burst = [];
  const REQUESTS = 1000;

  before(async () => {
    world = await World.start({
      limits: { max_concurrent_generations: 2000, max_concurrent_generations_per_key: 2000 },
      budgets: { daily_usd: 0.1 },
      costs: [{ model: '*', usd: 0.01 }],
    });
  });

  after(async () => {
    await world?.close();
  });

  // NOTE: the budget is per UTC day, so a run that crosses midnight UTC resets it and fails here.
  test('daily budget caps a burst', async (t) => {
    await fake.control({ delay_ms: 200 });
    const { secret } = SIGNING_KEYS.k0;
    const urls = [];
    for (let i = 0; i < REQUESTS; i++) {
      urls.push(signUrl(`/generate-image?prompt=budget burst ${i}`, 'k0', secret));
    }
    const agent = new Agent({ keepAlive: true, maxSockets: 200 });
    const started = Date.now();
    let responses;
    try {
      responses = await Promise.all(urls.map((url) => agentGet(world.port, url, agent, 40_000)));
    } finally {
      agent.destroy();
    }
    const elapsed = Date.now() - started;
    burst = responses;

    const outcome = (response) => {
      if (response.status === 'error') {
        return `error: ${response.error}`;
      }
      if (response.status === 200) {
        return '200';
      }
      let code = 'not JSON';
      try {
        code = JSON.parse(response.body.toString()).error.code;
      } catch {
        // Reported as "not JSON".
      }
      return `${response.status} ${code}`;
    };
    const counts = countBy(responses.map(outcome));
    const stats = await fake.stats();
    t.diagnostic(`${REQUESTS} requests in ${elapsed} ms: ${JSON.stringify(counts)}; fake generations ${stats.generations}, max concurrent ${stats.max_concurrent}`);

    assert.ok(stats.generations <= 10, `the fake saw ${stats.generations} generations`);
    const ok = responses.filter(({ status }) => status === 200);
    assert.ok(ok.length <= 10, `${ok.length} images were generated`);
    const others = Object.keys(counts).filter((key) => !['200', '429 budget_exhausted', '503 unavailable'].includes(key));
    assert.deepEqual(others, [], 'the rest are 429 budget_exhausted or 503 unavailable');
    const noRetryAfter = responses.filter(({ status, headers }) => (status === 429 || status === 503) && !/^[1-9]\d*$/.test(headers['retry-after'] ?? ''));
    assert.equal(noRetryAfter.length, 0, 'every 429 and 503 has Retry-After');
  });

  test('images cost the table price', () => {
    const ok = burst.filter(({ status }) => status === 200);
    assert.ok(ok.length > 0, 'the burst generated images');
    const costs = ok.map(({ headers }) => headers['x-pixelgate-cost-usd']);
    assert.deepEqual(costs.filter((cost) => cost !== '0.010000'), [], 'each image costs 0.010000');
  });

  test('spend survives a restart', async () => {
    await world.restart();
    const response = await world.get(signUrl('/generate-image?prompt=after the restart', 'k0', SIGNING_KEYS.k0.secret));
    assertJsonError(response, 429, 'budget_exhausted');
    assert.match(response.headers['retry-after'] ?? '', /^[1-9]\d*$/);
    assert.equal(await generations(), 0);
  });

  async function costsTotal() {
    const output = await runCli(['costs', '--config', world.configPath, '--by', 'key']);
    const total = /^total\s+(\d+)\s+([\d.]+)\s*$/m.exec(output);
    assert.ok(total, `a total line in:\n${output}`);
    return { images: total[1], usd: total[2], output };
  }

  test('costs CLI counts 10 images', async () => {
    const { images, output } = await costsTotal();
    assert.equal(images, '10', output);
  });

  test('costs CLI total is 0.1000', async () => {
    const { usd, output } = await costsTotal();
    assert.equal(usd, '0.1000', output);
  });
});

// ---------------------------------------------------------------------------
// 8: concurrency cap.
// ---------------------------------------------------------------------------

describe('concurrency cap', { timeout: 60_000 }, () => {
  let world;

  before(async () => {
    world = await World.start({ limits: { max_concurrent_generations: 2 } });
  });

  after(async () => {
    await world?.close();
  });

  test('two generations at a time', async (t) => {
    await fake.control({ delay_ms: 1500 });
    const urls = await Promise.all([1, 2, 3, 4, 5].map((i) => world.sign(`/generate-image?prompt=concurrent+${i}`)));
    const responses = await Promise.all(urls.map((url) => world.get(url)));
    const statuses = responses.map(({ status }) => status);
    t.diagnostic(`statuses: ${statuses.join(', ')}`);
    const stats = await fake.stats();
    assert.ok(stats.max_concurrent <= 2, `max_concurrent ${stats.max_concurrent}`);
    assert.equal(statuses.filter((status) => status === 200).length, 2);
    const rest = responses.filter(({ status }) => status !== 200);
    assert.deepEqual(rest.map(({ status }) => status), [503, 503, 503]);
    for (const response of rest) {
      assertJsonError(response, 503, 'unavailable');
      assert.match(response.headers['retry-after'] ?? '', /^[1-9]\d*$/);
    }
  });
});
