#include "admission/url_signing.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>

#include <algorithm>
#include <ctime>
#include <stdexcept>

#include "core/clock.hpp"
#include "core/hash.hpp"

namespace pixelgate::admission {
namespace {

constexpr std::string_view kAlgorithm = "PIXELGATE-HMAC-SHA256";

bool is_lower_hex_letter(char c) { return c >= 'a' && c <= 'f'; }

// Returns false when a percent-escape uses a lower-case hex digit.
bool escapes_are_upper_case(std::string_view text) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') continue;
    if (i + 1 < text.size() && is_lower_hex_letter(text[i + 1])) return false;
    if (i + 2 < text.size() && is_lower_hex_letter(text[i + 2])) return false;
  }
  return true;
}

// Percent-encodes everything except unreserved characters and, in paths, '/'.
std::string encode_component(std::string_view text, bool keep_slash) {
  std::string out;
  out.reserve(text.size());
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t slash = keep_slash ? text.find('/', start) : std::string_view::npos;
    out += core::percent_encode(text.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start));
    if (slash == std::string_view::npos) break;
    out.push_back('/');
    start = slash + 1;
  }
  return out;
}

core::Error denied(std::string message) {
  return {core::ErrorCode::PermissionDenied, std::move(message), "sig", 0};
}

core::Result<CanonicalRequest> canonicalize_impl(std::string_view raw_path, std::string_view raw_query, bool strict) {
  if (strict && (!escapes_are_upper_case(raw_path) || !escapes_are_upper_case(raw_query))) {
    return core::Error::invalid("percent-escapes in a signed URL must use upper-case hex digits (%2F, not %2f)");
  }
  auto path = core::percent_decode(raw_path, false);
  if (!path) return core::Error::invalid("the path has a malformed percent-escape");
  auto params = core::parse_query(raw_query);
  if (!params) return core::Error::invalid("the query has a malformed percent-escape");

  CanonicalRequest request;
  std::vector<std::pair<std::string, std::string>> encoded;
  int sig_count = 0;
  int kid_count = 0;
  int exp_count = 0;
  for (auto& [name, value] : *params) {
    if (name == "sig") {
      if (++sig_count > 1) return core::Error::invalid("sig is given more than once", "sig");
      request.signature = value;
      continue;
    }
    if (name == "kid") {
      if (++kid_count > 1) return core::Error::invalid("kid is given more than once", "kid");
      request.key_id = value;
    } else if (name == "exp") {
      if (++exp_count > 1) return core::Error::invalid("exp is given more than once", "exp");
      std::uint64_t seconds = 0;
      const bool digits = !value.empty() && value.size() <= 12 &&
                          std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (!digits) return core::Error::invalid("exp must be a Unix time in seconds, got \"" + value + "\"", "exp");
      seconds = std::stoull(value);
      request.expires = static_cast<std::int64_t>(seconds);
    }
    encoded.emplace_back(core::percent_encode(name), core::percent_encode(value));
    request.params.emplace_back(name, value);
  }
  std::sort(encoded.begin(), encoded.end());

  request.canonical = std::string(kAlgorithm) + "\n" + encode_component(*path, true) + "\n";
  for (std::size_t i = 0; i < encoded.size(); ++i) {
    if (i > 0) request.canonical.push_back('&');
    request.canonical += encoded[i].first + "=" + encoded[i].second;
  }
  return request;
}

}  // namespace

core::Result<CanonicalRequest> canonicalize(std::string_view raw_path, std::string_view raw_query) {
  return canonicalize_impl(raw_path, raw_query, true);
}

std::string hmac_sha256_base64url(std::string_view key, std::string_view message) {
  // The MAC algorithm is fetched once: OpenSSL 3's one-shot HMAC() fetches
  // it by name on every call, which costs more than the hash itself.
  static EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  unsigned char digest[EVP_MAX_MD_SIZE];
  std::size_t length = 0;
  EVP_MAC_CTX* context = EVP_MAC_CTX_new(mac);
  char digest_name[] = "SHA256";
  const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest_name, 0), OSSL_PARAM_construct_end()};
  const bool ok = context && EVP_MAC_init(context, reinterpret_cast<const unsigned char*>(key.data()), key.size(), params) == 1 &&
                  EVP_MAC_update(context, reinterpret_cast<const unsigned char*>(message.data()), message.size()) == 1 &&
                  EVP_MAC_final(context, digest, &length, sizeof(digest)) == 1;
  EVP_MAC_CTX_free(context);
  if (!ok) throw std::runtime_error("OpenSSL HMAC-SHA256 failed");
  std::string text = core::base64_encode(std::string_view(reinterpret_cast<const char*>(digest), length));
  for (char& c : text) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  while (!text.empty() && text.back() == '=') text.pop_back();
  return text;
}

bool has_signature(std::string_view raw_query) {
  while (!raw_query.empty()) {
    const std::size_t amp = raw_query.find('&');
    const std::string_view piece = raw_query.substr(0, amp);
    if (piece == "sig" || piece.rfind("sig=", 0) == 0) return true;
    raw_query = amp == std::string_view::npos ? std::string_view{} : raw_query.substr(amp + 1);
  }
  return false;
}

core::Result<std::string> sign_url(std::string_view path_and_query, const SigningKey& key,
                                   std::optional<std::int64_t> expires) {
  const std::size_t question = path_and_query.find('?');
  const std::string_view path = path_and_query.substr(0, question);
  std::string query(question == std::string_view::npos ? std::string_view{} : path_and_query.substr(question + 1));
  if (path.empty() || path.front() != '/') return core::Error::invalid("the URL path must start with '/'");

  auto existing = canonicalize_impl(path, query, false);
  if (!existing) return std::move(existing).error();
  for (const auto& [name, value] : existing->params) {
    if (name == "kid" || name == "exp") return core::Error::invalid("the URL already has " + name + "; remove it first");
  }
  if (!existing->signature.empty()) return core::Error::invalid("the URL already has sig; remove it first");

  // The output is written in canonical spelling, so what is signed is what
  // is sent.
  std::string canonical_query;
  for (const auto& [name, value] : existing->params) {
    canonical_query += (canonical_query.empty() ? "" : "&") + core::percent_encode(name) + "=" + core::percent_encode(value);
  }
  canonical_query += (canonical_query.empty() ? "kid=" : "&kid=") + core::percent_encode(key.id);
  if (expires) canonical_query += "&exp=" + std::to_string(*expires);
  const std::string decoded_path = core::percent_decode(path, false).value_or(std::string(path));
  const std::string url_path = encode_component(decoded_path, true);

  auto canonical = canonicalize_impl(url_path, canonical_query, true);
  if (!canonical) return std::move(canonical).error();
  return url_path + "?" + canonical_query + "&sig=" + hmac_sha256_base64url(key.secret, canonical->canonical);
}

core::Result<VerifiedRequest> verify_signed_request(std::string_view raw_path, std::string_view raw_query,
                                                    const std::map<std::string, SigningKey>& keys,
                                                    const core::Clock& clock) {
  auto request = canonicalize(raw_path, raw_query);
  if (!request) return denied("signed URL is malformed: " + request.error().message);
  if (request->signature.empty()) return denied("signature missing: this route needs a signed URL (sig parameter)");
  if (request->key_id.empty()) return denied("signed URL has no key id (kid parameter)");

  auto key = keys.find(request->key_id);
  if (key == keys.end()) return denied("signed URL names an unknown key id \"" + request->key_id + "\"");

  const std::string expected = hmac_sha256_base64url(key->second.secret, request->canonical);
  const bool same_length = expected.size() == request->signature.size();
  // CRYPTO_memcmp takes the same time whatever the first differing byte is.
  const bool valid = same_length && CRYPTO_memcmp(expected.data(), request->signature.data(), expected.size()) == 0;
  if (!valid) return denied("signature is invalid for this URL");

  if (request->expires && *request->expires < clock.unix_seconds()) {
    return denied("signed URL expired at " + core::format_iso8601_utc(*request->expires));
  }

  VerifiedRequest verified;
  verified.key_id = request->key_id;
  verified.expires = request->expires;
  for (auto& [name, value] : request->params) {
    if (name != "kid" && name != "exp") verified.params.emplace_back(std::move(name), std::move(value));
  }
  return verified;
}

}  // namespace pixelgate::admission
