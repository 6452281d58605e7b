// Checks tests/fakes/a1111-fake.mjs against the web UI API it imitates: the txt2img response,
// FastAPI validation errors, basic auth, and the loud failure on overlapping calls.

import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';

import { startFakeServer } from './a1111-fake.mjs';

const AUTH = 'user:pw';
let server;

before(async () => {
  server = await startFakeServer({ auth: AUTH });
});

after(async () => {
  await server?.close();
});

beforeEach(() => {
  server.fake.settings = { delay_ms: 0, script: [] };
  server.fake.resetCounters();
});

function txt2img(body, { auth = AUTH } = {}) {
  const headers = { 'content-type': 'application/json' };
  if (auth) headers.authorization = `Basic ${Buffer.from(auth).toString('base64')}`;
  return fetch(`${server.baseUrl}/sdapi/v1/txt2img`, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
}

test('txt2img answers images parameters info', async () => {
  const response = await txt2img({ prompt: 'a cat', width: 64, height: 128, seed: 5, sampler_name: 'Euler a' });
  assert.equal(response.status, 200);
  const body = await response.json();
  const png = Buffer.from(body.images[0], 'base64');
  assert.equal(png.readUInt32BE(16), 64);
  assert.equal(png.readUInt32BE(20), 128);
  assert.equal(JSON.parse(body.info).seed, 5);
  assert.equal(body.parameters.prompt, 'a cat');
});

test('wrong type gives FastAPI 422', async () => {
  const response = await txt2img({ prompt: 'a cat', width: 'wide' });
  assert.equal(response.status, 422);
  assert.deepEqual((await response.json()).detail[0].loc, ['body', 'width']);
});

test('unknown sampler gives 404', async () => {
  const response = await txt2img({ prompt: 'a cat', sampler_name: 'Nope' });
  assert.equal(response.status, 404);
  assert.equal((await response.json()).detail, 'Sampler not found');
});

test('missing credentials give 401', async () => {
  const response = await txt2img({ prompt: 'a cat' }, { auth: null });
  assert.equal(response.status, 401);
  assert.equal(response.headers.get('www-authenticate'), 'Basic');
});

test('overlapping calls are a violation', async () => {
  server.fake.settings.delay_ms = 100;
  const [first, second] = await Promise.all([txt2img({ prompt: 'one' }), txt2img({ prompt: 'two' })]);
  assert.deepEqual([first.status, second.status].sort(), [200, 500]);
  assert.equal(server.fake.stats.max_concurrent, 2);
  assert.equal(server.fake.stats.violations.length, 1);
});
