// libFuzzer target for request parsing and signature verification. The input
// is a request target ("PATH?QUERY"). Checked properties:
//  - nothing crashes, hangs or reads out of bounds (with sanitizers);
//  - a URL that sign_url() produced always verifies;
//  - a verified request never keeps sig, kid or exp among its parameters.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "admission/url_signing.hpp"
#include "api/image_query.hpp"
#include "core/clock.hpp"

namespace {

using namespace pixelgate;

const std::map<std::string, admission::SigningKey>& keys() {
  static const std::map<std::string, admission::SigningKey> kKeys = {
      {"k1", {"k1", "fuzz-secret-0123456789abcdef"}}};
  return kKeys;
}

void check(bool condition) {
  if (!condition) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::size_t question = input.find('?');
  const std::string_view path = input.substr(0, question);
  const std::string_view query = question == std::string_view::npos ? std::string_view{} : input.substr(question + 1);
  static const core::ManualClock clock(1'700'000'000);

  (void)core::parse_query(query);
  (void)api::parse_image_query(query, true);
  (void)admission::canonicalize(path, query);

  auto verified = admission::verify_signed_request(path, query, keys(), clock);
  if (verified) {
    for (const auto& [name, value] : verified->params) check(name != "sig" && name != "kid" && name != "exp");
  }

  auto signed_url = admission::sign_url(input, keys().at("k1"), 1'800'000'000);
  if (signed_url) {
    const std::string& url = *signed_url;
    const std::size_t mark = url.find('?');
    check(mark != std::string::npos);
    auto again = admission::verify_signed_request(std::string_view(url).substr(0, mark),
                                                  std::string_view(url).substr(mark + 1), keys(), clock);
    check(again.ok());
  }
  return 0;
}
