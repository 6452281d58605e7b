// Stability AI's Stable Image generate endpoints (REST v2beta):
// POST {base_url}/v2beta/stable-image/generate/ultra, /core and /sd3, each a
// multipart/form-data request whose response body is the image.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backends/backend.hpp"
#include "backends/http_client.hpp"

namespace pixelgate::backends {

// Request rules of one Stability model name: the endpoint that serves it and
// the fields that endpoint accepts, from the v2beta API reference.
struct StabilityModelRules {
  enum class Endpoint { Unknown, Ultra, Core, SD3 };
  Endpoint endpoint = Endpoint::Unknown;
  std::string path;            // e.g. "/v2beta/stable-image/generate/sd3"
  std::string sd3_model;       // the `model` form field; set for SD3 only
  bool negative_prompt = false;
  bool style_preset = false;   // Core only
  int credits_tenths = 0;      // list price in tenths of a credit
};

StabilityModelRules stability_model_rules(const std::string& model);

// Returns the aspect ratio ("16:9", ...) that width:height equals exactly, or
// an empty string when it equals none of the nine the API accepts.
std::string stability_aspect_ratio(int width, int height);

// Returns the pixel size Stability documents for `ratio` on this endpoint, or
// nullopt when the documentation gives none (see docs/backends/stability.md).
std::optional<std::pair<int, int>> stability_documented_size(StabilityModelRules::Endpoint endpoint,
                                                             const std::string& ratio);

// The decoded 200 response of one generate call.
struct StabilityAnswer {
  std::string bytes;
  std::string finish_reason;  // "SUCCESS", "CONTENT_FILTERED" or empty when absent
  std::string seed;           // as the provider reported it, or empty
};

// Decodes a 200 response in either form the API offers: raw image bytes with
// the finish-reason and seed headers (Accept: image/*), or JSON with base64
// `image`, `finish_reason` and `seed` (Accept: application/json). Malformed
// responses are BadGateway. A CONTENT_FILTERED result is returned as data.
core::Result<StabilityAnswer> parse_stability_answer(const OutboundResponse& response);

// Maps a non-200 response onto the common error vocabulary. `retry` is set
// for responses worth another attempt (429 and 5xx).
struct StabilityFailure {
  core::Error error;
  bool retry = false;
  std::optional<std::chrono::milliseconds> retry_after;
};
StabilityFailure classify_stability_error(const OutboundResponse& response, const std::string& backend_name,
                                          const std::string& request_id);

class StabilityBackend final : public Backend {
 public:
  explicit StabilityBackend(config::BackendConfig config);

  const std::string& name() const override { return config_.name; }
  std::string_view type() const override { return "stability"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return config_.model; }
  bool honours_seed() const override { return true; }
  // Returns false for a Large Turbo configured model, so the resolver drops a
  // template's negative prompt. validate() rejects one for a template's model.
  bool supports_negative_prompt() const override;
  std::optional<double> list_price(const core::GenerationSpec& spec) const override;

  core::Status validate(const core::GenerationSpec& spec) const override;
  core::Result<GeneratedImage> generate(const core::GenerationSpec& spec, const GenerateContext& context) override;

  // Builds the request for one generation without its timeouts (exposed for
  // tests). The spec must have passed validate().
  OutboundRequest build_request(const core::GenerationSpec& spec) const;

 private:
  config::BackendConfig config_;
};

}  // namespace pixelgate::backends
