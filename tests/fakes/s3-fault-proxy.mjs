#!/usr/bin/env node
// A loopback HTTP proxy in front of an S3-compatible server (s3rver in the
// black-box tests). It forwards each request unchanged, Host header and raw
// path included, and on request it:
//   - responds to the next N requests with S3 error bodies (500 InternalError,
//     503 SlowDown, 409 ConditionalRequestConflict, ...), or every request
//     until the fault is cleared;
//   - emulates AWS's conditional PUT: "If-None-Match: *" on an existing
//     object gets 412 PreconditionFailed (s3rver 3.7 ignores the header on PUT);
//   - counts requests by method.
// It also verifies each request's AWS Signature Version 4, in header or query
// form, with its own node:crypto code and S3's encoding rules. s3rver 3.7
// checks only the access key id of a V4 request, never the signature (its
// lib/middleware/authentication.js: "Signature version 4 calculation is
// unimplemeneted"). The proxy uses Node.js core modules only.

import { createHash, createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, request as httpRequest } from 'node:http';
import { pathToFileURL } from 'node:url';

import { awsEncode } from './bedrock-fake.mjs';

const HOST = '127.0.0.1';
const CONTROL_PREFIX = '/__proxy/';
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const MAX_RECORDED_REQUESTS = 500;
const UPSTREAM_TIMEOUT_MS = 30_000;
// S3 rejects a header-signed request more than 15 minutes away from its clock.
const MAX_CLOCK_SKEW_MS = 15 * 60 * 1000;
// AWS caps presigned URLs at 7 days.
const MAX_PRESIGN_SECONDS = 7 * 24 * 3600;
// s3rver's built-in account.
const DEFAULTS = { accessKey: 'S3RVER', secretKey: 'S3RVER', sessionToken: '', region: 'us-east-1' };

const USAGE = `usage: node tests/fakes/s3-fault-proxy.mjs --target-port N [--port 0] [--access-key S3RVER]
       [--secret-key S3RVER] [--session-token TOKEN] [--region us-east-1] [--no-verify] [--verbose]`;

// Status and message of each S3 error code the proxy sends. Codes and
// statuses follow the S3 API Reference's list of error codes. The messages
// are close to AWS's but were not checked word for word, and no test reads them.
const S3_ERRORS = {
  InternalError: [500, 'We encountered an internal error. Please try again.'],
  SlowDown: [503, 'Please reduce your request rate.'],
  ServiceUnavailable: [503, 'Reduce your request rate.'],
  ConditionalRequestConflict: [409, 'A conflicting conditional operation is currently in progress against this resource. Try again.'],
  PreconditionFailed: [412, 'At least one of the preconditions you specified did not hold.'],
  AccessDenied: [403, 'Access Denied'],
  RequestTimeout: [400, 'Your socket connection to the server was not read from or written to within the timeout period.'],
  SignatureDoesNotMatch: [403, 'The request signature we calculated does not match the signature you provided. Check your key and signing method.'],
  InvalidAccessKeyId: [403, 'The AWS access key Id you provided does not exist in our records.'],
  RequestTimeTooSkewed: [403, 'The difference between the request time and the server\'s time is too large.'],
  XAmzContentSHA256Mismatch: [400, 'The provided \'x-amz-content-sha256\' header does not match what was computed.'],
  AuthorizationHeaderMalformed: [400, 'The authorization header is malformed.'],
  InvalidURI: [400, 'Couldn\'t parse the specified URI.'],
  EntityTooLarge: [400, 'Your proposed upload exceeds the maximum allowed size.'],
};
const DEFAULT_CODE_BY_STATUS = { 400: 'RequestTimeout', 403: 'AccessDenied', 409: 'ConditionalRequestConflict', 500: 'InternalError', 503: 'SlowDown' };

class S3Failure extends Error {
  constructor(code, message, extra = {}) {
    super(message ?? S3_ERRORS[code]?.[1] ?? code);
    this.code = code;
    this.status = S3_ERRORS[code]?.[0] ?? 400;
    this.extra = extra;
  }
}

function escapeXml(text) {
  return String(text).replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]);
}

/** Returns an S3 error document: <Error><Code/><Message/>...<RequestId/></Error>. */
export function s3ErrorXml(code, message, resource, requestId, extra = {}) {
  const fields = Object.entries(extra).map(([name, value]) => `<${name}>${escapeXml(value)}</${name}>`).join('');
  return '<?xml version="1.0" encoding="UTF-8"?>\n' +
    `<Error><Code>${escapeXml(code)}</Code><Message>${escapeXml(message)}</Message>${fields}` +
    `<Resource>${escapeXml(resource)}</Resource><RequestId>${requestId}</RequestId></Error>`;
}

// ---------------------------------------------------------------------------
// Signature Version 4 with S3's rules: the path is decoded and each segment
// encoded once again (never twice), and a presigned URL signs only the query.
// ---------------------------------------------------------------------------

function hmac(key, data) {
  return createHmac('sha256', key).update(data, 'utf8').digest();
}

function sha256Hex(data) {
  return createHash('sha256').update(data).digest('hex');
}

function decodeStrict(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new S3Failure('InvalidURI');
  }
}

/** Returns S3's canonical URI for a raw request path. */
export function canonicalUri(rawPath) {
  return rawPath.split('/').map((segment) => awsEncode(decodeStrict(segment), false)).join('/');
}

/** Orders encoded query pairs by name and then by value, byte by byte (the strings are ASCII). */
function comparePairs(a, b) {
  if (a[0] !== b[0]) return a[0] < b[0] ? -1 : 1;
  if (a[1] !== b[1]) return a[1] < b[1] ? -1 : 1;
  return 0;
}

/** Returns the canonical query for a raw query string, leaving out the names in `skip`. */
export function canonicalQuery(rawQuery, skip = []) {
  const pairs = [];
  for (const part of (rawQuery ?? '').split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const name = decodeStrict(eq < 0 ? part : part.slice(0, eq));
    if (skip.includes(name)) continue;
    const value = eq < 0 ? '' : decodeStrict(part.slice(eq + 1));
    pairs.push([awsEncode(name, false), awsEncode(value, false)]);
  }
  pairs.sort(comparePairs);
  return pairs.map(([name, value]) => `${name}=${value}`).join('&');
}

/** Returns {canonicalRequest, signature} for the given parts, S3 rules. */
export function s3Signature({ method, rawPath, rawQuery, skipQuery = [], headers, signedHeaders, payloadHash, amzDate, region, secretKey }) {
  const canonicalHeaders = signedHeaders
    .map((name) => `${name}:${(headers[name] ?? []).map((v) => v.trim().replace(/\s+/g, ' ')).join(',')}\n`)
    .join('');
  const canonicalRequest = [
    method, canonicalUri(rawPath || '/'), canonicalQuery(rawQuery, skipQuery), canonicalHeaders, signedHeaders.join(';'), payloadHash,
  ].join('\n');
  const day = amzDate.slice(0, 8);
  const scope = `${day}/${region}/s3/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256Hex(canonicalRequest)].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${secretKey}`, day), region), 's3'), 'aws4_request');
  return { canonicalRequest, signature: createHmac('sha256', key).update(stringToSign).digest('hex') };
}

function parseAmzDate(text) {
  const match = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(text ?? '');
  if (!match) return Number.NaN;
  const [, y, mo, d, h, mi, s] = match.map(Number);
  return Date.UTC(y, mo - 1, d, h, mi, s);
}

function parseQuery(rawQuery) {
  const params = new Map();
  for (const part of (rawQuery ?? '').split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    params.set(decodeStrict(eq < 0 ? part : part.slice(0, eq)), eq < 0 ? '' : decodeStrict(part.slice(eq + 1)));
  }
  return params;
}

// ---------------------------------------------------------------------------
// The proxy.
// ---------------------------------------------------------------------------

/**
 * Starts the proxy in this process. Resolves to {port, baseUrl, control(settings), stats(), reset(), close()}.
 * `targetPort` is the S3 server's loopback port.
 */
export async function startS3FaultProxy({
  targetPort, port = 0, accessKey = DEFAULTS.accessKey, secretKey = DEFAULTS.secretKey,
  sessionToken = DEFAULTS.sessionToken, region = DEFAULTS.region, verifySignatures = true, verbose = false,
} = {}) {
  if (!Number.isInteger(targetPort) || targetPort <= 0) throw new Error('startS3FaultProxy needs the target port');

  let script = [];  // one-shot faults, first match first
  let persistent = null;  // a fault for every matching request, or null
  let awsConditionalPut = false;
  let stats;
  const resetStats = () => {
    // signature_failures counts every request that the signature check rejected, for any reason.
    stats = { requests: {}, forwarded: 0, faults: 0, signature_failures: 0, precondition_failures: 0, last_signature_failure: null, log: [] };
  };
  resetStats();
  const pathLocks = new Map();  // serializes conditional PUTs per path
  const sockets = new Set();

  const record = (entry) => {
    stats.log.push(entry);
    if (stats.log.length > MAX_RECORDED_REQUESTS) stats.log.shift();
  };

  function sendError(res, failure, resource) {
    const requestId = randomUUID().replace(/-/g, '').slice(0, 16).toUpperCase();
    const body = s3ErrorXml(failure.code, failure.message, resource, requestId, failure.extra);
    const headers = { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body), 'x-amz-request-id': requestId };
    if (failure.retryAfter !== undefined) headers['retry-after'] = String(failure.retryAfter);
    res.writeHead(failure.status, headers);
    res.end(body);
  }

  function checkHeaderSignature(req, rawPath, rawQuery, body) {
    const match = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/s3\/aws4_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$/.exec(req.headers.authorization);
    if (!match) throw new S3Failure('AuthorizationHeaderMalformed');
    const [, keyId, day, scopeRegion, signedList, signature] = match;
    if (keyId !== accessKey) throw new S3Failure('InvalidAccessKeyId');
    if (scopeRegion !== region) {
      throw new S3Failure('AuthorizationHeaderMalformed', `The authorization header is malformed; the region '${scopeRegion}' is wrong; expecting '${region}'`, { Region: region });
    }
    const amzDate = req.headers['x-amz-date'];
    const signedAt = parseAmzDate(amzDate);
    if (Number.isNaN(signedAt) || day !== amzDate.slice(0, 8)) throw new S3Failure('AccessDenied', 'AWS authentication requires a valid Date or x-amz-date header');
    if (Math.abs(Date.now() - signedAt) > MAX_CLOCK_SKEW_MS) throw new S3Failure('RequestTimeTooSkewed');

    const signedHeaders = signedList.split(';');
    if (!signedHeaders.includes('host') || [...signedHeaders].sort().join(';') !== signedList) throw new S3Failure('SignatureDoesNotMatch');
    const unsigned = Object.keys(req.headers).filter((name) => name.startsWith('x-amz-') && !signedHeaders.includes(name));
    if (unsigned.length > 0) {
      throw new S3Failure('AccessDenied', 'There were headers present in the request which were not signed', { HeadersNotSigned: unsigned.join(', ') });
    }
    if (sessionToken && req.headers['x-amz-security-token'] !== sessionToken) throw new S3Failure('InvalidAccessKeyId', 'The provided token is malformed or otherwise invalid.');

    const payloadHash = req.headers['x-amz-content-sha256'];
    if (!payloadHash) throw new S3Failure('AccessDenied', 'Missing required header for this request: x-amz-content-sha256');
    if (/^[0-9a-f]{64}$/.test(payloadHash) && payloadHash !== sha256Hex(body)) throw new S3Failure('XAmzContentSHA256Mismatch');
    if (!/^[0-9a-f]{64}$/.test(payloadHash) && payloadHash !== 'UNSIGNED-PAYLOAD') {
      throw new S3Failure('AccessDenied', `The proxy does not verify x-amz-content-sha256 "${payloadHash}"`);
    }

    const headers = {};
    for (const name of signedHeaders) {
      if (!req.headersDistinct[name]) throw new S3Failure('SignatureDoesNotMatch');
      headers[name] = req.headersDistinct[name];
    }
    const expected = s3Signature({ method: req.method, rawPath, rawQuery, headers, signedHeaders, payloadHash, amzDate, region, secretKey });
    return { expected, signature };
  }

  function checkQuerySignature(req, rawPath, rawQuery) {
    const params = parseQuery(rawQuery);
    for (const name of ['X-Amz-Credential', 'X-Amz-Date', 'X-Amz-Expires', 'X-Amz-SignedHeaders', 'X-Amz-Signature']) {
      if (!params.has(name)) throw new S3Failure('AccessDenied', `Query-string authentication version 4 requires the ${name} parameter.`);
    }
    if (params.get('X-Amz-Algorithm') !== 'AWS4-HMAC-SHA256') throw new S3Failure('AccessDenied', 'X-Amz-Algorithm only supports "AWS4-HMAC-SHA256"');
    const [keyId, day, scopeRegion, service, terminator] = params.get('X-Amz-Credential').split('/');
    if (keyId !== accessKey) throw new S3Failure('InvalidAccessKeyId');
    if (scopeRegion !== region || service !== 's3' || terminator !== 'aws4_request') throw new S3Failure('AuthorizationHeaderMalformed');
    const amzDate = params.get('X-Amz-Date');
    const signedAt = parseAmzDate(amzDate);
    const expires = Number(params.get('X-Amz-Expires'));
    if (Number.isNaN(signedAt) || day !== amzDate.slice(0, 8)) throw new S3Failure('AccessDenied', 'X-Amz-Date must be in the ISO8601 Long Format "yyyyMMdd\'T\'HHmmss\'Z\'"');
    if (!Number.isInteger(expires) || expires < 1 || expires > MAX_PRESIGN_SECONDS) {
      throw new S3Failure('AccessDenied', 'X-Amz-Expires must be less than a week (in seconds) that is 604800');
    }
    if (Date.now() > signedAt + expires * 1000) throw new S3Failure('AccessDenied', 'Request has expired');
    if (signedAt > Date.now() + MAX_CLOCK_SKEW_MS) throw new S3Failure('AccessDenied', 'Request is not valid yet');
    if (sessionToken && params.get('X-Amz-Security-Token') !== sessionToken) throw new S3Failure('InvalidAccessKeyId', 'The provided token is malformed or otherwise invalid.');

    const signedHeaders = params.get('X-Amz-SignedHeaders').split(';');
    if (!signedHeaders.includes('host')) throw new S3Failure('SignatureDoesNotMatch');
    const headers = {};
    for (const name of signedHeaders) headers[name] = req.headersDistinct[name] ?? [];
    const expected = s3Signature({
      method: req.method, rawPath, rawQuery, skipQuery: ['X-Amz-Signature'], headers, signedHeaders,
      payloadHash: 'UNSIGNED-PAYLOAD', amzDate, region, secretKey,
    });
    return { expected, signature: params.get('X-Amz-Signature') };
  }

  function verifySignature(req, rawPath, rawQuery, body) {
    const queryForm = /(^|&)X-Amz-Algorithm=/.test(rawQuery ?? '');
    if (!req.headers.authorization && !queryForm) {
      throw new S3Failure('AccessDenied', 'The proxy only forwards signed requests.');
    }
    const { expected, signature } = queryForm ? checkQuerySignature(req, rawPath, rawQuery) : checkHeaderSignature(req, rawPath, rawQuery, body);
    if (signature.length !== 64 || !timingSafeEqual(Buffer.from(expected.signature), Buffer.from(signature))) {
      stats.last_signature_failure = { method: req.method, path: rawPath, canonical_request: expected.canonicalRequest };
      if (verbose) process.stderr.write(`s3-fault-proxy: signature mismatch; canonical request was:\n${expected.canonicalRequest}\n`);
      throw new S3Failure('SignatureDoesNotMatch');
    }
  }

  function takeFault(method) {
    const index = script.findIndex((entry) => !entry.methods || entry.methods.includes(method));
    if (index >= 0) return script.splice(index, 1)[0];
    if (persistent && (!persistent.methods || persistent.methods.includes(method))) return persistent;
    return null;
  }

  /** Sends a request upstream and resolves to {status, headers (raw array), body}. */
  function upstream(method, path, rawHeaders, body) {
    return new Promise((resolvePromise, reject) => {
      const forwarded = httpRequest({ host: HOST, port: targetPort, method, path, headers: rawHeaders, agent: false }, (response) => {
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('end', () => resolvePromise({ status: response.statusCode, rawHeaders: response.rawHeaders, body: Buffer.concat(chunks) }));
        response.on('error', reject);
      });
      forwarded.setTimeout(UPSTREAM_TIMEOUT_MS, () => forwarded.destroy(new Error(`upstream ${method} ${path} timed out`)));
      forwarded.on('error', reject);
      forwarded.end(body);
    });
  }

  /** Returns true when an object exists at `rawPath` upstream (an anonymous HEAD, which s3rver allows). */
  async function objectExists(rawPath, hostHeader) {
    const response = await upstream('HEAD', rawPath, ['Host', hostHeader], undefined);
    return response.status === 200;
  }

  async function withPathLock(path, work) {
    const previous = pathLocks.get(path) ?? Promise.resolve();
    let release;
    const current = new Promise((resolvePromise) => { release = resolvePromise; });
    const chained = previous.then(() => current);
    pathLocks.set(path, chained);
    await previous;
    try {
      return await work();
    } finally {
      release();
      if (pathLocks.get(path) === chained) pathLocks.delete(path);
    }
  }

  async function forward(req, res, rawPath, body) {
    const exchange = async () => {
      if (awsConditionalPut && req.method === 'PUT' && req.headers['if-none-match'] !== undefined) {
        if (req.headers['if-none-match'] !== '*') throw new S3Failure('AccessDenied', 'The proxy emulates only If-None-Match: *');
        if (await objectExists(rawPath, req.headers.host)) {
          stats.precondition_failures += 1;
          throw new S3Failure('PreconditionFailed', undefined, { Condition: 'If-None-Match' });
        }
      }
      stats.forwarded += 1;
      return upstream(req.method, req.url, req.rawHeaders, body);
    };
    const conditional = awsConditionalPut && req.method === 'PUT';
    const response = conditional ? await withPathLock(rawPath, exchange) : await exchange();
    res.writeHead(response.status, response.rawHeaders);
    res.end(response.body);
    return response.status;
  }

  function validateEntry(entry, where) {
    if (typeof entry !== 'object' || entry === null) throw new Error(`${where} must be an object`);
    const code = entry.code ?? DEFAULT_CODE_BY_STATUS[entry.status];
    if (!code || !S3_ERRORS[code]) throw new Error(`${where}: unknown error; give status 400, 403, 409, 500 or 503, or a code from ${Object.keys(S3_ERRORS).join(', ')}`);
    if (entry.methods !== undefined && (!Array.isArray(entry.methods) || entry.methods.some((m) => typeof m !== 'string'))) {
      throw new Error(`${where}.methods must be an array of method names`);
    }
    return { code, status: entry.status ?? S3_ERRORS[code][0], message: entry.message, methods: entry.methods, retryAfter: entry.retry_after };
  }

  function applyControl(update) {
    const known = ['script', 'persistent', 'aws_conditional_put'];
    for (const key of Object.keys(update)) {
      if (!known.includes(key)) throw new Error(`unknown control key ${JSON.stringify(key)}; known: ${known.join(', ')}`);
    }
    if (update.script !== undefined) {
      if (!Array.isArray(update.script)) throw new Error('script must be an array');
      script = update.script.map((entry, i) => validateEntry(entry, `script[${i}]`));
    }
    if (update.persistent !== undefined) persistent = update.persistent === null ? null : validateEntry(update.persistent, 'persistent');
    if (update.aws_conditional_put !== undefined) awsConditionalPut = Boolean(update.aws_conditional_put);
  }

  function controlState() {
    return { ...stats, script_remaining: script.length, persistent: persistent !== null, aws_conditional_put: awsConditionalPut };
  }

  function sendJson(res, status, value) {
    const body = JSON.stringify(value);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  function handleControl(req, res, rawPath, body) {
    const route = `${req.method} ${rawPath}`;
    if (route === `GET ${CONTROL_PREFIX}stats`) return sendJson(res, 200, controlState());
    if (route === `POST ${CONTROL_PREFIX}reset`) {
      script = [];
      persistent = null;
      awsConditionalPut = false;
      resetStats();
      return sendJson(res, 200, controlState());
    }
    if (route === `POST ${CONTROL_PREFIX}control`) {
      try {
        applyControl(JSON.parse(body.toString('utf8') || '{}'));
      } catch (error) {
        return sendJson(res, 400, { error: error.message });
      }
      return sendJson(res, 200, controlState());
    }
    return sendJson(res, 404, { error: `no control route ${route}` });
  }

  async function handle(req, res, body) {
    const queryStart = req.url.indexOf('?');
    const rawPath = queryStart < 0 ? req.url : req.url.slice(0, queryStart);
    const rawQuery = queryStart < 0 ? '' : req.url.slice(queryStart + 1);
    if (rawPath.startsWith(CONTROL_PREFIX)) return handleControl(req, res, rawPath, body);

    stats.requests[req.method] = (stats.requests[req.method] ?? 0) + 1;
    const entry = {
      method: req.method,
      path: rawPath,
      query: rawQuery.replace(/X-Amz-Signature=[0-9a-f]+/, 'X-Amz-Signature=…'),
      if_none_match: req.headers['if-none-match'] ?? null,
      status: 0,
      fault: null,
    };
    record(entry);
    try {
      if (body.length > MAX_BODY_BYTES) throw new S3Failure('EntityTooLarge');
      if (verifySignatures) {
        try {
          verifySignature(req, rawPath, rawQuery, body);
        } catch (error) {
          stats.signature_failures += 1;
          throw error;
        }
      }
      const fault = takeFault(req.method);
      if (fault) {
        stats.faults += 1;
        entry.fault = fault.code;
        const failure = new S3Failure(fault.code, fault.message);
        failure.status = fault.status;
        failure.retryAfter = fault.retryAfter;
        throw failure;
      }
      entry.status = await forward(req, res, rawPath, body);
    } catch (error) {
      if (!(error instanceof S3Failure)) throw error;
      entry.status = error.status;
      entry.error = error.code;
      sendError(res, error, rawPath);
    }
  }

  const server = createServer((req, res) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES + 1) chunks.push(chunk);
    });
    req.on('end', () => {
      handle(req, res, Buffer.concat(chunks)).catch((error) => {
        process.stderr.write(`s3-fault-proxy: ${req.method} ${req.url} failed: ${error.stack ?? error}\n`);
        if (!res.headersSent) {
          sendError(res, new S3Failure('InternalError', `proxy failure: ${error.message}`), req.url);
        } else {
          res.destroy();
        }
      });
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise((resolvePromise, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, resolvePromise);
  });
  const actualPort = server.address().port;
  const baseUrl = `http://${HOST}:${actualPort}`;

  const call = async (method, path, value) => {
    const response = await fetch(`${baseUrl}${CONTROL_PREFIX}${path}`, {
      method,
      headers: value === undefined ? {} : { 'content-type': 'application/json' },
      body: value === undefined ? undefined : JSON.stringify(value),
      signal: AbortSignal.timeout(5000),
    });
    const parsed = await response.json();
    if (response.status !== 200) throw new Error(`s3-fault-proxy ${path}: ${parsed.error}`);
    return parsed;
  };

  return {
    port: actualPort,
    baseUrl,
    control: (settings) => call('POST', 'control', settings),
    stats: () => call('GET', 'stats'),
    reset: () => call('POST', 'reset', {}),
    close: () => new Promise((resolvePromise) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolvePromise());
    }),
  };
}

function parseArguments(argv) {
  const options = {};
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    const takeValue = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      i += 1;
      return argv[i];
    };
    const takePort = () => {
      const text = takeValue();
      if (!/^\d+$/.test(text) || Number(text) > 65535) throw new Error(`${flag} must be an integer from 0 to 65535, got ${JSON.stringify(text)}`);
      return Number(text);
    };
    if (flag === '--port') options.port = takePort();
    else if (flag === '--target-port') options.targetPort = takePort();
    else if (flag === '--access-key') options.accessKey = takeValue();
    else if (flag === '--secret-key') options.secretKey = takeValue();
    else if (flag === '--session-token') options.sessionToken = takeValue();
    else if (flag === '--region') options.region = takeValue();
    else if (flag === '--no-verify') options.verifySignatures = false;
    else if (flag === '--verbose') options.verbose = true;
    else if (flag === '--help' || flag === '-h') options.help = true;
    else throw new Error(`unknown argument ${JSON.stringify(flag)}`);
  }
  return options;
}

async function main() {
  let options;
  try {
    options = parseArguments(process.argv.slice(2));
    if (!options.help && !options.targetPort) throw new Error('--target-port is required');
  } catch (error) {
    process.stderr.write(`s3-fault-proxy: ${error.message}\n${USAGE}\n`);
    process.exit(2);
  }
  if (options.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const proxy = await startS3FaultProxy(options);
  process.stdout.write(`{"port": ${proxy.port}}\n`);
  process.stderr.write(`s3-fault-proxy: listening on ${proxy.baseUrl}, forwarding to ${HOST}:${options.targetPort}\n`);
  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`s3-fault-proxy: received ${signal}, stopping\n`);
    setTimeout(() => process.exit(0), 2000).unref();
    proxy.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error) => {
    process.stderr.write(`s3-fault-proxy: failed to start: ${error.stack ?? error}\n`);
    process.exit(1);
  });
}
