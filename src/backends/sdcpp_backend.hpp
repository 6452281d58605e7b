// stable-diffusion.cpp's sd-server, through its native asynchronous API:
// POST {base_url}/sdcpp/v1/img_gen, poll GET /sdcpp/v1/jobs/{id}, cancel with
// POST /sdcpp/v1/jobs/{id}/cancel.
#pragma once

#include <nlohmann/json.hpp>

#include "backends/backend.hpp"
#include "backends/instance_lock.hpp"

namespace pixelgate::backends {

class SdCppBackend final : public Backend {
 public:
  explicit SdCppBackend(config::BackendConfig config);

  const std::string& name() const override { return config_.name; }
  std::string_view type() const override { return "sdcpp"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return config_.model; }
  bool honours_seed() const override { return true; }
  bool supports_negative_prompt() const override { return true; }
  // Self-hosted: no list price.
  std::optional<double> list_price(const core::GenerationSpec&) const override { return 0.0; }

  core::Status validate(const core::GenerationSpec& spec) const override;
  core::Result<GeneratedImage> generate(const core::GenerationSpec& spec, const GenerateContext& context) override;

  // Builds the JSON body of POST /sdcpp/v1/img_gen (exposed for tests).
  std::string request_body(const core::GenerationSpec& spec) const;

 private:
  core::Result<std::string> submit(const core::GenerationSpec& spec, const GenerateContext& context);
  core::Result<std::string> wait_for_job(const std::string& job_id, const GenerateContext& context);
  void cancel(const std::string& job_id, const GenerateContext& context);

  config::BackendConfig config_;
  InstanceLock instance_;
};

// Reads the first image of a completed job's "result"; BadGateway when the
// job JSON lacks result.images[0].b64_json or it is not base64.
core::Result<std::string> parse_sdcpp_result(const nlohmann::json& job);

}  // namespace pixelgate::backends
