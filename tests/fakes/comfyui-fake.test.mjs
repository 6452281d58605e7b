// Checks tests/fakes/comfyui-fake.mjs against the ComfyUI server API it imitates: queueing
// the example workflow, history polling, /view, and node_errors on a bad graph.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';

import { startFakeServer } from './comfyui-fake.mjs';

let server;
let workflow;

before(async () => {
  server = await startFakeServer();
  const text = await readFile(new URL('../../config/examples/comfyui-txt2img.json', import.meta.url), 'utf8');
  workflow = JSON.parse(text
    .replace('"{{prompt}}"', '"a boat"').replace('"{{negative_prompt}}"', '""')
    .replace('"{{width}}"', '64').replace('"{{height}}"', '96').replace('"{{seed}}"', '1')
    .replace('"{{steps}}"', '20').replace('"{{cfg}}"', '7'));
});

after(async () => {
  await server?.close();
});

async function queue(graph) {
  return fetch(`${server.baseUrl}/prompt`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: graph, client_id: 'test' }) });
}

test('queued workflow reaches history and view', async () => {
  const queued = await queue(workflow);
  assert.equal(queued.status, 200);
  const { prompt_id: id, node_errors: nodeErrors } = await queued.json();
  assert.deepEqual(nodeErrors, {});
  let entry;
  for (let i = 0; i < 100 && !entry; i++) {
    entry = (await (await fetch(`${server.baseUrl}/history/${id}`)).json())[id];
    if (!entry) await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.equal(entry.status.status_str, 'success');
  const image = entry.outputs['9'].images[0];
  const view = await fetch(`${server.baseUrl}/view?${new URLSearchParams({ filename: image.filename, subfolder: image.subfolder, type: image.type })}`);
  assert.equal(view.status, 200);
  const png = Buffer.from(await view.arrayBuffer());
  assert.equal(png.readUInt32BE(16), 64);
});

test('unfilled placeholder gives node_errors', async () => {
  const graph = structuredClone(workflow);
  graph['3'].inputs.seed = '{{seed}}';
  const response = await queue(graph);
  assert.equal(response.status, 400);
  const body = await response.json();
  assert.equal(body.error.type, 'prompt_outputs_failed_validation');
  assert.equal(body.node_errors['3'].errors[0].type, 'invalid_input_type');
});

test('graph without outputs is rejected', async () => {
  const graph = structuredClone(workflow);
  delete graph['9'];
  const response = await queue(graph);
  assert.equal(response.status, 400);
  assert.equal((await response.json()).error.type, 'prompt_no_outputs');
});
