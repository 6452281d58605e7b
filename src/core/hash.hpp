// Hashing and encodings through OpenSSL.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pixelgate::core {

using Sha256Digest = std::array<unsigned char, 32>;

Sha256Digest sha256(std::string_view data);

// Returns the lower-case hexadecimal SHA-256 of `data` (64 characters).
std::string sha256_hex(std::string_view data);

std::string to_hex(const unsigned char* data, std::size_t size);

// Standard base64 (RFC 4648 section 4) with padding.
std::string base64_encode(std::string_view data);

// Decodes standard base64; returns nullopt for invalid input. Whitespace is
// not accepted.
std::optional<std::string> base64_decode(std::string_view text);

// Returns true when `text` is exactly 64 lower-case hexadecimal characters.
bool is_sha256_hex(std::string_view text) noexcept;

// Returns 64 bits from a cryptographic random source.
std::uint64_t random_u64();

}  // namespace pixelgate::core
