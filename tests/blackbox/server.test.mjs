// HTTP server behaviour: header timeout, keep-alive, header size limit, health probes,
// graceful shutdown on SIGTERM, and the JSON access log on stderr.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';

import { Gateway, jsonBody, openaiBackend, RawConnection, request, sleep, TEST_API_KEY, waitFor } from './lib/harness.mjs';

const HEADER_TIMEOUT_MS = 1000;
let gateway;

before(async () => {
  gateway = await Gateway.start((fake) => ({
    server: { header_timeout_ms: HEADER_TIMEOUT_MS },
    backends: { openai: openaiBackend(fake) },
  }));
});

after(async () => {
  await gateway?.close();
});

beforeEach(async () => {
  await gateway.fake.reset();
});

describe('connections', { timeout: 30_000 }, () => {
  test('slow request line times out', async () => {
    const connection = await RawConnection.open(gateway.port);
    const started = Date.now();
    try {
      const requestLine = 'GET /healthz HTTP/1.1\r\n';
      for (let i = 0; i < 6 && !connection.isClosed; i++) {
        await connection.write(requestLine[i]);
        await Promise.race([connection.closed, sleep(1000)]);
      }
      const closed = await connection.waitForClose(500);
      const elapsed = Date.now() - started;
      assert.ok(closed, 'the server closed the connection');
      assert.ok(elapsed <= 3500, `the connection closed after ${elapsed} ms with header_timeout_ms = ${HEADER_TIMEOUT_MS}`);
      const received = connection.received.toString('latin1');
      assert.ok(received === '' || received.startsWith('HTTP/1.1 408 '), `received ${JSON.stringify(received.slice(0, 80))}`);
    } finally {
      connection.destroy();
    }
  });

  // A partly received request must get a 408 before the connection closes, so the
  // header timeout cannot simply close the socket.
  test('partial request gets 408', async () => {
    const connection = await RawConnection.open(gateway.port);
    try {
      await connection.write('GET /heal');
      assert.ok(await connection.waitForClose(HEADER_TIMEOUT_MS + 2000), 'the server closed the connection');
      assert.match(connection.received.toString('latin1'), /^HTTP\/1\.1 408 /);
    } finally {
      connection.destroy();
    }
  });

  test('keep-alive serves two requests', async () => {
    const connection = await RawConnection.open(gateway.port);
    try {
      await connection.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      const first = await connection.readResponse();
      assert.equal(first.status, 200);
      assert.notEqual(first.headers.connection, 'close');

      await connection.write('GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
      const second = await connection.readResponse();
      assert.equal(second.status, 200);
      assert.equal(JSON.parse(second.body).status, 'ready');
      assert.notEqual(second.headers['x-request-id'], first.headers['x-request-id']);
      assert.equal(connection.isClosed, false, 'the connection stays open');
    } finally {
      connection.destroy();
    }
  });

  test('oversized headers give 431', async () => {
    const connection = await RawConnection.open(gateway.port);
    try {
      await connection.write(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ${'a'.repeat(70 * 1024)}\r\n\r\n`);
      const response = await connection.readResponse();
      assert.equal(response.status, 431);
      assert.equal(response.headers['cache-control'], 'no-store');
      assert.equal(JSON.parse(response.body).error.code, 'payload_too_large');
      assert.ok(await connection.waitForClose(2000), 'the server closes the connection');
    } finally {
      connection.destroy();
    }
  });

  // The HTTP layer writes its own error bodies (400, 408, 431); they must have the same
  // shape, "type" included, as every other pixelgate error.
  test('431 error has type', async () => {
    const connection = await RawConnection.open(gateway.port);
    try {
      await connection.write(`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ${'a'.repeat(70 * 1024)}\r\n\r\n`);
      const { error } = JSON.parse((await connection.readResponse()).body);
      assert.equal(error.type, 'invalid_request_error');
    } finally {
      connection.destroy();
    }
  });

  test('healthz returns ok', async () => {
    const response = await gateway.get('/healthz');
    assert.equal(response.status, 200);
    assert.equal(jsonBody(response).status, 'ok');
  });

  test('readyz returns ready', async () => {
    const response = await gateway.get('/readyz');
    assert.equal(response.status, 200);
    assert.equal(jsonBody(response).status, 'ready');
  });
});

describe('shutdown', { timeout: 30_000 }, () => {
  test('SIGTERM finishes in-flight request', async () => {
    await gateway.fake.control({ delay_ms: 1500 });
    const path = '/generate-image?prompt=finish+before+exit';
    const port = gateway.port;
    const inFlight = gateway.get(path);
    await waitFor(async () => (await gateway.fake.stats()).in_flight > 0, { message: 'the generation to reach the fake' });

    const stopping = gateway.stopGateway();
    await sleep(200);
    await assert.rejects(request('/healthz', { port, timeoutMs: 2000 }), { code: 'ECONNREFUSED' }, 'no new connections during shutdown');

    const response = await inFlight;
    assert.equal(response.status, 200);
    assert.equal(response.headers['x-pixelgate-cache'], 'miss');
    const exit = await stopping;
    assert.equal(exit.forced, false, 'pixelgate exited without SIGKILL');
    assert.equal(exit.code, 0);

    await gateway.fake.control({ delay_ms: 0 });
    await gateway.restart();
    const again = await gateway.get(path);
    assert.equal(again.status, 200);
    assert.equal(again.headers['x-pixelgate-cache'], 'hit');
    assert.ok(again.body.equals(response.body));
    assert.equal((await gateway.fake.stats()).generations, 1);
  });
});

describe('shutdown with open connections', { timeout: 60_000 }, () => {
  // Shutdown closes idle keep-alive sessions while another event-loop thread may drop
  // their last reference. A lock-order mistake there once hung about one run in six on a
  // 2-core machine, so the test repeats the run 12 times.
  test('SIGTERM with idle keep-alive', async () => {
    for (let attempt = 1; attempt <= 12; attempt++) {
      await gateway.restart();
      const connection = await RawConnection.open(gateway.port);
      try {
        await connection.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
        assert.equal((await connection.readResponse()).status, 200);
        await sleep(50);
        const exit = await gateway.stopGateway({ timeoutMs: 3000 });
        assert.equal(exit.forced, false, `attempt ${attempt}: pixelgate did not exit within 3 s of SIGTERM`);
        assert.equal(exit.code, 0, `attempt ${attempt}`);
      } finally {
        connection.destroy();
      }
    }
  });

  // A connection that has sent no byte yet must not keep pixelgate running until its
  // header timeout ends.
  test('SIGTERM with silent connection', async () => {
    const slowHeaders = await Gateway.start((fake) => ({
      server: { header_timeout_ms: 5000 },
      backends: { openai: openaiBackend(fake) },
    }));
    try {
      const connection = await RawConnection.open(slowHeaders.port);
      try {
        await sleep(50);
        const started = Date.now();
        const exit = await slowHeaders.stopGateway();
        const elapsed = Date.now() - started;
        assert.equal(exit.code, 0);
        assert.ok(elapsed < 2000, `pixelgate exited ${elapsed} ms after SIGTERM`);
      } finally {
        connection.destroy();
      }
    } finally {
      await slowHeaders.close();
    }
  });

  test('restart after shutdown tests', async () => {
    await gateway.restart();
    assert.equal((await gateway.get('/healthz')).status, 200);
  });
});

describe('logging', { timeout: 30_000 }, () => {
  test('access log, one line each', async () => {
    const cases = [
      { id: 'blackbox-log-miss', path: '/generate-image?prompt=logged+request', status: 200, cache: 'miss' },
      { id: 'blackbox-log-hit', path: '/generate-image?prompt=logged+request', status: 200, cache: 'hit' },
      { id: 'blackbox-log-bad', path: '/generate-image?width=1', status: 400 },
      { id: 'blackbox-log-404', path: '/nowhere', status: 404 },
    ];
    for (const { id, path, status } of cases) {
      const response = await gateway.get(path, { headers: { 'x-request-id': id } });
      assert.equal(response.status, status, path);
      assert.equal(response.headers['x-request-id'], id);
    }

    const accessLines = () => gateway.pixelgate.logs().filter((line) => line.logger === 'access');
    await waitFor(() => cases.every(({ id }) => accessLines().some((line) => line.request_id === id)), {
      message: 'the access log lines',
    });
    for (const { id, path, status, cache } of cases) {
      const lines = accessLines().filter((line) => line.request_id === id);
      assert.equal(lines.length, 1, `one access line for ${id}`);
      assert.equal(lines[0].status, status, id);
      assert.equal(lines[0].path, path.split('?')[0], id);
      assert.equal(lines[0].method, 'GET', id);
      if (cache) {
        assert.equal(lines[0].cache, cache, id);
      }
    }
  });

  test('stderr lines are JSON', () => {
    const notJson = gateway.pixelgate.stderrLines.filter((line) => {
      try {
        return typeof JSON.parse(line) !== 'object';
      } catch {
        return true;
      }
    });
    assert.deepEqual(notJson, []);
  });

  test('API key never logged', async () => {
    // A provider rejection and a failed generation make pixelgate log backend details.
    await gateway.fake.control({ script: [{ status: 401 }, { status: 500 }] });
    const rejected = await gateway.get('/generate-image?prompt=key+rejected');
    assert.equal(rejected.status, 502);
    const failed = await gateway.get('/generate-image?prompt=backend+failed');
    assert.equal(failed.status, 502);
    await sleep(100);

    const stderr = gateway.stderrText();
    assert.ok(stderr.length > 0, 'pixelgate wrote logs');
    assert.ok(!stderr.includes(TEST_API_KEY), 'the full key is absent');
    assert.ok(!stderr.includes('SECRET1234'), 'no part of the key is present');
  });
});
