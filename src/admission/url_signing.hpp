// HMAC-SHA256 signed URLs for the public <img> routes.
//
// The signature covers a canonical form of the path and query, so a URL
// verifies however a browser or proxy reorders its parameters or spells a
// space. The canonical form is:
//
//   PIXELGATE-HMAC-SHA256 "\n" <path> "\n" <query>
//
// <path> is the decoded path with every byte outside RFC 3986's unreserved
// set ("A-Z a-z 0-9 - . _ ~") and "/" percent-encoded with upper-case hex.
// <query> is every parameter except `sig`, each name and value decoded as
// application/x-www-form-urlencoded ("+" is a space) and re-encoded the same
// way ("+" and space become %2B and %20), as "name=value", sorted by name and
// then value (bytewise), joined with "&". `kid` names the key and `exp` (Unix
// seconds, optional) is signed like any other parameter.
//
// `sig` is the unpadded base64url HMAC-SHA256 of the canonical form. A
// percent-escape in a signed URL must use upper-case hex digits, which every
// common encoder produces, so no single-byte change of a signed URL names the
// same request.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/text.hpp"

namespace pixelgate::admission {

struct CanonicalRequest {
  std::string canonical;  // the string that is signed
  core::QueryParams params;  // decoded parameters without `sig`, in request order
  std::string signature;  // the `sig` value as sent, empty when absent
  std::string key_id;     // `kid`
  std::optional<std::int64_t> expires;  // `exp`
};

// Parses and canonicalises a path and raw query. Errors are InvalidArgument
// (malformed escapes, lower-case hex, a repeated sig, kid or exp, a
// non-numeric exp).
core::Result<CanonicalRequest> canonicalize(std::string_view raw_path, std::string_view raw_query);

// Returns the unpadded base64url HMAC-SHA256 of `message` under `key`.
std::string hmac_sha256_base64url(std::string_view key, std::string_view message);

struct SigningKey {
  std::string id;
  std::string secret;  // raw bytes of the secret; never logged
};

// Returns `url_path_and_query` with kid, optional exp and sig added. The
// input must not already carry sig, kid or exp.
core::Result<std::string> sign_url(std::string_view path_and_query, const SigningKey& key,
                                   std::optional<std::int64_t> expires);

// Result of checking a signed request; `params` exclude sig, kid and exp.
struct VerifiedRequest {
  std::string key_id;
  core::QueryParams params;
  std::optional<std::int64_t> expires;  // the exp parameter, in Unix seconds
};

// Checks the signature of a request in constant time. Errors are
// PermissionDenied with a message that says what is wrong (missing, unknown
// key id, expired at a time, invalid) and never reveals the expected value.
core::Result<VerifiedRequest> verify_signed_request(std::string_view raw_path, std::string_view raw_query,
                                                    const std::map<std::string, SigningKey>& keys,
                                                    const core::Clock& clock);

// Returns true when the raw query has a parameter named `sig`.
bool has_signature(std::string_view raw_query);

}  // namespace pixelgate::admission
