// The cache of open image files behind sendfile responses, on a real disk
// store in a temporary folder.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/hash.hpp"
#include "storage/disk_store.hpp"
#include "storage/open_file_cache.hpp"

using namespace pixelgate;
namespace fs = std::filesystem;

namespace {

class OpenFileCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("pixelgate-open-files-" + std::to_string(core::random_u64()));
    auto opened = storage::DiskStore::open(root_);
    ASSERT_TRUE(opened.ok());
    store_ = std::move(opened).value();
  }
  void TearDown() override { fs::remove_all(root_); }

  // Stores `data` and returns the hot-cache entry for it.
  std::shared_ptr<storage::CachedImage> put(const std::string& data) {
    auto image = std::make_shared<storage::CachedImage>();
    image->key = core::sha256_hex(data);
    image->bytes = std::make_shared<const std::string>(data);
    EXPECT_TRUE(store_->put(image->key, data, nlohmann::json{{"sha256", image->key}}.dump()).ok());
    return image;
  }

  static std::string read_all(int fd) {
    std::string out;
    char block[4096];
    for (off_t offset = 0;;) {
      const ssize_t n = ::pread(fd, block, sizeof(block), offset);
      if (n <= 0) return out;
      out.append(block, static_cast<std::size_t>(n));
      offset += n;
    }
  }

  fs::path root_;
  std::unique_ptr<storage::DiskStore> store_;
};

TEST_F(OpenFileCacheTest, FindRequestsOneOpen) {
  storage::OpenFileCache cache(*store_, 10);
  auto image = put("image bytes one");
  bool should_open = false;
  EXPECT_EQ(cache.find(*image, &should_open), nullptr);
  EXPECT_TRUE(should_open);
  bool again = false;
  EXPECT_EQ(cache.find(*image, &again), nullptr);
  EXPECT_FALSE(again) << "a second caller must not open the same file again";

  cache.open(*image);
  auto file = cache.find(*image);
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(file->size(), image->bytes->size());
  EXPECT_EQ(read_all(file->fd()), *image->bytes);
}

TEST_F(OpenFileCacheTest, FileThatDiffersFromMemoryIsNotUsed) {
  storage::OpenFileCache cache(*store_, 10);
  auto image = put("the verified bytes");
  // Same length, different content on disk.
  std::ofstream(*store_->local_file(image->key), std::ios::binary | std::ios::trunc) << "the VERIFIED bytes";
  cache.open(*image);
  EXPECT_EQ(cache.find(*image), nullptr);
  EXPECT_EQ(cache.size(), 0u);
}

TEST_F(OpenFileCacheTest, NewCopyInMemoryIsComparedAgain) {
  storage::OpenFileCache cache(*store_, 10);
  auto image = put("bytes kept in memory");
  cache.open(*image);
  ASSERT_NE(cache.find(*image), nullptr);
  // The hot cache loaded the image again: a new copy the file was not
  // compared with.
  auto reloaded = std::make_shared<storage::CachedImage>(*image);
  reloaded->bytes = std::make_shared<const std::string>(*image->bytes);
  bool should_open = false;
  EXPECT_EQ(cache.find(*reloaded, &should_open), nullptr);
  EXPECT_TRUE(should_open);
}

TEST_F(OpenFileCacheTest, EvictsLeastRecentlyUsed) {
  storage::OpenFileCache cache(*store_, 2);
  auto a = put("image a");
  auto b = put("image b");
  auto c = put("image c");
  cache.open(*a);
  cache.open(*b);
  ASSERT_NE(cache.find(*a), nullptr);  // a is now the most recently used
  cache.open(*c);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_NE(cache.find(*a), nullptr);
  EXPECT_EQ(cache.find(*b), nullptr);
  EXPECT_NE(cache.find(*c), nullptr);
}

TEST_F(OpenFileCacheTest, ZeroDisablesAndMissingFilesAreSkipped) {
  storage::OpenFileCache disabled(*store_, 0);
  auto image = put("some image");
  disabled.open(*image);
  bool should_open = false;
  EXPECT_EQ(disabled.find(*image, &should_open), nullptr);
  EXPECT_FALSE(should_open);

  storage::OpenFileCache cache(*store_, 10);
  ASSERT_TRUE(store_->remove(image->key).ok());
  cache.open(*image);
  EXPECT_EQ(cache.find(*image), nullptr);
}

}  // namespace
