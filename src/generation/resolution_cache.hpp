// Remembers how recent image URLs resolved, so a repeated URL skips query
// parsing, template rendering and the two SHA-256 computations of its key.
// Resolution depends only on the URL and the configuration, which does not
// change while the process runs, so an entry never goes stale.
#pragma once

#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "generation/resolver.hpp"

namespace pixelgate::generation {

// A bounded LRU map from a request's route and raw query to its resolution.
// Random-seed requests must not be stored. Thread-safe.
class ResolutionCache {
 public:
  explicit ResolutionCache(std::size_t capacity) : capacity_(capacity) {}

  std::shared_ptr<const ResolvedRequest> find(const std::string& id) {
    std::lock_guard lock(mutex_);
    auto it = index_.find(id);
    if (it == index_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second);
    return it->second->second;
  }

  void insert(const std::string& id, std::shared_ptr<const ResolvedRequest> resolved) {
    if (capacity_ == 0) return;
    std::lock_guard lock(mutex_);
    if (index_.count(id)) return;
    if (index_.size() >= capacity_) {
      index_.erase(order_.back().first);
      order_.pop_back();
    }
    order_.emplace_front(id, std::move(resolved));
    index_[id] = order_.begin();
  }

 private:
  using Entry = std::pair<std::string, std::shared_ptr<const ResolvedRequest>>;
  const std::size_t capacity_;
  std::mutex mutex_;
  std::list<Entry> order_;
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
};

}  // namespace pixelgate::generation
