// Model directories: save/load round trip, parameter counts, and errors that
// name what is wrong.
#include <gtest/gtest.h>

#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/safetensors.h"
#include "moekit/models/ffn_stack/ffn_stack.h"
#include "moekit/moe/moe_layer.h"
#include "test_util.h"

namespace moekit {
namespace {

// A path for a model directory that does not exist yet.
std::string fresh_dir(const std::string& name) { return temp_dir("modeldir") + "/" + name; }

FfnStackOptions stack_options() { return small_stack_options(16, 3); }


TEST(ModelDir, SaveLoadRoundTripGivesTheSameFunction) {
  torch::manual_seed(0);
  FfnStack model(stack_options());
  const std::string dir = fresh_dir("roundtrip");
  save_model(dir, model);
  std::shared_ptr<Model> loaded = load_model(dir);
  ASSERT_EQ(loaded->model_type(), "ffn_stack");
  auto* stack = dynamic_cast<FfnStack*>(loaded.get());
  ASSERT_NE(stack, nullptr);
  model.eval();
  const torch::Tensor x = torch::randn({2, 5, 16});
  EXPECT_TRUE(stack->forward(x).equal(model.forward(x)));
  // Names follow the module tree.
  const TensorMap weights = read_model_weights(dir);
  EXPECT_EQ(weights.count("layers.0.ffn.experts.w1"), 1u);
  EXPECT_EQ(weights.count("layers.2.ffn.gate.weight"), 1u);
  EXPECT_EQ(weights.at("layers.1.ffn.experts.w2").sizes(), torch::IntArrayRef({4, 16, 32}));
}

TEST(ModelDir, LoadingSkipsExpertInitOnlyWhileBuildingAndRefusesAMissingExpert) {
  EXPECT_FALSE(SkipExpertInit::active());
  {
    SkipExpertInit outer;
    {
      SkipExpertInit inner;
      EXPECT_TRUE(SkipExpertInit::active());
    }
    EXPECT_TRUE(SkipExpertInit::active());
  }
  EXPECT_FALSE(SkipExpertInit::active());
  // Built outside load_model, experts are initialized (bounded, not all zero).
  FfnStack model(stack_options());
  const TensorMap state = module_state(model);
  const torch::Tensor w1 = state.at("layers.0.ffn.experts.w1");
  EXPECT_GT(w1.abs().max().item<float>(), 0.f);
  EXPECT_LE(w1.abs().max().item<float>(), 1.f / std::sqrt(16.f));
  // A directory missing an expert tensor cannot leave it uninitialized.
  const std::string dir = fresh_dir("missing_expert");
  save_model(dir, model);
  TensorMap weights = read_model_weights(dir);
  weights.erase("layers.2.ffn.experts.w2");
  write_safetensors(dir + "/" + kWeightsFile, weights);
  const std::string message = error_of<std::invalid_argument>([&] { load_model(dir); });
  EXPECT_NE(message.find("missing 1 [layers.2.ffn.experts.w2]"), std::string::npos) << message;
}

TEST(ModelDir, ParameterCountsSeparateTotalFromActive) {
  FfnStack model(stack_options());
  const ParameterCount count = count_parameters(model);
  // Per layer: norm 2*16, gate 4*16, experts 4 * (32*16 + 32 + 16*32 + 16).
  const int64_t per_expert = 32 * 16 + 32 + 16 * 32 + 16;
  EXPECT_EQ(count.total, 3 * (2 * 16 + 4 * 16 + 4 * per_expert));
  EXPECT_EQ(count.active, 3 * (2 * 16 + 4 * 16 + 2 * per_expert));
  FfnStackOptions dense = stack_options();
  dense.moe = false;
  const ParameterCount dense_count = count_parameters(FfnStack(dense));
  EXPECT_EQ(dense_count.total, dense_count.active);
}

TEST(ModelDir, ReportsEveryMismatchingTensorByName) {
  FfnStack model(stack_options());
  TensorMap weights = module_state(model);
  weights.erase("layers.0.norm.weight");
  weights["layers.9.extra"] = torch::zeros({1});
  weights["layers.1.ffn.experts.w1"] = torch::zeros({4, 32, 15});
  const std::string message = error_of<std::invalid_argument>([&] { load_module_state(model, weights, "m.safetensors"); });
  EXPECT_NE(message.find("m.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("missing 1 [layers.0.norm.weight]"), std::string::npos) << message;
  EXPECT_NE(message.find("unexpected 1 [layers.9.extra]"), std::string::npos) << message;
  EXPECT_NE(message.find("layers.1.ffn.experts.w1 [4, 32, 15] (model expects [4, 32, 16])"), std::string::npos)
      << message;
}

TEST(ModelDir, BadDirectoriesAreClearErrors) {
  EXPECT_NE(error_of<std::invalid_argument>([] { load_model("/nonexistent/model"); }).find("not a model directory"), std::string::npos);
  const std::string dir = fresh_dir("bad");
  make_dirs(dir);
  EXPECT_NE(error_of<std::invalid_argument>([&] { load_model(dir); }).find("no config.yaml"), std::string::npos);
  write_file_atomic(dir + "/config.yaml", "model_type: ffn_stack\nformat_version: 99\n");
  EXPECT_NE(error_of<std::invalid_argument>([&] { load_model(dir); }).find("format_version 99"), std::string::npos);
  write_file_atomic(dir + "/config.yaml", "model_type: warp_drive\nformat_version: 1\narchitecture: {a: 1}\n");
  EXPECT_NE(error_of<std::invalid_argument>([&] { load_model(dir); }).find("unknown model_type 'warp_drive'"), std::string::npos);
  write_file_atomic(dir + "/config.yaml", "model_type: [unclosed\n");
  EXPECT_NE(error_of<std::invalid_argument>([&] { load_model(dir); }).find("not valid YAML"), std::string::npos);
  // Nested 200,000 deep (400 KB): refused by yaml-cpp's depth limit, with
  // what is wrong, not its "bad file".
  write_file_atomic(dir + "/config.yaml", "model_type: " + std::string(200000, '[') + std::string(200000, ']') + "\n");
  const std::string deep = error_of<std::invalid_argument>([&] { load_model(dir); });
  EXPECT_NE(deep.find("config.yaml: not valid YAML (line 1: nested too deeply, yaml-cpp's limit is "), std::string::npos)
      << deep;
  // A model directory whose weights belong to another architecture.
  FfnStack model(stack_options());
  save_model(dir, model);
  YAML::Node config = load_yaml_file(dir + "/config.yaml");
  config["architecture"]["d_hidden"] = 48;
  write_yaml_file(dir + "/config.yaml", config);
  EXPECT_NE(error_of<std::invalid_argument>([&] { load_model(dir); }).find("mis-shaped"), std::string::npos);
  config["architecture"]["moe"]["top_k"] = 7;
  write_yaml_file(dir + "/config.yaml", config);
  EXPECT_NE(error_of<std::invalid_argument>([&] { load_model(dir); }).find("top_k"), std::string::npos);
  // Truncated weights.
  save_model(dir, model);
  const std::string bytes = read_file(dir + "/model.safetensors");
  write_file_atomic(dir + "/model.safetensors", bytes.substr(0, bytes.size() / 2));
  EXPECT_NE(error_of<std::invalid_argument>([&] { load_model(dir); }).find("truncated"), std::string::npos);
}

}  // namespace
}  // namespace moekit
