// safetensors: exact round trips and rejection of damaged files.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <nlohmann/json.hpp>

#include "moekit/core/file_io.h"
#include "moekit/core/safetensors.h"
#include "test_util.h"

namespace moekit {
namespace {

// Builds a file from a header JSON text and a data section.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

void expect_rejected(const std::string& bytes, const std::string& needle) {
  try {
    parse_safetensors(bytes, "bad.safetensors");
    FAIL() << "accepted a file that should fail with '" << needle << "'";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "multi-line error: " << msg;
  }
}

TEST(Safetensors, ExactRoundTripForEveryDtype) {
  torch::manual_seed(0);
  TensorMap tensors;
  tensors["f32"] = torch::randn({3, 5});
  tensors["f16"] = torch::randn({7}).to(torch::kFloat16);
  tensors["bf16"] = torch::randn({2, 2, 3}).to(torch::kBFloat16);
  tensors["i64"] = torch::randint(-1000000, 1000000, {4, 1}, torch::kInt64);
  tensors["f64"] = torch::randn({2}, torch::kFloat64);
  tensors["scalar"] = torch::tensor(3.5f).reshape({});
  tensors["empty"] = torch::empty({0, 4});
  tensors["noncontiguous"] = torch::randn({4, 6}).t();
  const StringMap metadata = {{"format", "pt"}, {"moekit", "1"}};
  const std::string path = temp_dir("safetensors") + "/roundtrip.safetensors";
  write_safetensors(path, tensors, metadata);
  const SafetensorsContents back = read_safetensors(path);
  EXPECT_EQ(back.metadata, metadata);
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const torch::Tensor& b = back.tensors.at(name);
    EXPECT_EQ(b.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(b.sizes(), t.sizes()) << name;
    EXPECT_TRUE(b.equal(t)) << name;  // bitwise-exact values
  }
  // Header is 8-byte aligned and readable alone.
  const SafetensorsHeader header = read_safetensors_header(path);
  EXPECT_EQ(header.data_start % 8, 0u);
  EXPECT_EQ(header.entries.at("bf16").dtype, torch::kBFloat16);
  // The streamed file holds exactly the bytes serialize_safetensors makes.
  EXPECT_EQ(read_file(path), serialize_safetensors(tensors, metadata));
}

TEST(Safetensors, AFailedWriteLeavesThePreviousFileAndNoTemporaries) {
  const std::string dir = temp_dir("safetensors_failed_write");
  const std::string path = dir + "/model.safetensors";
  const TensorMap good = {{"a", torch::arange(6, torch::kFloat32)}};
  write_safetensors(path, good);
  const std::string before = read_file(path);
  // The bad tensor sorts after a good one, so the header is where it fails.
  const TensorMap bad = {{"a", torch::ones({2})}, {"b", torch::Tensor()}};
  EXPECT_THROW(write_safetensors(path, bad), std::invalid_argument);
  EXPECT_EQ(read_file(path), before);
  int entries = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 1) << "a temporary was left in " << dir;
}

TEST(Safetensors, RejectsDamagedFiles) {
  const std::string good = serialize_safetensors({{"w", torch::ones({2, 2})}});
  expect_rejected(good.substr(0, 5), "shorter than");
  expect_rejected(good.substr(0, good.size() - 4), "truncated");
  std::string huge = good;
  const uint64_t big = uint64_t{1} << 40;
  std::memcpy(huge.data(), &big, 8);
  expect_rejected(huge, "exceeds");
  std::string past_end = good;
  const uint64_t len = good.size();
  std::memcpy(past_end.data(), &len, 8);
  expect_rejected(past_end, "exceeds the file size");
  expect_rejected(raw_file("{not json", ""), "not valid JSON");
  expect_rejected(raw_file("[1,2]", ""), "not a JSON object");
  expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           std::string(12, '\0')),
                  "overlapping");
  expect_rejected(raw_file(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')),
                  "unsupported dtype 'Q4'");
  expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')),
                  "needs 12");
  expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0')),
                  "negative");
  expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, '\0')),
                  "reversed");
  expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[2]}})", std::string(8, '\0')), "lacks 'data_offsets'");
  expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})",
                           std::string(8, '\0')),
                  "overflows");
  expect_rejected(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                           std::string(8, '\0')),
                  "twice");
  expect_rejected(raw_file(R"({"__metadata__":{"k":1}})", ""), "not a string");
  // A tensor name is quoted in part (200 bytes), control characters as '?'.
  expect_rejected(raw_file("{\"\\u0001" + std::string(100000, 'n') + R"(":{"dtype":"F32","shape":[2]}})",
                           std::string(8, '\0')),
                  "tensor '?" + std::string(199, 'n') + "...': header entry lacks 'data_offsets'");
}

TEST(Safetensors, FuzzedHeadersNeverCrash) {
  // Random byte flips in a valid file: either it parses or it throws
  // invalid_argument; nothing else.
  const std::string good = serialize_safetensors({{"a", torch::randn({3, 4})}, {"b", torch::ones({5}, torch::kInt64)}});
  std::mt19937 rng(1234);
  int accepted = 0, rejected = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes = good;
    const int flips = 1 + trial % 4;
    for (int f = 0; f < flips; ++f) {
      const size_t at = rng() % std::min<size_t>(bytes.size(), 120);
      bytes[at] = static_cast<char>(rng() & 0xff);
    }
    try {
      const SafetensorsContents parsed = parse_safetensors(bytes, "fuzz");
      ++accepted;
      // Whatever was accepted describes bytes that exist in the file.
      size_t total = 0;
      for (const auto& [name, t] : parsed.tensors) total += t.numel() * t.element_size();
      EXPECT_LE(total, bytes.size());
    } catch (const std::invalid_argument& e) {
      ++rejected;
      EXPECT_EQ(std::string(e.what()).rfind("fuzz", 0), 0u) << e.what();
    }
  }
  // Both outcomes occur: the flips reach the parser's checks and its
  // accepting path (a flip inside a name or the data is still a valid file).
  EXPECT_GT(rejected, 0);
  EXPECT_GT(accepted, 0);
}

TEST(Safetensors, MissingFileAndDirectoryAreClearErrors) {
  EXPECT_THROW(read_safetensors("/nonexistent/model.safetensors"), std::invalid_argument);
  EXPECT_THROW(read_safetensors(temp_dir("safetensors")), std::invalid_argument);
}

TEST(FileIo, AtomicWriteReplacesWholeFileAndLeavesNoTemporaries) {
  const std::string dir = temp_dir("safetensors") + "/atomic";
  make_dirs(dir);
  write_file_atomic(dir + "/f.txt", "first version");
  write_file_atomic(dir + "/f.txt", "second");
  EXPECT_EQ(read_file(dir + "/f.txt"), "second");
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);
  EXPECT_THROW(write_file_atomic("/nonexistent-dir/x", "y"), std::runtime_error);
}

TEST(FileIo, RemovePathDeletesATreeWithoutFollowingLinks) {
  const std::string dir = temp_dir("remove_path");
  make_dirs(dir + "/tree/a/b");
  make_dirs(dir + "/outside");
  write_file_atomic(dir + "/tree/a/b/f.txt", "x");
  write_file_atomic(dir + "/tree/g.txt", "y");
  write_file_atomic(dir + "/outside/kept.txt", "z");
  ASSERT_EQ(::symlink((dir + "/outside").c_str(), (dir + "/tree/link").c_str()), 0);
  remove_path(dir + "/tree");
  EXPECT_FALSE(path_exists(dir + "/tree"));
  EXPECT_EQ(read_file(dir + "/outside/kept.txt"), "z");  // the link removed, its target untouched
  remove_path(dir + "/outside/kept.txt");                // a plain file
  EXPECT_FALSE(path_exists(dir + "/outside/kept.txt"));
  EXPECT_NO_THROW(remove_path(dir + "/never-there"));    // nothing to remove is no error
}

}  // namespace
}  // namespace moekit
