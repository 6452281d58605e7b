#include "delivery/image_response.hpp"

#include "core/text.hpp"

namespace pixelgate::delivery {
namespace {

constexpr std::string_view kImmutable = "public, max-age=31536000, immutable";
constexpr std::string_view kNoStore = "no-store";

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// Returns the opaque tag of one member ("\"x\"" or "W/\"x\""), or empty when
// the member is malformed.
std::string_view opaque_tag(std::string_view member) {
  if (member.size() >= 2 && member[0] == 'W' && member[1] == '/') member.remove_prefix(2);
  if (member.size() < 2 || member.front() != '"' || member.back() != '"') return {};
  return member;
}

}  // namespace

std::string etag_for_key(std::string_view key) { return core::double_quoted(key); }

bool if_none_match_matches(std::string_view header_value, std::string_view etag) {
  const std::string_view target = opaque_tag(etag);
  if (target.empty()) return false;
  std::string_view rest = header_value;
  while (!rest.empty()) {
    // Entity tags cannot contain commas, so splitting on them is safe.
    const std::size_t comma = rest.find(',');
    const std::string_view member = trim(rest.substr(0, comma));
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    if (member == "*") return true;
    if (!member.empty() && opaque_tag(member) == target) return true;
  }
  return false;
}

ImageResponse build_image_response(const storage::CachedImage& image, CachePolicy policy,
                                   std::string_view if_none_match) {
  ImageResponse response;
  response.headers.reserve(4);
  const std::string etag = etag_for_key(image.key);
  response.headers.emplace_back("ETag", etag);
  response.headers.emplace_back("Cache-Control", std::string(policy == CachePolicy::Immutable ? kImmutable : kNoStore));

  if (!if_none_match.empty() && if_none_match_matches(if_none_match, etag)) {
    response.status = 304;
    return response;
  }
  response.headers.emplace_back("Content-Type", image.content_type);
  response.headers.emplace_back("Repr-Digest", image.digest_header);
  response.body = image.bytes;
  return response;
}

}  // namespace pixelgate::delivery
