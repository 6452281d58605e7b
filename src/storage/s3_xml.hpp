// Reading the XML bodies of S3 responses: ListObjectsV2 results and errors.
//
// The parser is hand-written because pixelgate's dependencies include no XML
// library, and S3 responses use a small, regular subset of XML 1.0: an optional
// XML declaration, elements with attributes, character data, comments, the
// five predefined entities and numeric character references. Everything else
// (DOCTYPE, CDATA sections, processing instructions after the declaration,
// unknown entities, mismatched tags, text after the root element) is rejected
// instead of being guessed at.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"

namespace pixelgate::storage::s3 {

struct XmlElement {
  std::string name;
  // The character data directly inside this element, entities decoded and
  // whitespace kept (an object name may begin or end with a space).
  std::string text;
  std::vector<XmlElement> children;  // attributes are checked, then dropped

  // Returns the first child named `child_name`, or nullptr.
  const XmlElement* child(std::string_view child_name) const;
  // Returns the text of the first child named `child_name`, or "" when absent.
  std::string child_text(std::string_view child_name) const;
};

// Parses a whole document and returns its root element. Nesting deeper than
// 64 elements is rejected.
core::Result<XmlElement> parse_xml(std::string_view document);

// One page of a ListObjectsV2 response.
struct ListPage {
  std::vector<std::string> names;  // the Contents/Key values, in response order
  bool truncated = false;
  std::string next_continuation_token;  // set when truncated
};

// Parses a <ListBucketResult>. A truncated page without a
// NextContinuationToken is an error, because the listing could not go on.
core::Result<ListPage> parse_list_objects_v2(std::string_view document);

// The Code and Message of an S3 error response.
struct ErrorBody {
  std::string code;     // e.g. "NoSuchKey", "SlowDown"
  std::string message;  // S3's sentence, e.g. "Please reduce your request rate."
};

// Returns the Code and Message of an <Error> body; nullopt when `document`
// is empty, not XML, or not an <Error> with a Code.
std::optional<ErrorBody> parse_error_body(std::string_view document);

}  // namespace pixelgate::storage::s3
