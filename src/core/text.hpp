// Text helpers for request parsing: percent-decoding, query strings, UTF-8.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pixelgate::core {

// Decodes %XX escapes (either hex case). With `plus_as_space`, '+' becomes a
// space, as in application/x-www-form-urlencoded query strings. Returns
// nullopt for a malformed escape such as "%4" or "%zz".
std::optional<std::string> percent_decode(std::string_view text, bool plus_as_space);

// Returns `text` in double quotes, without escaping. Built by appending,
// because GCC 12 warns falsely (-Wstringop-overflow) about the shorter
// "\"" + std::string(text) + "\"".
std::string double_quoted(std::string_view text);

// Percent-encodes everything except RFC 3986 unreserved characters.
std::string percent_encode(std::string_view text);

using QueryParams = std::vector<std::pair<std::string, std::string>>;

// Splits and decodes a query string ("a=1&b=x+y") in order. Empty pieces
// ("a=1&&b=2") are skipped; a name without '=' gets an empty value. Returns
// nullopt when any escape is malformed.
std::optional<QueryParams> parse_query(std::string_view query);

// Returns the name of the first parameter whose name or value has a
// malformed escape, decoded where possible (else as written), for error
// messages. Empty when every escape is well-formed.
std::string malformed_parameter(std::string_view query);

// Returns true when `text` is well-formed UTF-8 (no overlong forms, no
// surrogates, nothing above U+10FFFF).
bool is_valid_utf8(std::string_view text) noexcept;

// Counts Unicode code points in valid UTF-8.
std::size_t count_code_points(std::string_view text) noexcept;

// Returns true when the text has C0 or C1 control characters or DEL. Tab and
// newline count as control characters too.
bool has_control_characters(std::string_view utf8) noexcept;

std::string to_lower_ascii(std::string_view text);

// Returns the last `visible` characters of a secret prefixed with "...", or
// "(empty)"; used wherever a secret must be identified in a log.
std::string redact_secret(std::string_view secret, std::size_t visible = 4);

}  // namespace pixelgate::core
