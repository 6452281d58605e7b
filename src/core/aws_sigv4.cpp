#include "core/aws_sigv4.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <ctime>
#include <map>
#include <stdexcept>

#include "core/hash.hpp"

namespace pixelgate::core {
namespace {

constexpr std::string_view kAlgorithm = "AWS4-HMAC-SHA256";

std::string hmac_sha256(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
           data.size(), out, &length) == nullptr) {
    throw std::runtime_error("OpenSSL HMAC(SHA-256) failed while signing an AWS request");
  }
  return std::string(reinterpret_cast<const char*>(out), length);
}

std::string to_lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c); });
  return out;
}

// SigV4 trims a header value and turns each run of spaces into one space,
// quoted or not (the test suite's get-header-value-trim case).
std::string canonical_header_value(std::string_view value) {
  std::string out;
  bool pending_space = false;
  for (char c : value) {
    if (c == ' ' || c == '\t') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    out += c;
  }
  return out;
}

// Builds the canonical query: each name and value encoded, then sorted by
// name and then by value, byte by byte.
std::string canonical_query(const HttpHeaderList& parameters) {
  std::vector<std::pair<std::string, std::string>> query;
  query.reserve(parameters.size());
  for (const auto& [name, value] : parameters) query.emplace_back(aws_uri_encode(name, false), aws_uri_encode(value, false));
  std::sort(query.begin(), query.end());
  std::string out;
  for (const auto& [name, value] : query) {
    if (!out.empty()) out += '&';
    out += name + "=" + value;
  }
  return out;
}

}  // namespace

std::string aws_uri_encode(std::string_view text, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size() * 3);
  for (unsigned char c : text) {
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                            c == '.' || c == '_' || c == '~';
    if (unreserved || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0x0f];
    }
  }
  return out;
}

std::string aws_encode_path(std::string_view decoded_path) { return aws_uri_encode(decoded_path, true); }

std::string aws_amz_date(std::chrono::system_clock::time_point time) {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(time);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y%m%dT%H%M%SZ", &utc);
  return buffer;
}

std::string hmac_sha256_hex(std::string_view key, std::string_view data) {
  const std::string mac = hmac_sha256(key, data);
  return to_hex(reinterpret_cast<const unsigned char*>(mac.data()), mac.size());
}

std::string aws_signing_key(std::string_view secret_access_key, std::string_view date, std::string_view region,
                            std::string_view service) {
  const std::string date_key = hmac_sha256("AWS4" + std::string(secret_access_key), date);
  const std::string region_key = hmac_sha256(date_key, region);
  const std::string service_key = hmac_sha256(region_key, service);
  return hmac_sha256(service_key, "aws4_request");
}

AwsSignedRequest aws_sigv4_sign(const AwsSigningInput& input) {
  AwsSignedRequest result;
  result.amz_date = aws_amz_date(input.time);
  const std::string date = result.amz_date.substr(0, 8);

  // Canonical URI. The wire path is already encoded once, and services
  // other than S3 sign it encoded a second time, so "%3A" becomes "%253A".
  const std::string path = input.path.empty() ? "/" : input.path;
  const std::string canonical_uri = input.double_encode_path ? aws_uri_encode(path, true) : path;

  result.query_string = canonical_query(input.query);

  // Canonical headers: lower-case names in sorted order, duplicate values
  // joined with commas in the order given.
  std::map<std::string, std::string> headers;
  auto add_header = [&headers](const std::string& name, std::string_view value) {
    const std::string key = to_lower(name);
    const std::string clean = canonical_header_value(value);
    auto [it, inserted] = headers.emplace(key, clean);
    if (!inserted) it->second += "," + clean;
  };
  for (const auto& [name, value] : input.headers) add_header(name, value);
  if (headers.count("host") == 0) {
    add_header("host", input.host);
    result.headers_to_add.push_back("Host: " + input.host);
  }
  add_header("x-amz-date", result.amz_date);
  result.headers_to_add.push_back("X-Amz-Date: " + result.amz_date);
  if (!input.credentials.session_token.empty()) {
    add_header("x-amz-security-token", input.credentials.session_token);
    result.headers_to_add.push_back("X-Amz-Security-Token: " + input.credentials.session_token);
  }
  if (input.add_content_sha256_header) {
    add_header("x-amz-content-sha256", input.payload_hash);
    result.headers_to_add.push_back("X-Amz-Content-Sha256: " + input.payload_hash);
  }
  std::string canonical_headers;
  std::string signed_headers;
  for (const auto& [name, value] : headers) {
    canonical_headers += name + ":" + value + "\n";
    signed_headers += (signed_headers.empty() ? "" : ";") + name;
  }

  result.canonical_request = input.method + "\n" + canonical_uri + "\n" + result.query_string + "\n" +
                             canonical_headers + "\n" + signed_headers + "\n" + input.payload_hash;

  const std::string scope = date + "/" + input.region + "/" + input.service + "/aws4_request";
  result.string_to_sign =
      std::string(kAlgorithm) + "\n" + result.amz_date + "\n" + scope + "\n" + sha256_hex(result.canonical_request);

  const std::string key = aws_signing_key(input.credentials.secret_access_key, date, input.region, input.service);
  result.signature = hmac_sha256_hex(key, result.string_to_sign);
  result.authorization = std::string(kAlgorithm) + " Credential=" + input.credentials.access_key_id + "/" + scope +
                         ", SignedHeaders=" + signed_headers + ", Signature=" + result.signature;
  result.headers_to_add.insert(result.headers_to_add.begin(), "Authorization: " + result.authorization);
  return result;
}

std::string aws_sigv4_presign(const AwsPresignInput& input) {
  const std::string amz_date = aws_amz_date(input.time);
  const std::string date = amz_date.substr(0, 8);
  const std::string scope = date + "/" + input.region + "/" + input.service + "/aws4_request";

  HttpHeaderList parameters = input.query;
  parameters.emplace_back("X-Amz-Algorithm", std::string(kAlgorithm));
  parameters.emplace_back("X-Amz-Credential", input.credentials.access_key_id + "/" + scope);
  parameters.emplace_back("X-Amz-Date", amz_date);
  parameters.emplace_back("X-Amz-Expires", std::to_string(input.expires.count()));
  parameters.emplace_back("X-Amz-SignedHeaders", "host");
  // S3 signs the session token as a query parameter (some other services
  // append it after signing instead).
  if (!input.credentials.session_token.empty()) {
    parameters.emplace_back("X-Amz-Security-Token", input.credentials.session_token);
  }
  const std::string query = canonical_query(parameters);

  const std::string path = input.path.empty() ? "/" : input.path;
  const std::string canonical_uri = input.double_encode_path ? aws_uri_encode(path, true) : path;
  const std::string canonical_request = input.method + "\n" + canonical_uri + "\n" + query + "\n" + "host:" +
                                        canonical_header_value(input.host) + "\n\nhost\nUNSIGNED-PAYLOAD";
  const std::string string_to_sign =
      std::string(kAlgorithm) + "\n" + amz_date + "\n" + scope + "\n" + sha256_hex(canonical_request);
  const std::string key = aws_signing_key(input.credentials.secret_access_key, date, input.region, input.service);
  return query + "&X-Amz-Signature=" + hmac_sha256_hex(key, string_to_sign);
}

}  // namespace pixelgate::core
