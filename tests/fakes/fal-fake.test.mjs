// Tests of the fake fal queue, and of its protocol against the official `@fal-ai/client` npm
// client (skipped when tests/node_modules lacks it).

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, beforeEach, test } from 'node:test';

import { startFakeServer } from './fal-fake.mjs';

const KEY = 'fal-test-fake';
const CLIENT = new URL('../node_modules/@fal-ai/client/src/index.js', import.meta.url);
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
    headers: { 'content-type': 'application/json', authorization: `Key ${KEY}`, ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, json: text ? JSON.parse(text) : null };
}

async function pollUntilCompleted(id) {
  const seen = [];
  for (let i = 0; i < 100; i++) {
    const status = (await call('GET', `/fal-ai/flux/requests/${id}/status`)).json.status;
    seen.push(status);
    if (status === 'COMPLETED') return seen;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`request ${id} never completed: ${seen.join(',')}`);
}

test('submit, poll and fetch result', async () => {
  await call('POST', '/__control', { queue_ms: 100, processing_ms: 100 });
  const submitted = await call('POST', '/fal-ai/flux/schnell', { prompt: 'a cat', image_size: { width: 640, height: 480 }, output_format: 'png' });
  assert.equal(submitted.status, 200);
  assert.equal(submitted.json.status_url, `${fake.baseUrl}/fal-ai/flux/requests/${submitted.json.request_id}/status`);
  const seen = await pollUntilCompleted(submitted.json.request_id);
  assert.ok(seen.includes('IN_QUEUE'), seen.join(','));
  assert.ok(seen.includes('IN_PROGRESS'), seen.join(','));
  const result = await call('GET', `/fal-ai/flux/requests/${submitted.json.request_id}`);
  assert.equal(result.json.images[0].width, 640);
  assert.deepEqual(result.json.has_nsfw_concepts, [false]);
  const image = Buffer.from(await (await fetch(result.json.images[0].url)).arrayBuffer());
  assert.equal(image.readUInt32BE(16), 640);
});

test('wrong key gets 401', async () => {
  const answer = await call('POST', '/fal-ai/flux/schnell', { prompt: 'x' }, { authorization: 'Key nope' });
  assert.equal(answer.status, 401);
});

test('invalid input fails at result', async () => {
  const submitted = await call('POST', '/fal-ai/flux/schnell', { prompt: 'x', image_size: 'huge' });
  await pollUntilCompleted(submitted.json.request_id);
  const result = await call('GET', `/fal-ai/flux/requests/${submitted.json.request_id}`);
  assert.equal(result.status, 422);
  assert.deepEqual(result.json.detail[0].loc, ['body', 'image_size']);
});

test('cancel is recorded in stats', async () => {
  await call('POST', '/__control', { queue_ms: 10_000 });
  const submitted = await call('POST', '/fal-ai/flux/schnell', { prompt: 'x' });
  const canceled = await call('PUT', `/fal-ai/flux/requests/${submitted.json.request_id}/cancel`);
  assert.equal(canceled.status, 202);
  assert.deepEqual((await call('GET', '/__stats')).json.canceled_ids, [submitted.json.request_id]);
});

test('official client subscribes to flux', { skip: !existsSync(CLIENT) && '@fal-ai/client not installed' }, async () => {
  const { createFalClient } = await import(CLIENT.href);
  await call('POST', '/__control', { queue_ms: 100, processing_ms: 100 });
  // The client builds https://queue.fal.run URLs; its documented requestMiddleware option
  // rewrites each one to the fake before any fetch happens.
  const client = createFalClient({
    credentials: KEY,
    requestMiddleware: async (request) => ({ ...request, url: request.url.replace('https://queue.fal.run', fake.baseUrl) }),
  });
  const result = await client.subscribe('fal-ai/flux/schnell', { input: { prompt: 'a cat', image_size: 'square', output_format: 'png' }, mode: 'polling', pollInterval: 50 });
  assert.equal(result.data.images[0].width, 512);
  assert.match(result.requestId, /^[0-9a-f-]{36}$/);
  const stats = (await call('GET', '/__stats')).json;
  assert.ok(stats.status_polls >= 1, `status polls: ${stats.status_polls}`);
  assert.equal(stats.results, 1);
});

test('official client cancels a request', { skip: !existsSync(CLIENT) && '@fal-ai/client not installed' }, async () => {
  const { createFalClient } = await import(CLIENT.href);
  await call('POST', '/__control', { queue_ms: 10_000 });
  const client = createFalClient({
    credentials: KEY,
    requestMiddleware: async (request) => ({ ...request, url: request.url.replace('https://queue.fal.run', fake.baseUrl) }),
  });
  const { request_id: id } = await client.queue.submit('fal-ai/flux/schnell', { input: { prompt: 'x' } });
  await client.queue.cancel('fal-ai/flux/schnell', { requestId: id });
  assert.deepEqual((await call('GET', '/__stats')).json.canceled_ids, [id]);
});
