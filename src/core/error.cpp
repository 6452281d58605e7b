#include "core/error.hpp"

namespace pixelgate::core {

std::string_view to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::InvalidArgument: return "invalid_argument";
    case ErrorCode::Unauthenticated: return "unauthenticated";
    case ErrorCode::PermissionDenied: return "permission_denied";
    case ErrorCode::NotFound: return "not_found";
    case ErrorCode::MethodNotAllowed: return "method_not_allowed";
    case ErrorCode::PayloadTooLarge: return "payload_too_large";
    case ErrorCode::ResourceExhausted: return "rate_limited";
    case ErrorCode::BudgetExhausted: return "budget_exhausted";
    case ErrorCode::ContentRefused: return "content_refused";
    case ErrorCode::IdempotencyKeyReused: return "idempotency_key_reused";
    case ErrorCode::Unavailable: return "unavailable";
    case ErrorCode::ColdStart: return "cold_start";
    case ErrorCode::DeadlineExceeded: return "timed_out";
    case ErrorCode::BadGateway: return "backend_failed";
    case ErrorCode::Internal: return "internal";
  }
  return "internal";
}

int http_status(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::InvalidArgument: return 400;
    case ErrorCode::Unauthenticated: return 401;
    case ErrorCode::PermissionDenied: return 403;
    case ErrorCode::NotFound: return 404;
    case ErrorCode::MethodNotAllowed: return 405;
    case ErrorCode::PayloadTooLarge: return 413;
    case ErrorCode::ContentRefused: return 422;
    case ErrorCode::IdempotencyKeyReused: return 422;
    case ErrorCode::ResourceExhausted: return 429;
    case ErrorCode::BudgetExhausted: return 429;
    case ErrorCode::Internal: return 500;
    case ErrorCode::BadGateway: return 502;
    case ErrorCode::Unavailable: return 503;
    case ErrorCode::ColdStart: return 503;
    case ErrorCode::DeadlineExceeded: return 504;
  }
  return 500;
}

bool is_retryable(ErrorCode code) noexcept {
  return code == ErrorCode::Unavailable || code == ErrorCode::ColdStart || code == ErrorCode::ResourceExhausted ||
         code == ErrorCode::DeadlineExceeded || code == ErrorCode::BadGateway;
}

}  // namespace pixelgate::core
