// Tests of the fake Stability AI server itself, in process, with Node's own fetch and FormData.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';

import { servedSize, startFakeServer } from './stability-fake.mjs';

const KEY = 'sk-stability-fake-test';
let fake;

before(async () => {
  fake = await startFakeServer({ apiKey: KEY });
});

after(async () => {
  await fake?.close();
});

beforeEach(async () => {
  await fetch(`${fake.baseUrl}/__reset`, { method: 'POST', body: '{}' });
});

function form(fields) {
  const body = new FormData();
  for (const [name, value] of Object.entries(fields)) body.append(name, value);
  return body;
}

function generate(endpoint, fields, { accept = 'image/*', key = KEY } = {}) {
  return fetch(`${fake.baseUrl}/v2beta/stable-image/generate/${endpoint}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, accept },
    body: form(fields),
  });
}

function pngSize(bytes) {
  return { width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
}

async function control(settings) {
  const response = await fetch(`${fake.baseUrl}/__control`, { method: 'POST', body: JSON.stringify(settings) });
  assert.equal(response.status, 200);
}

describe('stability fake', () => {
  test('raw image answer has headers', async () => {
    const response = await generate('sd3', { prompt: 'a lighthouse', model: 'sd3.5-medium', seed: '42', output_format: 'png' });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'image/png');
    assert.equal(response.headers.get('finish-reason'), 'SUCCESS');
    assert.equal(response.headers.get('seed'), '42');
    assert.deepEqual(pngSize(Buffer.from(await response.arrayBuffer())), { width: 1024, height: 1024 });
  });

  test('json answer carries base64 image', async () => {
    const response = await generate('ultra', { prompt: 'a lighthouse' }, { accept: 'application/json' });
    assert.equal(response.status, 200);
    const body = await response.json();
    assert.equal(body.finish_reason, 'SUCCESS');
    assert.ok(Number.isInteger(body.seed), 'the seed is an integer');
    assert.ok(body.seed > 0, 'seed 0 was replaced by a random seed');
    assert.deepEqual(pngSize(Buffer.from(body.image, 'base64')), { width: 1024, height: 1024 });
  });

  test('wrong key gets 401', async () => {
    const response = await generate('core', { prompt: 'x' }, { key: 'sk-wrong' });
    assert.equal(response.status, 401);
    assert.equal((await response.json()).name, 'unauthorized');
  });

  test('bad aspect ratio gets 400', async () => {
    const response = await generate('ultra', { prompt: 'x', aspect_ratio: '4:3' });
    assert.equal(response.status, 400);
    const body = await response.json();
    assert.equal(body.name, 'bad_request');
    assert.match(body.errors[0], /^aspect_ratio: /);
  });

  test('model field rejected on ultra', async () => {
    const response = await generate('ultra', { prompt: 'x', model: 'sd3.5-large' });
    assert.equal(response.status, 400);
  });

  test('scripted moderation and rate limit', async () => {
    await control({ script: [{ status: 403 }, { status: 429, retry_after: 2 }] });
    const refused = await generate('core', { prompt: 'x' });
    assert.equal(refused.status, 403);
    assert.equal((await refused.json()).name, 'content_moderation');
    const limited = await generate('core', { prompt: 'x' });
    assert.equal(limited.status, 429);
    assert.equal(limited.headers.get('retry-after'), '2');
  });

  test('filtered kind sets finish reason', async () => {
    await control({ script: [{ kind: 'filtered' }] });
    const response = await generate('ultra', { prompt: 'x' });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('finish-reason'), 'CONTENT_FILTERED');
  });

  test('stats record fields and redact key', async () => {
    await generate('sd3', { prompt: 'counted', model: 'sd3.5-large-turbo' });
    const stats = await (await fetch(`${fake.baseUrl}/__stats`)).json();
    assert.equal(stats.generations, 1);
    assert.equal(stats.last_request.fields.model, 'sd3.5-large-turbo');
    assert.equal(stats.last_request.headers.authorization, `***${KEY.slice(-4)}`);
  });

  test('served sizes keep documented square', () => {
    assert.deepEqual(servedSize('ultra', '1:1'), { width: 1024, height: 1024 });
    assert.deepEqual(servedSize('sd3', '1:1'), { width: 1024, height: 1024 });
  });

  test('unknown control key gets 400', async () => {
    const response = await fetch(`${fake.baseUrl}/__control`, { method: 'POST', body: JSON.stringify({ colour: 1 }) });
    assert.equal(response.status, 400);
  });
});
