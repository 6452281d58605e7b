#!/usr/bin/env node
// Fake stable-diffusion.cpp sd-server, native async API (POST /sdcpp/v1/img_gen,
// GET /sdcpp/v1/jobs/{id}, POST /sdcpp/v1/jobs/{id}/cancel), for pixelgate's black-box tests.
//
//   node tests/fakes/sdcpp-fake.mjs [--port 0] [--verbose] [--startup-delay-ms N]
//        [--latency-ms N] [--crash-after N] [--hang start|requests] [--stats-file PATH]
//
// It listens on 127.0.0.1 only and prints {"port": N} once listening. Like sd-server it runs
// one job at a time. It fails loudly when a client submits a job while another of its jobs
// is queued or generating: that submission gets 500 and /__stats records a violation. The
// other flags let pixelgate's worker pools start it as a child process.
// tests/fakes/README.md describes them and the control API.

import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

import { parseChildOptions, startStatsFile } from './child-options.mjs';
import { renderImagePng } from './openai-fake.mjs';

const HOST = '127.0.0.1';
const MAX_BODY_BYTES = 1024 * 1024;
const MAX_DELAY_MS = 10 * 60 * 1000;
const MAX_JOBS = 500;
// sd-server's limits from GET /sdcpp/v1/capabilities.
const LIMITS = { min_width: 64, max_width: 4096, min_height: 64, max_height: 4096, max_batch_count: 8, max_queue_size: 8 };
export const SAMPLE_METHODS = ['euler', 'euler_a', 'heun', 'dpm2', 'dpm++2s_a', 'dpm++2m', 'dpm++2mv2', 'ipndm', 'ipndm_v', 'lcm', 'ddim_trailing', 'tcd'];
const SCRIPT_KINDS = ['failed', 'stuck', 'gone', 'not_image', 'no_images'];

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
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

/** Returns true when `body` is a valid img_gen request under the fake's rules. */
function validRequest(body) {
  if (typeof body.prompt !== 'string') return false;
  for (const [name, min, max] of [['width', LIMITS.min_width, LIMITS.max_width], ['height', LIMITS.min_height, LIMITS.max_height]]) {
    if (body[name] !== undefined && (!Number.isInteger(body[name]) || body[name] < min || body[name] > max)) return false;
  }
  if (body.seed !== undefined && !Number.isInteger(body.seed)) return false;
  if (body.batch_count !== undefined && (!Number.isInteger(body.batch_count) || body.batch_count < 1 || body.batch_count > LIMITS.max_batch_count)) return false;
  const sample = body.sample_params;
  if (sample !== undefined) {
    if (typeof sample !== 'object' || sample === null) return false;
    if (sample.sample_steps !== undefined && (!Number.isInteger(sample.sample_steps) || sample.sample_steps < 1)) return false;
    if (sample.sample_method !== undefined && !SAMPLE_METHODS.includes(sample.sample_method)) return false;
    if (sample.guidance?.txt_cfg !== undefined && typeof sample.guidance.txt_cfg !== 'number') return false;
  }
  return body.output_format === undefined || ['png', 'jpeg', 'webp'].includes(body.output_format);
}

function defaultSettings() {
  return { delay_ms: 0, script: [] };
}

export class FakeSdCpp {
  /**
   * `latencyMs` is the default time a job generates. `crashAfter` makes the process call
   * `exit()` once that many completed jobs have been read by a poll. `hang` is 'start' (no
   * request gets a response) or 'requests' (submissions get none). `onChange`
   * runs after every change of the counters.
   */
  constructor({ verbose = false, latencyMs = 0, crashAfter = null, hang = null, onChange = null, exit = null } = {}) {
    this.verbose = verbose;
    this.latencyMs = latencyMs;
    this.crashAfter = crashAfter;
    this.hang = hang;
    this.onChange = onChange ?? (() => {});
    this.exit = exit ?? (() => {});
    this.settings = { ...defaultSettings(), delay_ms: latencyMs };
    this.jobs = new Map();
    this.queue = [];
    this.running = null;
    this.resetCounters();
  }

  resetCounters() {
    this.stats = { submissions: 0, accepted: 0, polls: 0, cancels: 0, completed: 0, delivered: 0, max_concurrent: 0, violations: [], last_request: null };
  }

  pendingJobs() {
    return [...this.jobs.values()].filter((job) => job.status === 'queued' || job.status === 'generating');
  }

  async handle(req, res) {
    const url = new URL(req.url, `http://${HOST}`);
    if (this.verbose) process.stderr.write(`sdcpp-fake: ${req.method} ${url.pathname}\n`);
    const route = `${req.method} ${url.pathname}`;
    if (this.hang === 'start') return; // A server stuck while loading sends no response at all.
    if (route === 'GET /__stats') return sendJson(res, 200, this.stats);
    if (route === 'POST /__reset') {
      await readBody(req);
      this.settings = { ...defaultSettings(), delay_ms: this.latencyMs };
      this.resetCounters();
      return sendJson(res, 200, this.settings);
    }
    if (url.pathname === '/__control') return this.control(req, res);
    if (route === 'GET /sdcpp/v1/capabilities') return sendJson(res, 200, { current_mode: 'img_gen', supported_modes: ['img_gen'], samplers: SAMPLE_METHODS, limits: LIMITS });
    if (route === 'POST /sdcpp/v1/img_gen') return this.submit(req, res);
    const match = /^\/sdcpp\/v1\/jobs\/([^/]+)(\/cancel)?$/.exec(url.pathname);
    if (match && req.method === 'GET' && !match[2]) return this.poll(decodeURIComponent(match[1]), res);
    if (match && req.method === 'POST' && match[2]) return this.cancel(decodeURIComponent(match[1]), res);
    return sendJson(res, 404, { error: 'not found' });
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
    this.stats.submissions++;
    this.onChange();
    if (this.hang === 'requests') return; // Ends only when the client gives up or the fake stops.
    const text = await readBody(req);
    if (!text) return sendJson(res, 400, { error: 'empty body' });
    let body;
    try {
      body = JSON.parse(text);
    } catch (error) {
      return sendJson(res, 400, { error: 'invalid json', message: error.message });
    }
    this.stats.last_request = body;
    const pending = this.pendingJobs();
    if (pending.length > 0) {
      const violation = `a job was submitted while job ${pending[0].id} was ${pending[0].status}`;
      this.stats.violations.push(violation);
      process.stderr.write(`sdcpp-fake: VIOLATION: ${violation}\n`);
      return sendJson(res, 500, { error: 'server_error', message: `sdcpp-fake: ${violation}; sd-server runs one job at a time` });
    }
    const entry = this.settings.script.shift();
    if (entry?.status === 429) return sendJson(res, 429, { error: 'job queue is full' });
    if (entry?.status) return sendJson(res, entry.status, { error: 'server_error', message: `fake: scripted HTTP ${entry.status}` });
    if (typeof body !== 'object' || body === null || !validRequest(body)) {
      return sendJson(res, 400, { error: 'invalid generation parameters' });
    }
    const id = `job_${randomBytes(8).toString('hex')}`;
    const job = { id, kind: 'img_gen', status: 'queued', created: Math.floor(Date.now() / 1000), started: null, completed: null, queue_position: this.queue.length + 1, result: null, error: null };
    this.jobs.set(id, { ...job, body, entry });
    if (this.jobs.size > MAX_JOBS) this.jobs.delete(this.jobs.keys().next().value);
    this.queue.push(id);
    this.stats.accepted++;
    this.stats.max_concurrent = Math.max(this.stats.max_concurrent, this.pendingJobs().length);
    this.onChange();
    this.runNext();
    return sendJson(res, 202, { id, kind: 'img_gen', status: 'queued', created: job.created, poll_url: `/sdcpp/v1/jobs/${id}` });
  }

  /** Starts the next queued job; sd-server's single worker runs jobs one by one. */
  runNext() {
    if (this.running || this.queue.length === 0) return;
    const job = this.jobs.get(this.queue[0]);
    if (!job) {
      this.queue.shift();
      return this.runNext();
    }
    if (job.entry?.kind === 'stuck') return; // Stays queued until cancelled.
    this.queue.shift();
    this.running = job;
    job.status = 'generating';
    job.started = Math.floor(Date.now() / 1000);
    job.queue_position = 0;
    setTimeout(() => this.finish(job), job.entry?.delay_ms ?? this.settings.delay_ms);
  }

  finish(job) {
    job.completed = Math.floor(Date.now() / 1000);
    const kind = job.entry?.kind;
    if (kind === 'failed') {
      job.status = 'failed';
      job.error = { code: 'generation_failed', message: 'generate_image returned empty results' };
    } else {
      job.status = 'completed';
      const width = job.body.width ?? 512;
      const height = job.body.height ?? 512;
      const png = kind === 'not_image' ? Buffer.from('not a png') : renderImagePng('sdcpp', `${job.body.prompt}\u0000${job.body.seed ?? -1}`, `${width}x${height}`);
      job.result = { output_format: 'png', images: kind === 'no_images' ? [] : [{ index: 0, b64_json: png.toString('base64') }] };
      this.stats.completed++;
    }
    this.onChange();
    this.running = null;
    this.runNext();
  }

  poll(id, res) {
    this.stats.polls++;
    const job = this.jobs.get(id);
    if (!job) return sendJson(res, 404, { error: 'job not found' });
    if (job.entry?.kind === 'gone') {
      this.jobs.delete(id);
      this.running = null;
      this.runNext();
      return sendJson(res, 410, { error: 'job expired' });
    }
    const { body, entry, delivered, ...visible } = job;
    if (job.status === 'completed' && !delivered) {
      job.delivered = true;
      this.stats.delivered++;
      this.onChange();
      if (this.crashAfter !== null && this.stats.delivered >= this.crashAfter) {
        // Exits once the result has been handed to the kernel, as a server that crashes between jobs.
        res.once('finish', () => this.exit(this.stats.delivered));
      }
    }
    return sendJson(res, 200, visible);
  }

  cancel(id, res) {
    this.stats.cancels++;
    const job = this.jobs.get(id);
    if (!job) return sendJson(res, 404, { error: 'job not found' });
    if (job.status !== 'queued') return sendJson(res, 409, { error: `job is ${job.status}` });
    job.status = 'cancelled';
    job.completed = Math.floor(Date.now() / 1000);
    job.error = { code: 'cancelled', message: 'job cancelled by client' };
    this.queue = this.queue.filter((queued) => queued !== id);
    this.runNext();
    const { body, entry, ...visible } = job;
    return sendJson(res, 200, visible);
  }
}

export async function startFakeServer({ port = 0, verbose = false, ...childOptions } = {}) {
  const fake = new FakeSdCpp({ verbose, ...childOptions });
  const server = createServer((req, res) => {
    fake.handle(req, res).catch((error) => {
      process.stderr.write(`sdcpp-fake: unexpected error on ${req.method} ${req.url}: ${error.stack ?? error}\n`);
      if (!res.headersSent) sendJson(res, 500, { error: 'server_error', message: String(error) });
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
  let options;
  try {
    options = { ...parseChildOptions(args.filter((arg) => arg !== '--verbose'), '--verbose'), verbose: args.includes('--verbose') };
  } catch (error) {
    process.stderr.write(`sdcpp-fake: ${error.message}\n`);
    process.exit(2);
  }
  const stats = startStatsFile(options.statsFile);
  for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
  if (options.startupDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, options.startupDelayMs));
  let server = null;
  server = await startFakeServer({
    ...options,
    onChange: () => stats.update(server?.fake.stats),
    exit: (delivered) => {
      stats.update(server.fake.stats, { crashed_after: delivered });
      process.stderr.write(`sdcpp-fake: exiting after ${delivered} delivered job(s) (--crash-after)\n`);
      process.exit(3);
    },
  });
  stats.listening(server.port, server.fake.stats);
  process.stdout.write(`${JSON.stringify({ port: server.port })}\n`);
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.removeAllListeners(signal);
    process.on(signal, () => server.close().then(() => process.exit(0)));
  }
}
