// Weights mapped from the model file (WeightStorage::kMap): the same
// function as copied weights, writes that stay in the process, and pages
// that go back once a weight is packed for the kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "moekit/core/cpu_allocator.h"
#include "moekit/core/mapped_file.h"
#include "moekit/core/mapped_tensors.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/process_memory.h"
#include "moekit/ops/packed_linear.h"
#include "moekit/ops/packed_weights.h"
#include "test_util.h"

namespace moekit {
namespace {

TEST(MappedWeights, AMappedModelComputesWhatACopiedOneDoes) {
  if (!map_weights_enabled()) GTEST_SKIP() << "MOEKIT_MAP_WEIGHTS=0";
  torch::manual_seed(0);
  FfnStack model(small_stack_options(128, 3));
  const std::string dir = temp_dir("mapped") + "/model";
  save_model(dir, model);
  const uint64_t before = mapped_tensor_bytes();
  {
    std::shared_ptr<Model> copied = load_model(dir, WeightStorage::kCopy);
    EXPECT_EQ(mapped_tensor_bytes(), before);
    std::shared_ptr<Model> mapped = load_model(dir, WeightStorage::kMap);
    // The experts' matrices are views of the file; the small tensors
    // (norms, routers) copies.
    uint64_t bytes = 0;
    for (const auto& [name, t] : module_state(*mapped)) {
      const uint64_t n = t.numel() * t.element_size();
      if (n >= kMinMappedTensorBytes) bytes += n;
    }
    EXPECT_GT(bytes, 0u);
    EXPECT_EQ(mapped_tensor_bytes() - before, bytes);
    torch::NoGradGuard no_grad;
    const torch::Tensor x = torch::randn({3, 7, 128});
    auto* a = dynamic_cast<FfnStack*>(copied.get());
    auto* b = dynamic_cast<FfnStack*>(mapped.get());
    ASSERT_TRUE(a && b);
    // Twice: the second forward runs on the packed copies, the mapped
    // weights' pages given back.
    for (int i = 0; i < 2; ++i) EXPECT_TRUE(b->forward(x).equal(a->forward(x)));
  }
  // The last tensor gone, the mapping is too.
  EXPECT_EQ(mapped_tensor_bytes(), before);
}

TEST(MappedWeights, AWriteStaysInTheProcessAndKeepsItsPages) {
  if (!map_weights_enabled()) GTEST_SKIP() << "MOEKIT_MAP_WEIGHTS=0";
  torch::manual_seed(1);
  PackedLinear linear(256, 128);  // 128 KiB: mapped
  const std::string dir = temp_dir("mapped_write") + "/model";
  save_model_dir(dir, YAML::Load("model_type: linear"), module_state(*linear));
  const torch::Tensor stored = read_model_weights(dir).at("weight").clone();

  PackedLinear loaded(256, 128);
  load_module_state_from_dir(*loaded, dir, WeightStorage::kMap);
  torch::NoGradGuard no_grad;
  ASSERT_TRUE(loaded->weight.equal(stored));
  EXPECT_FALSE(release_mapped_tensor(loaded->bias));  // small: a copy
  // Unwritten: its pages can go, and reading it again gives the file's bytes.
  EXPECT_TRUE(release_mapped_tensor(loaded->weight));
  EXPECT_TRUE(loaded->weight.equal(stored));
  // Written in place (an optimizer step, copy_): the write is the process's
  // own page, never dropped, never in the file.
  loaded->weight.mul_(2.0);
  EXPECT_FALSE(release_mapped_tensor(loaded->weight));
  EXPECT_FALSE(release_mapped_tensor(loaded->weight.view({-1})));  // nor through a view
  EXPECT_TRUE(loaded->weight.equal(stored * 2.0));
  EXPECT_TRUE(read_model_weights(dir).at("weight").equal(stored));
  // Replaced by rename, the file the weight maps is untouched; rewritten in
  // place, it is named.
  EXPECT_EQ(changed_mapped_file(), "");
  const std::string path = dir + "/model.safetensors";
  const std::string bytes = read_file(path);
  write_file_atomic(path, bytes);
  EXPECT_EQ(changed_mapped_file(), "");
  PackedLinear reloaded(256, 128);
  load_module_state_from_dir(*reloaded, dir, WeightStorage::kMap);
  EXPECT_NO_THROW(check_mapped_files_unchanged("this test"));
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  EXPECT_EQ(changed_mapped_file(), path);
  try {
    check_mapped_files_unchanged("this test");
    ADD_FAILURE() << "no error for a file rewritten in place";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(path + " was rewritten in place while this test was using it"),
              std::string::npos)
        << e.what();
  }
  reloaded = PackedLinear(nullptr);
  EXPECT_EQ(changed_mapped_file(), "");  // no tensor maps it any more
  EXPECT_NO_THROW(check_mapped_files_unchanged("this test"));
  // Packing the written weight keeps it too.
  const torch::Tensor x = torch::randn({3, 256});
  EXPECT_TRUE(torch::allclose(loaded->forward(x), torch::linear(x, stored * 2.0, loaded->bias), 1e-5, 1e-5));
  EXPECT_TRUE(loaded->weight.equal(stored * 2.0));
}

// Mapping off (as where a file system refuses to map): the file is read
// into private memory, with the mapping's bytes and access. Its pages are
// never given back (anonymous pages dropped would read as zeros), and a
// rewrite of the file cannot reach it.
TEST(MappedFile, ACopyHasTheFilesBytesAndKeepsThem) {
  struct MappingOff {
    MappingOff() { set_file_mapping(false); }
    ~MappingOff() { set_file_mapping(true); }
  };
  const std::string path = temp_dir("mapped_copy") + "/bytes.bin";
  std::string bytes(3 * 4096 + 5, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 + 1);
  write_file_atomic(path, bytes);
  {
    const MappedFile mapped(path, "a test file");
    EXPECT_FALSE(mapped.copied());
    EXPECT_EQ(std::string(mapped.data(), mapped.size()), bytes);
  }
  const MappingOff off;
  const MappedFile read_only(path, "a test file");
  MappedFile writable(path, "a test file", MappedFile::Access::kCopyOnWrite);
  for (const MappedFile* f : {&read_only, static_cast<const MappedFile*>(&writable)}) {
    EXPECT_TRUE(f->copied());
    ASSERT_EQ(f->size(), bytes.size());
    f->release(0, bytes.size());
    EXPECT_EQ(std::string(f->data(), f->size()), bytes);
  }
  const_cast<char*>(writable.data())[4096] = 'x';  // copy-on-write: the process's own byte
  EXPECT_EQ(writable.data()[4096], 'x');
  std::ofstream(path, std::ios::binary | std::ios::trunc) << std::string(bytes.size(), 'y');
  EXPECT_FALSE(read_only.changed());
  EXPECT_EQ(std::string(read_only.data(), read_only.size()), bytes);
  EXPECT_EQ(read_file(path), std::string(bytes.size(), 'y'));
  EXPECT_EQ(MappedFile(path, "a test file").size(), bytes.size());
  EXPECT_THROW(MappedFile(path + ".missing", "a test file"), std::invalid_argument);

  // A model loaded for inference from copies computes as the copied one, and
  // its weights keep their values once packed (their pages not dropped).
  torch::manual_seed(3);
  FfnStack model(small_stack_options(128, 3));
  const std::string dir = temp_dir("mapped_copy") + "/model";
  save_model(dir, model);
  std::shared_ptr<Model> copied = load_model(dir, WeightStorage::kCopy);
  std::shared_ptr<Model> from_copy = load_model(dir, WeightStorage::kMap);
  auto* a = dynamic_cast<FfnStack*>(copied.get());
  auto* b = dynamic_cast<FfnStack*>(from_copy.get());
  ASSERT_TRUE(a && b);
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({3, 7, 128});
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(b->forward(x).equal(a->forward(x)));
  const TensorMap stored = read_model_weights(dir);
  for (const auto& [name, t] : module_state(*b)) EXPECT_TRUE(t.equal(stored.at(name))) << name;
}

TEST(MappedWeights, PackingAMappedWeightGivesItsPagesBack) {
  if (!map_weights_enabled() || !weight_panels_enabled())
    GTEST_SKIP() << "MOEKIT_MAP_WEIGHTS=0 or MOEKIT_WEIGHT_PANELS=0";
  if (resident_bytes() < 0) GTEST_SKIP() << "this kernel does not report resident memory";
  torch::manual_seed(2);
  const int64_t in = 4096, out = 2048;  // 32 MiB of float32
  const int64_t bytes = in * out * 4;
  const std::string dir = temp_dir("mapped_pages") + "/model";
  {
    PackedLinear linear(in, out);
    save_model_dir(dir, YAML::Load("model_type: linear"), module_state(*linear));
  }
  release_cpu_memory();
  // RSS growth from touching every weight to having packed it: about the
  // panels for a copied weight, about nothing for a mapped one (the panels
  // come, the weight's pages go).
  auto growth_of_packing = [&](WeightStorage storage) {
    PackedLinear linear(in, out);
    load_module_state_from_dir(*linear, dir, storage);
    release_cpu_memory();
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(std::isfinite(linear->weight.sum().item<float>()));  // every page touched
    const int64_t touched = resident_bytes();
    const torch::Tensor panels = linear->panels();
    const int64_t packed = resident_bytes();
    EXPECT_EQ(panels.numel() * panels.element_size(), bytes);
    // The forward still reads the file's weight wherever it needs it.
    const torch::Tensor x = torch::randn({2, in});
    EXPECT_TRUE(torch::allclose(linear->forward(x), torch::linear(x, linear->weight, linear->bias), 1e-4, 1e-4));
    return packed - touched;
  };
  const int64_t copied = growth_of_packing(WeightStorage::kCopy);
  const int64_t mapped = growth_of_packing(WeightStorage::kMap);
  EXPECT_GT(copied, bytes * 3 / 4) << "copied: packing adds the panels";
  EXPECT_LT(mapped, bytes / 4) << "mapped: the weight's pages went back";
}

}  // namespace
}  // namespace moekit
