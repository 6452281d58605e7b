#include "backends/http_client.hpp"

#include <curl/curl.h>

#include <mutex>

#include <spdlog/spdlog.h>

#include "core/text.hpp"

namespace pixelgate::backends {
namespace {

// Returns scheme, host and port of a URL, without path or query, which may
// carry tokens.
std::string origin_of(const std::string& url) {
  const std::size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) return "(invalid URL)";
  const std::size_t end = url.find_first_of("/?#", scheme_end + 3);
  return url.substr(0, end);
}

struct TransferState {
  OutboundResponse* response;
  std::size_t max_bytes;
  bool too_large = false;
};

std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
  auto* state = static_cast<TransferState*>(user);
  const std::size_t bytes = size * count;
  if (state->response->body.size() + bytes > state->max_bytes) {
    state->too_large = true;
    return 0;  // makes libcurl abort the transfer
  }
  state->response->body.append(data, bytes);
  return bytes;
}

std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
  auto* state = static_cast<TransferState*>(user);
  const std::size_t bytes = size * count;
  std::string_view line(data, bytes);
  if (line.rfind("HTTP/", 0) == 0) {
    state->response->headers.clear();  // a new status line (e.g. after 100 Continue)
    return bytes;
  }
  const std::size_t colon = line.find(':');
  if (colon == std::string_view::npos) return bytes;
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) value.remove_suffix(1);
  state->response->headers.emplace_back(core::to_lower_ascii(line.substr(0, colon)), std::string(value));
  return bytes;
}

// One easy handle per thread, so connections to a provider are reused.
CURL* thread_handle() {
  thread_local std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> handle(curl_easy_init(), &curl_easy_cleanup);
  return handle.get();
}

}  // namespace

std::optional<std::string> OutboundResponse::header(std::string_view lower_case_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_case_name) return value;
  }
  return std::nullopt;
}

void initialize_http_client() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

core::Result<OutboundResponse> perform(const OutboundRequest& request) {
  CURL* curl = thread_handle();
  if (!curl) return core::Error::internal("libcurl could not create a handle");
  curl_easy_reset(curl);

  OutboundResponse response;
  TransferState state{&response, request.max_response_bytes};
  char error_text[CURL_ERROR_SIZE] = {0};

  struct curl_slist* headers = nullptr;
  for (const auto& header : request.headers) headers = curl_slist_append(headers, header.c_str());
  // libcurl would otherwise send "Expect: 100-continue" for large bodies.
  headers = curl_slist_append(headers, "Expect:");

  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(request.connect_timeout_ms));
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(request.timeout_ms));
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error_text);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &state);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &state);
  curl_easy_setopt(curl, CURLOPT_USERAGENT, "pixelgate/" PIXELGATE_VERSION);
  std::unique_ptr<curl_mime, decltype(&curl_mime_free)> mime(nullptr, &curl_mime_free);
  if (!request.multipart.empty()) {
    mime.reset(curl_mime_init(curl));
    for (const auto& field : request.multipart) {
      curl_mimepart* part = curl_mime_addpart(mime.get());
      curl_mime_name(part, field.name.c_str());
      curl_mime_data(part, field.value.data(), field.value.size());
      if (!field.filename.empty()) curl_mime_filename(part, field.filename.c_str());
      if (!field.content_type.empty()) curl_mime_type(part, field.content_type.c_str());
    }
    curl_easy_setopt(curl, CURLOPT_MIMEPOST, mime.get());
  } else if (request.method == "POST") {
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request.body.data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
  } else if (request.method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str());
    // A body under another method (an S3 PUT) goes out like a POST body,
    // with the method name replaced.
    if (!request.body.empty()) {
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request.body.data());
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
    }
  }

  const CURLcode code = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);

  if (code == CURLE_OK) return response;
  if (state.too_large) {
    return core::Error::bad_gateway("the backend's response exceeds " +
                                    std::to_string(request.max_response_bytes) + " bytes");
  }
  // libcurl's own text names the address it tried. That goes to the log
  // only, because error messages reach the public clients of image routes.
  const std::string detail = error_text[0] ? error_text : curl_easy_strerror(code);
  spdlog::warn("http client: {} {} failed: {}", request.method, origin_of(request.url), detail);
  if (code == CURLE_OPERATION_TIMEDOUT) {
    return core::Error{core::ErrorCode::DeadlineExceeded, "request to the backend timed out", {}, 0};
  }
  return core::Error::unavailable(std::string("request to the backend failed: ") + curl_easy_strerror(code), 1);
}

}  // namespace pixelgate::backends
