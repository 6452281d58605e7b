// Content-addressed images on local disk.
//
// Layout under the root:
//   objects/ab/cd/<key>        the image bytes
//   objects/ab/cd/<key>.json   its metadata, including the SHA-256 of the bytes
//   tmp/                       files being written; emptied at start-up
// where "ab" and "cd" are the first two pairs of hex digits of the key.
#pragma once

#include <filesystem>
#include <string>

#include "storage/object_store.hpp"

namespace pixelgate::storage {

class DiskStore final : public ObjectStore {
 public:
  // Creates the folders if needed and removes what a crash left in tmp/.
  static core::Result<std::unique_ptr<DiskStore>> open(const std::filesystem::path& root);

  core::Result<std::optional<StoredObject>> find(const std::string& key) override;
  core::Status put(const std::string& key, std::string_view data, std::string_view metadata_json) override;
  core::Result<std::optional<std::string>> find_metadata(const std::string& key) override;
  core::Status remove(const std::string& key) override;
  // Walks objects/ and visits the image files whose names are valid keys.
  core::Status list(const std::function<bool(const std::string& key)>& visit) override;
  core::Status check_writable() override;
  std::string describe() const override;
  std::optional<std::filesystem::path> local_file(const std::string& key) const override;

  std::filesystem::path object_path(const std::string& key) const;

 private:
  explicit DiskStore(std::filesystem::path root) : root_(std::move(root)) {}
  core::Status write_atomically(const std::filesystem::path& target, std::string_view data);

  std::filesystem::path root_;
};

}  // namespace pixelgate::storage
