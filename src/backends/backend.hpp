// The interface every image provider implements: a managed API, a
// third-party host, a self-hosted server, or later an in-process engine.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "core/error.hpp"
#include "core/generation_spec.hpp"

namespace pixelgate::backends {

struct GeneratedImage {
  std::string bytes;               // encoded image as the provider returned it
  double cost_usd = 0.0;           // what this call cost, 0 when free or unknown
  std::string provider_request_id; // the provider's id for the call, if any
  std::string revised_prompt;      // dall-e-3 rewrites prompts and reports it
  int attempts = 1;                // calls made, retries included
};

class RetryBudget;

// Per-call context. The deadline bounds the whole call, retries included.
struct GenerateContext {
  std::string request_id;  // the id of the request that started the generation
  std::chrono::steady_clock::time_point deadline;
  // Shared by all calls to this backend; null = retries limited only by
  // max_retries. Adapters ask it before each retry (see allow_retry()).
  RetryBudget* retry_budget = nullptr;
  // Set by templates with cold_start = "fallback" or "placeholder": how long
  // this call may wait for a pool instance to start. A pool whose expected
  // start takes longer starts one anyway and fails at once with ColdStart.
  std::optional<std::chrono::milliseconds> cold_start_budget;

  // Returns true when the backend's retry budget allows one more retry.
  bool allow_retry() const;
};

// Thread-safety: validate() and generate() are called concurrently from
// worker threads; implementations keep no unguarded mutable state.
class Backend {
 public:
  virtual ~Backend() = default;

  virtual const std::string& name() const = 0;  // the configured name
  virtual std::string_view type() const = 0;    // the adapter, e.g. "openai"
  virtual int adapter_version() const = 0;      // part of every cache key
  virtual const std::string& default_model() const = 0;
  virtual bool honours_seed() const = 0;
  virtual bool supports_negative_prompt() const = 0;
  // True for backends that draw images without AI, announced at start-up and
  // in a response header.
  virtual bool is_placeholder() const { return false; }

  // Returns the provider's list price for one image of `spec`, 0 for free
  // backends, or nullopt when unknown.
  virtual std::optional<double> list_price(const core::GenerationSpec& spec) const = 0;

  // Checks a resolved spec against what the provider accepts, before any
  // call. Errors are InvalidArgument naming the field.
  virtual core::Status validate(const core::GenerationSpec& spec) const = 0;

  // Generates one image. Blocks; runs on a worker thread.
  virtual core::Result<GeneratedImage> generate(const core::GenerationSpec& spec, const GenerateContext& context) = 0;
};

// Builds the backend described by `config`. Errors name the config key.
core::Result<std::unique_ptr<Backend>> make_backend(const config::BackendConfig& config);

}  // namespace pixelgate::backends
