#include "jobs/address_guard.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netdb.h>
#include <netinet/in.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

namespace pixelgate::jobs {
namespace {

using Bytes4 = std::array<std::uint8_t, 4>;
using Bytes16 = std::array<std::uint8_t, 16>;

// DNS lookups run on their own threads so that a caller can stop waiting;
// this many may be outstanding at once.
constexpr int kMaxLookups = 16;
std::atomic<int> lookups_in_flight{0};

bool in_prefix(const std::uint8_t* address, const std::uint8_t* prefix, int bits) {
  const int whole = bits / 8;
  if (std::memcmp(address, prefix, static_cast<std::size_t>(whole)) != 0) return false;
  const int rest = bits % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<std::uint8_t>(0xFF << (8 - rest));
  return (address[whole] & mask) == (prefix[whole] & mask);
}

struct Range4 {
  Bytes4 prefix;
  int bits;
  const char* reason;
};

// Special-purpose IPv4 ranges (IANA IPv4 Special-Purpose Address Registry)
// that are not reachable public unicast destinations.
const Range4 kBlocked4[] = {
    {{0, 0, 0, 0}, 8, "unspecified or \"this network\" (0.0.0.0/8)"},
    {{10, 0, 0, 0}, 8, "private (RFC 1918, 10.0.0.0/8)"},
    {{100, 64, 0, 0}, 10, "shared address space (CGNAT, 100.64.0.0/10)"},
    {{127, 0, 0, 0}, 8, "loopback (127.0.0.0/8)"},
    {{169, 254, 0, 0}, 16, "link-local (169.254.0.0/16)"},
    {{172, 16, 0, 0}, 12, "private (RFC 1918, 172.16.0.0/12)"},
    {{192, 0, 0, 0}, 24, "IETF protocol assignments (192.0.0.0/24)"},
    {{192, 0, 2, 0}, 24, "documentation (192.0.2.0/24)"},
    {{192, 168, 0, 0}, 16, "private (RFC 1918, 192.168.0.0/16)"},
    {{198, 18, 0, 0}, 15, "benchmarking (198.18.0.0/15)"},
    {{198, 51, 100, 0}, 24, "documentation (198.51.100.0/24)"},
    {{203, 0, 113, 0}, 24, "documentation (203.0.113.0/24)"},
    {{224, 0, 0, 0}, 4, "multicast (224.0.0.0/4)"},
    {{255, 255, 255, 255}, 32, "broadcast (255.255.255.255)"},
    {{240, 0, 0, 0}, 4, "reserved (240.0.0.0/4)"},
};

std::string reason_v4(const Bytes4& address) {
  for (const auto& range : kBlocked4) {
    if (in_prefix(address.data(), range.prefix.data(), range.bits)) return range.reason;
  }
  return {};
}

Bytes4 embedded_v4(const Bytes16& address, std::size_t offset) {
  return {address[offset], address[offset + 1], address[offset + 2], address[offset + 3]};
}

std::string reason_v6(const Bytes16& address) {
  static const Bytes16 kUnspecified = {};
  static const Bytes16 kLoopback = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  static const Bytes16 kMapped = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
  static const Bytes16 kNat64 = {0x00, 0x64, 0xFF, 0x9B};
  static const Bytes16 kNat64Local = {0x00, 0x64, 0xFF, 0x9B, 0x00, 0x01};
  static const Bytes16 kDiscard = {0x01, 0x00};
  static const Bytes16 kTeredo = {0x20, 0x01, 0x00, 0x00};
  static const Bytes16 kDocumentation = {0x20, 0x01, 0x0D, 0xB8};
  static const Bytes16 k6to4 = {0x20, 0x02};
  static const Bytes16 kUniqueLocal = {0xFC};
  static const Bytes16 kLinkLocal = {0xFE, 0x80};
  static const Bytes16 kSiteLocal = {0xFE, 0xC0};
  static const Bytes16 kMulticast = {0xFF};

  if (address == kUnspecified) return "unspecified (::)";
  if (address == kLoopback) return "loopback (::1)";
  // An address with an IPv4 address inside reaches that IPv4 address, so it
  // is judged by it.
  if (in_prefix(address.data(), kMapped.data(), 96)) {
    const std::string inner = reason_v4(embedded_v4(address, 12));
    return inner.empty() ? std::string{} : "IPv4-mapped " + inner;
  }
  if (in_prefix(address.data(), kUnspecified.data(), 96)) return "deprecated IPv4-compatible (::/96)";
  if (in_prefix(address.data(), kNat64.data(), 96)) {
    const std::string inner = reason_v4(embedded_v4(address, 12));
    return inner.empty() ? std::string{} : "NAT64 (64:ff9b::/96) of " + inner;
  }
  if (in_prefix(address.data(), kNat64Local.data(), 48)) return "local-use NAT64 (64:ff9b:1::/48)";
  if (in_prefix(address.data(), kDiscard.data(), 64)) return "discard-only (100::/64)";
  if (in_prefix(address.data(), kTeredo.data(), 32)) return "Teredo (2001::/32)";
  if (in_prefix(address.data(), kDocumentation.data(), 32)) return "documentation (2001:db8::/32)";
  if (in_prefix(address.data(), k6to4.data(), 16)) {
    const std::string inner = reason_v4(embedded_v4(address, 2));
    return inner.empty() ? std::string{} : "6to4 (2002::/16) of " + inner;
  }
  if (in_prefix(address.data(), kUniqueLocal.data(), 7)) return "unique-local (fc00::/7)";
  if (in_prefix(address.data(), kLinkLocal.data(), 10)) return "link-local (fe80::/10)";
  if (in_prefix(address.data(), kSiteLocal.data(), 10)) return "deprecated site-local (fec0::/10)";
  if (in_prefix(address.data(), kMulticast.data(), 8)) return "multicast (ff00::/8)";
  return {};
}

// The state a lookup thread shares with the caller waiting for it. Both hold
// a shared_ptr, so a caller that timed out leaves it to the thread.
struct Lookup {
  std::mutex mutex;
  std::condition_variable finished;
  bool done = false;
  int status = 0;
  std::vector<sockaddr_storage> addresses;
};

core::Result<std::vector<sockaddr_storage>> lookup(const std::string& host, int port, std::chrono::milliseconds timeout) {
  if (lookups_in_flight.fetch_add(1) >= kMaxLookups) {
    lookups_in_flight.fetch_sub(1);
    spdlog::warn("webhooks: {} DNS lookups are already in progress; not resolving {}", kMaxLookups, host);
    return core::Error::unavailable("too many DNS lookups are in progress; retry later", 2);
  }
  auto state = std::make_shared<Lookup>();
  try {
    std::thread([state, host, port] {
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* results = nullptr;
      const int status = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &results);
      std::vector<sockaddr_storage> addresses;
      for (const addrinfo* entry = results; status == 0 && entry; entry = entry->ai_next) {
        if (entry->ai_family != AF_INET && entry->ai_family != AF_INET6) continue;
        sockaddr_storage copy{};
        std::memcpy(&copy, entry->ai_addr, std::min<std::size_t>(entry->ai_addrlen, sizeof(copy)));
        addresses.push_back(copy);
      }
      if (results) freeaddrinfo(results);
      {
        std::lock_guard lock(state->mutex);
        state->status = status;
        state->addresses = std::move(addresses);
        state->done = true;
      }
      state->finished.notify_all();
      lookups_in_flight.fetch_sub(1);
    }).detach();
  } catch (const std::system_error& error) {
    lookups_in_flight.fetch_sub(1);
    spdlog::error("webhooks: cannot start a DNS lookup thread for {}: {}", host, error.what());
    return core::Error::unavailable("cannot start a DNS lookup now; retry later", 2);
  }

  std::unique_lock lock(state->mutex);
  if (!state->finished.wait_for(lock, timeout, [&state] { return state->done; })) {
    return core::Error{core::ErrorCode::DeadlineExceeded,
                       "the DNS lookup of " + host + " timed out after " + std::to_string(timeout.count()) + " ms",
                       "webhook_url", 0};
  }
  if (state->status != 0) {
    return core::Error{core::ErrorCode::Unavailable,
                       "the DNS lookup of " + host + " failed: " + gai_strerror(state->status), "webhook_url", 0};
  }
  if (state->addresses.empty()) {
    return core::Error{core::ErrorCode::Unavailable, "the DNS lookup of " + host + " returned no IP address",
                       "webhook_url", 0};
  }
  return std::move(state->addresses);
}

// Returns one part of a parsed URL, or an empty string when it is absent.
std::string url_part(CURLU* handle, CURLUPart part) {
  char* value = nullptr;
  if (curl_url_get(handle, part, &value, 0) != CURLUE_OK || value == nullptr) return {};
  std::string text(value);
  curl_free(value);
  return text;
}

core::Error invalid_url(const std::string& reason) {
  return core::Error::invalid("webhook_url " + reason, "webhook_url");
}

}  // namespace

std::string blocked_address_reason(const sockaddr* address) {
  if (address->sa_family == AF_INET) {
    Bytes4 bytes;
    std::memcpy(bytes.data(), &reinterpret_cast<const sockaddr_in*>(address)->sin_addr, 4);
    return reason_v4(bytes);
  }
  if (address->sa_family == AF_INET6) {
    Bytes16 bytes;
    std::memcpy(bytes.data(), &reinterpret_cast<const sockaddr_in6*>(address)->sin6_addr, 16);
    return reason_v6(bytes);
  }
  return "not an IPv4 or IPv6 address";
}

std::string blocked_address_reason(std::string_view text) {
  const std::string copy(text);
  Bytes4 v4;
  if (inet_pton(AF_INET, copy.c_str(), v4.data()) == 1) return reason_v4(v4);
  Bytes16 v6;
  if (inet_pton(AF_INET6, copy.c_str(), v6.data()) == 1) return reason_v6(v6);
  return "not an IP address";
}

std::string address_text(const sockaddr* address) {
  char text[INET6_ADDRSTRLEN] = {0};
  if (address->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(address)->sin_addr, text, sizeof(text));
  } else if (address->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(address)->sin6_addr, text, sizeof(text));
  }
  return text;
}

std::string WebhookTarget::origin() const {
  const bool ipv6 = host.find(':') != std::string::npos;
  return scheme + "://" + (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

core::Result<WebhookTarget> resolve_webhook_url(const std::string& url, bool allow_private,
                                                std::chrono::milliseconds timeout) {
  if (url.empty() || url.size() > 2048) return invalid_url("must be an http or https URL of at most 2048 bytes");
  std::unique_ptr<CURLU, decltype(&curl_url_cleanup)> handle(curl_url(), &curl_url_cleanup);
  if (!handle) return core::Error::internal("libcurl could not create a URL handle");
  if (curl_url_set(handle.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) {
    return invalid_url("is not a valid absolute URL");
  }

  WebhookTarget target;
  target.url = url;
  target.scheme = url_part(handle.get(), CURLUPART_SCHEME);
  if (target.scheme != "http" && target.scheme != "https") {
    return invalid_url("must use http or https, got \"" + target.scheme + "\"");
  }
  if (!url_part(handle.get(), CURLUPART_USER).empty() || !url_part(handle.get(), CURLUPART_PASSWORD).empty()) {
    return invalid_url("must not contain a user name or password");
  }
  target.host = url_part(handle.get(), CURLUPART_HOST);
  if (target.host.size() > 2 && target.host.front() == '[' && target.host.back() == ']') {
    target.host = target.host.substr(1, target.host.size() - 2);
    // A zone id ("fe80::1%eth0") names a local interface.
    if (target.host.find('%') != std::string::npos) return invalid_url("must not name an IPv6 zone");
  }
  if (target.host.empty()) return invalid_url("has no host");
  char* port_text = nullptr;
  if (curl_url_get(handle.get(), CURLUPART_PORT, &port_text, CURLU_DEFAULT_PORT) != CURLUE_OK || !port_text) {
    return invalid_url("has no usable port");
  }
  target.port = std::atoi(port_text);
  curl_free(port_text);

  Bytes16 literal;
  target.host_is_address = inet_pton(AF_INET, target.host.c_str(), literal.data()) == 1 ||
                           inet_pton(AF_INET6, target.host.c_str(), literal.data()) == 1;

  auto addresses = lookup(target.host, target.port, timeout);
  if (!addresses) return std::move(addresses).error();
  for (const auto& storage : *addresses) {
    const auto* address = reinterpret_cast<const sockaddr*>(&storage);
    const std::string text = address_text(address);
    const std::string reason = blocked_address_reason(address);
    if (!reason.empty() && !allow_private) {
      return invalid_url("resolves to " + text + ", a " + reason +
                         " address; webhooks go to public addresses only (see [webhooks] allow_private_addresses)");
    }
    bool seen = false;
    for (const auto& earlier : target.addresses) seen = seen || earlier == text;
    if (!seen) target.addresses.push_back(text);
  }
  return target;
}

}  // namespace pixelgate::jobs
