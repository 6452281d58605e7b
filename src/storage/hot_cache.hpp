// A bounded in-memory LRU cache of images in front of the object store,
// measured in bytes.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace pixelgate::storage {

// What the delivery layer needs to answer a request without touching disk.
struct CachedImage {
  std::string key;
  std::shared_ptr<const std::string> bytes;
  std::string content_type;
  std::string metadata_json;
  std::string digest_header;  // "sha-256=:<base64>:" for the Repr-Digest header
  bool placeholder = false;   // drawn by the placeholder backend, not by a model
};

// Thread-safety: all members lock one mutex; lookups are O(1).
class HotCache {
 public:
  HotCache(std::size_t capacity_bytes, std::size_t max_object_bytes);

  std::shared_ptr<const CachedImage> find(const std::string& key);

  // Inserts or replaces; evicts the least recently used entries to fit. An
  // object larger than max_object_bytes is not kept.
  void insert(std::shared_ptr<const CachedImage> image);

  std::size_t size_bytes() const;
  std::size_t entry_count() const;

 private:
  using Entry = std::shared_ptr<const CachedImage>;
  const std::size_t capacity_bytes_;
  const std::size_t max_object_bytes_;
  mutable std::mutex mutex_;
  std::list<Entry> order_;  // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
  std::size_t size_bytes_ = 0;
};

}  // namespace pixelgate::storage
