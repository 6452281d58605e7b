// Finding the client's address behind trusted reverse proxies.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"

namespace pixelgate::admission {

// An IPv4 or IPv6 network such as "10.0.0.0/8" or "::1/128". IPv4 addresses
// are matched in their IPv4-mapped IPv6 form.
struct Network {
  std::array<unsigned char, 16> address{};
  int prefix_length = 0;
};

// Parses "ADDRESS/PREFIX" or a bare address (a /32 or /128 network).
core::Result<Network> parse_network(std::string_view text);

bool contains(const Network& network, std::string_view address);

// Returns the client address: the connection's peer, unless the peer is a
// trusted proxy. Then the X-Forwarded-For list (or, without it, the for=
// values of Forwarded) is read from the right, and the first address that is
// not itself a trusted proxy is the client. Malformed entries stop the walk
// at the last trusted hop, so a client cannot forge its way past a proxy.
std::string client_address(std::string_view peer, std::string_view x_forwarded_for, std::string_view forwarded,
                           const std::vector<Network>& trusted_proxies);

}  // namespace pixelgate::admission
