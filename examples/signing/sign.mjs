// Signs a pixelgate image URL in Node.js (18 or newer), with no dependencies.
// Usage: PIXELGATE_SIGNING_KEY=... node sign.mjs k1 '/generate-image?prompt=a blue dog' [expires-in-seconds]
import { createHmac } from 'node:crypto';

// RFC 3986 percent-encoding of every byte outside A-Z a-z 0-9 - . _ ~
function encode(text) {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

export function signUrl(pathAndQuery, keyId, secret, expiresAt) {
  const url = new URL(pathAndQuery, 'http://placeholder.invalid');
  const params = [...url.searchParams.entries()];  // decoded; '+' reads as a space
  params.push(['kid', keyId]);
  if (expiresAt !== undefined) params.push(['exp', String(expiresAt)]);

  const encoded = params.map(([name, value]) => [encode(name), encode(value)]);
  // Bytewise order by name, then by value; the encoded strings are ASCII.
  const compare = (x, y) => (x < y ? -1 : x > y ? 1 : 0);
  const sorted = [...encoded].sort((a, b) => compare(a[0], b[0]) || compare(a[1], b[1]));
  const path = decodeURIComponent(url.pathname).split('/').map(encode).join('/');
  const canonical = ['PIXELGATE-HMAC-SHA256', path, sorted.map(([n, v]) => `${n}=${v}`).join('&')].join('\n');
  const sig = createHmac('sha256', secret).update(canonical).digest('base64url');
  return `${path}?${encoded.map(([n, v]) => `${n}=${v}`).join('&')}&sig=${sig}`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [keyId, target, ttl] = process.argv.slice(2);
  const expiresAt = ttl ? Math.floor(Date.now() / 1000) + Number(ttl) : undefined;
  console.log(signUrl(target, keyId, process.env.PIXELGATE_SIGNING_KEY, expiresAt));
}
