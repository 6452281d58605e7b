// Images in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, Google
// Cloud Storage's XML API), reached with libcurl and SigV4 signing.
//
// Layout under the configured prefix:
//   <prefix><key>            the image, with Content-Type and the user
//                            metadata x-amz-meta-sha256, -template,
//                            -template-version and -backend
//   <prefix><key>.meta.json  the full metadata JSON, written before the image
// A ".meta.json" name is never a valid key, so list() cannot mistake a
// sidecar for an image. find() reads only the image: its headers carry what
// a cache hit needs, so a hit costs one request.
#pragma once

#include <memory>
#include <string>

#include "backends/http_client.hpp"
#include "config/config.hpp"
#include "core/aws_sigv4.hpp"
#include "storage/object_store.hpp"

namespace pixelgate::storage {

class S3Store final : public ObjectStore {
 public:
  // The destination of one request: the URL to fetch, and the Host and
  // encoded path that are signed.
  struct Target {
    std::string url;   // without a query
    std::string host;  // e.g. "s3.us-east-1.amazonaws.com" or "bucket.s3.localhost:9000"
    std::string path;  // percent-encoded once, e.g. "/bucket/images/a%20b"
  };

  // Checks the endpoint and prefix; makes no request.
  static core::Result<std::unique_ptr<S3Store>> open(const config::S3Config& config);

  core::Result<std::optional<StoredObject>> find(const std::string& key) override;
  core::Status put(const std::string& key, std::string_view data, std::string_view metadata_json) override;
  core::Result<std::optional<std::string>> find_metadata(const std::string& key) override;
  core::Status remove(const std::string& key) override;
  core::Status list(const std::function<bool(const std::string& key)>& visit) override;
  std::string object_name(const std::string& key) const override;
  std::optional<std::string> presigned_url(const std::string& key, std::chrono::seconds expires) override;
  // Writes and deletes the probe object "<prefix>.pixelgate-probe", one try
  // each. A PUT is the only check that proves write access: HEAD on the
  // bucket succeeds with read-only credentials.
  core::Status check_writable() override;
  // e.g. "s3:http://127.0.0.1:9000/images (path, region us-east-1, prefix \"a/\")"
  std::string describe() const override;

  // Returns the target for `name` (an object name, prefix included), or for
  // the bucket itself when `name` is empty.
  Target target(std::string_view name) const;

 private:
  struct Endpoint {
    std::string scheme;     // "http" or "https"
    std::string authority;  // host[:port] as configured
    std::string base_path;  // "" or e.g. "/s3", without a trailing '/'
  };

  // One S3 operation; send() signs and retries it.
  struct Call {
    std::string method;
    std::string name;           // object name; empty for the bucket
    core::HttpHeaderList query;  // decoded
    core::HttpHeaderList headers;  // sent and signed
    std::string_view body;
    std::string_view key;  // the pixelgate key, for logs; may be empty
    int max_attempts = 1;
  };

  S3Store(config::S3Config config, Endpoint endpoint);

  // Signs `call` for the current time.
  core::Result<backends::OutboundRequest> build_request(const Call& call, const Target& where,
                                                        const std::string& payload_hash) const;
  // Sends `call`, retrying transport errors, 5xx, 429 and S3's retryable
  // error codes up to call.max_attempts tries. Returns every other response.
  core::Result<backends::OutboundResponse> send(const Call& call) const;
  core::Status put_object(const Call& call, bool create_only) const;
  core::Status delete_object(const std::string& name, const std::string& key, int max_attempts) const;
  core::Result<std::optional<backends::OutboundResponse>> get_object(const std::string& name,
                                                                      const std::string& key) const;
  core::AwsCredentials credentials() const;

  config::S3Config config_;
  Endpoint endpoint_;
};

}  // namespace pixelgate::storage
