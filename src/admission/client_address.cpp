#include "admission/client_address.hpp"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

#include "core/text.hpp"

namespace pixelgate::admission {
namespace {

// Parses an IPv4 or IPv6 address into 16 bytes (IPv4 as ::ffff:a.b.c.d).
std::optional<std::array<unsigned char, 16>> parse_address(std::string_view text) {
  std::string copy(text);
  std::array<unsigned char, 16> bytes{};
  unsigned char v4[4];
  if (inet_pton(AF_INET, copy.c_str(), v4) == 1) {
    bytes[10] = 0xff;
    bytes[11] = 0xff;
    std::memcpy(bytes.data() + 12, v4, 4);
    return bytes;
  }
  if (inet_pton(AF_INET6, copy.c_str(), bytes.data()) == 1) return bytes;
  return std::nullopt;
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// Extracts the address from one Forwarded for= value: strips quotes, the
// brackets of IPv6, and a port.
std::string_view forwarded_address(std::string_view value) {
  value = trim(value);
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
  if (!value.empty() && value.front() == '[') {
    const std::size_t close = value.find(']');
    return close == std::string_view::npos ? std::string_view{} : value.substr(1, close - 1);
  }
  const std::size_t colon = value.find(':');
  if (colon != std::string_view::npos && value.find(':', colon + 1) == std::string_view::npos) {
    value = value.substr(0, colon);  // IPv4 with a port
  }
  return value;
}

std::vector<std::string_view> split_list(std::string_view header) {
  std::vector<std::string_view> items;
  while (!header.empty()) {
    const std::size_t comma = header.find(',');
    items.push_back(trim(header.substr(0, comma)));
    header = comma == std::string_view::npos ? std::string_view{} : header.substr(comma + 1);
  }
  return items;
}

std::vector<std::string_view> forwarded_for_values(std::string_view forwarded) {
  std::vector<std::string_view> values;
  for (std::string_view element : split_list(forwarded)) {
    while (!element.empty()) {
      const std::size_t semicolon = element.find(';');
      const std::string_view pair = trim(element.substr(0, semicolon));
      if (pair.size() > 4 && (pair.substr(0, 4) == "for=" || pair.substr(0, 4) == "For=" || pair.substr(0, 4) == "FOR=")) {
        values.push_back(forwarded_address(pair.substr(4)));
      }
      element = semicolon == std::string_view::npos ? std::string_view{} : element.substr(semicolon + 1);
    }
  }
  return values;
}

bool is_trusted(std::string_view address, const std::vector<Network>& trusted) {
  for (const auto& network : trusted) {
    if (contains(network, address)) return true;
  }
  return false;
}

}  // namespace

core::Result<Network> parse_network(std::string_view text) {
  const std::size_t slash = text.find('/');
  const std::string_view address_text = text.substr(0, slash);
  auto address = parse_address(address_text);
  if (!address) return core::Error::invalid(core::double_quoted(text) + " is not an IP address or CIDR network");

  const bool v4 = address_text.find(':') == std::string_view::npos;
  int prefix = v4 ? 32 : 128;
  if (slash != std::string_view::npos) {
    const std::string_view digits = text.substr(slash + 1);
    const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
    if (ec != std::errc{} || ptr != digits.data() + digits.size() || prefix < 0 || prefix > (v4 ? 32 : 128)) {
      return core::Error::invalid(core::double_quoted(text) + " has an invalid prefix length");
    }
  }
  return Network{*address, v4 ? prefix + 96 : prefix};
}

bool contains(const Network& network, std::string_view address_text) {
  auto address = parse_address(address_text);
  if (!address) return false;
  int bits = network.prefix_length;
  for (int i = 0; i < 16 && bits > 0; ++i, bits -= 8) {
    const unsigned char mask = bits >= 8 ? 0xff : static_cast<unsigned char>(0xff << (8 - bits));
    if (((*address)[i] & mask) != (network.address[i] & mask)) return false;
  }
  return true;
}

std::string client_address(std::string_view peer, std::string_view x_forwarded_for, std::string_view forwarded,
                           const std::vector<Network>& trusted_proxies) {
  if (trusted_proxies.empty() || !is_trusted(peer, trusted_proxies)) return std::string(peer);

  std::vector<std::string_view> hops =
      !x_forwarded_for.empty() ? split_list(x_forwarded_for) : forwarded_for_values(forwarded);
  std::string_view client = peer;
  for (auto it = hops.rbegin(); it != hops.rend(); ++it) {
    if (!parse_address(*it)) break;  // malformed: keep the last trusted hop
    client = *it;
    if (!is_trusted(*it, trusted_proxies)) break;
  }
  return std::string(client);
}

}  // namespace pixelgate::admission
