// A bounded cache of open image files, so cache hits can be sent with
// sendfile(2) from the page cache instead of being copied out of memory.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "core/open_file.hpp"
#include "storage/hot_cache.hpp"
#include "storage/object_store.hpp"

namespace pixelgate::storage {

// Thread-safety: all members lock one mutex; a lookup is O(1). Opening and
// checking a file happens outside the lock.
class OpenFileCache {
 public:
  // Keeps at most `max_files` open, and at most a quarter of the process's
  // descriptor limit, so connections keep the rest. 0 disables the cache.
  OpenFileCache(ObjectStore& store, std::size_t max_files);

  // Returns the open file for `image` if one is cached, without touching
  // the disk. On a miss, sets `*should_open` to true for the first caller only.
  // That caller must then call open() on a thread that may block.
  std::shared_ptr<const core::OpenFile> find(const CachedImage& image, bool* should_open = nullptr);

  // Opens the store's local file for `image` and caches it when its contents
  // are byte for byte `image.bytes`. Blocks on the disk. A file is compared
  // once, when it is opened. Image files are written by rename and never
  // changed in place, so the open descriptor keeps naming the bytes that
  // were compared.
  void open(const CachedImage& image);

  // Tells the cache that the open() requested by find() will not happen
  // (the worker queue was full), so a later find() requests it again.
  void open_skipped(const CachedImage& image);

  std::size_t size() const;
  std::size_t capacity() const noexcept { return max_files_; }

 private:
  struct Entry {
    std::string key;
    std::weak_ptr<const std::string> bytes;  // the copy it was compared with
    std::shared_ptr<const core::OpenFile> file;
  };

  std::shared_ptr<const core::OpenFile> open_checked(const CachedImage& image);

  ObjectStore& store_;
  const std::size_t max_files_;
  mutable std::mutex mutex_;
  std::list<Entry> order_;  // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
  std::unordered_set<std::string> opening_;  // keys handed to open() by find()
};

}  // namespace pixelgate::storage
