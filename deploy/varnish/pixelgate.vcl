# Varnish 7 in front of pixelgate. Image responses are content-addressed and
# marked immutable by pixelgate, so Varnish keeps them as long as its storage
# allows; errors carry "Cache-Control: no-store" and are never kept.
#
# Tested by tests/blackbox/cdn.test.mjs, which runs this file with the backend
# address replaced. Purging: `pixelgate cache purge` prints surrogate keys;
# send them here with
#   curl -X BAN -H 'X-Purge-Surrogate-Key: key:<KEY>' http://varnish/
vcl 4.1;

import std;

backend pixelgate {
  .host = "127.0.0.1";
  .port = "8080";
  .connect_timeout = 2s;
  .first_byte_timeout = 300s;  # a miss waits for the generation
  .between_bytes_timeout = 30s;
}

acl purgers {
  "127.0.0.1";
  "::1";
}

sub vcl_recv {
  if (req.method == "PURGE" || req.method == "BAN") {
    if (client.ip !~ purgers) {
      return (synth(405, "Not allowed"));
    }
    if (req.method == "PURGE") {
      return (purge);
    }
    if (!req.http.X-Purge-Surrogate-Key) {
      return (synth(400, "X-Purge-Surrogate-Key is missing"));
    }
    if (req.http.X-Purge-Surrogate-Key !~ "^[A-Za-z0-9:._-]+$") {
      return (synth(400, "X-Purge-Surrogate-Key must be one tag"));
    }
    # Surrogate-Key holds space-separated tags; match one whole tag. A ban's
    # argument ends at a space, so the pattern spells spaces as \s.
    if (std.ban("obj.http.Surrogate-Key ~ (^|\s)" + req.http.X-Purge-Surrogate-Key + "(\s|$)")) {
      return (synth(200, "Banned"));
    }
    return (synth(400, std.ban_error()));
  }
  if (req.url ~ "^/(generate-image|v1/images/|images/)" && (req.method == "GET" || req.method == "HEAD")) {
    # Image URLs do not depend on cookies, and the built-in VCL would pass
    # every request that carries one.
    unset req.http.Cookie;
    # pixelgate's cache key ignores parameter order, so the CDN's should too.
    # Signed URLs stay valid: the signature covers the sorted parameters.
    set req.url = std.querysort(req.url);
  }
  # Everything else, including requests with Authorization, follows the
  # built-in rules: such requests are passed, not cached.
}

sub vcl_backend_response {
  # Never keep server errors, even if a misconfigured proxy strips no-store.
  if (beresp.status >= 500) {
    set beresp.uncacheable = true;
    set beresp.ttl = 0s;
    return (deliver);
  }
}

sub vcl_deliver {
  if (obj.hits > 0) {
    set resp.http.X-Cache = "HIT";
  } else {
    set resp.http.X-Cache = "MISS";
  }
  # Tags are for purging here; clients do not need them.
  unset resp.http.Surrogate-Key;
}
