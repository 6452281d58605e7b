#include "storage/s3_store.hpp"

#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "backends/retry.hpp"
#include "core/hash.hpp"
#include "core/text.hpp"
#include "storage/s3_xml.hpp"

namespace pixelgate::storage {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kSidecarSuffix = ".meta.json";
constexpr std::string_view kProbeName = ".pixelgate-probe";
// S3 limits object names to 1024 bytes of UTF-8. Of the names pixelgate
// writes, a sidecar is the longest: a key of up to 129 bytes plus ".meta.json".
constexpr std::size_t kMaxObjectNameBytes = 1024;
constexpr std::size_t kMaxPrefixBytes = kMaxObjectNameBytes - 129 - kSidecarSuffix.size();
// Backoff between tries of one operation. Not configurable: with the default
// four tries the waits add up to about 1.4 s at most, plus any Retry-After.
constexpr std::chrono::milliseconds kRetryBaseDelay{200};
constexpr std::chrono::milliseconds kRetryMaxDelay{5000};
// AWS accepts presigned URLs valid for 1 second to 7 days.
constexpr std::chrono::seconds kMaxPresignExpiry{7 * 24 * 3600};

std::string string_field(const Json& object, const char* name) {
  if (!object.is_object()) return {};
  const auto it = object.find(name);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string{};
}

bool is_ip_literal(std::string_view authority) {
  if (!authority.empty() && authority.front() == '[') return true;
  const std::string_view host = authority.substr(0, authority.find(':'));
  return !host.empty() && host.find_first_not_of("0123456789.") == std::string_view::npos;
}

// Returns the reason `prefix` cannot be used, or "" when it can.
std::string check_prefix(std::string_view prefix) {
  if (prefix.size() > kMaxPrefixBytes) {
    return "must be at most " + std::to_string(kMaxPrefixBytes) +
           " bytes, because S3 object names are limited to 1024 bytes";
  }
  if (!core::is_valid_utf8(prefix) || core::has_control_characters(prefix)) {
    return "must be UTF-8 text without control characters";
  }
  // libcurl removes "." and ".." segments from URL paths, so such a name
  // would reach the service under another name than the one signed.
  std::size_t start = 0;
  while (start <= prefix.size()) {
    const std::size_t end = std::min(prefix.find('/', start), prefix.size());
    const std::string_view segment = prefix.substr(start, end - start);
    if (segment == "." || segment == "..") return "must not contain \".\" or \"..\" path segments";
    start = end + 1;
  }
  return {};
}

// Metadata values are percent-encoded, so that a template name outside
// ASCII survives the trip through HTTP headers. Plain ASCII names such as
// "product-shot_v2" are unreserved characters and stay as they are.
std::string encode_metadata_value(std::string_view value) { return core::aws_uri_encode(value, false); }

std::string decode_metadata_value(const std::optional<std::string>& value) {
  if (!value) return {};
  auto decoded = core::percent_decode(*value, false);
  return decoded ? *decoded : *value;
}

bool is_retryable_response(const backends::OutboundResponse& response, const std::optional<s3::ErrorBody>& error) {
  if (response.status >= 500 || response.status == 429) return true;
  if (!error) return false;
  // RequestTimeout is a 400 that S3 sends when the upload stalled, and
  // ConditionalRequestConflict a 409 for a concurrent conditional write.
  // AWS documents both as safe to retry.
  return error->code == "RequestTimeout" || error->code == "SlowDown" || error->code == "ConditionalRequestConflict";
}

std::string describe_response(const backends::OutboundResponse& response, const std::optional<s3::ErrorBody>& error) {
  std::string text = "HTTP " + std::to_string(response.status);
  if (error) {
    text += " " + error->code;
    if (!error->message.empty()) text += ": " + error->message;
  } else if (!response.body.empty()) {
    text += " without an S3 error body";
  }
  return text;
}

}  // namespace

core::Result<std::unique_ptr<S3Store>> S3Store::open(const config::S3Config& config) {
  const std::string& url = config.endpoint;
  const std::size_t scheme_end = url.find("://");
  Endpoint endpoint;
  if (scheme_end != std::string::npos) endpoint.scheme = url.substr(0, scheme_end);
  if (endpoint.scheme != "http" && endpoint.scheme != "https") {
    return core::Error::invalid("storage.s3.endpoint must start with http:// or https://, got \"" + url + "\"");
  }
  const std::string rest = url.substr(scheme_end + 3);
  const std::size_t slash = rest.find('/');
  endpoint.authority = rest.substr(0, slash);
  if (slash != std::string::npos) endpoint.base_path = rest.substr(slash);
  while (!endpoint.base_path.empty() && endpoint.base_path.back() == '/') endpoint.base_path.pop_back();

  if (endpoint.authority.empty() || endpoint.authority.find('@') != std::string::npos) {
    return core::Error::invalid("storage.s3.endpoint must name a host without user information, got \"" + url +
                                "\"; credentials come from the environment variables " +
                                config.access_key.env_name + " and " + config.secret_key.env_name);
  }
  if (endpoint.base_path.find_first_not_of(
          "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/") != std::string::npos ||
      !check_prefix(endpoint.base_path + "/").empty()) {
    return core::Error::invalid("storage.s3.endpoint: the path after the host may only contain letters, digits, "
                                "'-', '.', '_', '~' and '/' without \".\" segments, got \"" + url + "\"");
  }
  if (auto reason = check_prefix(config.prefix); !reason.empty()) {
    return core::Error::invalid("storage.s3.prefix " + reason + ", got \"" + config.prefix + "\"");
  }
  if (config.addressing == "virtual") {
    if (is_ip_literal(endpoint.authority)) {
      return core::Error::invalid("storage.s3.addressing \"virtual\" puts the bucket in the host name, which needs a "
                                  "DNS name in endpoint, got \"" + url + "\"; use addressing = \"path\"");
    }
    if (config.bucket.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-") != std::string::npos) {
      return core::Error::invalid("storage.s3.bucket \"" + config.bucket + "\" cannot be part of a host name; "
                                  "use addressing = \"path\"");
    }
    if (endpoint.scheme == "https" && config.bucket.find('.') != std::string::npos) {
      spdlog::warn("storage: bucket {} contains '.', which a wildcard TLS certificate for {} does not cover with "
                   "virtual-host addressing; set addressing = \"path\" if requests fail with certificate errors",
                   config.bucket, endpoint.authority);
    }
  }
  return std::unique_ptr<S3Store>(new S3Store(config, std::move(endpoint)));
}

S3Store::S3Store(config::S3Config config, Endpoint endpoint) : config_(std::move(config)), endpoint_(std::move(endpoint)) {}

S3Store::Target S3Store::target(std::string_view name) const {
  Target result;
  if (config_.addressing == "virtual") {
    result.host = config_.bucket + "." + endpoint_.authority;
    result.path = endpoint_.base_path + "/" + core::aws_encode_path(name);
  } else {
    result.host = endpoint_.authority;
    result.path = endpoint_.base_path + "/" + core::aws_uri_encode(config_.bucket, false);
    if (!name.empty()) result.path += "/" + core::aws_encode_path(name);
  }
  result.url = endpoint_.scheme + "://" + result.host + result.path;
  return result;
}

std::string S3Store::object_name(const std::string& key) const { return config_.prefix + key; }

core::AwsCredentials S3Store::credentials() const {
  return {config_.access_key.value, config_.secret_key.value, config_.session_token.value};
}

std::string S3Store::describe() const {
  return "s3:" + endpoint_.scheme + "://" + endpoint_.authority + endpoint_.base_path + "/" + config_.bucket + " (" +
         config_.addressing + " addressing, region " + config_.region + ", prefix \"" + config_.prefix + "\")";
}

core::Result<backends::OutboundRequest> S3Store::build_request(const Call& call, const Target& where,
                                                               const std::string& payload_hash) const {
  core::AwsSigningInput input;
  input.method = call.method;
  input.host = where.host;
  input.path = where.path;
  input.query = call.query;
  input.headers = call.headers;
  input.region = config_.region;
  input.service = "s3";
  input.credentials = credentials();
  input.payload_hash = payload_hash;
  input.double_encode_path = false;
  input.add_content_sha256_header = true;
  input.time = std::chrono::system_clock::now();

  backends::OutboundRequest request;
  try {
    const core::AwsSignedRequest signed_request = core::aws_sigv4_sign(input);
    request.url = where.url + (signed_request.query_string.empty() ? "" : "?" + signed_request.query_string);
    request.headers = signed_request.headers_to_add;
  } catch (const std::runtime_error& error) {
    spdlog::error("storage: signing S3 {} {} failed: {}", call.method, call.name, error.what());
    return core::Error::internal("signing the S3 request failed: " + std::string(error.what()));
  }
  request.method = call.method;
  for (const auto& [name, value] : call.headers) request.headers.push_back(name + ": " + value);
  request.body = std::string(call.body);
  request.connect_timeout_ms = config_.connect_timeout_ms;
  request.timeout_ms = config_.timeout_ms;
  return request;
}

core::Result<backends::OutboundResponse> S3Store::send(const Call& call) const {
  const Target where = target(call.name);
  const std::string payload_hash = core::sha256_hex(call.body);
  const int max_attempts = std::max(call.max_attempts, 1);
  const std::string operation = call.method + " " + (call.name.empty() ? "bucket " + config_.bucket : call.name);
  // The operation with the pixelgate key it serves, for log lines.
  const std::string label = call.key.empty() ? operation : operation + " (key " + std::string(call.key) + ")";

  for (int attempt = 1;; ++attempt) {
    // Each try is signed anew, so a long backoff cannot outlast the signature's clock window.
    auto request = build_request(call, where, payload_hash);
    if (!request) return std::move(request).error();

    spdlog::debug("storage: S3 {}, attempt {} of {}", label, attempt, max_attempts);
    auto response = backends::perform(*request);

    std::string failure;
    std::optional<std::chrono::milliseconds> retry_after;
    if (!response) {
      const core::ErrorCode code = response.error().code;
      if (code != core::ErrorCode::Unavailable && code != core::ErrorCode::DeadlineExceeded) {
        spdlog::error("storage: S3 {} failed: {}", label, response.error().message);
        return core::Error::bad_gateway("S3 " + operation + " failed: " + response.error().message);
      }
      failure = response.error().message;
    } else {
      const auto s3_error = response->status >= 300 ? s3::parse_error_body(response->body) : std::nullopt;
      if (!is_retryable_response(*response, s3_error)) return response;
      failure = describe_response(*response, s3_error);
      retry_after = backends::parse_retry_after(response->header("retry-after"), std::nullopt);
    }

    if (attempt >= max_attempts) {
      spdlog::error("storage: S3 {} failed after {} attempt(s): {}", label, attempt, failure);
      return core::Error::unavailable("S3 " + operation + " failed after " + std::to_string(attempt) +
                                          " attempt(s): " + failure,
                                      1);
    }
    const auto delay = backends::backoff_delay(attempt, kRetryBaseDelay, kRetryMaxDelay, retry_after);
    spdlog::warn("storage: S3 {} failed: {}; retrying in {} ms (attempt {} of {})", label, failure, delay.count(),
                 attempt + 1, max_attempts);
    std::this_thread::sleep_for(delay);
  }
}

namespace {

// Builds the error for a response that ends an operation, with a hint for
// the S3 error codes that point at the configuration.
core::Error response_error(const std::string& operation, const backends::OutboundResponse& response,
                           const config::S3Config& config) {
  const auto s3_error = s3::parse_error_body(response.body);
  std::string message = "S3 " + operation + " failed: " + describe_response(response, s3_error);
  const std::string code = s3_error ? s3_error->code : std::string{};
  if (code == "NoSuchBucket") {
    message += "; check storage.s3.bucket and storage.s3.endpoint";
  } else if (code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "AccessDenied" ||
             code == "InvalidToken" || code == "ExpiredToken") {
    message += "; check the credentials in " + config.access_key.env_name + ", " + config.secret_key.env_name +
               " and " + config.session_token.env_name + ", and their permissions on the bucket";
  } else if (code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed" || code == "IllegalLocationConstraintException") {
    message += "; set storage.s3.region to the bucket's region";
  }
  return core::Error::bad_gateway(std::move(message));
}

}  // namespace

core::Status S3Store::put_object(const Call& call, bool create_only) const {
  auto response = send(call);
  if (!response) return std::move(response).error();
  if (response->status >= 200 && response->status < 300) return core::Ok{};
  if (create_only && response->status == 412) {
    // Another writer stored this key first. Keys name their content, so the
    // stored object serves the same request.
    spdlog::info("storage: {} already exists in the bucket (key {}); keeping the stored object", call.name, call.key);
    return core::Ok{};
  }
  auto error = response_error("PUT " + call.name, *response, config_);
  spdlog::error("storage: {}", error.message);
  return error;
}

core::Status S3Store::delete_object(const std::string& name, const std::string& key, int max_attempts) const {
  Call call{"DELETE", name, {}, {}, {}, key, max_attempts};
  auto response = send(call);
  if (!response) return std::move(response).error();
  // S3 returns 204 whether or not the object existed; some services return 404.
  if ((response->status >= 200 && response->status < 300) || response->status == 404) return core::Ok{};
  auto error = response_error("DELETE " + name, *response, config_);
  spdlog::error("storage: {}", error.message);
  return error;
}

core::Result<std::optional<backends::OutboundResponse>> S3Store::get_object(const std::string& name,
                                                                             const std::string& key) const {
  Call call{"GET", name, {}, {}, {}, key, config_.max_attempts};
  auto response = send(call);
  if (!response) return std::move(response).error();
  if (response->status == 200) return std::optional<backends::OutboundResponse>(std::move(response).value());
  if (response->status == 404) {
    // A missing bucket is a configuration error, not a cache miss.
    const auto s3_error = s3::parse_error_body(response->body);
    if (!s3_error || s3_error->code != "NoSuchBucket") return std::optional<backends::OutboundResponse>{};
  }
  auto error = response_error("GET " + name, *response, config_);
  spdlog::error("storage: {}", error.message);
  return error;
}

core::Result<std::optional<StoredObject>> S3Store::find(const std::string& key) {
  if (!is_valid_key(key)) return core::Error::invalid("invalid object key \"" + key + "\"");
  const std::string name = object_name(key);
  auto response = get_object(name, key);
  if (!response) return std::move(response).error();
  if (!response->has_value()) return std::optional<StoredObject>{};
  backends::OutboundResponse& object = **response;

  // The SHA-256 recorded at upload time guards against a damaged or
  // replaced object. Objects that other tools wrote without it are served
  // unchecked, as the disk store does.
  const std::string actual = core::sha256_hex(object.body);
  if (const auto recorded = object.header("x-amz-meta-sha256")) {
    if (*recorded != actual) {
      spdlog::error("storage: S3 object {} (key {}) does not match its recorded SHA-256; not serving it", name, key);
      return core::Error::internal("stored object " + key + " is corrupt: its SHA-256 does not match");
    }
  }

  const Json metadata = {{"key", key},
                         {"sha256", actual},
                         {"content_type", object.header("content-type").value_or("")},
                         {"template", decode_metadata_value(object.header("x-amz-meta-template"))},
                         {"template_version", decode_metadata_value(object.header("x-amz-meta-template-version"))},
                         {"backend", decode_metadata_value(object.header("x-amz-meta-backend"))}};
  return std::optional<StoredObject>(StoredObject{std::move(object.body), metadata.dump()});
}

core::Status S3Store::put(const std::string& key, std::string_view data, std::string_view metadata_json) {
  if (!is_valid_key(key)) return core::Error::invalid("invalid object key \"" + key + "\"");
  const std::string name = object_name(key);
  const Json metadata = Json::parse(metadata_json, nullptr, false);
  const std::string sha = core::sha256_hex(data);
  if (const std::string recorded = string_field(metadata, "sha256"); !recorded.empty() && recorded != sha) {
    spdlog::error("storage: metadata for {} records SHA-256 {} but the image has {}; not storing it", key, recorded, sha);
    return core::Error::internal("the metadata of " + key + " does not match its image bytes");
  }

  // The sidecar goes first and the image last: the image is the commit
  // point, and find() reads only the image. The sidecar is written without a
  // condition, so a retry after a failed image upload replaces it.
  // NOTE: two writers racing on one key may leave the sidecar of the writer
  // whose image lost; the image's x-amz-meta headers stay authoritative.
  const Call sidecar{"PUT", name + std::string(kSidecarSuffix), {}, {{"Content-Type", "application/json"}},
                     metadata_json, key, config_.max_attempts};
  if (auto status = put_object(sidecar, false); !status) return status;

  std::string content_type = string_field(metadata, "content_type");
  if (content_type.empty()) content_type = "application/octet-stream";
  Call image{"PUT", name, {}, {{"Content-Type", content_type}, {"x-amz-meta-sha256", sha}}, data, key,
             config_.max_attempts};
  const Json spec = metadata.is_object() && metadata.contains("spec") ? metadata["spec"] : Json::object();
  const std::pair<const char*, const char*> fields[] = {
      {"x-amz-meta-template", "template"}, {"x-amz-meta-template-version", "template_version"}, {"x-amz-meta-backend", "backend"}};
  for (const auto& [header, field] : fields) {
    // libcurl drops a header sent with an empty value, so empty fields are left out.
    if (const std::string value = string_field(spec, field); !value.empty()) {
      image.headers.emplace_back(header, encode_metadata_value(value));
    }
  }
  if (config_.create_only) image.headers.emplace_back("If-None-Match", "*");
  return put_object(image, config_.create_only);
}

core::Result<std::optional<std::string>> S3Store::find_metadata(const std::string& key) {
  if (!is_valid_key(key)) return core::Error::invalid("invalid object key \"" + key + "\"");
  auto response = get_object(object_name(key) + std::string(kSidecarSuffix), key);
  if (!response) return std::move(response).error();
  if (!response->has_value()) return std::optional<std::string>{};
  return std::optional<std::string>(std::move((*response)->body));
}

core::Status S3Store::remove(const std::string& key) {
  if (!is_valid_key(key)) return core::Error::invalid("invalid object key \"" + key + "\"");
  const std::string name = object_name(key);
  // The image goes first, so an interrupted removal leaves at most a
  // sidecar, which list() and find() ignore.
  if (auto status = delete_object(name, key, config_.max_attempts); !status) return status;
  return delete_object(name + std::string(kSidecarSuffix), key, config_.max_attempts);
}

core::Status S3Store::list(const std::function<bool(const std::string& key)>& visit) {
  std::string token;
  for (;;) {
    Call call{"GET", "", {{"list-type", "2"}}, {}, {}, {}, config_.max_attempts};
    if (!config_.prefix.empty()) call.query.emplace_back("prefix", config_.prefix);
    if (!token.empty()) call.query.emplace_back("continuation-token", token);

    auto response = send(call);
    if (!response) return std::move(response).error();
    if (response->status != 200) {
      auto error = response_error("ListObjectsV2 of bucket " + config_.bucket, *response, config_);
      spdlog::error("storage: {}", error.message);
      return error;
    }
    auto page = s3::parse_list_objects_v2(response->body);
    if (!page) {
      spdlog::error("storage: listing bucket {} failed: {}", config_.bucket, page.error().message);
      return std::move(page).error();
    }

    for (const std::string& name : page->names) {
      // The prefix filter is the service's, so check it again; sidecars,
      // the probe and foreign objects are not valid keys.
      if (name.compare(0, config_.prefix.size(), config_.prefix) != 0) continue;
      const std::string key = name.substr(config_.prefix.size());
      if (!is_valid_key(key)) continue;
      if (!visit(key)) return core::Ok{};
    }
    if (!page->truncated) return core::Ok{};
    if (page->next_continuation_token == token) {
      spdlog::error("storage: listing bucket {} returned the same continuation token twice", config_.bucket);
      return core::Error::bad_gateway("S3 listing of bucket " + config_.bucket + " did not advance");
    }
    token = page->next_continuation_token;
  }
}

std::optional<std::string> S3Store::presigned_url(const std::string& key, std::chrono::seconds expires) {
  if (!is_valid_key(key)) return std::nullopt;
  if (expires.count() < 1 || expires > kMaxPresignExpiry) {
    spdlog::warn("storage: cannot presign {} for {} s; S3 accepts 1 to {} s", key, expires.count(),
                 kMaxPresignExpiry.count());
    return std::nullopt;
  }
  const Target where = target(object_name(key));
  core::AwsPresignInput input;
  input.method = "GET";
  input.host = where.host;
  input.path = where.path;
  input.region = config_.region;
  input.service = "s3";
  input.credentials = credentials();
  input.expires = expires;
  input.time = std::chrono::system_clock::now();
  try {
    return where.url + "?" + core::aws_sigv4_presign(input);
  } catch (const std::runtime_error& error) {
    spdlog::error("storage: presigning {} failed: {}", key, error.what());
    return std::nullopt;
  }
}

core::Status S3Store::check_writable() {
  const std::string name = config_.prefix + std::string(kProbeName);
  // One try each: /readyz should report the store's state now, not after
  // a round of backoff.
  const Call probe{"PUT", name, {}, {{"Content-Type", "text/plain"}}, "ok", {}, 1};
  auto status = put_object(probe, false);
  if (status) status = delete_object(name, {}, 1);
  if (!status) {
    return core::Error::unavailable("the S3 bucket " + config_.bucket + " is not writable: " + status.error().message, 5);
  }
  return core::Ok{};
}

}  // namespace pixelgate::storage
