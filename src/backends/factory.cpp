#include <map>
#include <mutex>

#include "backends/registry.hpp"
#include "pool/worker_pool_backend.hpp"

namespace pixelgate::backends {
namespace {

// A function-local static, so registrations from other files' static
// initializers find it constructed whatever the initialization order.
std::map<std::string, BackendMaker>& registry() {
  static std::map<std::string, BackendMaker> makers;
  return makers;
}

std::mutex& registry_mutex() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace

bool register_backend_type(const std::string& type, BackendMaker maker) {
  std::lock_guard lock(registry_mutex());
  registry()[type] = maker;
  return true;
}

BackendMaker find_backend_maker(const std::string& type) {
  std::lock_guard lock(registry_mutex());
  auto it = registry().find(type);
  return it == registry().end() ? nullptr : it->second;
}

core::Result<std::unique_ptr<Backend>> make_backend(const config::BackendConfig& config) {
  BackendMaker maker = find_backend_maker(config.type);
  if (!maker) {
    return core::Error::invalid("backends." + config.name + ".type: backend type \"" + config.type +
                                "\" is not available in this build");
  }
  if (config.pool) return pool::make_pool_backend(config, maker);
  return maker(config);
}

}  // namespace pixelgate::backends
