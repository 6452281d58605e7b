// Backend adapters register their type name at start-up, so adding a
// provider means adding one file. The library is built as an object
// library, so every adapter's registration is linked in.
#pragma once

#include <memory>
#include <string>

#include "backends/backend.hpp"

namespace pixelgate::backends {

using BackendMaker = core::Result<std::unique_ptr<Backend>> (*)(const config::BackendConfig& config);

// Registers `maker` for `type`. Called from a static initializer in each
// adapter's file; returns true so it can initialize a constant.
bool register_backend_type(const std::string& type, BackendMaker maker);

// Returns the maker for `type`, or null.
BackendMaker find_backend_maker(const std::string& type);

}  // namespace pixelgate::backends
