#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "core/hash.hpp"
#include "storage/disk_store.hpp"
#include "storage/hot_cache.hpp"

using namespace pixelgate;
namespace fs = std::filesystem;

namespace {

class DiskStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("pixelgate-store-" + std::to_string(core::random_u64()));
  }
  void TearDown() override { fs::remove_all(root_); }

  std::unique_ptr<storage::DiskStore> open() {
    auto store = storage::DiskStore::open(root_);
    EXPECT_TRUE(store.ok());
    return std::move(store).value();
  }

  static std::string metadata_for(const std::string& data) {
    return nlohmann::json{{"sha256", core::sha256_hex(data)}}.dump();
  }

  fs::path root_;
};

const std::string kKey = core::sha256_hex("key");

}  // namespace

TEST(ObjectKey, AcceptsHexAndVariants) {
  EXPECT_TRUE(storage::is_valid_key(kKey));
  EXPECT_TRUE(storage::is_valid_key(kKey + ".w512-webp"));
}

TEST(ObjectKey, RejectsPathsAndOddCharacters) {
  EXPECT_FALSE(storage::is_valid_key(""));
  EXPECT_FALSE(storage::is_valid_key("../../etc/passwd"));
  EXPECT_FALSE(storage::is_valid_key(kKey.substr(1)));
  EXPECT_FALSE(storage::is_valid_key(kKey + "."));
  EXPECT_FALSE(storage::is_valid_key(kKey + "./x"));
  EXPECT_FALSE(storage::is_valid_key(kKey + "/.."));
  std::string upper = kKey;
  upper[0] = 'A';
  EXPECT_FALSE(storage::is_valid_key(upper));
}

TEST_F(DiskStoreTest, PutThenFindRoundTrips) {
  auto store = open();
  ASSERT_TRUE(store->put(kKey, "image-bytes", metadata_for("image-bytes")).ok());
  auto found = store->find(kKey);
  ASSERT_TRUE(found.ok());
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->data, "image-bytes");
  EXPECT_TRUE(fs::exists(root_ / "objects" / kKey.substr(0, 2) / kKey.substr(2, 2) / kKey));
}

TEST_F(DiskStoreTest, MissingObjectIsEmpty) {
  auto store = open();
  auto found = store->find(kKey);
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(found->has_value());
}

TEST_F(DiskStoreTest, LeavesNoTemporaryFiles) {
  auto store = open();
  ASSERT_TRUE(store->put(kKey, "bytes", metadata_for("bytes")).ok());
  EXPECT_TRUE(fs::is_empty(root_ / "tmp"));
}

TEST_F(DiskStoreTest, OpenRemovesCrashLeftovers) {
  fs::create_directories(root_ / "tmp");
  std::ofstream(root_ / "tmp" / "half-written.tmp-1") << "partial";
  auto store = open();
  EXPECT_TRUE(fs::is_empty(root_ / "tmp"));
}

TEST_F(DiskStoreTest, CorruptObjectIsNotServed) {
  auto store = open();
  ASSERT_TRUE(store->put(kKey, "good-bytes", metadata_for("good-bytes")).ok());
  std::ofstream(store->object_path(kKey), std::ios::trunc) << "good-by";  // damaged outside pixelgate
  auto found = store->find(kKey);
  EXPECT_FALSE(found.ok());
}

TEST_F(DiskStoreTest, RejectsInvalidKey) {
  auto store = open();
  EXPECT_FALSE(store->put("../escape", "x", "{}").ok());
  EXPECT_FALSE(store->find("../escape").ok());
}

TEST_F(DiskStoreTest, FindMetadataReadsSidecar) {
  auto store = open();
  const std::string metadata = metadata_for("bytes");
  ASSERT_TRUE(store->put(kKey, "bytes", metadata).ok());
  auto found = store->find_metadata(kKey);
  ASSERT_TRUE(found.ok());
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ(**found, metadata);
}

TEST_F(DiskStoreTest, FindMetadataOfMissingObject) {
  auto store = open();
  auto found = store->find_metadata(kKey);
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(found->has_value());
}

TEST_F(DiskStoreTest, RemoveDeletesImageAndSidecar) {
  auto store = open();
  ASSERT_TRUE(store->put(kKey, "bytes", metadata_for("bytes")).ok());
  ASSERT_TRUE(store->remove(kKey).ok());
  EXPECT_FALSE(fs::exists(store->object_path(kKey)));
  EXPECT_FALSE(fs::exists(store->object_path(kKey).string() + ".json"));
  auto found = store->find(kKey);
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(found->has_value());
  EXPECT_TRUE(store->remove(kKey).ok());  // removing a missing object succeeds
}

TEST_F(DiskStoreTest, ListVisitsEveryStoredKey) {
  auto store = open();
  const std::string other = core::sha256_hex("other");
  const std::set<std::string> stored = {kKey, kKey + ".w512-webp", other};
  for (const auto& key : stored) ASSERT_TRUE(store->put(key, "bytes-" + key, metadata_for("bytes-" + key)).ok());
  std::ofstream(root_ / "objects" / "stray.txt") << "not an image";

  std::set<std::string> listed;
  ASSERT_TRUE(store->list([&listed](const std::string& key) {
                     listed.insert(key);
                     return true;
                   })
                  .ok());
  EXPECT_EQ(listed, stored);
}

TEST_F(DiskStoreTest, ListStopsWhenVisitReturnsFalse) {
  auto store = open();
  ASSERT_TRUE(store->put(kKey, "a", metadata_for("a")).ok());
  ASSERT_TRUE(store->put(core::sha256_hex("other"), "b", metadata_for("b")).ok());
  int visits = 0;
  ASSERT_TRUE(store->list([&visits](const std::string&) {
                     ++visits;
                     return false;
                   })
                  .ok());
  EXPECT_EQ(visits, 1);
}

TEST_F(DiskStoreTest, NewMembersRejectInvalidKey) {
  auto store = open();
  EXPECT_FALSE(store->find_metadata("../escape").ok());
  EXPECT_FALSE(store->remove("../escape").ok());
}

TEST_F(DiskStoreTest, ReportsWritable) {
  auto store = open();
  EXPECT_TRUE(store->check_writable().ok());
}

namespace {

std::shared_ptr<const storage::CachedImage> cached(const std::string& key, std::size_t bytes) {
  auto image = std::make_shared<storage::CachedImage>();
  image->key = key;
  image->bytes = std::make_shared<const std::string>(bytes, 'x');
  return image;
}

}  // namespace

TEST(HotCache, EvictsLeastRecentlyUsed) {
  storage::HotCache cache(300, 300);
  cache.insert(cached("a", 100));
  cache.insert(cached("b", 100));
  cache.insert(cached("c", 100));
  ASSERT_TRUE(cache.find("a"));  // a becomes most recently used
  cache.insert(cached("d", 100));
  EXPECT_TRUE(cache.find("a"));
  EXPECT_FALSE(cache.find("b"));
  EXPECT_TRUE(cache.find("c"));
  EXPECT_TRUE(cache.find("d"));
  EXPECT_EQ(cache.size_bytes(), 300u);
}

TEST(HotCache, SkipsOversizedObjects) {
  storage::HotCache cache(1000, 100);
  cache.insert(cached("big", 101));
  EXPECT_FALSE(cache.find("big"));
  EXPECT_EQ(cache.size_bytes(), 0u);
}

TEST(HotCache, ReplacingKeepsByteCount) {
  storage::HotCache cache(1000, 1000);
  cache.insert(cached("a", 100));
  cache.insert(cached("a", 50));
  EXPECT_EQ(cache.size_bytes(), 50u);
  EXPECT_EQ(cache.entry_count(), 1u);
}
