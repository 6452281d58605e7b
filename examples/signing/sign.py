"""Signs a pixelgate image URL in Python 3, with the standard library only.

Usage: PIXELGATE_SIGNING_KEY=... python3 sign.py k1 '/generate-image?prompt=a blue dog' [expires-in-seconds]
"""
import base64
import hashlib
import hmac
import os
import sys
import time
from urllib.parse import parse_qsl, quote, unquote, urlsplit


def encode(text):
    # RFC 3986 percent-encoding of every byte outside A-Z a-z 0-9 - . _ ~
    return quote(text, safe="-._~")


def sign_url(path_and_query, key_id, secret, expires_at=None):
    parts = urlsplit(path_and_query)
    params = parse_qsl(parts.query, keep_blank_values=True)  # decoded; '+' reads as a space
    params.append(("kid", key_id))
    if expires_at is not None:
        params.append(("exp", str(expires_at)))

    encoded = [(encode(name), encode(value)) for name, value in params]
    path = "/".join(encode(segment) for segment in unquote(parts.path).split("/"))
    canonical = "\n".join(["PIXELGATE-HMAC-SHA256", path, "&".join(f"{n}={v}" for n, v in sorted(encoded))])
    digest = hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return f"{path}?{'&'.join(f'{n}={v}' for n, v in encoded)}&sig={sig}"


if __name__ == "__main__":
    key_id, target = sys.argv[1], sys.argv[2]
    expires = int(time.time()) + int(sys.argv[3]) if len(sys.argv) > 3 else None
    print(sign_url(target, key_id, os.environ["PIXELGATE_SIGNING_KEY"], expires))
