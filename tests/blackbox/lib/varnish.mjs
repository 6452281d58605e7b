// Starts Debian's varnishd on loopback with deploy/varnish/pixelgate.vcl, its backend
// pointed at a given pixelgate port. Every wait has a timeout.

import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { HOST, REPO_ROOT, request, sleep } from './harness.mjs';

const run = promisify(execFile);
export const VCL_PATH = join(REPO_ROOT, 'deploy', 'varnish', 'pixelgate.vcl');

async function listenPort(workdir) {
  const { stdout } = await run('varnishadm', ['-n', workdir, 'debug.listen_address'], { timeout: 5000 });
  // Lines look like "a0 127.0.0.1 41879".
  const match = stdout.match(/127\.0\.0\.1 (\d+)/);
  return match ? Number(match[1]) : null;
}

export async function startVarnish(backendPort) {
  const dir = await mkdtemp(join(tmpdir(), 'pixelgate-varnish-'));
  const workdir = join(dir, 'n');
  const vclPath = join(dir, 'pixelgate.vcl');
  const vcl = (await readFile(VCL_PATH, 'utf8')).replace('.port = "8080";', `.port = "${backendPort}";`);
  if (!vcl.includes(`.port = "${backendPort}";`)) throw new Error('the VCL has no backend port line to replace');
  await writeFile(vclPath, vcl);

  const child = spawn(
    'varnishd',
    ['-F', '-n', workdir, '-a', `${HOST}:0`, '-f', vclPath, '-j', 'none', '-s', 'malloc,64m', '-p', 'ban_lurker_sleep=0.1'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const output = [];
  child.stdout.on('data', (chunk) => output.push(String(chunk)));
  child.stderr.on('data', (chunk) => output.push(String(chunk)));
  const exited = new Promise((resolvePromise) => child.once('exit', resolvePromise));
  process.on('exit', () => child.kill('SIGKILL'));

  let port = null;
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && port === null) {
    if (child.exitCode !== null) break;
    try {
      port = await listenPort(workdir);
    } catch {
      // The management process does not accept commands yet.
    }
    if (port === null) await sleep(100);
  }
  if (port === null) {
    child.kill('SIGKILL');
    throw new Error(`varnishd did not start within 15 s:\n${output.join('')}`);
  }
  return {
    port,
    get: (path, options = {}) => request(path, { port, ...options }),
    async stop() {
      child.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
    },
  };
}
