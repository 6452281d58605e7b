// The server-side request forgery (SSRF) guard for webhook URLs: which
// addresses pixelgate may send a webhook to, and a DNS lookup with a timeout
// whose every answer is checked.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"

namespace pixelgate::jobs {

// Returns why a webhook must not be sent to the IPv4 or IPv6 address
// `address` (for example "loopback (127.0.0.0/8)"), or an empty string for a
// public unicast address. IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96)
// and 6to4 (2002::/16) addresses are judged by the IPv4 address inside them.
std::string blocked_address_reason(const sockaddr* address);

// The same for an address in text form; "not an IP address" when `text` is
// not one.
std::string blocked_address_reason(std::string_view text);

// Returns the numeric text of an IPv4 or IPv6 socket address, e.g. "::1".
std::string address_text(const sockaddr* address);

// A webhook URL after parsing and the DNS lookup.
struct WebhookTarget {
  std::string url;
  std::string scheme;  // "http" or "https"
  std::string host;    // as in the URL, without IPv6 brackets
  int port = 0;
  bool host_is_address = false;        // the URL names an IP address, not a name
  std::vector<std::string> addresses;  // numeric, each one checked
  // "scheme://host:port" without path or query, which may carry tokens; for logs.
  std::string origin() const;
};

// Parses `url` (http or https only, no user information) and resolves its
// host with getaddrinfo, waiting at most `timeout`. Fails with
// InvalidArgument, param "webhook_url", when the URL is malformed or any
// address of the host is blocked and `allow_private` is false, and with
// Unavailable when the lookup fails or times out.
core::Result<WebhookTarget> resolve_webhook_url(const std::string& url, bool allow_private,
                                                std::chrono::milliseconds timeout);

}  // namespace pixelgate::jobs
