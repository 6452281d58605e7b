// PoolBackend's readiness checks, on one prober thread per starting instance.
#include <thread>

#include <spdlog/spdlog.h>

#include "backends/http_client.hpp"
#include "core/hash.hpp"
#include "pool/pool_internal.hpp"
#include "pool/worker_pool_backend.hpp"

namespace pixelgate::pool {

using namespace detail;

void PoolBackend::probe_until_ready(Instance* instance) {
  Clock::time_point deadline;
  {
    std::lock_guard lock(mutex_);
    deadline = instance->start_deadline;
  }
  const auto interval = milliseconds(pool_.ready_poll_ms);
  bool ready = false;
  int probes = 0;
  std::string last_error = "no probe was sent";
  auto cancelled = [this, instance] {
    std::lock_guard lock(mutex_);
    return instance->cancel_probe || instance->state != InstanceState::Starting || closing_;
  };

  while (!cancelled() && Clock::now() < deadline) {
    ++probes;
    if (probe_once(*instance, deadline, last_error)) {
      ready = true;
      break;
    }
    const auto next = std::min(deadline, Clock::now() + interval);
    while (Clock::now() < next && !cancelled()) std::this_thread::sleep_for(std::min<Clock::duration>(kProbeSleepSlice, next - Clock::now()));
  }

  std::lock_guard lock(mutex_);
  instance->probe_finished = true;
  const auto now = Clock::now();
  if (ready && instance->state == InstanceState::Starting && !closing_) {
    instance->state = InstanceState::Ready;
    instance->ready_at = now;
    instance->last_used = now;
    cold_starts_.record(std::chrono::duration_cast<milliseconds>(now - instance->requested_at));
    spdlog::info("pool {}: {} is ready: {} ms after it was requested, {} ms after spawn, {} readiness probe(s)",
                 config_.name, describe(*instance), to_ms(now - instance->requested_at),
                 to_ms(now - instance->spawned_at), probes);
    slot_freed_.notify_all();
  } else if (!ready && instance->state != InstanceState::Exited && !closing_) {
    spdlog::warn("pool {}: {} did not pass its readiness check after {} probe(s); the last one: {}", config_.name,
                 describe(*instance), probes, last_error);
  }
  wake_manager();
}

bool PoolBackend::probe_once(const Instance& instance, Clock::time_point deadline, std::string& last_error) {
  const long left = to_ms(deadline - Clock::now());
  if (left <= 0) return false;

  if (pool_.ready_canary) {
    // A small generation proves the model is loaded, not only the HTTP server.
    core::GenerationSpec spec;
    spec.backend = config_.name;
    spec.backend_type = config_.type;
    spec.model = config_.model;
    spec.prompt = "pixelgate readiness check";
    spec.width = 64;
    spec.height = 64;
    spec.steps = 1;
    spec.seed = 1;
    if (!instance.adapter->validate(spec)) spec.width = spec.height = 512;
    backends::GenerateContext context{"pool-" + config_.name + "-canary-" + std::to_string(instance.id), deadline};
    auto image = instance.adapter->generate(spec, context);
    if (!image) {
      last_error = "canary generation failed: " + image.error().message;
      spdlog::debug("pool {}: instance {}: {}", config_.name, instance.id, last_error);
      return false;
    }
    return true;
  }

  backends::OutboundRequest request;
  request.url = "http://127.0.0.1:" + std::to_string(instance.port) + pool_.ready_path;
  request.connect_timeout_ms = static_cast<int>(std::min<long>(kProbeConnectTimeoutMs, left));
  request.timeout_ms = static_cast<int>(std::min<long>(kProbeTimeoutMs, left));
  if (!config_.api_key.empty()) {
    // The a1111 adapter logs in with HTTP basic authentication (--api-auth);
    // the others send a bearer token for a proxy in front of the server.
    request.headers.push_back(config_.type == "a1111"
                                  ? "Authorization: Basic " + core::base64_encode(config_.api_key.value)
                                  : "Authorization: Bearer " + config_.api_key.value);
  }
  auto response = backends::perform(request);
  if (!response) {
    last_error = "GET " + pool_.ready_path + " failed: " + response.error().message;
  } else if (response->status != pool_.ready_status) {
    last_error = "GET " + pool_.ready_path + " returned HTTP " + std::to_string(response->status) + " instead of " +
                 std::to_string(pool_.ready_status);
  } else {
    return true;
  }
  spdlog::debug("pool {}: instance {}: readiness probe: {}", config_.name, instance.id, last_error);
  return false;
}


}  // namespace pixelgate::pool
