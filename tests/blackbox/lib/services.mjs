// Real peers for the multi-replica tests, all on loopback: Debian's redis-server and the
// s3rver npm package (an S3-compatible server that checks SigV4 signatures).

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { startS3FaultProxy } from '../../fakes/s3-fault-proxy.mjs';
import { HOST, sleep } from './harness.mjs';

/** Returns a loopback TCP port that was free a moment ago. */
export async function freePort() {
  return new Promise((resolvePromise, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const { port } = server.address();
      server.close(() => resolvePromise(port));
    });
  });
}

function sendPing(port) {
  return new Promise((resolvePromise) => {
    const socket = connect({ host: HOST, port });
    const timer = setTimeout(() => {
      socket.destroy();
      resolvePromise(false);
    }, 500);
    socket.once('error', () => {
      clearTimeout(timer);
      resolvePromise(false);
    });
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (data) => {
      clearTimeout(timer);
      socket.destroy();
      resolvePromise(String(data).startsWith('+PONG'));
    });
  });
}

/**
 * Starts redis-server on `port` (a free one when omitted) without persistence. stop() kills
 * it; start() brings it back on the same port, as after an outage.
 */
export async function startRedis({ port } = {}) {
  const redisPort = port ?? (await freePort());
  const dir = await mkdtemp(join(tmpdir(), 'pixelgate-redis-'));
  let child = null;

  const service = {
    port: redisPort,
    url: `redis://${HOST}:${redisPort}/0`,
    async start() {
      child = spawn(
        'redis-server',
        ['--port', String(redisPort), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir],
        { stdio: 'ignore' },
      );
      const current = child;
      process.on('exit', () => current.kill('SIGKILL'));
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline) {
        if (current.exitCode !== null) throw new Error(`redis-server exited with ${current.exitCode}; is it installed?`);
        if (await sendPing(redisPort)) return;
        await sleep(50);
      }
      current.kill('SIGKILL');
      throw new Error('redis-server did not answer PING within 10 s');
    },
    async stop() {
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const current = child;
      const exited = new Promise((resolvePromise) => current.once('exit', resolvePromise));
      current.kill('SIGKILL');
      await Promise.race([exited, sleep(5000)]);
    },
    async close() {
      await service.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
  await service.start();
  return service;
}

/**
 * Starts s3rver in this process with one bucket, behind tests/fakes/s3-fault-proxy.mjs.
 * s3rver 3.7 checks only the access key id of a SigV4 request, so the proxy checks every
 * signature, header or presigned, and forwards the request unchanged. `endpoint` is the proxy.
 */
export async function startS3rver({ bucket = 'images' } = {}) {
  const { default: S3rver } = await import('s3rver');
  const directory = await mkdtemp(join(tmpdir(), 'pixelgate-s3rver-'));
  const server = new S3rver({
    address: HOST,
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
  });
  const { port } = await server.run();
  // s3rver's default credentials.
  const credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };
  const proxy = await startS3FaultProxy({
    targetPort: port,
    accessKey: credentials.accessKeyId,
    secretKey: credentials.secretAccessKey,
  });
  return {
    bucket,
    endpoint: proxy.baseUrl,
    credentials,
    proxy,
    async close() {
      await proxy.close();
      await server.close();
      await rm(directory, { recursive: true, force: true });
    },
  };
}
