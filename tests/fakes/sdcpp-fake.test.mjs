// Checks tests/fakes/sdcpp-fake.mjs against sd-server's native async API: submission,
// the job states, cancelling a queued job, and the loud failure on overlapping jobs.

import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';

import { startFakeServer } from './sdcpp-fake.mjs';

let server;

before(async () => {
  server = await startFakeServer();
});

after(async () => {
  await server?.close();
});

beforeEach(() => {
  server.fake.settings = { delay_ms: 0, script: [] };
  server.fake.resetCounters();
});

function submit(body) {
  return fetch(`${server.baseUrl}/sdcpp/v1/img_gen`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
}

async function job(id) {
  return (await fetch(`${server.baseUrl}/sdcpp/v1/jobs/${id}`)).json();
}

test('submitted job completes with an image', async () => {
  const response = await submit({ prompt: 'a robot', width: 64, height: 64, seed: 3 });
  assert.equal(response.status, 202);
  const { id, poll_url: pollUrl } = await response.json();
  assert.equal(pollUrl, `/sdcpp/v1/jobs/${id}`);
  let state;
  for (let i = 0; i < 100; i++) {
    state = await job(id);
    if (state.status === 'completed') break;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.equal(state.status, 'completed');
  assert.equal(Buffer.from(state.result.images[0].b64_json, 'base64').readUInt32BE(16), 64);
});

test('invalid parameters give 400', async () => {
  const response = await submit({ prompt: 'a robot', width: 10 });
  assert.equal(response.status, 400);
  assert.equal((await response.json()).error, 'invalid generation parameters');
});

test('queued job can be cancelled', async () => {
  server.fake.settings.script = [{ kind: 'stuck' }];
  const { id } = await (await submit({ prompt: 'stuck' })).json();
  const cancelled = await fetch(`${server.baseUrl}/sdcpp/v1/jobs/${id}/cancel`, { method: 'POST' });
  assert.equal(cancelled.status, 200);
  assert.equal((await job(id)).status, 'cancelled');
});

test('overlapping job is a violation', async () => {
  server.fake.settings.delay_ms = 100;
  await submit({ prompt: 'first' });
  const second = await submit({ prompt: 'second' });
  assert.equal(second.status, 500);
  assert.equal(server.fake.stats.violations.length, 1);
});

test('unknown job gives 404', async () => {
  const response = await fetch(`${server.baseUrl}/sdcpp/v1/jobs/job_missing`);
  assert.equal(response.status, 404);
});
