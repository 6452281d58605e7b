#include "admission/gate.hpp"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>

#include <spdlog/spdlog.h>

#include "core/hash.hpp"
#include "redis/log_throttle.hpp"

namespace pixelgate::admission {
namespace {

constexpr std::string_view kApiKeyPrefix = "key:";
constexpr std::string_view kSigningKeyPrefix = "kid:";

RatePolicy request_policy(const config::RateLimitsConfig& limits) {
  return {"requests", limits.requests_per_second, limits.burst};
}

RatePolicy generation_policy(const config::RateLimitsConfig& limits) {
  return {"generations", limits.generations_per_minute / 60.0, limits.generation_burst};
}

std::string base64url(const unsigned char* data, std::size_t size) {
  std::string text = core::base64_encode(std::string_view(reinterpret_cast<const char*>(data), size));
  for (char& c : text) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  while (!text.empty() && text.back() == '=') text.pop_back();
  return text;
}

std::string_view bearer_token(std::string_view authorization) {
  constexpr std::string_view kScheme = "Bearer ";
  if (authorization.size() <= kScheme.size()) return {};
  // The scheme name is case-insensitive (RFC 9110 section 11.1).
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != std::tolower(static_cast<unsigned char>(kScheme[i]))) {
      return {};
    }
  }
  std::string_view token = authorization.substr(kScheme.size());
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  return token;
}

// One warning per minute at most for each path while a shared limiter's
// store is down, so an outage does not write one line per request.
redis::LogThrottle request_limit_unavailable_log{std::chrono::minutes(1)};
redis::LogThrottle generation_limit_unavailable_log{std::chrono::minutes(1)};

core::Error permission_denied(std::string message, std::string param = {}) {
  return {core::ErrorCode::PermissionDenied, std::move(message), std::move(param), 0};
}

}  // namespace

NewApiKey generate_api_key() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) throw std::runtime_error("OpenSSL RAND_bytes failed");
  NewApiKey key;
  key.key = "pg_" + base64url(bytes, sizeof(bytes));
  key.sha256 = core::sha256_hex(key.key);
  return key;
}

Gate::Gate(const config::Config& config, const core::Clock& clock, RateLimiter& limiter, BudgetLedger& ledger)
    : config_(config), clock_(clock), limiter_(limiter), ledger_(ledger) {
  for (const auto& [id, key] : config.security.signing_keys) signing_keys_[id] = {id, key.secret.value};
  for (const auto& text : config.security.trusted_proxies) {
    auto network = parse_network(text);
    if (network) {
      trusted_proxies_.push_back(*network);
    } else {
      spdlog::error("security.trusted_proxies: {}; ignoring it", network.error().message);
    }
  }
}

const config::ApiKeyConfig* Gate::find_api_key(std::string_view token) const {
  if (token.empty()) return nullptr;
  const std::string hash = core::sha256_hex(token);
  const config::ApiKeyConfig* found = nullptr;
  // Every configured hash is compared, so the time taken does not depend on
  // which key matched or how far a guess got.
  for (const auto& [name, key] : config_.api_keys) {
    if (key.sha256.size() == hash.size() && CRYPTO_memcmp(key.sha256.data(), hash.data(), hash.size()) == 0) {
      found = &key;
    }
  }
  return found;
}

core::Status Gate::authorize_admin(std::string_view authorization) const {
  // Open mode is for loopback development: no route needs credentials there.
  if (config_.security.mode == "open") return core::Ok{};
  if (authorization.empty()) {
    core::Error error{core::ErrorCode::Unauthenticated, "this route needs an API key with the admin scope; send "
                                                        "Authorization: Bearer <key>", {}, 0};
    error.response_headers.emplace_back("WWW-Authenticate", "Bearer realm=\"pixelgate\"");
    return error;
  }
  const std::string_view token = bearer_token(authorization);
  const config::ApiKeyConfig* key = find_api_key(token);
  if (!key) {
    spdlog::warn("admission: rejected an invalid API key ending in {} on an admin route", core::redact_secret(token));
    core::Error error{core::ErrorCode::Unauthenticated, "invalid API key; send Authorization: Bearer <key>", {}, 0};
    error.response_headers.emplace_back("WWW-Authenticate", "Bearer realm=\"pixelgate\", error=\"invalid_token\"");
    return error;
  }
  if (std::find(key->scopes.begin(), key->scopes.end(), "admin") == key->scopes.end()) {
    return permission_denied("API key \"" + key->name + "\" lacks the admin scope");
  }
  return core::Ok{};
}

bool Gate::is_public_template(const std::string& template_name) const {
  const auto& list = config_.security.public_templates;
  return std::find(list.begin(), list.end(), template_name) != list.end();
}

const config::RateLimitsConfig& Gate::limits_for(const std::string& principal) const {
  if (principal.rfind(kApiKeyPrefix, 0) == 0) {
    auto it = config_.api_keys.find(principal.substr(kApiKeyPrefix.size()));
    if (it != config_.api_keys.end() && it->second.rate_limits) return *it->second.rate_limits;
  }
  return config_.rate_limits;
}

void Gate::add_rate_headers(Admission& admission, const RatePolicy& policy, const RateDecision& decision) const {
  if (policy.unlimited()) return;
  admission.headers.emplace_back("RateLimit-Policy", rate_limit_policy_header(policy));
  admission.headers.emplace_back("RateLimit", rate_limit_header(policy, decision));
}

core::Status load_params(Admission& admission, std::string_view query) {
  if (!admission.params_pending) return core::Ok{};
  if (admission.signed_params) {
    admission.params = admission.signed_params->params;
    admission.params_pending = false;
    return core::Ok{};
  }
  auto params = core::parse_query(query);
  if (!params) {
    const std::string name = core::malformed_parameter(query);
    return core::Error::invalid(
        "parameter \"" + name + "\" has a malformed percent-escape; write % as %25 and escapes as %XX", name);
  }
  admission.params = std::move(*params);
  admission.params_pending = false;
  return core::Ok{};
}

core::Result<std::shared_ptr<const VerifiedRequest>> Gate::verify_signed(std::string_view path,
                                                                         std::string_view query) const {
  std::string id;
  id.reserve(path.size() + 1 + query.size());
  id.append(path).append("?").append(query);
  {
    std::lock_guard lock(verified_mutex_);
    auto found = verified_urls_.find(id);
    if (found != verified_urls_.end()) {
      const auto& verified = found->second;
      // An expired URL goes through the full check, which names the expiry.
      if (!verified->expires || *verified->expires >= clock_.unix_seconds()) return verified;
    }
  }
  auto verified = verify_signed_request(path, query, signing_keys_, clock_);
  if (!verified) return std::move(verified).error();
  auto shared = std::make_shared<const VerifiedRequest>(std::move(verified).value());
  std::lock_guard lock(verified_mutex_);
  if (verified_urls_.size() >= kMaxVerifiedUrls) verified_urls_.clear();
  verified_urls_.insert_or_assign(std::move(id), shared);
  return shared;
}

Admission Gate::admit(const RequestInfo& request, RouteKind route) const {
  Admission admission;
  admission.caller.client_address = client_address(request.remote_address, request.x_forwarded_for, request.forwarded,
                                                   trusted_proxies_);
  const std::string& mode = config_.security.mode;

  // 1. Who is asking: an API key, a signed URL, or an anonymous caller.
  if (!request.authorization.empty()) {
    const std::string_view token = bearer_token(request.authorization);
    const config::ApiKeyConfig* key = find_api_key(token);
    if (!key && mode == "open") {
      // OpenAI client libraries always send a key; in open mode an unknown
      // one is ignored rather than rejected.
      admission.caller.principal = "anonymous";
    } else if (!key) {
      spdlog::warn("admission: rejected an invalid API key ending in {} from {}", core::redact_secret(token),
                   admission.caller.client_address);
      admission.error = core::Error{core::ErrorCode::Unauthenticated,
                                    "invalid API key; send Authorization: Bearer <key>", {}, 0};
      admission.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"pixelgate\", error=\"invalid_token\"");
      return admission;
    } else if (std::find(key->scopes.begin(), key->scopes.end(), "generate") == key->scopes.end()) {
      admission.error = permission_denied("API key \"" + key->name + "\" lacks the generate scope");
      return admission;
    } else {
      admission.caller.principal = std::string(kApiKeyPrefix) + key->name;
    }
  } else if (route == RouteKind::ImageUrl && has_signature(request.query)) {
    auto verified = verify_signed(request.path, request.query);
    if (!verified) {
      spdlog::info("admission: rejected a signed URL from {}: {}", admission.caller.client_address,
                   verified.error().message);
      admission.error = verified.error();
      return admission;
    }
    admission.caller.principal = std::string(kSigningKeyPrefix) + (*verified)->key_id;
    admission.signed_params = std::move(verified).value();
  } else if (mode == "open") {
    admission.caller.principal = "anonymous";
  } else if (mode == "templates" && route == RouteKind::ImageUrl) {
    admission.caller.principal = "anonymous";
    admission.public_templates_only = true;
  } else if (route == RouteKind::JsonApi) {
    admission.error = core::Error{core::ErrorCode::Unauthenticated,
                                  "this route needs an API key; send Authorization: Bearer <key>", {}, 0};
    admission.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"pixelgate\"");
    return admission;
  } else {
    admission.error = permission_denied("signature missing: this route needs a signed URL (sig parameter) or an "
                                        "API key",
                                        "sig");
    return admission;
  }

  if (route == RouteKind::ImageUrl) admission.params_pending = true;

  // 2. How fast: API keys have their own bucket, everyone else shares the
  // bucket of their client address.
  const bool api_key = admission.caller.principal.rfind(kApiKeyPrefix, 0) == 0;
  const RatePolicy policy = request_policy(limits_for(admission.caller.principal));
  const std::string bucket =
      api_key ? "req|" + admission.caller.principal : "req|addr:" + admission.caller.client_address;
  const RateDecision decision = limiter_.consume(bucket, policy);
  if (decision.unavailable) {
    // Failing open: most requests are cache hits that cost nothing, and
    // generations are still checked (and rejected) in acquire().
    if (auto suppressed = request_limit_unavailable_log.allow()) {
      spdlog::warn("admission: admitting {} ({}) without the request rate limit because the shared limiter is "
                   "unavailable ({} more requests admitted the same way since the last warning)",
                   admission.caller.principal, admission.caller.client_address, *suppressed);
    }
    return admission;
  }
  // Image responses are cached by CDNs, so the live counters go only on JSON
  // responses and on rejections.
  if (route == RouteKind::JsonApi || !decision.allowed) add_rate_headers(admission, policy, decision);
  if (!decision.allowed) {
    spdlog::info("admission: request rate limit reached for {} ({})", admission.caller.principal,
                 admission.caller.client_address);
    admission.error = core::Error{core::ErrorCode::ResourceExhausted,
                                  "too many requests; retry in " + std::to_string(decision.retry_after_seconds) + " s",
                                  {}, decision.retry_after_seconds};
  }
  return admission;
}

std::optional<double> Gate::table_price(const core::GenerationSpec& spec) const {
  const std::string size = std::to_string(spec.width) + "x" + std::to_string(spec.height);
  const std::string quality = spec.quality.empty() ? "auto" : spec.quality;
  auto matches = [](const std::string& pattern, const std::string& value) { return pattern == "*" || pattern == value; };
  for (const auto& row : config_.costs) {
    if (matches(row.backend, spec.backend) && matches(row.model, spec.model) && matches(row.size, size) &&
        matches(row.quality, quality)) {
      return row.usd;
    }
  }
  return std::nullopt;
}

double Gate::estimate_cost(const core::GenerationSpec& spec, std::optional<double> adapter_estimate) const {
  if (auto price = table_price(spec)) return *price;
  if (adapter_estimate) return *adapter_estimate;
  return config_.budgets.unknown_cost_usd;
}

core::Result<std::int64_t> Gate::acquire(const core::GenerationSpec& spec, const std::string& key,
                                         const core::GenerationCaller& caller, std::optional<double> estimated_usd) {
  const bool api_key = caller.principal.rfind(kApiKeyPrefix, 0) == 0;
  const std::string owner = api_key ? caller.principal : "addr:" + caller.client_address;

  // Generation rate: misses cost money, so they have a stricter bucket.
  const RatePolicy policy = generation_policy(limits_for(caller.principal));
  const RateDecision decision = limiter_.consume("gen|" + owner, policy);
  if (decision.unavailable) {
    // Failing closed: without the shared bucket, replicas together could
    // start any number of paid generations.
    if (auto suppressed = generation_limit_unavailable_log.allow()) {
      spdlog::warn("admission: rejecting image {} for {} because the shared generation rate limit is unavailable "
                   "({} more images rejected the same way since the last warning)",
                   key, owner, *suppressed);
    }
    return core::Error::unavailable("cannot start a new image because the shared state (Redis) is unreachable; "
                                    "cached images are still served, retry shortly",
                                    std::max(1, decision.retry_after_seconds));
  }
  if (!decision.allowed) {
    spdlog::info("admission: generation rate limit reached for {} (image {})", owner, key);
    core::Error error{core::ErrorCode::ResourceExhausted,
                      "too many new images requested; retry in " + std::to_string(decision.retry_after_seconds) +
                          " s (cached images are not limited by this)",
                      {}, decision.retry_after_seconds};
    error.response_headers = {{"RateLimit-Policy", rate_limit_policy_header(policy)},
                              {"RateLimit", rate_limit_header(policy, decision)}};
    return error;
  }

  // Concurrency caps, global and per caller.
  int per_caller_cap = config_.limits.max_concurrent_generations_per_key;
  SpendLimits caller_limits;
  if (api_key) {
    const auto& key_config = config_.api_keys.at(caller.principal.substr(kApiKeyPrefix.size()));
    if (key_config.max_concurrent_generations > 0) per_caller_cap = key_config.max_concurrent_generations;
    caller_limits = {key_config.daily_usd, key_config.monthly_usd};
  } else if (caller.principal.rfind(kSigningKeyPrefix, 0) == 0) {
    auto it = config_.security.signing_keys.find(caller.principal.substr(kSigningKeyPrefix.size()));
    if (it != config_.security.signing_keys.end()) caller_limits = {it->second.daily_usd, it->second.monthly_usd};
  }

  std::lock_guard lock(mutex_);
  if (global_in_flight_.load() >= config_.limits.max_concurrent_generations) {
    limiter_.refund("gen|" + owner, policy);
    spdlog::warn("admission: {} generations in flight (limits.max_concurrent_generations); rejecting image {}",
                 global_in_flight_.load(), key);
    return core::Error::unavailable("the server is generating as many images as it allows; retry shortly", 2);
  }
  int& caller_in_flight = in_flight_by_caller_[owner];
  if (caller_in_flight >= per_caller_cap) {
    limiter_.refund("gen|" + owner, policy);
    spdlog::info("admission: {} has {} generations in flight; rejecting image {}", owner, caller_in_flight, key);
    return core::Error::unavailable("too many of your images are being generated at once; retry shortly", 2);
  }

  // Spend: reserve the estimate now, settle the real cost afterwards.
  const std::optional<double> fixed_price = table_price(spec);
  const double amount = estimate_cost(spec, estimated_usd);
  auto reservation = ledger_.reserve(caller.principal, spec.backend, spec.model, key, amount, caller_limits,
                                     {config_.budgets.daily_usd, config_.budgets.monthly_usd});
  if (!reservation) {
    limiter_.refund("gen|" + owner, policy);
    spdlog::warn("admission: budget check rejected image {} for {}: {}", key, caller.principal,
                 reservation.error().message);
    return std::move(reservation).error();
  }

  ++caller_in_flight;
  global_in_flight_.fetch_add(1);
  const std::int64_t id = next_permit_++;
  permits_[id] = Permit{owner, *reservation, amount, fixed_price.has_value()};
  return id;
}

double Gate::release(std::int64_t permit_id, bool succeeded, double actual_usd) {
  Permit permit;
  {
    std::lock_guard lock(mutex_);
    auto it = permits_.find(permit_id);
    if (it == permits_.end()) return 0;
    permit = std::move(it->second);
    permits_.erase(it);
    auto caller = in_flight_by_caller_.find(permit.concurrency_bucket);
    if (caller != in_flight_by_caller_.end() && --caller->second <= 0) in_flight_by_caller_.erase(caller);
    global_in_flight_.fetch_sub(1);
  }
  if (!permit.reservation) return 0;
  if (!succeeded) {
    ledger_.refund(*permit.reservation);
    return 0;
  }
  // A cost-table row is the operator's price and wins over what the adapter
  // computed from the provider's usage report.
  const double charged = permit.fixed_price || actual_usd <= 0 ? permit.reserved_usd : actual_usd;
  ledger_.settle(*permit.reservation, charged);
  return charged;
}

}  // namespace pixelgate::admission
