#include "api/image_query.hpp"

#include <algorithm>
#include <charconv>
#include <map>
#include <set>

#include "core/text.hpp"

namespace pixelgate::api {

namespace {

bool looks_like_variable(const std::string& name) {
  if (name.empty() || name.size() > 32) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; });
}

}  // namespace

bool parse_unsigned(std::string_view text, std::uint64_t& value) {
  if (text.empty() || text.size() > 20) return false;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  return ec == std::errc{} && ptr == text.data() + text.size();
}

bool parse_size(std::string_view text, int& width, int& height) {
  const std::size_t x = text.find('x');
  if (x == std::string_view::npos) return false;
  std::uint64_t w = 0;
  std::uint64_t h = 0;
  if (!parse_unsigned(text.substr(0, x), w) || !parse_unsigned(text.substr(x + 1), h)) return false;
  if (w > 100000 || h > 100000) return false;
  width = static_cast<int>(w);
  height = static_cast<int>(h);
  return true;
}

core::Result<generation::ImageRequest> parse_image_query(std::string_view query, bool template_from_query) {
  auto params = core::parse_query(query);
  if (!params) {
    const std::string name = core::malformed_parameter(query);
    return core::Error::invalid("parameter \"" + name + "\" has a malformed percent-escape; write % as %25 and "
                                "escapes as %XX",
                                name);
  }
  return parse_image_params(*params, template_from_query);
}

core::Result<generation::ImageRequest> parse_image_params(const core::QueryParams& params, bool template_from_query) {
  generation::ImageRequest request;
  std::map<std::string, std::string> seen;  // canonical name -> the name as given
  bool has_prompt = false;
  for (auto [name, value] : params) {
    const std::string canonical_name = name == "style" && template_from_query ? "template" : name;
    if (auto [it, inserted] = seen.emplace(canonical_name, name); !inserted) {
      if (it->second != name) {
        return core::Error::invalid("give only one of \"template\" and its alias \"style\"", name);
      }
      return core::Error::invalid("parameter \"" + name + "\" is given more than once", name);
    }
    if (name == "prompt") {
      request.prompt = std::move(value);
      has_prompt = true;
    } else if (name == "width" || name == "height") {
      std::uint64_t number = 0;
      if (!parse_unsigned(value, number) || number > 100000) {
        return core::Error::invalid(name + " must be a whole number of pixels, got \"" + value + "\"", name);
      }
      (name == "width" ? request.width : request.height) = static_cast<int>(number);
    } else if (name == "size") {
      int width = 0;
      int height = 0;
      if (!parse_size(value, width, height)) {
        return core::Error::invalid("size must look like 1024x768, got \"" + value + "\"", "size");
      }
      request.width = width;
      request.height = height;
    } else if (name == "seed") {
      std::uint64_t seed = 0;
      if (value == "random") {
        request.random_seed = true;
      } else if (parse_unsigned(value, seed)) {
        request.seed = seed;
      } else {
        return core::Error::invalid("seed must be a whole number or \"random\", got \"" + value + "\"", "seed");
      }
    } else if (canonical_name == "template" && template_from_query) {
      if (value.empty()) return core::Error::invalid("template must not be empty", name);
      request.template_name = std::move(value);
    } else if (looks_like_variable(name)) {
      // Checked against the template's variables by the resolver, which
      // names unknown ones.
      request.variables[name] = std::move(value);
    } else {
      std::string allowed = "prompt, width, height, size, seed, template variables";
      if (template_from_query) allowed += ", template (or style)";
      return core::Error::invalid("unknown parameter \"" + name + "\"; accepted: " + allowed, name);
    }
  }
  if (seen.count("size") && (seen.count("width") || seen.count("height"))) {
    return core::Error::invalid("give either size or width and height, not both", "size");
  }
  if (!has_prompt) return core::Error::invalid("prompt is missing; pass the image description as ?prompt=...", "prompt");
  return request;
}

}  // namespace pixelgate::api
