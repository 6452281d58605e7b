// Tests of the fake Replicate server, and of its protocol against the official `replicate` npm
// client (skipped when tests/node_modules lacks it).

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, beforeEach, test } from 'node:test';

import { startFakeServer } from './replicate-fake.mjs';

const KEY = 'r8_test_fake';
const CLIENT = new URL('../node_modules/replicate/index.js', import.meta.url);
let fake;

before(async () => {
  fake = await startFakeServer({ apiKey: KEY });
});
after(async () => {
  await fake?.close();
});
beforeEach(async () => {
  await call('POST', '/__reset', {});
});

async function call(method, path, body, headers = {}) {
  const response = await fetch(`${fake.baseUrl}${path}`, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, headers: response.headers, json: text ? JSON.parse(text) : null };
}

const FLUX = '/v1/models/black-forest-labs/flux-schnell/predictions';

test('sync wait returns succeeded prediction', async () => {
  const answer = await call('POST', FLUX, { input: { prompt: 'a cat', aspect_ratio: '16:9', output_format: 'png' } }, { prefer: 'wait=5' });
  assert.equal(answer.status, 201);
  assert.equal(answer.json.status, 'succeeded');
  const image = await fetch(answer.json.output[0]);
  assert.equal(image.status, 200);
  const bytes = Buffer.from(await image.arrayBuffer());
  assert.equal(bytes.readUInt32BE(16), 1344);
  assert.equal(bytes.readUInt32BE(20), 768);
});

test('wrong token gets problem JSON', async () => {
  const answer = await call('POST', FLUX, { input: { prompt: 'a cat' } }, { authorization: 'Bearer nope' });
  assert.equal(answer.status, 401);
  assert.equal(answer.json.title, 'Unauthenticated');
  assert.equal(answer.json.status, 401);
});

test('bad aspect ratio names field', async () => {
  const answer = await call('POST', FLUX, { input: { prompt: 'a cat', aspect_ratio: '7:5' } });
  assert.equal(answer.status, 422);
  assert.equal(answer.json.invalid_fields[0].field, 'input.aspect_ratio');
});

test('async prediction moves through states', async () => {
  await call('POST', '/__control', { processing_ms: 300 });
  const created = await call('POST', FLUX, { input: { prompt: 'slow', output_format: 'png' } });
  assert.equal(created.json.status, 'starting');
  const seen = new Set();
  for (let i = 0; i < 50 && !seen.has('succeeded'); i++) {
    seen.add((await call('GET', `/v1/predictions/${created.json.id}`)).json.status);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.ok(seen.has('processing'), [...seen].join(','));
  assert.ok(seen.has('succeeded'), [...seen].join(','));
});

test('cancel is recorded in stats', async () => {
  await call('POST', '/__control', { processing_ms: 10_000 });
  const created = await call('POST', FLUX, { input: { prompt: 'never', output_format: 'png' } });
  const canceled = await call('POST', `/v1/predictions/${created.json.id}/cancel`);
  assert.equal(canceled.json.status, 'canceled');
  const stats = await call('GET', '/__stats');
  assert.deepEqual(stats.json.canceled_ids, [created.json.id]);
});

test('official client runs flux-schnell', { skip: !existsSync(CLIENT) && 'replicate package not installed' }, async () => {
  const { default: Replicate } = await import(CLIENT.href);
  await call('POST', '/__control', { processing_ms: 200, max_sync_wait_ms: 0 });
  const client = new Replicate({ auth: KEY, baseUrl: `${fake.baseUrl}/v1`, useFileOutput: false });
  const output = await client.run('black-forest-labs/flux-schnell', { input: { prompt: 'a cat', output_format: 'png' }, wait: { mode: 'poll', interval: 50 } });
  assert.equal(output.length, 1);
  assert.match(output[0], /^http:\/\/127\.0\.0\.1:\d+\/files\//);
  const stats = await call('GET', '/__stats');
  assert.ok(stats.json.polls >= 1, `polls: ${stats.json.polls}`);
});

test('official client sees failed prediction', { skip: !existsSync(CLIENT) && 'replicate package not installed' }, async () => {
  const { default: Replicate } = await import(CLIENT.href);
  await call('POST', '/__control', { script: [{ outcome: 'nsfw' }] });
  const client = new Replicate({ auth: KEY, baseUrl: `${fake.baseUrl}/v1` });
  await assert.rejects(client.run('black-forest-labs/flux-schnell', { input: { prompt: 'x', output_format: 'png' } }), /NSFW/);
});

test('official client creates version prediction', { skip: !existsSync(CLIENT) && 'replicate package not installed' }, async () => {
  const { default: Replicate } = await import(CLIENT.href);
  const client = new Replicate({ auth: KEY, baseUrl: `${fake.baseUrl}/v1` });
  const prediction = await client.predictions.create({ version: 'a'.repeat(64), input: { prompt: 'x', width: 512, height: 256 }, wait: 5 });
  assert.equal(prediction.status, 'succeeded');
  const stats = await call('GET', '/__stats');
  assert.equal(stats.json.last_request.headers.prefer, 'wait=5');
});
