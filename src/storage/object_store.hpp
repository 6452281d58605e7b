// Where images live. Implementations: DiskStore (local folders) and S3Store
// (any S3-compatible bucket).
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.hpp"

namespace pixelgate::storage {

struct StoredObject {
  std::string data;           // the image bytes, complete
  std::string metadata_json;  // written with the image; "{}" when absent
};

// Keys are 64 lower-case hex characters, optionally followed by '.' and a
// variant name of letters, digits, '-' and '_' (at most 64). Anything else is
// rejected, so a key can never name a path outside the store.
bool is_valid_key(std::string_view key) noexcept;

// Thread-safety: implementations must allow concurrent calls from any thread.
// All calls block, so they belong on the worker pool, not the event loop.
class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  // Returns the object, nullopt when it does not exist, or an error when the
  // store failed (unreadable file, corrupt object).
  virtual core::Result<std::optional<StoredObject>> find(const std::string& key) = 0;

  // Stores the object atomically: a reader sees all of it or nothing. An
  // existing object under the same key is replaced.
  virtual core::Status put(const std::string& key, std::string_view data, std::string_view metadata_json) = 0;

  // Returns the metadata JSON stored with the image, without the bytes;
  // nullopt when the object does not exist.
  virtual core::Result<std::optional<std::string>> find_metadata(const std::string& key) = 0;

  // Removes the image and its metadata. Removing a missing object succeeds.
  virtual core::Status remove(const std::string& key) = 0;

  // Calls `visit` with every stored key, in no particular order, until it
  // returns false.
  virtual core::Status list(const std::function<bool(const std::string& key)>& visit) = 0;

  // The object's name inside the store (for S3, with the configured
  // prefix), which a CDN in front of the bucket serves the image under.
  virtual std::string object_name(const std::string& key) const { return key; }

  // A URL that lets anyone GET the image straight from the store until it
  // expires; nullopt for stores that cannot make one (disk).
  virtual std::optional<std::string> presigned_url(const std::string& key, std::chrono::seconds expires) {
    return std::nullopt;
  }

  // The local file holding the image's bytes, for stores that keep one
  // (disk); nullopt otherwise. Computes the path only: the file may be
  // missing.
  virtual std::optional<std::filesystem::path> local_file(const std::string& key) const { return std::nullopt; }

  // Returns an error when the store cannot take writes now (for /readyz).
  virtual core::Status check_writable() = 0;

  // A short description for logs, e.g. "disk:/var/lib/pixelgate".
  virtual std::string describe() const = 0;
};

}  // namespace pixelgate::storage
