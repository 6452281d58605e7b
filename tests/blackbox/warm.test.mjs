// `pixelgate warm FILE` against the fake OpenAI server: it generates what is not stored,
// counts stored images and duplicates, reports bad lines by number, stops before passing
// --max-usd, and leaves images that the running server then serves as hits.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { API_KEY_ENV, Gateway, PIXELGATE_BIN, TEST_API_KEY, openaiBackend } from './lib/harness.mjs';

const RUN_TIMEOUT_MS = 60_000;
let gateway;

/** Runs `pixelgate warm` with the gateway's configuration; resolves to { code, stdout, stderr }. */
function runWarm(file, extra = []) {
  const env = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!name.startsWith('PIXELGATE_') && !name.startsWith('OPENAI_')) {
      env[name] = value;
    }
  }
  env[API_KEY_ENV] = TEST_API_KEY;
  return new Promise((resolvePromise, reject) => {
    const child = spawn(PIXELGATE_BIN, ['warm', file, '--config', gateway.configPath, ...extra], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`pixelgate warm did not finish within ${RUN_TIMEOUT_MS} ms; stderr:\n${stderr}`));
    }, RUN_TIMEOUT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** Reads "generated 2, cached 1, ..." from the summary line into numbers. */
function summary(stdout) {
  const line = stdout.split('\n').find((text) => text.startsWith('generated '));
  assert.ok(line, `no summary line in:\n${stdout}`);
  const counts = {};
  for (const [, name, value] of line.matchAll(/([a-z ]+?) (\d+)(?:,|$)/g)) {
    counts[name.trim()] = Number(value);
  }
  counts.spent = line.match(/spent \$([0-9.]+)/)?.[1];
  return counts;
}

before(async () => {
  gateway = await Gateway.start((fake) => ({ backends: { openai: openaiBackend(fake) } }));
});

after(async () => {
  await gateway?.close();
});

describe('warm command', { timeout: 120_000 }, () => {
  test('warms new lines and reports the rest', async () => {
    const cachedPath = '/generate-image?prompt=warm+already+cached&size=1024x1024';
    assert.equal((await gateway.get(cachedPath)).status, 200);
    const before = (await gateway.fake.stats()).generations;

    const file = join(gateway.dir, 'warm-list.txt');
    await writeFile(
      file,
      [
        '# pages for the launch',
        '/generate-image?prompt=warm+alpha&size=1024x1024',
        '',
        '{"prompt": "warm beta", "width": 1024, "height": 1024}',
        '/generate-image?size=1024x1024&prompt=warm+alpha',
        '{"prompt": "warm gamma", "colour": "red"}',
        cachedPath,
      ].join('\n'),
    );
    const run = await runWarm(file, ['--concurrency', '2']);
    assert.equal(run.code, 1, `the bad line makes the exit code 1; stdout:\n${run.stdout}\nstderr:\n${run.stderr}`);
    const counts = summary(run.stdout);
    assert.equal(counts.generated, 2);
    assert.equal(counts.cached, 1);
    assert.equal(counts.duplicates, 1);
    assert.equal(counts.invalid, 1);
    assert.equal(counts.failed, 0);
    assert.equal(counts['not started'], 0);
    assert.match(run.stdout, /line 6: unknown field "colour"/);
    assert.match(run.stderr, /line 6: unknown field "colour"/);
    assert.match(run.stderr, /warm: 3\/3 done: 2 generated, 1 cached, 0 failed/);
    assert.equal((await gateway.fake.stats()).generations - before, 2);

    for (const path of ['/generate-image?prompt=warm+alpha&size=1024x1024', '/generate-image?prompt=warm+beta&size=1024x1024']) {
      const response = await gateway.get(path);
      assert.equal(response.status, 200, path);
      assert.equal(response.headers['x-pixelgate-cache'], 'hit', path);
    }
    assert.equal((await gateway.fake.stats()).generations - before, 2, 'the server generated nothing');
  });

  test('a clean file exits 0 and generates nothing twice', async () => {
    const file = join(gateway.dir, 'warm-clean.txt');
    await writeFile(file, '/generate-image?prompt=warm+alpha&size=1024x1024\n{"prompt": "warm beta"}\n');
    const before = (await gateway.fake.stats()).generations;
    const run = await runWarm(file);
    assert.equal(run.code, 0, run.stdout + run.stderr);
    const counts = summary(run.stdout);
    assert.equal(counts.generated, 0);
    assert.equal(counts.cached, 2);
    assert.equal((await gateway.fake.stats()).generations, before);
  });

  test('--max-usd stops before the budget is passed', async () => {
    const file = join(gateway.dir, 'warm-budget.txt');
    await writeFile(file, '/generate-image?prompt=warm+too+expensive&size=1024x1024\n');
    const before = (await gateway.fake.stats()).generations;
    const run = await runWarm(file, ['--max-usd', '0']);
    assert.equal(run.code, 1, run.stdout + run.stderr);
    const counts = summary(run.stdout);
    assert.equal(counts.generated, 0);
    assert.equal(counts['not started'], 1);
    assert.match(run.stdout, /stopped early: the next image \(estimated \$[0-9.]+\) would take this run past --max-usd \$0\.0000/);
    assert.equal((await gateway.fake.stats()).generations, before, 'nothing was generated');
  });

  test('usage errors exit 2', async () => {
    const missing = await runWarm(join(gateway.dir, 'no-such-file.txt'));
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /cannot read/);
    const badOption = await runWarm(join(gateway.dir, 'warm-clean.txt'), ['--concurrency', '0']);
    assert.equal(badOption.code, 2);
    assert.match(badOption.stderr, /--concurrency/);
  });
});
