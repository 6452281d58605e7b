// Admission control for every image request: authentication (API keys and
// signed URLs), rate limits, concurrency caps and spend budgets. It decides
// before any money is spent.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "admission/budget.hpp"
#include "admission/client_address.hpp"
#include "admission/rate_limiter.hpp"
#include "admission/url_signing.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "core/generation_guard.hpp"
#include "core/text.hpp"

namespace pixelgate::admission {

enum class RouteKind {
  ImageUrl,  // GET /generate-image and /v1/images/{template}
  JsonApi,   // POST /v1/images/generations
};

// The parts of an HTTP request that admission reads.
struct RequestInfo {
  std::string_view path;
  std::string_view query;
  std::string_view authorization;
  std::string_view x_forwarded_for;
  std::string_view forwarded;
  std::string_view remote_address;
};

struct Admission {
  std::optional<core::Error> error;  // set when the request is rejected
  core::GenerationCaller caller;
  // Query parameters for the image request: without sig, kid and exp.
  core::QueryParams params;
  // True while `params` is not filled in yet: load_params() fills it from
  // `signed_params` or by parsing the query. A request whose resolution is
  // cached under its raw query never needs the parameters.
  bool params_pending = false;
  // The verified parameters of a signed URL, shared with the gate's cache.
  std::shared_ptr<const VerifiedRequest> signed_params;
  // True when only public templates may be used (mode "templates", no
  // signature or key).
  bool public_templates_only = false;
  // RateLimit-Policy, RateLimit and, on rejection, WWW-Authenticate headers.
  std::vector<std::pair<std::string, std::string>> headers;
};

// Parses the query into `admission.params` when params_pending is set.
// Returns InvalidArgument, naming the parameter, for a malformed
// percent-escape.
core::Status load_params(Admission& admission, std::string_view query);

// Returns the key to hand out and the line to put in the configuration.
struct NewApiKey {
  std::string key;     // "pg_" + 43 base64url characters
  std::string sha256;  // what the configuration stores
};
NewApiKey generate_api_key();

// Thread-safety: all members may be called concurrently. The config, clock,
// limiter and ledger must outlive the gate.
class Gate final : public core::GenerationGuard {
 public:
  Gate(const config::Config& config, const core::Clock& clock, RateLimiter& limiter, BudgetLedger& ledger);

  // Authenticates the request and applies the request-rate limits.
  Admission admit(const RequestInfo& request, RouteKind route) const;

  // Checks the Authorization header of an admin route: an API key with the
  // admin scope, or anyone in open mode. Errors: Unauthenticated (with
  // WWW-Authenticate in response_headers) or PermissionDenied.
  core::Status authorize_admin(std::string_view authorization) const;

  // Returns true when `template_name` may be used without credentials.
  bool is_public_template(const std::string& template_name) const;

  core::Result<std::int64_t> acquire(const core::GenerationSpec& spec, const std::string& key,
                                     const core::GenerationCaller& caller,
                                     std::optional<double> estimated_usd) override;
  double release(std::int64_t permit, bool succeeded, double actual_usd) override;

  // Returns the amount reserved for a generation: the first matching row of
  // the cost table, else the adapter's estimate, else budgets.unknown_cost_usd.
  double estimate_cost(const core::GenerationSpec& spec, std::optional<double> adapter_estimate) const;

  // Returns the price of the first matching cost-table row, if any.
  std::optional<double> table_price(const core::GenerationSpec& spec) const;

  // Returns the API key whose SHA-256 matches `token`, comparing every
  // configured hash in constant time.
  const config::ApiKeyConfig* find_api_key(std::string_view token) const;

  int generations_in_flight() const noexcept { return global_in_flight_.load(); }

 private:
  struct Permit {
    std::string concurrency_bucket;
    std::optional<std::int64_t> reservation;
    double reserved_usd = 0;
    bool fixed_price = false;  // the reservation came from the cost table
  };

  const config::RateLimitsConfig& limits_for(const std::string& principal) const;
  // Verifies a signed URL, or finds it among the URLs verified before.
  core::Result<std::shared_ptr<const VerifiedRequest>> verify_signed(std::string_view path,
                                                                     std::string_view query) const;
  void add_rate_headers(Admission& admission, const RatePolicy& policy, const RateDecision& decision) const;

  const config::Config& config_;
  const core::Clock& clock_;
  RateLimiter& limiter_;
  BudgetLedger& ledger_;
  std::map<std::string, SigningKey> signing_keys_;
  std::vector<Network> trusted_proxies_;

  // Signed URLs that passed verification, by exact path and query. The same
  // URL is usually requested many times (an <img> on a page), and the HMAC
  // and canonical form cost more than the rest of a cache hit. Only a
  // byte-identical URL hits, and its expiry is checked on every use. When
  // full, the map is cleared.
  static constexpr std::size_t kMaxVerifiedUrls = 10'000;
  mutable std::mutex verified_mutex_;
  mutable std::unordered_map<std::string, std::shared_ptr<const VerifiedRequest>> verified_urls_;

  std::atomic<int> global_in_flight_{0};
  std::mutex mutex_;
  std::map<std::string, int> in_flight_by_caller_;
  std::map<std::int64_t, Permit> permits_;
  std::int64_t next_permit_ = 1;
};

}  // namespace pixelgate::admission
