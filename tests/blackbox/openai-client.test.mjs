// The official openai npm client pointed at pixelgate's OpenAI-compatible route
// (POST /v1/images/generations): base64 and URL outputs must match what /generate-image
// serves, and pixelgate's 400 errors must surface as the client's BadRequestError.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';

import { checkCompletePng, Gateway, OPENAI_CLIENT_PATH, openaiBackend, request, sha256Hex } from './lib/harness.mjs';

const MODEL = 'gpt-image-2';
// The client always sends its key, and pixelgate checks any key it receives against [api_keys].
const CLIENT_KEY = 'pg-blackbox-client-key-0001';
const skip = existsSync(OPENAI_CLIENT_PATH) ? false : 'the openai package is missing; run "npm ci" in tests/blackbox';
let gateway;
let OpenAI;
let client;

before(async () => {
  if (skip) {
    return;
  }
  ({ default: OpenAI } = await import(pathToFileURL(OPENAI_CLIENT_PATH).href));
  gateway = await Gateway.start((fake) => ({
    backends: { openai: openaiBackend(fake, { model: MODEL }) },
    templates: { poster: { width: 1536, height: 864, style: 'bold poster art' } },
    api_keys: { client: { sha256: sha256Hex(CLIENT_KEY) } },
  }));
  client = new OpenAI({ apiKey: CLIENT_KEY, baseURL: `${gateway.pixelgate.baseUrl}/v1`, maxRetries: 0, timeout: 15_000 });
});

after(async () => {
  await gateway?.close();
});

describe('openai client', { skip, timeout: 30_000 }, () => {
  test('b64_json matches generate-image', async () => {
    const result = await client.images.generate({ model: MODEL, prompt: 'client base64 check', size: '1536x864', response_format: 'b64_json' });
    assert.equal(result.data.length, 1);
    const bytes = Buffer.from(result.data[0].b64_json, 'base64');
    const { width, height } = checkCompletePng(bytes);
    assert.equal(width, 1536);
    assert.equal(height, 864);

    const direct = await gateway.get('/generate-image?prompt=client+base64+check&size=1536x864');
    assert.equal(direct.status, 200);
    assert.equal(direct.headers['x-pixelgate-cache'], 'hit', 'both routes share the cache key');
    assert.ok(bytes.equals(direct.body), 'the client got the bytes that /generate-image serves');
    assert.equal(sha256Hex(bytes), await gateway.fake.expectedSha256({ model: MODEL, prompt: 'client base64 check', size: '1536x864' }));
  });

  test('template as model', async () => {
    const result = await client.images.generate({ model: 'poster', prompt: 'client template check', response_format: 'b64_json' });
    const bytes = Buffer.from(result.data[0].b64_json, 'base64');
    assert.equal(checkCompletePng(bytes).width, 1536);

    for (const path of ['/generate-image?prompt=client+template+check&template=poster', '/v1/images/poster?prompt=client+template+check']) {
      const direct = await gateway.get(path);
      assert.equal(direct.status, 200, path);
      assert.ok(bytes.equals(direct.body), `${path} serves the same bytes`);
    }
    const sent = (await gateway.fake.stats()).last_request.body;
    assert.equal(sent.prompt, 'client template check, bold poster art');
  });

  test('url points at pixelgate', async () => {
    const result = await client.images.generate({ model: MODEL, prompt: 'client url check', size: '1024x1024', response_format: 'url' });
    const url = result.data[0].url;
    assert.match(url, new RegExp(`^${gateway.pixelgate.baseUrl}/images/[0-9a-f]{64}\\.png$`));

    const stored = await request(url);
    assert.equal(stored.status, 200);
    assert.equal(stored.headers['content-type'], 'image/png');
    const direct = await gateway.get('/generate-image?prompt=client+url+check');
    assert.ok(stored.body.equals(direct.body), 'the URL serves the /generate-image bytes');
    assert.equal(url.split('/images/')[1], `${direct.headers['x-pixelgate-key']}.png`);
  });

  const newerModels = [
    { model: 'gpt-image-2.5-sunburst', size: '1536x864', quality: 'xhigh' },
    { model: 'gpt-image-2-2026-04-21', size: '768x1344', quality: 'low' },
    { model: 'chatgpt-image-latest', size: '1536x1024', quality: 'medium' },
  ];
  for (const { model, size, quality } of newerModels) {
    test(`${model} passes through`, async () => {
      const prompt = `client model check for ${model}`;
      const result = await client.images.generate({ model, prompt, size, quality, response_format: 'b64_json' });
      const bytes = Buffer.from(result.data[0].b64_json, 'base64');
      assert.equal(sha256Hex(bytes), await gateway.fake.expectedSha256({ model, prompt, size }));

      const sent = (await gateway.fake.stats()).last_request.body;
      assert.equal(sent.model, model);
      assert.equal(sent.size, size);
      assert.equal(sent.quality, quality);
      assert.equal(sent.response_format, undefined, 'GPT image models get no response_format');
      assert.equal(sent.output_format, 'png');
    });
  }

  test('fixed-size model rejects size', async () => {
    const error = await client.images
      .generate({ model: 'gpt-image-1.5', prompt: 'client fixed size check', size: '1536x864' })
      .then(() => assert.fail('gpt-image-1.5 takes only its three standard sizes'), (caught) => caught);
    assert.ok(error instanceof OpenAI.BadRequestError, `got ${error?.constructor?.name}: ${error?.message}`);
    assert.equal(error.param, 'size');
  });

  test('400 is BadRequestError', async () => {
    const before = (await gateway.fake.stats()).generations;
    const error = await client.images
      .generate({ model: MODEL, prompt: 'client error check', size: '1000x1000', response_format: 'b64_json' })
      .then(() => assert.fail('a 1000x1000 gpt-image-2 request must fail'), (caught) => caught);
    assert.ok(error instanceof OpenAI.BadRequestError, `got ${error?.constructor?.name}: ${error?.message}`);
    assert.equal(error.status, 400);
    assert.equal(error.param, 'size');
    assert.equal(error.type, 'invalid_request_error');
    assert.equal(error.code, 'invalid_argument');
    assert.equal((await gateway.fake.stats()).generations, before, 'the rejected request never reached the backend');
  });
});
