#include "storage/s3_xml.hpp"

#include <cstdint>

#include "core/text.hpp"

namespace pixelgate::storage::s3 {
namespace {

constexpr int kMaxDepth = 64;

bool is_name_start(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == ':';
}

bool is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.'; }

bool is_whitespace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// XML 1.0 "Char": the code points a document may contain at all.
bool is_xml_char(std::uint32_t code_point) {
  return code_point == 0x9 || code_point == 0xA || code_point == 0xD || (code_point >= 0x20 && code_point <= 0xD7FF) ||
         (code_point >= 0xE000 && code_point <= 0xFFFD) || (code_point >= 0x10000 && code_point <= 0x10FFFF);
}

void append_utf8(std::string& out, std::uint32_t code_point) {
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
}

// A recursive-descent parser over one document. Each parse_* method returns
// false after recording the first error with its byte offset.
class Parser {
 public:
  explicit Parser(std::string_view input) : input_(input) {}

  core::Result<XmlElement> parse_document() {
    XmlElement root;
    const bool parsed = parse_prolog() && skip_misc() && expect_element_start() && parse_element(root, 1) &&
                        skip_misc() && expect_end_of_input();
    if (!parsed) return core::Error::bad_gateway("invalid XML from the S3 service: " + error_);
    return root;
  }

 private:
  bool fail(const std::string& message) {
    if (error_.empty()) error_ = message + " at byte " + std::to_string(pos_);
    return false;
  }

  bool at_end() const { return pos_ >= input_.size(); }
  bool starts_with(std::string_view text) const { return input_.substr(pos_).substr(0, text.size()) == text; }

  void skip_whitespace() {
    while (!at_end() && is_whitespace(input_[pos_])) ++pos_;
  }

  // The XML declaration, when present, must come first.
  bool parse_prolog() {
    if (!starts_with("<?xml") || pos_ + 5 >= input_.size() || !is_whitespace(input_[pos_ + 5])) return true;
    const std::size_t end = input_.find("?>", pos_);
    if (end == std::string_view::npos) return fail("unterminated XML declaration");
    pos_ = end + 2;
    return true;
  }

  // Skips whitespace and comments between elements.
  bool skip_misc() {
    for (;;) {
      skip_whitespace();
      if (!starts_with("<!--")) return true;
      if (!parse_comment()) return false;
    }
  }

  bool parse_comment() {
    const std::size_t end = input_.find("-->", pos_ + 4);
    if (end == std::string_view::npos) return fail("unterminated comment");
    pos_ = end + 3;
    return true;
  }

  bool expect_element_start() {
    if (at_end() || input_[pos_] != '<') return fail("expected an element");
    if (starts_with("<!DOCTYPE")) return fail("DOCTYPE declarations are not supported");
    if (starts_with("<?")) return fail("processing instructions are not supported");
    return true;
  }

  bool expect_end_of_input() {
    if (!at_end()) return fail("unexpected content after the root element");
    return true;
  }

  bool parse_name(std::string& out) {
    if (at_end() || !is_name_start(input_[pos_])) return fail("expected a name");
    const std::size_t start = pos_;
    while (!at_end() && is_name_char(input_[pos_])) ++pos_;
    out.assign(input_.substr(start, pos_ - start));
    return true;
  }

  // Decodes the reference that starts at '&' and appends its character.
  bool parse_reference(std::string& out) {
    const std::size_t semicolon = input_.find(';', pos_);
    if (semicolon == std::string_view::npos || semicolon - pos_ > 12) return fail("unterminated entity reference");
    const std::string_view name = input_.substr(pos_ + 1, semicolon - pos_ - 1);
    if (name == "lt") {
      out += '<';
    } else if (name == "gt") {
      out += '>';
    } else if (name == "amp") {
      out += '&';
    } else if (name == "quot") {
      out += '"';
    } else if (name == "apos") {
      out += '\'';
    } else if (name.size() >= 2 && name[0] == '#') {
      const bool hex = name[1] == 'x';
      const std::string_view digits = name.substr(hex ? 2 : 1);
      if (digits.empty()) return fail("empty character reference");
      std::uint32_t code_point = 0;
      for (char c : digits) {
        int digit = -1;
        if (c >= '0' && c <= '9') digit = c - '0';
        if (hex && c >= 'a' && c <= 'f') digit = c - 'a' + 10;
        if (hex && c >= 'A' && c <= 'F') digit = c - 'A' + 10;
        if (digit < 0) return fail("invalid character reference &" + std::string(name) + ";");
        code_point = code_point * (hex ? 16 : 10) + static_cast<std::uint32_t>(digit);
        if (code_point > 0x10FFFF) return fail("character reference out of range");
      }
      if (!is_xml_char(code_point)) return fail("character reference to a code point XML does not allow");
      append_utf8(out, code_point);
    } else {
      return fail("unknown entity &" + std::string(name) + ";");
    }
    pos_ = semicolon + 1;
    return true;
  }

  // Appends one character of character data, normalizing line ends as XML
  // does ("\r\n" and a lone "\r" become "\n").
  bool parse_character(std::string& out) {
    const char c = input_[pos_];
    if (static_cast<unsigned char>(c) < 0x20 && !is_whitespace(c)) return fail("control character in text");
    if (c == '\r') {
      out += '\n';
      ++pos_;
      if (!at_end() && input_[pos_] == '\n') ++pos_;
      return true;
    }
    if (c == ']' && starts_with("]]>")) return fail("\"]]>\" is not allowed in text");
    out += c;
    ++pos_;
    return true;
  }

  bool parse_attribute_value() {
    if (at_end() || (input_[pos_] != '"' && input_[pos_] != '\'')) return fail("expected a quoted attribute value");
    const char quote = input_[pos_++];
    std::string ignored;
    while (!at_end() && input_[pos_] != quote) {
      if (input_[pos_] == '<') return fail("'<' in an attribute value");
      const bool parsed = input_[pos_] == '&' ? parse_reference(ignored) : parse_character(ignored);
      if (!parsed) return false;
    }
    if (at_end()) return fail("unterminated attribute value");
    ++pos_;
    return true;
  }

  // Parses attributes up to and including '>' or "/>".
  bool parse_attributes(bool& self_closing) {
    for (;;) {
      const std::size_t before = pos_;
      skip_whitespace();
      if (at_end()) return fail("unterminated start tag");
      if (input_[pos_] == '>') {
        ++pos_;
        self_closing = false;
        return true;
      }
      if (starts_with("/>")) {
        pos_ += 2;
        self_closing = true;
        return true;
      }
      if (pos_ == before) return fail("expected whitespace before an attribute");
      std::string name;
      if (!parse_name(name)) return false;
      skip_whitespace();
      if (at_end() || input_[pos_] != '=') return fail("expected '=' after attribute " + name);
      ++pos_;
      skip_whitespace();
      if (!parse_attribute_value()) return false;
    }
  }

  // Parses one element, starting at its '<'.
  bool parse_element(XmlElement& element, int depth) {
    ++pos_;  // '<'
    if (!parse_name(element.name)) return false;
    bool self_closing = false;
    if (!parse_attributes(self_closing)) return false;
    if (self_closing) return true;

    for (;;) {
      if (at_end()) return fail("element <" + element.name + "> is not closed");
      if (input_[pos_] == '&') {
        if (!parse_reference(element.text)) return false;
      } else if (input_[pos_] != '<') {
        if (!parse_character(element.text)) return false;
      } else if (starts_with("</")) {
        pos_ += 2;
        std::string name;
        if (!parse_name(name)) return false;
        if (name != element.name) return fail("</" + name + "> closes <" + element.name + ">");
        skip_whitespace();
        if (at_end() || input_[pos_] != '>') return fail("expected '>' after </" + name);
        ++pos_;
        return true;
      } else if (starts_with("<!--")) {
        if (!parse_comment()) return false;
      } else if (starts_with("<![CDATA[")) {
        return fail("CDATA sections are not supported");
      } else if (starts_with("<!") || starts_with("<?")) {
        return fail("declarations and processing instructions are not supported inside elements");
      } else {
        if (depth >= kMaxDepth) return fail("elements nested deeper than " + std::to_string(kMaxDepth));
        XmlElement child;
        if (!parse_element(child, depth + 1)) return false;
        element.children.push_back(std::move(child));
      }
    }
  }

  std::string_view input_;
  std::size_t pos_ = 0;
  std::string error_;
};

}  // namespace

const XmlElement* XmlElement::child(std::string_view child_name) const {
  for (const auto& element : children) {
    if (element.name == child_name) return &element;
  }
  return nullptr;
}

std::string XmlElement::child_text(std::string_view child_name) const {
  const XmlElement* element = child(child_name);
  return element ? element->text : std::string{};
}

core::Result<XmlElement> parse_xml(std::string_view document) {
  if (!core::is_valid_utf8(document)) return core::Error::bad_gateway("invalid XML from the S3 service: not UTF-8");
  return Parser(document).parse_document();
}

core::Result<ListPage> parse_list_objects_v2(std::string_view document) {
  auto root = parse_xml(document);
  if (!root) return std::move(root).error();
  if (root->name != "ListBucketResult") {
    return core::Error::bad_gateway("unexpected S3 list response: the root element is <" + root->name +
                                    ">, expected <ListBucketResult>");
  }

  ListPage page;
  const std::string truncated = root->child_text("IsTruncated");
  if (truncated != "true" && truncated != "false" && !truncated.empty()) {
    return core::Error::bad_gateway("unexpected S3 list response: IsTruncated is \"" + truncated + "\"");
  }
  page.truncated = truncated == "true";
  page.next_continuation_token = root->child_text("NextContinuationToken");
  if (page.truncated && page.next_continuation_token.empty()) {
    return core::Error::bad_gateway("unexpected S3 list response: truncated without a NextContinuationToken");
  }

  for (const auto& element : root->children) {
    if (element.name != "Contents") continue;
    const XmlElement* key = element.child("Key");
    if (key == nullptr) return core::Error::bad_gateway("unexpected S3 list response: <Contents> without <Key>");
    page.names.push_back(key->text);
  }
  return page;
}

std::optional<ErrorBody> parse_error_body(std::string_view document) {
  if (document.empty()) return std::nullopt;
  auto root = parse_xml(document);
  if (!root || root->name != "Error") return std::nullopt;
  ErrorBody body{root->child_text("Code"), root->child_text("Message")};
  if (body.code.empty()) return std::nullopt;
  return body;
}

}  // namespace pixelgate::storage::s3
