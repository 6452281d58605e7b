// Tests of the fake Bedrock runtime: its SigV4 verifier against AWS's published
// test-suite signatures, and its InvokeModel protocol over loopback.

import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { after, before, beforeEach, describe, test } from 'node:test';

import { awsEncode, computeSignature, sha256Hex, startFakeServer } from './bedrock-fake.mjs';

const ACCESS_KEY = 'AKIDTESTFAKE0001';
const SECRET_KEY = 'test/secret+key=0001';
const REGION = 'us-west-2';

let fake;

before(async () => {
  fake = await startFakeServer({ accessKey: ACCESS_KEY, secretKey: SECRET_KEY, region: REGION });
});

after(async () => {
  await fake?.close();
});

beforeEach(async () => {
  await send('POST', '/__reset', {}, '{}');
});

function amzDate(ms) {
  return new Date(ms).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
}

function send(method, path, headers, body) {
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: fake.port, method, path, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolvePromise({ status: res.statusCode, headers: res.headers, json: JSON.parse(text) });
      });
    });
    req.setTimeout(10_000, () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** Sends a signed InvokeModel call; `tweak` may change the request after signing. */
function invoke(modelId, payload, { secretKey = SECRET_KEY, accessKey = ACCESS_KEY, date = Date.now(), tweak } = {}) {
  const path = `/model/${awsEncode(modelId, false)}/invoke`;
  let body = JSON.stringify(payload);
  const host = `127.0.0.1:${fake.port}`;
  const stamp = amzDate(date);
  const signedHeaders = ['content-type', 'host', 'x-amz-date'];
  const headers = { 'content-type': ['application/json'], host: [host], 'x-amz-date': [stamp] };
  const { signature } = computeSignature({
    method: 'POST', rawPath: path, rawQuery: '', headers, signedHeaders, payloadHash: sha256Hex(body), date: stamp,
    region: REGION, service: 'bedrock', secretKey,
  });
  const sent = {
    'content-type': 'application/json',
    host,
    'x-amz-date': stamp,
    authorization: `AWS4-HMAC-SHA256 Credential=${accessKey}/${stamp.slice(0, 8)}/${REGION}/bedrock/aws4_request, SignedHeaders=${signedHeaders.join(';')}, Signature=${signature}`,
  };
  if (tweak) body = tweak(sent, body);
  return send('POST', path, sent, body);
}

const NOVA = 'amazon.nova-canvas-v1:0';
const NOVA_BODY = {
  taskType: 'TEXT_IMAGE',
  textToImageParams: { text: 'a red kite' },
  imageGenerationConfig: { numberOfImages: 1, width: 512, height: 512, seed: 3 },
};

describe('signature verifier', () => {
  test('matches the get-vanilla vector', () => {
    // AWS Signature Version 4 test suite, case get-vanilla.
    const { signature } = computeSignature({
      method: 'GET', rawPath: '/', rawQuery: '',
      headers: { host: ['example.amazonaws.com'], 'x-amz-date': ['20150830T123600Z'] },
      signedHeaders: ['host', 'x-amz-date'], payloadHash: sha256Hex(''), date: '20150830T123600Z',
      region: 'us-east-1', service: 'service', secretKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY',
    });
    assert.equal(signature, '5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31');
  });

  test('matches the get-space vector', () => {
    const { signature } = computeSignature({
      method: 'GET', rawPath: '/example space/', rawQuery: '',
      headers: { host: ['example.amazonaws.com'], 'x-amz-date': ['20150830T123600Z'] },
      signedHeaders: ['host', 'x-amz-date'], payloadHash: sha256Hex(''), date: '20150830T123600Z',
      region: 'us-east-1', service: 'service', secretKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY',
    });
    assert.equal(signature, '652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741');
  });
});

describe('InvokeModel', { timeout: 30_000 }, () => {
  test('signed Nova request succeeds', async () => {
    const response = await invoke(NOVA, NOVA_BODY);
    assert.equal(response.status, 200, JSON.stringify(response.json));
    assert.equal(response.json.error, null);
    assert.equal(Buffer.from(response.json.images[0], 'base64').subarray(1, 4).toString(), 'PNG');
    assert.match(response.headers['x-amzn-requestid'], /^[0-9a-f-]{36}$/);
  });

  test('tampered body is rejected', async () => {
    const response = await invoke(NOVA, NOVA_BODY, { tweak: (_headers, body) => body.replace('red', 'blue') });
    assert.equal(response.status, 403);
    assert.equal(response.headers['x-amzn-errortype'], 'InvalidSignatureException');
    assert.match(response.json.message, /^The request signature we calculated does not match/);
  });

  test('wrong secret is rejected', async () => {
    const response = await invoke(NOVA, NOVA_BODY, { secretKey: 'not-the-secret' });
    assert.equal(response.status, 403);
    assert.equal(response.headers['x-amzn-errortype'], 'InvalidSignatureException');
  });

  test('unknown access key is rejected', async () => {
    const response = await invoke(NOVA, NOVA_BODY, { accessKey: 'AKIDUNKNOWN' });
    assert.equal(response.headers['x-amzn-errortype'], 'UnrecognizedClientException');
  });

  test('expired timestamp is rejected', async () => {
    const response = await invoke(NOVA, NOVA_BODY, { date: Date.now() - 10 * 60 * 1000 });
    assert.equal(response.status, 403);
    assert.match(response.json.message, /^Signature expired: /);
  });

  test('missing authorization is rejected', async () => {
    const response = await send('POST', `/model/${awsEncode(NOVA, false)}/invoke`, { 'content-type': 'application/json' }, '{}');
    assert.equal(response.headers['x-amzn-errortype'], 'MissingAuthenticationTokenException');
  });

  test('Titan unlisted size is invalid', async () => {
    const body = { ...NOVA_BODY, imageGenerationConfig: { width: 1000, height: 1000 } };
    const response = await invoke('amazon.titan-image-generator-v2:0', body);
    assert.equal(response.status, 400);
    assert.equal(response.headers['x-amzn-errortype'], 'ValidationException');
  });

  test('Stability response has seeds', async () => {
    const response = await invoke('stability.sd3-5-large-v1:0', { prompt: 'a kite', aspect_ratio: '16:9', seed: 9, output_format: 'png' });
    assert.equal(response.status, 200, JSON.stringify(response.json));
    assert.deepEqual(response.json.seeds, [9]);
    assert.deepEqual(response.json.finish_reasons, [null]);
  });

  test('scripted throttling uses AWS shape', async () => {
    await send('POST', '/__control', { 'content-type': 'application/json' }, JSON.stringify({ script: [{ status: 429 }] }));
    const response = await invoke(NOVA, NOVA_BODY);
    assert.equal(response.status, 429);
    assert.equal(response.headers['x-amzn-errortype'], 'ThrottlingException');
    assert.equal(typeof response.json.message, 'string');
  });

  test('content filter refuses Nova', async () => {
    await send('POST', '/__control', { 'content-type': 'application/json' }, JSON.stringify({ script: [{ kind: 'content_filtered' }] }));
    const response = await invoke(NOVA, NOVA_BODY);
    assert.equal(response.status, 400);
    assert.match(response.json.message, /blocked by our content filters/);
  });

  test('stats count invocations', async () => {
    await invoke(NOVA, NOVA_BODY);
    const stats = await send('GET', '/__stats', {}, undefined);
    assert.equal(stats.json.invocations, 1);
    assert.match(stats.json.last_request.headers.authorization, /^\*\*\*/);
  });
});
