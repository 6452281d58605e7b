// An open, read-only file descriptor that closes itself. Shared between a
// cache of open files and the responses that send from them.
#pragma once

#include <cstdint>

namespace pixelgate::core {

class OpenFile {
 public:
  // Takes ownership of `fd`.
  OpenFile(int fd, std::uint64_t size) noexcept : fd_(fd), size_(size) {}
  ~OpenFile();
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;

  int fd() const noexcept { return fd_; }
  std::uint64_t size() const noexcept { return size_; }

 private:
  int fd_;
  std::uint64_t size_;
};

}  // namespace pixelgate::core
