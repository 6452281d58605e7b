#include "backends/backend.hpp"
#include "backends/openai_backend.hpp"
#include "backends/placeholder_backend.hpp"

namespace pixelgate::backends {

core::Result<std::unique_ptr<Backend>> make_backend(const config::BackendConfig& config) {
  if (config.type == "placeholder") return std::unique_ptr<Backend>(std::make_unique<PlaceholderBackend>(config));
  if (config.type == "openai") {
    if (config.api_key.empty()) {
      return core::Error::invalid("backends." + config.name + ".api_key_env: the environment variable " +
                                  config.api_key.env_name + " is not set or empty");
    }
    return std::unique_ptr<Backend>(std::make_unique<OpenAIBackend>(config));
  }
  return core::Error::invalid("backends." + config.name + ".type: unknown backend type \"" + config.type + "\"");
}

}  // namespace pixelgate::backends
