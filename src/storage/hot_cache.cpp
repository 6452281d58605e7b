#include "storage/hot_cache.hpp"

namespace pixelgate::storage {

HotCache::HotCache(std::size_t capacity_bytes, std::size_t max_object_bytes)
    : capacity_bytes_(capacity_bytes), max_object_bytes_(max_object_bytes) {}

std::shared_ptr<const CachedImage> HotCache::find(const std::string& key) {
  std::lock_guard lock(mutex_);
  auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  order_.splice(order_.begin(), order_, it->second);
  return *it->second;
}

void HotCache::insert(std::shared_ptr<const CachedImage> image) {
  const std::size_t bytes = image->bytes ? image->bytes->size() : 0;
  if (bytes > max_object_bytes_ || bytes > capacity_bytes_) return;

  std::lock_guard lock(mutex_);
  if (auto it = index_.find(image->key); it != index_.end()) {
    size_bytes_ -= (*it->second)->bytes ? (*it->second)->bytes->size() : 0;
    order_.erase(it->second);
    index_.erase(it);
  }
  while (!order_.empty() && size_bytes_ + bytes > capacity_bytes_) {
    const Entry& oldest = order_.back();
    size_bytes_ -= oldest->bytes ? oldest->bytes->size() : 0;
    index_.erase(oldest->key);
    order_.pop_back();
  }
  order_.push_front(image);
  index_.emplace(image->key, order_.begin());
  size_bytes_ += bytes;
}

std::size_t HotCache::size_bytes() const {
  std::lock_guard lock(mutex_);
  return size_bytes_;
}

std::size_t HotCache::entry_count() const {
  std::lock_guard lock(mutex_);
  return index_.size();
}

}  // namespace pixelgate::storage
