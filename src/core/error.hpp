// One error vocabulary for the whole program, with retry semantics, and a
// Result<T> for the request path, where expected failures are values and not
// exceptions.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace pixelgate::core {

// Error codes follow Abseil's status vocabulary, with two additions that an
// image gateway needs (ContentRefused, BadGateway). Each comment gives the
// decision rule a caller applies.
enum class ErrorCode {
  InvalidArgument,     // the request is wrong; do not retry it unchanged (400)
  Unauthenticated,     // credentials missing or invalid (401)
  PermissionDenied,    // credentials valid but not allowed, or a bad signature (403)
  NotFound,            // no such route, template or object (404)
  MethodNotAllowed,    // the route exists, the method does not (405)
  PayloadTooLarge,     // a body or header over its configured limit (413)
  ResourceExhausted,   // a rate limit; retry after the given delay (429)
  BudgetExhausted,     // a spend budget is used up until its period ends (429)
  ContentRefused,      // the provider refused the prompt; retrying does not help (422)
  IdempotencyKeyReused,  // an Idempotency-Key sent again with a different request body (422)
  Unavailable,         // overloaded or not ready; retry after the given delay (503)
  ColdStart,           // a self-hosted pool is starting an instance; retry after the given delay (503)
  DeadlineExceeded,    // a timeout on our side or upstream (504)
  BadGateway,          // the backend failed or returned something unusable (502)
  Internal,            // a bug or an unexpected state (500)
};

std::string_view to_string(ErrorCode code) noexcept;

// Returns the HTTP status that represents `code` on every route.
int http_status(ErrorCode code) noexcept;

// Returns true for codes where the same call may succeed later without any
// change on the caller's side.
bool is_retryable(ErrorCode code) noexcept;

struct Error {
  ErrorCode code = ErrorCode::Internal;
  // A sentence for the client: what failed, on which value, what to do next.
  // It never contains a secret.
  std::string message;
  // The request field the error is about (for example "prompt"), or empty.
  std::string param;
  // Seconds after which a retry may succeed; 0 when unknown or not relevant.
  int retry_after_seconds = 0;
  // Headers the HTTP response carries with this error, e.g. RateLimit.
  std::vector<std::pair<std::string, std::string>> response_headers;

  static Error invalid(std::string message, std::string param = {}) {
    return {ErrorCode::InvalidArgument, std::move(message), std::move(param), 0};
  }
  static Error not_found(std::string message) {
    return {ErrorCode::NotFound, std::move(message), {}, 0};
  }
  static Error unavailable(std::string message, int retry_after_seconds) {
    return {ErrorCode::Unavailable, std::move(message), {}, retry_after_seconds};
  }
  static Error internal(std::string message) {
    return {ErrorCode::Internal, std::move(message), {}, 0};
  }
  static Error bad_gateway(std::string message) {
    return {ErrorCode::BadGateway, std::move(message), {}, 0};
  }
};

// Either a value or an Error. A small stand-in for std::expected, which GCC 12
// offers only under C++23.
template <typename T>
class Result {
 public:
  Result(T value) : storage_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : storage_(std::in_place_index<1>, std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const noexcept { return storage_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & { return std::get<0>(storage_); }
  const T& value() const& { return std::get<0>(storage_); }
  T&& value() && { return std::get<0>(std::move(storage_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const& { return std::get<1>(storage_); }
  Error&& error() && { return std::get<1>(std::move(storage_)); }

 private:
  std::variant<T, Error> storage_;
};

// Result<void>: success carries no value.
struct Ok {};
using Status = Result<Ok>;

}  // namespace pixelgate::core
