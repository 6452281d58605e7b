#include "core/open_file.hpp"

#include <unistd.h>

namespace pixelgate::core {

OpenFile::~OpenFile() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace pixelgate::core
