#include "storage/open_file_cache.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include <spdlog/spdlog.h>

namespace pixelgate::storage {
namespace {

bool same_owner(const std::weak_ptr<const std::string>& a, const std::shared_ptr<const std::string>& b) {
  return !a.owner_before(b) && !b.owner_before(a);
}

// Reads the whole file and compares it with `expected`, in blocks.
bool contents_equal(int fd, const std::string& expected) {
  std::vector<char> block(64 * 1024);
  std::size_t offset = 0;
  for (;;) {
    const ssize_t n = ::pread(fd, block.data(), block.size(), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return offset == expected.size();
    const auto got = static_cast<std::size_t>(n);
    if (offset + got > expected.size() || std::memcmp(block.data(), expected.data() + offset, got) != 0) return false;
    offset += got;
  }
}

// Returns `requested`, capped at a quarter of the soft open-file limit so
// that connections keep the rest.
std::size_t descriptor_budget(std::size_t requested) {
  rlimit limit{};
  if (requested == 0 || ::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return requested;
  return std::min<std::size_t>(requested, static_cast<std::size_t>(limit.rlim_cur / 4));
}

}  // namespace

OpenFileCache::OpenFileCache(ObjectStore& store, std::size_t max_files)
    : store_(store), max_files_(descriptor_budget(max_files)) {}

std::shared_ptr<const core::OpenFile> OpenFileCache::find(const CachedImage& image, bool* should_open) {
  if (max_files_ == 0 || !image.bytes) return nullptr;
  std::lock_guard lock(mutex_);
  auto found = index_.find(image.key);
  if (found != index_.end() && same_owner(found->second->bytes, image.bytes)) {
    order_.splice(order_.begin(), order_, found->second);
    return found->second->file;
  }
  if (should_open) *should_open = opening_.insert(image.key).second;
  return nullptr;
}

void OpenFileCache::open(const CachedImage& image) {
  if (max_files_ == 0 || !image.bytes) return;
  auto file = open_checked(image);

  std::lock_guard lock(mutex_);
  opening_.erase(image.key);
  if (!file) return;
  auto found = index_.find(image.key);
  if (found != index_.end()) {
    order_.erase(found->second);
    index_.erase(found);
  }
  order_.push_front(Entry{image.key, image.bytes, std::move(file)});
  index_.emplace(image.key, order_.begin());
  while (order_.size() > max_files_) {
    index_.erase(order_.back().key);
    order_.pop_back();  // responses being sent keep their own reference
  }
}

void OpenFileCache::open_skipped(const CachedImage& image) {
  std::lock_guard lock(mutex_);
  opening_.erase(image.key);
}

std::size_t OpenFileCache::size() const {
  std::lock_guard lock(mutex_);
  return order_.size();
}

std::shared_ptr<const core::OpenFile> OpenFileCache::open_checked(const CachedImage& image) {
  const auto path = store_.local_file(image.key);
  if (!path) return nullptr;
  const int fd = ::open(path->c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    spdlog::debug("storage: opening {} for sendfile failed: {}", path->string(), std::strerror(errno));
    return nullptr;
  }
  auto file = std::make_shared<const core::OpenFile>(fd, image.bytes->size());
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode) ||
      static_cast<std::uint64_t>(info.st_size) != image.bytes->size() || !contents_equal(fd, *image.bytes)) {
    // The verified copy in memory is still served; only sendfile is skipped.
    spdlog::warn("storage: the file for image {} differs from the verified copy in memory; sending from memory",
                 image.key);
    return nullptr;
  }
  return file;
}

}  // namespace pixelgate::storage
