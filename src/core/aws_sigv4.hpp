// AWS Signature Version 4 for the Bedrock adapter and the S3 object store:
// the Authorization header form, and the query-string form of presigned URLs.
//
// pixelgate signs requests itself with OpenSSL's HMAC-SHA256 because the AWS
// SDK for C++ is not packaged in Debian, and vendoring it would add a large
// build for a few small request shapes. The rules follow AWS's "Create a
// signed AWS API request" guide (IAM User Guide, Signature Version 4) and
// S3's "Signature Calculations for the Authorization Header" and
// "Authenticating Requests: Using Query Parameters".
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pixelgate::core {

struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // empty unless the keys are temporary (STS)
};

using HttpHeaderList = std::vector<std::pair<std::string, std::string>>;

struct AwsSigningInput {
  std::string method;  // e.g. "POST"
  // The host and port exactly as the Host header carries them, e.g.
  // "bedrock-runtime.us-east-1.amazonaws.com" or "127.0.0.1:8123".
  std::string host;
  // The path as it goes on the wire, already percent-encoded once (see
  // aws_encode_path). An empty path is signed as "/".
  std::string path;
  // Decoded query parameters, which the signer encodes and sorts.
  HttpHeaderList query;
  // Further headers to sign, e.g. Content-Type. Names are matched without
  // regard to case, and duplicates are joined with commas in the given order.
  HttpHeaderList headers;
  std::string region;   // e.g. "us-east-1"
  std::string service;  // e.g. "bedrock" or "s3"
  AwsCredentials credentials;
  // Lower-case hex SHA-256 of the body, or "UNSIGNED-PAYLOAD" for S3.
  std::string payload_hash;
  // Every service except S3 encodes each path segment once more in the
  // canonical request. S3 signs the path as sent.
  bool double_encode_path = true;
  // S3 requires X-Amz-Content-Sha256, and other services accept it.
  bool add_content_sha256_header = false;
  std::chrono::system_clock::time_point time;
};

struct AwsSignedRequest {
  std::string authorization;  // the Authorization header's value
  // Headers the caller must send as well, in "Name: value" form: Host,
  // X-Amz-Date, and X-Amz-Security-Token and X-Amz-Content-Sha256 when used.
  std::vector<std::string> headers_to_add;
  std::string query_string;  // the encoded query to send, without "?"
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;  // 64 lower-case hex characters
  std::string amz_date;   // e.g. "20150830T123600Z"
};

// Percent-encodes `text` as SigV4 requires: every byte except A-Z a-z 0-9
// - . _ ~ becomes %XX with upper-case hex, and '/' is kept when `keep_slash`.
std::string aws_uri_encode(std::string_view text, bool keep_slash);

// Encodes a decoded path for the wire: each segment once, slashes kept.
std::string aws_encode_path(std::string_view decoded_path);

// Returns "YYYYMMDDTHHMMSSZ" in UTC.
std::string aws_amz_date(std::chrono::system_clock::time_point time);

// Returns the lower-case hex HMAC-SHA256 of `data` under `key`.
std::string hmac_sha256_hex(std::string_view key, std::string_view data);

// Returns the SigV4 signing key for one day, region and service (raw bytes).
std::string aws_signing_key(std::string_view secret_access_key, std::string_view date, std::string_view region,
                            std::string_view service);

// Signs one request. Throws std::runtime_error only when OpenSSL fails.
AwsSignedRequest aws_sigv4_sign(const AwsSigningInput& input);

struct AwsPresignInput {
  std::string method = "GET";
  std::string host;  // as the Host header of the later request carries it
  std::string path;  // encoded once, as for AwsSigningInput
  // Further decoded query parameters to sign, e.g. response-content-type.
  HttpHeaderList query;
  std::string region;
  std::string service = "s3";
  AwsCredentials credentials;
  // How long the URL stays valid. S3 accepts 1 to 604800 seconds (7 days).
  std::chrono::seconds expires{3600};
  std::chrono::system_clock::time_point time;
  bool double_encode_path = false;  // S3 signs the path as sent
};

// Presigns a request in the query-string form: only the host header is
// signed and the payload is UNSIGNED-PAYLOAD. Returns the complete encoded
// query to append after "?": the sorted X-Amz-* parameters (with
// X-Amz-Security-Token when a session token is set) and the caller's
// parameters, followed by X-Amz-Signature. Throws std::runtime_error only
// when OpenSSL fails.
std::string aws_sigv4_presign(const AwsPresignInput& input);

}  // namespace pixelgate::core
