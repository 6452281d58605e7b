// Crash safety: SIGKILL pixelgate in the middle of a run of generations, restart it on the
// same storage, and check that every image it serves is complete and correct.

import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { checkCompletePng, Gateway, openaiBackend, reprDigest, sha256Hex } from './lib/harness.mjs';

const MODEL = 'gpt-image-2';
const SIZES = ['1024x1024', '1536x864', '768x1344'];
const IMAGE_COUNT = 30;
const KILL_AFTER = 15;
const CONCURRENCY = 3;

const images = Array.from({ length: IMAGE_COUNT }, (_, i) => ({
  prompt: `crash safety image ${i}`,
  size: SIZES[i % SIZES.length],
}));
const pathOf = ({ prompt, size }) => `/generate-image?prompt=${encodeURIComponent(prompt)}&size=${size}`;

let gateway;

before(async () => {
  gateway = await Gateway.start((fake) => ({ backends: { openai: openaiBackend(fake, { model: MODEL }) } }));
  await gateway.fake.control({ delay_ms: 40 });
});

after(async () => {
  await gateway?.close();
});

/** Returns the path of the file named `name` under `folder`, searching sub-folders, or null. */
async function findFile(folder, name) {
  for (const entry of await readdir(folder, { withFileTypes: true })) {
    const path = join(folder, entry.name);
    if (entry.isDirectory()) {
      const found = await findFile(path, name);
      if (found) {
        return found;
      }
    } else if (entry.name === name) {
      return path;
    }
  }
  return null;
}

/** Checks one served image against the fake's expected bytes. */
async function assertServedImage(response, { prompt, size }) {
  assert.equal(response.status, 200, `${prompt}: ${response.body.toString().slice(0, 200)}`);
  const { width, height } = checkCompletePng(response.body);
  assert.equal(`${width}x${height}`, size, prompt);
  assert.equal(sha256Hex(response.body), await gateway.fake.expectedSha256({ model: MODEL, prompt, size }), prompt);
  assert.equal(response.headers['repr-digest'], reprDigest(response.body), prompt);
}

describe('crash', { timeout: 60_000 }, () => {
  // Filled by the first test: the images whose 200 response arrived before the kill.
  const completed = [];

  test('SIGKILL mid-run', async (t) => {
    let next = 0;
    let killed = null;
    const worker = async () => {
      while (next < images.length && !killed) {
        const image = images[next++];
        try {
          const response = await gateway.get(pathOf(image), { timeoutMs: 10_000 });
          if (!killed) {
            await assertServedImage(response, image);
            completed.push(image);
          }
        } catch (error) {
          if (!killed) {
            throw error;
          }
          // Requests cut off by the kill fail with a connection error; that is expected.
        }
        if (completed.length >= KILL_AFTER && !killed) {
          killed = gateway.stopGateway({ signal: 'SIGKILL' });
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));

    assert.ok(killed, 'the kill happened before the run ended');
    const exit = await killed;
    assert.equal(exit.signal, 'SIGKILL');
    assert.ok(completed.length >= KILL_AFTER, `${completed.length} images completed before the kill`);
    assert.ok(completed.length < IMAGE_COUNT, 'the kill came before the last image');
    t.diagnostic(`${completed.length} images completed; tmp/ held ${(await gateway.listTmp()).length} files after the kill`);
  });

  test('restart cleans tmp', async () => {
    // Add a file like the one an interrupted write leaves, in case the kill hit no write in progress.
    await writeFile(join(gateway.storagePath, 'tmp', `${'0'.repeat(64)}.tmp-crash`), 'partial bytes');
    await gateway.restart();
    assert.deepEqual(await gateway.listTmp(), []);
  });

  test('acknowledged images survive', async () => {
    assert.ok(completed.length > 0, 'the kill test recorded completed images');
    const before = (await gateway.fake.stats()).generations;
    for (const image of completed) {
      const response = await gateway.get(pathOf(image));
      await assertServedImage(response, image);
      assert.equal(response.headers['x-pixelgate-cache'], 'hit', `${image.prompt} is served from disk`);
    }
    assert.equal((await gateway.fake.stats()).generations, before);
  });

  test('every image served correctly', async () => {
    for (const image of images) {
      await assertServedImage(await gateway.get(pathOf(image)), image);
    }
  });

  test('damaged object not served', async () => {
    const image = images[0];
    const key = (await gateway.get(pathOf(image))).headers['x-pixelgate-key'];
    const objectPath = await findFile(join(gateway.storagePath, 'objects'), key);
    assert.ok(objectPath, `the object file for ${key} exists`);
    await gateway.stopGateway();

    // Flip one byte in the middle of the stored PNG, as a disk fault would.
    const bytes = await readFile(objectPath);
    bytes[bytes.length >> 1] ^= 0xff;
    await writeFile(objectPath, bytes);

    await gateway.restart();
    const before = (await gateway.fake.stats()).generations;
    const response = await gateway.get(pathOf(image));
    await assertServedImage(response, image);
    assert.equal((await gateway.fake.stats()).generations, before + 1, 'the damaged object was generated again');
  });
});
