// Asynchronous jobs over HTTP: POST /v1/jobs, GET /v1/jobs/{id}, and the
// `Prefer: wait=N` handling (RFC 7240) of the synchronous image routes.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "admission/gate.hpp"
#include "config/config.hpp"
#include "core/error.hpp"
#include "generation/image_service.hpp"
#include "generation/resolver.hpp"
#include "http/message.hpp"
#include "jobs/job_runner.hpp"

namespace pixelgate::api {

// Returns the N of the first `wait=N` preference in Prefer header values,
// or nullopt when there is none or N is not a whole number of seconds.
std::optional<int> parse_prefer_wait(std::string_view header);

// Returns the key of an Idempotency-Key header, given as a structured-field
// string ("...") or as bare text: 1 to 255 printable ASCII characters.
core::Result<std::string> parse_idempotency_key(std::string_view header);

// Returns the job resolver for stored requests. Two request shapes exist:
//   {"route": "generations", "body": {...}}: a POST /v1/images/generations body
//   {"route": "image", "template": "", "params": [[name, value], ...],
//    "public_templates_only": false}: an image URL's decoded query
jobs::JobResolver make_job_resolver(const config::Config& config, const generation::Resolver& resolver,
                                    const admission::Gate& gate);

// Converts one image outcome into a job result.
core::Result<std::vector<jobs::JobImage>> to_job_images(const core::Result<generation::ImageOutcome>& outcome);

// The reply of a request that sent `Prefer: wait=N`. When its generation
// outlasts N seconds, a timer stores a running job for it and replies 202
// with the job, and the generation's outcome then completes the job instead
// of being sent. Both sides take the mutex, so exactly one of them replies.
class DeferredReply : public std::enable_shared_from_this<DeferredReply> {
 public:
  DeferredReply(jobs::JobRunner& runner, jobs::NewJob job, int wait_seconds, std::string status_base,
                http::Responder responder, std::string request_id);

  // Starts the N-second timer; call after the generation was requested.
  void arm();

  // Reports the generation's outcome. Returns true when the 202 was already
  // sent and the outcome went to the job; false when the caller must reply.
  bool hand_over(const core::Result<std::vector<jobs::JobImage>>& outcome);

 private:
  void on_deadline();

  jobs::JobRunner& runner_;
  const jobs::NewJob job_;
  const int wait_seconds_;
  const std::string status_base_;  // e.g. "http://127.0.0.1:8080"
  const http::Responder responder_;
  const std::string request_id_;

  std::mutex mutex_;
  bool finished_ = false;
  std::string job_id_;  // set once the 202 was sent
};

}  // namespace pixelgate::api
