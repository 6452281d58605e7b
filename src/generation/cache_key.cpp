#include "generation/cache_key.hpp"

#include <charconv>

#include "core/hash.hpp"

namespace pixelgate::generation {
namespace {

void add_field(std::string& out, std::string_view name, std::string_view value) {
  out.append(name);
  out.push_back('=');
  out.append(std::to_string(value.size()));
  out.push_back(':');
  out.append(value);
  out.push_back('\n');
}

// Shortest round-trip decimal form, independent of the locale.
std::string format_double(double value) {
  char buffer[64];
  const auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, end);
}

std::string encode(const core::GenerationSpec& spec, bool with_seed) {
  std::string out = "pixelgate-spec/" + std::to_string(kSpecEncodingVersion) + "\n";
  add_field(out, "backend", spec.backend);
  add_field(out, "backend_type", spec.backend_type);
  add_field(out, "adapter_version", std::to_string(spec.adapter_version));
  add_field(out, "model", spec.model);
  add_field(out, "prompt", spec.prompt);
  add_field(out, "negative_prompt", spec.negative_prompt);
  add_field(out, "width", std::to_string(spec.width));
  add_field(out, "height", std::to_string(spec.height));
  add_field(out, "steps", std::to_string(spec.steps));
  add_field(out, "guidance", format_double(spec.guidance));
  add_field(out, "sampler", spec.sampler);
  add_field(out, "quality", spec.quality);
  add_field(out, "style", spec.style);
  add_field(out, "template", spec.template_name);
  add_field(out, "template_version", spec.template_version);
  if (with_seed) {
    // A random-seed image gets its own marker, so it can never share a key
    // with a deterministic request that happens to name the same seed.
    add_field(out, "seed_mode", spec.random_seed ? "random" : "fixed");
    add_field(out, "seed", std::to_string(spec.seed));
  }
  return out;
}

}  // namespace

std::string canonical_encoding(const core::GenerationSpec& spec) { return encode(spec, true); }

std::uint32_t derive_seed(const core::GenerationSpec& spec_without_seed) {
  const core::Sha256Digest digest = core::sha256(encode(spec_without_seed, false));
  const std::uint32_t value = (std::uint32_t{digest[0]} << 24) | (std::uint32_t{digest[1]} << 16) |
                              (std::uint32_t{digest[2]} << 8) | std::uint32_t{digest[3]};
  return value % 4294967295u;
}

std::string cache_key(const core::GenerationSpec& spec) { return core::sha256_hex(canonical_encoding(spec)); }

}  // namespace pixelgate::generation
