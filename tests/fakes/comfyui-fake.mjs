#!/usr/bin/env node
// Fake ComfyUI server (POST /prompt, GET /history/{prompt_id}, GET /view, POST /queue,
// POST /interrupt) for pixelgate's black-box tests.
//
//   node tests/fakes/comfyui-fake.mjs [--port 0] [--verbose]
//
// It listens on 127.0.0.1 only and prints {"port": N} once listening. It validates the
// nodes of a plain txt2img graph the way ComfyUI's validate_prompt does, runs queued
// prompts one at a time, and keeps their history. tests/fakes/README.md describes the
// control API.

import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

import { renderImagePng } from './openai-fake.mjs';

const HOST = '127.0.0.1';
const MAX_BODY_BYTES = 8 * 1024 * 1024;
const MAX_DELAY_MS = 10 * 60 * 1000;
const MAX_HISTORY = 500;
export const CHECKPOINTS = ['v1-5-pruned-emaonly.safetensors', 'sd_xl_base_1.0.safetensors'];
const SCRIPT_KINDS = ['execution_error', 'node_errors', 'hang', 'no_images', 'missing_file', 'not_image'];

// The inputs the fake checks for each node class: [name, type, min, max].
const NODE_INPUTS = {
  CheckpointLoaderSimple: [['ckpt_name', 'LIST']],
  CLIPTextEncode: [['text', 'STRING'], ['clip', 'LINK']],
  EmptyLatentImage: [['width', 'INT', 16, 16384], ['height', 'INT', 16, 16384], ['batch_size', 'INT', 1, 4096]],
  KSampler: [['model', 'LINK'], ['seed', 'INT', 0, 0xffffffffffffffff], ['steps', 'INT', 1, 10000], ['cfg', 'FLOAT', 0, 100], ['sampler_name', 'STRING'], ['scheduler', 'STRING'], ['positive', 'LINK'], ['negative', 'LINK'], ['latent_image', 'LINK'], ['denoise', 'FLOAT', 0, 1]],
  VAEDecode: [['samples', 'LINK'], ['vae', 'LINK']],
  SaveImage: [['images', 'LINK'], ['filename_prefix', 'STRING']],
  PreviewImage: [['images', 'LINK']],
};
const OUTPUT_NODES = ['SaveImage', 'PreviewImage'];

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on('end', () => resolve(size > MAX_BODY_BYTES ? null : Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function nodeError(type, message, details, inputName, received) {
  return { type, message, details, extra_info: { input_name: inputName, received_value: received } };
}

/** Validates one node's inputs; returns ComfyUI-shaped error items. */
function validateNode(id, node, graph) {
  const spec = NODE_INPUTS[node.class_type];
  const errors = [];
  for (const [name, type, min, max] of spec) {
    const value = node.inputs[name];
    if (value === undefined) {
      if (name === 'denoise' || name === 'filename_prefix') continue;
      errors.push(nodeError('required_input_missing', 'Required input is missing', name, name));
      continue;
    }
    if (type === 'LINK') {
      if (!Array.isArray(value) || value.length !== 2 || !Object.hasOwn(graph, String(value[0]))) {
        errors.push(nodeError('bad_linked_input', 'Bad linked input, must be a length-2 list of [node_id, slot_index]', name, name, value));
      }
      continue;
    }
    if (type === 'LIST') {
      if (!CHECKPOINTS.includes(value)) {
        errors.push(nodeError('value_not_in_list', 'Value not in list', `${name}: '${value}' not in ${JSON.stringify(CHECKPOINTS)}`, name, value));
      }
      continue;
    }
    if (type === 'STRING') {
      if (typeof value !== 'string') errors.push(nodeError('invalid_input_type', `Failed to convert an input value to a STRING value`, `${name}, ${value}`, name, value));
      continue;
    }
    // INT and FLOAT: ComfyUI converts numbers and numeric strings; "{{seed}}" fails here.
    const number = typeof value === 'number' ? value : Number.NaN;
    if (Number.isNaN(number) || (type === 'INT' && !Number.isInteger(number))) {
      errors.push(nodeError('invalid_input_type', `Failed to convert an input value to a ${type} value`, `${name}, ${JSON.stringify(value)}`, name, value));
    } else if (min !== undefined && number < min) {
      errors.push(nodeError('value_smaller_than_min', `Value ${number} smaller than min of ${min}`, name, name, value));
    } else if (max !== undefined && number > max) {
      errors.push(nodeError('value_bigger_than_max', `Value ${number} bigger than max of ${max}`, name, name, value));
    }
  }
  return errors;
}

function defaultSettings() {
  return { delay_ms: 0, script: [] };
}

export class FakeComfyUI {
  constructor({ verbose = false } = {}) {
    this.verbose = verbose;
    this.settings = defaultSettings();
    this.history = new Map();
    this.files = new Map();
    this.queue = [];
    this.running = null;
    this.number = 0;
    this.resetCounters();
  }

  resetCounters() {
    this.stats = { prompts: 0, accepted: 0, rejected: 0, history_polls: 0, views: 0, queue_deletes: 0, interrupts: 0, executed: 0, max_concurrent: 0, last_request: null };
  }

  async handle(req, res) {
    const url = new URL(req.url, `http://${HOST}`);
    if (this.verbose) process.stderr.write(`comfyui-fake: ${req.method} ${url.pathname}${url.search}\n`);
    const route = `${req.method} ${url.pathname}`;
    if (route === 'GET /__stats') return sendJson(res, 200, { ...this.stats, queue: this.queue.length, running: this.running?.id ?? null });
    if (route === 'POST /__reset') {
      await readBody(req);
      this.settings = defaultSettings();
      this.resetCounters();
      return sendJson(res, 200, this.settings);
    }
    if (url.pathname === '/__control') return this.control(req, res);
    if (route === 'POST /prompt') return this.submit(req, res);
    if (route === 'GET /prompt') return sendJson(res, 200, { exec_info: { queue_remaining: this.queue.length + (this.running ? 1 : 0) } });
    if (req.method === 'GET' && url.pathname.startsWith('/history/')) {
      this.stats.history_polls++;
      const id = decodeURIComponent(url.pathname.slice('/history/'.length));
      const entry = this.history.get(id);
      return sendJson(res, 200, entry ? { [id]: entry } : {});
    }
    if (route === 'GET /view') return this.view(url, res);
    if (route === 'POST /queue') {
      const body = JSON.parse((await readBody(req)) || '{}');
      for (const id of body.delete ?? []) {
        this.stats.queue_deletes++;
        this.queue = this.queue.filter((job) => job.id !== id);
      }
      return sendJson(res, 200, {});
    }
    if (route === 'POST /interrupt') {
      const body = JSON.parse((await readBody(req)) || '{}');
      this.stats.interrupts++;
      if (this.running && (!body.prompt_id || body.prompt_id === this.running.id)) this.running.interrupted = true;
      return sendJson(res, 200, {});
    }
    return sendJson(res, 404, { error: '404: Not Found' });
  }

  async control(req, res) {
    if (req.method === 'GET') return sendJson(res, 200, this.settings);
    let body;
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      return sendJson(res, 400, { error: '/__control takes a JSON object' });
    }
    for (const [key, value] of Object.entries(body ?? {})) {
      if (key === 'delay_ms' && Number.isInteger(value) && value >= 0 && value <= MAX_DELAY_MS) this.settings.delay_ms = value;
      else if (key === 'script' && Array.isArray(value) && value.every((entry) => SCRIPT_KINDS.includes(entry.kind) || Number.isInteger(entry.status))) this.settings.script = value.slice();
      else return sendJson(res, 400, { error: `/__control: unknown key or bad value for ${JSON.stringify(key)}` });
    }
    return sendJson(res, 200, this.settings);
  }

  async submit(req, res) {
    this.stats.prompts++;
    const text = await readBody(req);
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      return sendJson(res, 400, { error: { type: 'invalid_prompt', message: 'Cannot parse the request body as JSON', details: '', extra_info: {} }, node_errors: [] });
    }
    this.stats.last_request = body;
    const entry = this.settings.script.shift();
    if (entry?.status) return sendJson(res, entry.status, { error: `fake: scripted HTTP ${entry.status}` });
    const graph = body?.prompt;
    if (typeof graph !== 'object' || graph === null || Array.isArray(graph)) {
      return sendJson(res, 400, { error: { type: 'no_prompt', message: 'No prompt provided', details: 'No prompt provided', extra_info: {} }, node_errors: [] });
    }
    for (const [id, node] of Object.entries(graph)) {
      if (typeof node?.class_type !== 'string' || typeof node.inputs !== 'object') {
        return sendJson(res, 400, { error: { type: 'invalid_prompt', message: `Cannot execute because a node is missing the class_type property.`, details: `Node ID '#${id}'`, extra_info: {} }, node_errors: [] });
      }
      if (!NODE_INPUTS[node.class_type]) {
        return sendJson(res, 400, { error: { type: 'missing_node_type', message: `Node '${node.class_type}' not found. The custom node may not be installed.`, details: `Node ID '#${id}'`, extra_info: { node_id: id, class_type: node.class_type } }, node_errors: [] });
      }
    }
    const outputs = Object.entries(graph).filter(([, node]) => OUTPUT_NODES.includes(node.class_type));
    if (outputs.length === 0) {
      return sendJson(res, 400, { error: { type: 'prompt_no_outputs', message: 'Prompt has no outputs', details: '', extra_info: {} }, node_errors: [] });
    }
    const nodeErrors = {};
    for (const [id, node] of Object.entries(graph)) {
      let errors = validateNode(id, node, graph);
      if (entry?.kind === 'node_errors' && node.class_type === 'CheckpointLoaderSimple') {
        errors = [nodeError('value_not_in_list', 'Value not in list', "ckpt_name: 'missing.safetensors' not in []", 'ckpt_name', 'missing.safetensors')];
      }
      if (errors.length > 0) {
        nodeErrors[id] = { errors, dependent_outputs: outputs.map(([outputId]) => outputId), class_type: node.class_type };
      }
    }
    if (Object.keys(nodeErrors).length > 0) {
      this.stats.rejected++;
      return sendJson(res, 400, { error: { type: 'prompt_outputs_failed_validation', message: 'Prompt outputs failed validation', details: '', extra_info: {} }, node_errors: nodeErrors });
    }
    const id = randomUUID();
    const number = this.number++;
    this.stats.accepted++;
    this.queue.push({ id, number, graph, outputs, entry, clientId: body.client_id });
    this.runNext();
    return sendJson(res, 200, { prompt_id: id, number, node_errors: {} });
  }

  /** Executes queued prompts one at a time, as ComfyUI's single worker does. */
  runNext() {
    if (this.running || this.queue.length === 0) return;
    const job = this.queue.shift();
    this.running = job;
    this.stats.max_concurrent = Math.max(this.stats.max_concurrent, 1);
    if (job.entry?.kind === 'hang') {
      // Runs until /interrupt names it.
      const timer = setInterval(() => {
        if (job.interrupted) {
          clearInterval(timer);
          this.finish(job, 'interrupted');
        }
      }, 20);
      return;
    }
    setTimeout(() => this.finish(job, job.interrupted ? 'interrupted' : 'done'), job.entry?.delay_ms ?? this.settings.delay_ms);
  }

  finish(job, how) {
    const started = Date.now();
    const messages = [['execution_start', { prompt_id: job.id, timestamp: started }], ['execution_cached', { nodes: [], prompt_id: job.id, timestamp: started }]];
    const record = { prompt: [job.number, job.id, job.graph, { client_id: job.clientId }, job.outputs.map(([id]) => id)], outputs: {}, status: { status_str: 'success', completed: true, messages }, meta: {} };
    const sampler = Object.entries(job.graph).find(([, node]) => node.class_type === 'KSampler');
    if (how === 'interrupted') {
      messages.push(['execution_interrupted', { prompt_id: job.id, node_id: sampler?.[0] ?? '3', node_type: 'KSampler', executed: [], timestamp: Date.now() }]);
      record.status = { status_str: 'error', completed: false, messages };
    } else if (job.entry?.kind === 'execution_error') {
      messages.push(['execution_error', { prompt_id: job.id, node_id: sampler?.[0] ?? '3', node_type: 'KSampler', executed: [], exception_message: 'CUDA out of memory. Tried to allocate 4.00 GiB', exception_type: 'torch.OutOfMemoryError', traceback: [], current_inputs: {}, current_outputs: {}, timestamp: Date.now() }]);
      record.status = { status_str: 'error', completed: false, messages };
    } else {
      const latent = Object.values(job.graph).find((node) => node.class_type === 'EmptyLatentImage');
      const positive = sampler ? job.graph[String(sampler[1].inputs.positive[0])] : undefined;
      const prompt = positive?.inputs?.text ?? '';
      const seed = sampler?.[1].inputs.seed ?? 0;
      const size = `${latent?.inputs.width ?? 512}x${latent?.inputs.height ?? 512}`;
      for (const [outputId, node] of job.outputs) {
        if (job.entry?.kind === 'no_images') {
          record.outputs[outputId] = {};
          continue;
        }
        const type = node.class_type === 'SaveImage' ? 'output' : 'temp';
        const filename = `${node.inputs.filename_prefix ?? 'ComfyUI'}_${String(job.number + 1).padStart(5, '0')}_.png`;
        record.outputs[outputId] = { images: [{ filename, subfolder: '', type }] };
        if (job.entry?.kind === 'missing_file') continue;
        const bytes = job.entry?.kind === 'not_image' ? Buffer.from('not a png') : renderImagePng('comfyui', `${prompt}\u0000${seed}`, size);
        this.files.set(`${type}/${filename}`, bytes);
      }
      messages.push(['execution_success', { prompt_id: job.id, timestamp: Date.now() }]);
      this.stats.executed++;
    }
    this.history.set(job.id, record);
    if (this.history.size > MAX_HISTORY) this.history.delete(this.history.keys().next().value);
    this.running = null;
    this.runNext();
  }

  view(url, res) {
    this.stats.views++;
    const filename = url.searchParams.get('filename') ?? '';
    const type = url.searchParams.get('type') || 'output';
    const subfolder = url.searchParams.get('subfolder') ?? '';
    const bytes = subfolder === '' ? this.files.get(`${type}/${filename}`) : undefined;
    if (!bytes) {
      res.writeHead(404, { 'content-length': 0 });
      return res.end();
    }
    res.writeHead(200, { 'content-type': 'image/png', 'content-length': bytes.length, 'content-disposition': `filename="${filename}"` });
    return res.end(bytes);
  }
}

export async function startFakeServer({ port = 0, verbose = false } = {}) {
  const fake = new FakeComfyUI({ verbose });
  const server = createServer((req, res) => {
    fake.handle(req, res).catch((error) => {
      process.stderr.write(`comfyui-fake: unexpected error on ${req.method} ${req.url}: ${error.stack ?? error}\n`);
      if (!res.headersSent) sendJson(res, 500, { error: String(error) });
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, resolve);
  });
  const actualPort = server.address().port;
  const close = () => new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
  return { port: actualPort, baseUrl: `http://${HOST}:${actualPort}`, fake, close };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const args = process.argv.slice(2);
  const options = { port: 0, verbose: args.includes('--verbose') };
  const portIndex = args.indexOf('--port');
  if (portIndex >= 0) options.port = Number(args[portIndex + 1]);
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
    process.stderr.write('comfyui-fake: --port must be an integer from 0 to 65535\n');
    process.exit(2);
  }
  const { port, close } = await startFakeServer(options);
  process.stdout.write(`${JSON.stringify({ port })}\n`);
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => close().then(() => process.exit(0)));
}
