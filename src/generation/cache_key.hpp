// The canonical encoding of a GenerationSpec and the cache key derived from it.
#pragma once

#include <cstdint>
#include <string>

#include "core/generation_spec.hpp"

namespace pixelgate::generation {

// Version of the encoding below; changing the encoding in any way must bump
// it, which changes every key.
inline constexpr int kSpecEncodingVersion = 1;

// Encodes every field that changes the pixels, in a fixed order, each as
// "name=<byte length>:<bytes>\n", after a version line. Strings are taken as
// the exact UTF-8 bytes with no Unicode normalisation, so NFC and NFD forms of
// the same text are different keys (a backend may tokenize them differently).
std::string canonical_encoding(const core::GenerationSpec& spec);

// The seed used when the request gives none: derived from the encoding of the
// spec without its seed, so the same request always gets the same seed. The
// value is below 2^32 - 1, which every supported backend accepts.
std::uint32_t derive_seed(const core::GenerationSpec& spec_without_seed);

// SHA-256 of the canonical encoding, as 64 lower-case hex characters.
std::string cache_key(const core::GenerationSpec& spec);

}  // namespace pixelgate::generation
