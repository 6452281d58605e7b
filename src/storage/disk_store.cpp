#include "storage/disk_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/hash.hpp"

namespace pixelgate::storage {
namespace fs = std::filesystem;

bool is_valid_key(std::string_view key) noexcept {
  if (key.size() < 64 || !core::is_sha256_hex(key.substr(0, 64))) return false;
  if (key.size() == 64) return true;
  if (key[64] != '.' || key.size() == 65 || key.size() > 64 + 1 + 64) return false;
  for (char c : key.substr(65)) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) return false;
  }
  return true;
}

namespace {

std::string errno_text() { return std::strerror(errno); }

// Writes all of `data` to `fd`, retrying short writes and EINTR.
bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t written = ::write(fd, data.data(), data.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(written));
  }
  return true;
}

core::Result<std::optional<std::string>> read_file(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::optional<std::string>{};
    return core::Error::internal("cannot open " + path.string() + ": " + errno_text());
  }
  std::string data;
  struct stat info {};
  if (::fstat(fd, &info) == 0 && info.st_size > 0) data.reserve(static_cast<std::size_t>(info.st_size));
  char buffer[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      const std::string reason = errno_text();
      ::close(fd);
      return core::Error::internal("cannot read " + path.string() + ": " + reason);
    }
    if (n == 0) break;
    data.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return std::optional<std::string>(std::move(data));
}

void fsync_directory(const fs::path& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

std::string unique_suffix() {
  static std::atomic<std::uint64_t> counter{0};
  return std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1)) + "-" +
         std::to_string(core::random_u64() % 1000000);
}

}  // namespace

core::Result<std::unique_ptr<DiskStore>> DiskStore::open(const fs::path& root) {
  std::error_code ec;
  fs::create_directories(root / "objects", ec);
  if (!ec) fs::create_directories(root / "tmp", ec);
  if (ec) return core::Error::internal("cannot create the storage folder " + root.string() + ": " + ec.message());

  // A write interrupted by a crash leaves a file in tmp/. It never reached
  // objects/, so removing it loses nothing that was ever served.
  std::size_t removed = 0;
  for (const auto& entry : fs::directory_iterator(root / "tmp", ec)) {
    std::error_code remove_error;
    if (fs::remove(entry.path(), remove_error)) ++removed;
  }
  if (removed > 0) spdlog::info("storage: removed {} unfinished files from {}", removed, (root / "tmp").string());

  return std::unique_ptr<DiskStore>(new DiskStore(fs::absolute(root).lexically_normal()));
}

fs::path DiskStore::object_path(const std::string& key) const {
  return root_ / "objects" / key.substr(0, 2) / key.substr(2, 2) / key;
}

std::optional<fs::path> DiskStore::local_file(const std::string& key) const {
  if (!is_valid_key(key)) return std::nullopt;
  return object_path(key);
}

core::Result<std::optional<StoredObject>> DiskStore::find(const std::string& key) {
  if (!is_valid_key(key)) return core::Error::invalid("invalid object key \"" + key + "\"");
  const fs::path path = object_path(key);

  auto data = read_file(path);
  if (!data) return std::move(data).error();
  if (!data->has_value()) return std::optional<StoredObject>{};

  auto metadata = read_file(fs::path(path.string() + ".json"));
  if (!metadata) return std::move(metadata).error();
  StoredObject object{std::move(**data), metadata->value_or("{}")};

  // The metadata carries the SHA-256 of the bytes: a mismatch means the file
  // was damaged outside pixelgate, and such an object is never served.
  const auto parsed = nlohmann::json::parse(object.metadata_json, nullptr, false);
  if (!parsed.is_discarded() && parsed.contains("sha256")) {
    const std::string expected = parsed.value("sha256", "");
    if (expected != core::sha256_hex(object.data)) {
      spdlog::error("storage: object {} does not match its recorded SHA-256; not serving it", key);
      return core::Error::internal("stored object " + key + " is corrupt");
    }
  }
  return std::optional<StoredObject>(std::move(object));
}

core::Status DiskStore::write_atomically(const fs::path& target, std::string_view data) {
  const fs::path temporary = root_ / "tmp" / (target.filename().string() + ".tmp-" + unique_suffix());
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return core::Error::internal("cannot create " + temporary.string() + ": " + errno_text());

  const bool written = write_all(fd, data) && ::fsync(fd) == 0;
  const std::string reason = written ? std::string{} : errno_text();
  ::close(fd);
  if (!written) {
    ::unlink(temporary.c_str());
    return core::Error::internal("cannot write " + temporary.string() + ": " + reason);
  }
  if (::rename(temporary.c_str(), target.c_str()) != 0) {
    const std::string rename_error = errno_text();
    ::unlink(temporary.c_str());
    return core::Error::internal("cannot rename " + temporary.string() + " to " + target.string() + ": " +
                                 rename_error);
  }
  return core::Ok{};
}

core::Status DiskStore::put(const std::string& key, std::string_view data, std::string_view metadata_json) {
  if (!is_valid_key(key)) return core::Error::invalid("invalid object key \"" + key + "\"");
  const fs::path path = object_path(key);
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (ec) return core::Error::internal("cannot create " + path.parent_path().string() + ": " + ec.message());

  // The metadata goes first and the image last: the image file's rename is the
  // commit point, and find() treats an image without metadata as complete.
  if (auto status = write_atomically(fs::path(path.string() + ".json"), metadata_json); !status) return status;
  if (auto status = write_atomically(path, data); !status) return status;
  fsync_directory(path.parent_path());
  return core::Ok{};
}

core::Result<std::optional<std::string>> DiskStore::find_metadata(const std::string& key) {
  if (!is_valid_key(key)) return core::Error::invalid("invalid object key \"" + key + "\"");
  const fs::path path = object_path(key);
  auto metadata = read_file(fs::path(path.string() + ".json"));
  if (!metadata) return std::move(metadata).error();
  if (metadata->has_value()) return metadata;

  // An image stored without a sidecar still exists; its metadata is empty.
  std::error_code ec;
  if (fs::exists(path, ec)) return std::optional<std::string>("{}");
  if (ec) return core::Error::internal("cannot check " + path.string() + ": " + ec.message());
  return std::optional<std::string>{};
}

core::Status DiskStore::remove(const std::string& key) {
  if (!is_valid_key(key)) return core::Error::invalid("invalid object key \"" + key + "\"");
  const fs::path path = object_path(key);
  // The image goes first: without it, a leftover sidecar is never read.
  for (const fs::path& target : {path, fs::path(path.string() + ".json")}) {
    std::error_code ec;
    fs::remove(target, ec);
    if (ec) {
      spdlog::error("storage: removing {} failed: {}", target.string(), ec.message());
      return core::Error::internal("cannot remove " + target.string() + ": " + ec.message());
    }
  }
  fsync_directory(path.parent_path());
  return core::Ok{};
}

core::Status DiskStore::list(const std::function<bool(const std::string& key)>& visit) {
  std::error_code ec;
  fs::recursive_directory_iterator it(root_ / "objects", fs::directory_options::skip_permission_denied, ec);
  for (const fs::recursive_directory_iterator end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const std::string name = it->path().filename().string();
    if (!is_valid_key(name)) continue;
    // The sidecar of a 64-hex key, "<key>.json", is itself a valid key with
    // the variant "json", so it is recognized by the image next to it.
    // NOTE: a variant named "json" would share its file with that sidecar.
    if (name.size() == 64 + 5 && name.ends_with(".json") && fs::exists(it->path().parent_path() / name.substr(0, 64))) {
      continue;
    }
    if (!visit(name)) return core::Ok{};
  }
  if (ec) {
    spdlog::error("storage: listing {} failed: {}", (root_ / "objects").string(), ec.message());
    return core::Error::internal("cannot list " + (root_ / "objects").string() + ": " + ec.message());
  }
  return core::Ok{};
}

core::Status DiskStore::check_writable() {
  const fs::path probe = root_ / "tmp" / ("readyz-" + unique_suffix());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return core::Error::unavailable("storage folder " + root_.string() + " is not writable: " + errno_text(), 5);
  const bool ok = write_all(fd, "ok");
  ::close(fd);
  ::unlink(probe.c_str());
  if (!ok) return core::Error::unavailable("storage folder " + root_.string() + " is not writable: " + errno_text(), 5);
  return core::Ok{};
}

std::string DiskStore::describe() const { return "disk:" + root_.string(); }

}  // namespace pixelgate::storage
