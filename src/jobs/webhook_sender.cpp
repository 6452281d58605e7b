#include "jobs/webhook_sender.hpp"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/socket.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <memory>
#include <random>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/clock.hpp"
#include "core/hash.hpp"
#include "jobs/address_guard.hpp"

namespace pixelgate::jobs {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr std::size_t kSendingThreads = 2;
constexpr std::chrono::seconds kMaxDelay{3600};

std::string_view extension_for(const std::string& content_type) {
  if (content_type == "image/png") return ".png";
  if (content_type == "image/jpeg") return ".jpg";
  if (content_type == "image/webp") return ".webp";
  return "";
}

// Checks, just before libcurl connects, that the address is one the URL
// check approved, so a second DNS answer (rebinding) cannot change it.
struct SocketCheck {
  const std::vector<std::string>* approved = nullptr;
  bool allow_private = false;
  std::string rejected;  // the address refused, if any
};

curl_socket_t open_checked_socket(void* context, curlsocktype purpose, curl_sockaddr* address) {
  auto* check = static_cast<SocketCheck*>(context);
  if (purpose != CURLSOCKTYPE_IPCXN) return CURL_SOCKET_BAD;
  const auto* socket_address = reinterpret_cast<const sockaddr*>(&address->addr);
  const std::string text = address_text(socket_address);
  const bool approved = std::find(check->approved->begin(), check->approved->end(), text) != check->approved->end();
  if (!approved || (!check->allow_private && !blocked_address_reason(socket_address).empty())) {
    check->rejected = text.empty() ? "an unknown address" : text;
    return CURL_SOCKET_BAD;
  }
  return socket(address->family, address->socktype, address->protocol);
}

std::size_t discard_body(char*, std::size_t size, std::size_t count, void*) { return size * count; }

std::size_t read_retry_after(char* data, std::size_t size, std::size_t count, void* context) {
  const std::size_t bytes = size * count;
  std::string_view line(data, bytes);
  constexpr std::string_view kName = "retry-after:";
  if (line.size() > kName.size()) {
    bool matches = true;
    for (std::size_t i = 0; i < kName.size(); ++i) {
      matches = matches && std::tolower(static_cast<unsigned char>(line[i])) == kName[i];
    }
    if (matches) {
      std::string value(line.substr(kName.size()));
      const long seconds = std::strtol(value.c_str(), nullptr, 10);
      if (seconds > 0) *static_cast<std::optional<std::chrono::seconds>*>(context) = std::chrono::seconds(seconds);
    }
  }
  return bytes;
}

}  // namespace

std::optional<std::string> decode_webhook_secret(std::string_view secret) {
  constexpr std::string_view kPrefix = "whsec_";
  if (secret.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  auto key = core::base64_decode(secret.substr(kPrefix.size()));
  if (!key || key->empty()) return std::nullopt;
  return key;
}

std::string sign_webhook(std::string_view key, std::string_view webhook_id, std::int64_t timestamp,
                         std::string_view body) {
  std::string content;
  content.reserve(webhook_id.size() + body.size() + 24);
  content.append(webhook_id).append(".").append(std::to_string(timestamp)).append(".").append(body);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(content.data()),
           content.size(), mac, &length) == nullptr) {
    throw std::runtime_error("OpenSSL HMAC(SHA-256) failed while signing a webhook");
  }
  return "v1," + core::base64_encode(std::string_view(reinterpret_cast<const char*>(mac), length));
}

std::string stored_image_url(const std::string& base_url, const JobImage& image) {
  return base_url + "/images/" + image.key + std::string(extension_for(image.content_type));
}

std::string webhook_id_for(const Job& job) { return "msg_" + job.id; }

std::string webhook_event_body(const Job& job) {
  const bool succeeded = job.status == JobStatus::Succeeded;
  Json data = {{"id", job.id}, {"status", std::string(to_string(job.status))}};
  if (succeeded) {
    Json images = Json::array();
    for (const auto& image : job.images) {
      images.push_back({{"key", image.key}, {"url", stored_image_url(job.base_url, image)}});
    }
    data["images"] = std::move(images);
  } else {
    Json error = Json::parse(job.error_json, nullptr, false);
    data["error"] = error.is_object() ? error : Json{{"code", "internal"}, {"message", "unknown error"}, {"param", nullptr}};
  }
  const Json event = {{"type", succeeded ? "image.succeeded" : "image.failed"},
                      {"timestamp", core::format_iso8601_utc(job.updated_unix)},
                      {"data", std::move(data)}};
  return event.dump(-1, ' ', false, Json::error_handler_t::replace);
}

WebhookSender::WebhookSender(const config::WebhooksConfig& config, JobStore& store) : config_(config), store_(store) {
  if (auto key = decode_webhook_secret(config.secret.value)) key_ = std::move(*key);
}

WebhookSender::~WebhookSender() { stop(); }

void WebhookSender::start() {
  {
    std::lock_guard lock(mutex_);
    if (!threads_.empty()) return;
    stopping_ = false;
    for (std::size_t i = 0; i < kSendingThreads; ++i) threads_.emplace_back([this] { run(); });
  }
  // Events that a stopped or crashed process did not deliver.
  auto pending = store_.pending_webhooks(config_.queue_size);
  if (!pending) {
    spdlog::error("webhooks: reading the pending webhooks failed: {}", pending.error().message);
    return;
  }
  if (!pending->empty()) spdlog::info("webhooks: resending {} pending webhooks", pending->size());
  for (const auto& job : *pending) enqueue(job);
}

bool WebhookSender::enqueue(const Job& job) {
  if (job.webhook_url.empty()) return true;
  Delivery delivery{job.id, job.webhook_url, webhook_id_for(job), webhook_event_body(job), job.webhook_attempts,
                    Clock::now()};
  {
    std::lock_guard lock(mutex_);
    if (queue_.size() < static_cast<std::size_t>(config_.queue_size)) {
      queue_.push_back(std::move(delivery));
      wake_.notify_one();
      return true;
    }
  }
  spdlog::error("webhooks: the queue is full ({} events, webhooks.queue_size); dropping {} for job {}",
                config_.queue_size, delivery.webhook_id, job.id);
  record(delivery, WebhookState::Failed);
  return false;
}

void WebhookSender::stop() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    threads.swap(threads_);
  }
  wake_.notify_all();
  for (auto& thread : threads) thread.join();
}

std::size_t WebhookSender::queued() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

void WebhookSender::record(const Delivery& delivery, WebhookState state) {
  if (auto status = store_.set_webhook_state(delivery.job_id, state, delivery.attempts); !status) {
    spdlog::error("webhooks: recording {} for job {} as {} failed: {}", delivery.webhook_id, delivery.job_id,
                  to_string(state), status.error().message);
  }
}

void WebhookSender::run() {
  std::mt19937 random(std::random_device{}());
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (queue_.empty()) {
      wake_.wait(lock);
      continue;
    }
    auto next = std::min_element(queue_.begin(), queue_.end(),
                                 [](const Delivery& a, const Delivery& b) { return a.due < b.due; });
    if (next->due > Clock::now()) {
      wake_.wait_until(lock, next->due);
      continue;
    }
    Delivery delivery = std::move(*next);
    queue_.erase(next);
    lock.unlock();

    delivery.attempts += 1;
    spdlog::info("webhooks: sending {} for job {} (attempt {} of {})", delivery.webhook_id, delivery.job_id,
                 delivery.attempts, config_.max_attempts);
    Attempt attempt;
    try {
      attempt = send(delivery);
    } catch (const std::exception& error) {
      attempt = {Verdict::Retry, std::string("unexpected error: ") + error.what(), std::nullopt};
    }

    if (attempt.verdict == Verdict::Delivered) {
      spdlog::info("webhooks: delivered {} for job {} ({})", delivery.webhook_id, delivery.job_id, attempt.detail);
      record(delivery, WebhookState::Delivered);
    } else if (attempt.verdict == Verdict::Retry && delivery.attempts < config_.max_attempts) {
      // Exponential backoff with up to 25% jitter, or the receiver's
      // Retry-After when that is longer; both capped at an hour.
      const double factor = std::pow(2.0, std::min(delivery.attempts - 1, 30));
      auto delay = std::chrono::milliseconds(static_cast<std::int64_t>(
          std::min<double>(config_.base_delay_ms * factor, std::chrono::milliseconds(kMaxDelay).count())));
      delay += std::chrono::milliseconds(std::uniform_int_distribution<std::int64_t>(0, delay.count() / 4)(random));
      if (attempt.retry_after) delay = std::max<std::chrono::milliseconds>(delay, std::min(*attempt.retry_after, kMaxDelay));
      spdlog::warn("webhooks: {} for job {} failed ({}); retrying in {} ms", delivery.webhook_id, delivery.job_id,
                   attempt.detail, delay.count());
      store_.set_webhook_state(delivery.job_id, WebhookState::Pending, delivery.attempts);
      delivery.due = Clock::now() + delay;
      lock.lock();
      queue_.push_back(std::move(delivery));
      continue;
    } else {
      spdlog::error("webhooks: giving up on {} for job {} after {} attempts: {}", delivery.webhook_id,
                    delivery.job_id, delivery.attempts, attempt.detail);
      record(delivery, WebhookState::Failed);
    }
    lock.lock();
  }
}

WebhookSender::Attempt WebhookSender::send(const Delivery& delivery) {
  if (key_.empty()) return {Verdict::GiveUp, "no webhook secret is configured ([webhooks] secret_env)", std::nullopt};
  const auto timeout = std::chrono::milliseconds(config_.timeout_ms);

  // The address is checked again at send time: the host may resolve
  // differently now than when the job was created.
  auto target = resolve_webhook_url(delivery.url, config_.allow_private_addresses, timeout);
  if (!target) {
    const bool rejected = target.error().code == core::ErrorCode::InvalidArgument;
    return {rejected ? Verdict::GiveUp : Verdict::Retry, target.error().message, std::nullopt};
  }

  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), &curl_easy_cleanup);
  if (!curl) return {Verdict::Retry, "libcurl could not create a handle", std::nullopt};

  const std::int64_t timestamp =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> headers(nullptr, &curl_slist_free_all);
  auto add_header = [&headers](const std::string& line) { headers.reset(curl_slist_append(headers.release(), line.c_str())); };
  add_header("Content-Type: application/json");
  add_header("webhook-id: " + delivery.webhook_id);
  add_header("webhook-timestamp: " + std::to_string(timestamp));
  add_header("webhook-signature: " + sign_webhook(key_, delivery.webhook_id, timestamp, delivery.body));
  add_header("Expect:");

  // Pin the host name to the checked addresses, so libcurl does not resolve it again.
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> pinned(nullptr, &curl_slist_free_all);
  if (!target->host_is_address) {
    std::string entry = target->host + ":" + std::to_string(target->port) + ":";
    for (std::size_t i = 0; i < target->addresses.size(); ++i) {
      const std::string& address = target->addresses[i];
      entry += (i ? "," : "") + (address.find(':') != std::string::npos ? "[" + address + "]" : address);
    }
    pinned.reset(curl_slist_append(nullptr, entry.c_str()));
  }
  SocketCheck check{&target->addresses, config_.allow_private_addresses, {}};
  std::optional<std::chrono::seconds> retry_after;
  char error_text[CURL_ERROR_SIZE] = {0};

  CURL* handle = curl.get();
  curl_easy_setopt(handle, CURLOPT_URL, delivery.url.c_str());
  curl_easy_setopt(handle, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(handle, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(handle, CURLOPT_PROXY, "");  // no proxy from the environment either
  curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config_.timeout_ms));
  curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, static_cast<long>(config_.timeout_ms));
  curl_easy_setopt(handle, CURLOPT_HTTPHEADER, headers.get());
  if (pinned) curl_easy_setopt(handle, CURLOPT_RESOLVE, pinned.get());
  curl_easy_setopt(handle, CURLOPT_OPENSOCKETFUNCTION, open_checked_socket);
  curl_easy_setopt(handle, CURLOPT_OPENSOCKETDATA, &check);
  curl_easy_setopt(handle, CURLOPT_POST, 1L);
  curl_easy_setopt(handle, CURLOPT_POSTFIELDS, delivery.body.data());
  curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(delivery.body.size()));
  curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, discard_body);
  curl_easy_setopt(handle, CURLOPT_HEADERFUNCTION, read_retry_after);
  curl_easy_setopt(handle, CURLOPT_HEADERDATA, &retry_after);
  curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, error_text);
  curl_easy_setopt(handle, CURLOPT_USERAGENT, "pixelgate-webhooks/" PIXELGATE_VERSION);

  const CURLcode code = curl_easy_perform(handle);
  if (!check.rejected.empty()) {
    return {Verdict::GiveUp, "the connection to " + check.rejected + " was refused by the address check",
            std::nullopt};
  }
  if (code != CURLE_OK) {
    const std::string detail = error_text[0] ? error_text : curl_easy_strerror(code);
    return {Verdict::Retry, "request to " + target->origin() + " failed: " + detail, std::nullopt};
  }
  long status = 0;
  curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &status);
  const std::string detail = target->origin() + " answered HTTP " + std::to_string(status);
  if (status >= 200 && status < 300) return {Verdict::Delivered, detail, std::nullopt};
  if (status >= 500 || status == 429 || status == 408) return {Verdict::Retry, detail, retry_after};
  // 3xx is not followed, 410 Gone means the receiver wants no more events,
  // and other 4xx responses do not change when the request is sent again.
  return {Verdict::GiveUp, detail, std::nullopt};
}

}  // namespace pixelgate::jobs
