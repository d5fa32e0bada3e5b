// Checkpoints larger than memory: sharded safetensors written tensor by
// tensor, memory-mapped reading, and Scale-Out of a Hugging Face directory
// into a Mixtral one that equals upcycling the imported model, in its own
// dtype, with bounded peak memory on a checkpoint of a few GB.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <set>

#include "cli_test_util.h"
#include "lm_test_util.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/safetensors_stream.h"
#include "moekit/models/lm/hf_checkpoint.h"
#include "moekit/models/lm/hf_import.h"
#include "moekit/models/lm/hf_llama.h"
#include "moekit/scale/grow.h"
#include "moekit/scale/hf_scale.h"

using namespace moekit;
using json = nlohmann::json;

namespace {

LmWeights weights_of(LmModel& model) { return {model.config(), module_state(model)}; }

// A dense LLaMA-style model (no QKV bias) exported in HF layout, in shards.
std::string dense_hf_dir(const std::string& dir, torch::ScalarType dtype, bool tie = false) {
  LmConfig c = tiny_lm_config();
  c.qkv_bias = false;
  c.tie_embeddings = tie;
  torch::manual_seed(41);
  LmModel model(c);
  HfWriteOptions w;
  w.dtype = dtype;
  w.max_shard_bytes = 12000;  // several shards and an index
  export_hf_llama(weights_of(model), dir, w);
  return dir;
}

std::map<std::string, std::string> weight_map(const std::string& dir) {
  std::map<std::string, std::string> out;
  const json index = json::parse(read_file(dir + "/model.safetensors.index.json"));
  for (const auto& [name, file] : index["weight_map"].items()) out[name] = file.get<std::string>();
  return out;
}

// The "<number> MB" after `label` in a command's output (-1 if absent).
int64_t megabytes_after(const std::string& output, const std::string& label) {
  const size_t at = output.find(label);
  if (at == std::string::npos) return -1;
  return std::stoll(output.substr(at + label.size()));
}

}  // namespace

TEST(SafetensorsStream, ShardsAndIndexAreWhatTransformersWrites) {
  const std::string dir = temp_dir("st_shards");
  torch::manual_seed(1);
  TensorMap tensors = {{"a", torch::randn({100, 10})},                       // 4000 bytes
                       {"b", torch::randn({30}).to(torch::kBFloat16)},      // 60
                       {"big", torch::randn({3000})},                       // 12000: over the shard size, alone
                       {"c", torch::arange(7, torch::kLong)},               // 56
                       {"d", torch::randn({500, 2})}};                      // 4000
  std::vector<PlannedTensor> plan;
  std::vector<std::string> written;
  for (const auto& [name, t] : tensors)
    plan.push_back({name, t.scalar_type(), t.sizes().vec(), [t = t] { return t; },
                    [&written, name = name] { written.push_back(name); }});
  const auto files = write_sharded_safetensors(dir, plan, 5000);
  // a b | big | c d: a shard closes before the tensor that would overflow it.
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0], dir + "/model-00001-of-00003.safetensors");
  EXPECT_EQ(files[2], dir + "/model-00003-of-00003.safetensors");
  EXPECT_EQ(written, (std::vector<std::string>{"a", "b", "big", "c", "d"}));
  const json index = json::parse(read_file(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 4000u + 60 + 12000 + 56 + 4000);
  const auto map = weight_map(dir);
  EXPECT_EQ(map.at("b"), "model-00001-of-00003.safetensors");
  EXPECT_EQ(map.at("big"), "model-00002-of-00003.safetensors");
  EXPECT_EQ(map.at("c"), "model-00003-of-00003.safetensors");
  for (const auto& [name, t] : tensors) {
    const SafetensorsContents shard = read_safetensors(dir + "/" + map.at(name));
    EXPECT_TRUE(torch::equal(shard.tensors.at(name), t)) << name;
    EXPECT_EQ(shard.metadata.at("format"), "pt");
  }
  // Everything in one shard: model.safetensors, no index, as save_pretrained.
  const std::string one = temp_dir("st_one");
  EXPECT_EQ(write_sharded_safetensors(one, plan, 1000000), std::vector<std::string>{one + "/model.safetensors"});
  EXPECT_FALSE(path_exists(one + "/model.safetensors.index.json"));
  EXPECT_TRUE(torch::equal(read_safetensors(one + "/model.safetensors").tensors.at("d"), tensors.at("d")));
  // The planned dtype wins: a producer's float tensor is stored as BF16.
  const std::string cast = temp_dir("st_cast");
  write_sharded_safetensors(cast, {{"x", torch::kBFloat16, {100, 10}, [&] { return tensors.at("a"); }, nullptr}}, 1000000);
  EXPECT_TRUE(torch::equal(read_safetensors(cast + "/model.safetensors").tensors.at("x"),
                           tensors.at("a").to(torch::kBFloat16)));
}

TEST(SafetensorsStream, BadPlansAreNamedAndLeaveNoFile) {
  const std::string dir = temp_dir("st_bad");
  auto make = [](const std::string& name, std::vector<int64_t> shape, torch::Tensor t) {
    return PlannedTensor{name, torch::kFloat, std::move(shape), [t] { return t; }, nullptr};
  };
  const torch::Tensor x = torch::zeros({4, 4});
  EXPECT_NE(error_of([&] { write_sharded_safetensors(dir, {make("x", {4, 4}, x), make("x", {4, 4}, x)}, 100); })
                .find("'x' is planned twice"),
            std::string::npos);
  EXPECT_NE(error_of([&] { write_sharded_safetensors(dir, {make("__metadata__", {4, 4}, x)}, 100); }).find("__metadata__"),
            std::string::npos);
  EXPECT_NE(error_of([&] { write_sharded_safetensors(dir, {make("y", {4, 4}, x), make("z", {2, 8}, x)}, 1000); })
                .find("tensor 'z' has shape [4, 4], planned [2, 8]"),
            std::string::npos);
  EXPECT_TRUE(std::filesystem::is_empty(dir)) << "a failed shard left a file behind";
  EXPECT_EQ(parse_byte_size("5GB"), 5000000000u);
  EXPECT_EQ(parse_byte_size("500mb"), 500000000u);
  EXPECT_EQ(parse_byte_size("2GiB"), 2147483648u);
  EXPECT_EQ(parse_byte_size("1.5KB"), 1500u);
  EXPECT_EQ(parse_byte_size("4096"), 4096u);
  for (const char* bad : {"", "GB", "5 apples", "-1GB", "0", "inf", "nan"})
    EXPECT_NE(error_of([&] { parse_byte_size(bad); }).find("'" + std::string(bad) + "'"), std::string::npos) << bad;
}

TEST(SafetensorsStream, MappedViewsEqualTheFileAndSurviveRelease) {
  const std::string dir = temp_dir("st_map");
  torch::manual_seed(2);
  const TensorMap tensors = {{"w", torch::randn({300, 40}).to(torch::kBFloat16)}, {"v", torch::randn({5})}};
  write_safetensors(dir + "/m.safetensors", tensors);
  const MappedSafetensors mapped(dir + "/m.safetensors");
  for (const auto& [name, t] : tensors) {
    EXPECT_TRUE(torch::equal(mapped.view(name), t)) << name;
    mapped.release(name);
    EXPECT_TRUE(torch::equal(mapped.view(name), t)) << name << " after release";
  }
  EXPECT_NE(error_of([&] { mapped.view("nope"); }).find("m.safetensors: has no tensor 'nope'"), std::string::npos);
  const std::string bytes = read_file(dir + "/m.safetensors");
  write_file_atomic(dir + "/cut.safetensors", bytes.substr(0, bytes.size() - 8));
  EXPECT_NE(error_of([&] { MappedSafetensors cut(dir + "/cut.safetensors"); }).find("cut.safetensors"), std::string::npos);
}

TEST(HfLayout, TensorShapesAreThoseTheExportWrites) {
  const std::string dir = temp_dir("hf_shapes");
  for (int variant = 0; variant < 3; ++variant) {
    LmConfig c = tiny_lm_config(variant == 2);
    c.qkv_bias = variant == 1;
    c.tie_embeddings = variant == 1;
    LmModel model(c);
    const std::string hf = dir + "/v" + std::to_string(variant);
    export_hf_llama(weights_of(model), hf);
    const SafetensorsHeader header = read_safetensors_header(hf + "/model.safetensors");
    const auto shapes = hf_tensor_shapes(c);
    ASSERT_EQ(shapes.size(), header.entries.size()) << variant;
    for (const auto& [name, shape] : shapes) {
      ASSERT_TRUE(header.entries.count(name)) << name;
      EXPECT_EQ(header.entries.at(name).shape, shape) << name;
    }
  }
}

TEST(HfUpcycle, EqualsUpcyclingTheImportedModel) {
  const std::string dir = temp_dir("hf_up");
  for (const torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const int64_t G : {1, 2}) {
      const std::string tag = std::string(c10::toString(dtype)) + "_g" + std::to_string(G);
      const std::string in = dense_hf_dir(dir + "/in_" + tag, dtype, /*tie=*/G == 2);
      ASSERT_GT(weight_map(in).size(), 0u);
      UpcycleOptions o;
      o.num_experts = 4;
      o.top_k = 2;
      o.granularity = G;
      o.seed = 7;
      const std::string out = dir + "/out_" + tag;
      make_dirs(out);
      HfWriteOptions w;
      w.max_shard_bytes = 20000;
      const HfScaleReport r = upcycle_hf_dir(in, out, o, w);
      EXPECT_GT(r.files.size(), 1u);
      const json config = json::parse(read_file(out + "/config.json"));
      EXPECT_EQ(config["model_type"], "mixtral");
      EXPECT_EQ(config["num_local_experts"], 4);
      EXPECT_EQ(config["intermediate_size"], tiny_lm_config().d_ffn / G);
      EXPECT_EQ(read_safetensors_header(out + "/" + weight_map(out).at("model.layers.1.block_sparse_moe.experts.3.w2.weight"))
                    .entries.at("model.layers.1.block_sparse_moe.experts.3.w2.weight")
                    .dtype,
                dtype)
          << "the checkpoint's dtype is kept";
      const LmWeights expected = upcycle_lm(import_hf_llama(in), o);
      const LmWeights got = import_hf_llama(out);
      ASSERT_EQ(got.weights.size(), expected.weights.size()) << tag;
      for (const auto& [name, t] : expected.weights) {
        ASSERT_TRUE(got.weights.count(name)) << tag << " " << name;
        EXPECT_TRUE(torch::equal(got.weights.at(name), t)) << tag << " " << name;
      }
      EXPECT_EQ(got.config.moe.num_experts, 4);
      EXPECT_EQ(got.config.moe.d_hidden, expected.config.moe.d_hidden);
      // --dtype converts every tensor.
      const std::string f32 = out + "_f32";
      make_dirs(f32);
      w.dtype = torch::kFloat;
      upcycle_hf_dir(in, f32, o, w);
      // The router is drawn in float32 and rounded only to the output's dtype.
      LmWeights dense_f32 = import_hf_llama(in);
      for (auto& [name, t] : dense_f32.weights) t = t.to(torch::kFloat);
      const LmWeights expected_f32 = upcycle_lm(dense_f32, o);
      const LmWeights converted = import_hf_llama(f32);
      for (const auto& [name, t] : expected_f32.weights)
        EXPECT_TRUE(torch::equal(converted.weights.at(name), t)) << tag << " " << name;
      EXPECT_EQ(json::parse(read_file(f32 + "/config.json"))["torch_dtype"], "float32");
    }
  }
}

// import hf, tensor by tensor, equals reading the whole checkpoint
// (import_hf_llama): LLaMA (tied and untied), Qwen2 and Mixtral, fp32 and
// bf16, every tensor in its stored dtype or in --dtype; the directory loads.
TEST(HfImport, TensorByTensorEqualsTheWholeModelImport) {
  const std::string dir = temp_dir("hf_import");
  int variant = 0;
  for (const torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const std::string kind : {"llama", "llama_tied", "qwen2", "mixtral"}) {
      const std::string tag = kind + "_" + c10::toString(dtype);
      LmConfig c = tiny_lm_config(kind == "mixtral");
      c.qkv_bias = kind == "qwen2";
      c.tie_embeddings = kind == "llama_tied";
      torch::manual_seed(50 + variant++);
      LmModel model(c);
      HfWriteOptions w;
      w.dtype = dtype;
      w.max_shard_bytes = 20000;
      const std::string in = dir + "/in_" + tag;
      export_hf_llama(weights_of(model), in, w);
      const LmWeights expected = import_hf_llama(in);
      for (const std::optional<torch::ScalarType> to : {std::optional<torch::ScalarType>(), std::optional(torch::kFloat)}) {
        const std::string out = dir + "/out_" + tag + (to ? "_f32" : "");
        make_dirs(out);
        const HfImportReport r = import_hf_dir(in, out, to);
        const TensorMap got = read_model_weights(out);
        ASSERT_EQ(got.size(), expected.weights.size()) << tag;
        EXPECT_EQ(r.tensors, static_cast<int64_t>(got.size()));
        for (const auto& [name, t] : expected.weights) {
          ASSERT_TRUE(got.count(name)) << tag << " " << name;
          const torch::Tensor want = to ? t.to(*to) : t;
          EXPECT_EQ(got.at(name).scalar_type(), want.scalar_type()) << tag << " " << name;
          EXPECT_TRUE(torch::equal(got.at(name), want)) << tag << " " << name;
        }
        const auto loaded = load_lm_model(out);
        EXPECT_EQ(loaded->config().to_string(), expected.config.to_string()) << tag;
        EXPECT_EQ(loaded->weight_dtype(), to || dtype == torch::kFloat ? torch::kFloat : torch::kBFloat16) << tag;
      }
    }
  }
}

TEST(HfGrow, EqualsGrowingTheImportedModel) {
  const std::string dir = temp_dir("hf_grow");
  int variant = 0;
  for (const torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const bool qwen2 : {false, true}) {
      for (const std::string width : {"fpi", "aki"}) {
        for (const std::string depth : {"stack", "interpolate"}) {
          const std::string tag = std::to_string(variant++);
          LmConfig c = tiny_lm_config();
          c.qkv_bias = qwen2;
          c.tie_embeddings = variant % 3 == 0;
          torch::manual_seed(50 + variant);
          LmModel model(c);
          HfWriteOptions w;
          w.dtype = dtype;
          w.max_shard_bytes = 9000;
          const std::string in = dir + "/in" + tag;
          export_hf_llama(weights_of(model), in, w);
          GrowOptions o;
          o.d_model = 2 * c.d_model;
          o.d_ffn = 3 * c.d_ffn / 2;
          o.n_layers = 5;
          o.width = parse_width_growth(width);
          o.depth = parse_depth_growth(depth);
          const std::string out = dir + "/out" + tag;
          make_dirs(out);
          const HfScaleReport r = grow_hf_dir(in, out, o, HfWriteOptions{std::nullopt, 20000});
          EXPECT_GT(r.files.size(), 1u);
          const json config = json::parse(read_file(out + "/config.json"));
          EXPECT_EQ(config["model_type"], qwen2 ? "qwen2" : "llama");
          EXPECT_EQ(config["hidden_size"], 2 * c.d_model);
          EXPECT_EQ(config["num_hidden_layers"], 5);
          const LmWeights expected = grow_lm(import_hf_llama(in), o);
          const LmWeights got = import_hf_llama(out);
          EXPECT_EQ(got.config.to_string(), expected.config.to_string()) << tag;
          ASSERT_EQ(got.weights.size(), expected.weights.size()) << tag;
          for (const auto& [name, t] : expected.weights) {
            ASSERT_TRUE(got.weights.count(name)) << tag << " " << name;
            EXPECT_EQ(got.weights.at(name).scalar_type(), dtype) << tag << " " << name;
            EXPECT_TRUE(torch::equal(got.weights.at(name), t)) << tag << " " << name;
          }
        }
      }
    }
  }
  // What grow refuses on a MoEKit model it refuses here, by the same words.
  LmConfig m = tiny_lm_config(true);
  m.qkv_bias = false;
  LmModel mixtral(m);
  export_hf_llama(weights_of(mixtral), dir + "/mixtral");
  make_dirs(dir + "/bad");
  GrowOptions bigger;
  bigger.n_layers = 6;
  EXPECT_NE(error_of([&] { grow_hf_dir(dir + "/mixtral", dir + "/bad", bigger); }).find("grow the dense model first"),
            std::string::npos);
  GrowOptions smaller;
  smaller.n_layers = 1;
  EXPECT_NE(error_of([&] { grow_hf_dir(dir + "/in0", dir + "/bad", smaller); }).find("n_layers 1 is smaller"),
            std::string::npos);
}

TEST(HfUpcycle, BadCheckpointsAreNamed) {
  const std::string dir = temp_dir("hf_up_bad");
  const std::string ok = dense_hf_dir(dir + "/ok", torch::kFloat);
  UpcycleOptions o;
  o.num_experts = 4;
  auto error = [&](const std::string& in, const UpcycleOptions& options) {
    const std::string out = dir + "/out";
    remove_path(out);
    make_dirs(out);
    return error_of([&] { upcycle_hf_dir(in, out, options); });
  };
  auto copy = [&](const std::string& name) {
    const std::string d = dir + "/" + name;
    std::filesystem::copy(ok, d, std::filesystem::copy_options::recursive);
    return d;
  };
  const auto map = weight_map(ok);
  const std::string first_shard = map.begin()->second;
  {  // a truncated shard
    const std::string d = copy("trunc");
    const std::string bytes = read_file(d + "/" + first_shard);
    write_file_atomic(d + "/" + first_shard, bytes.substr(0, bytes.size() - 10));
    EXPECT_NE(error(d, o).find(first_shard), std::string::npos);
  }
  {  // an index naming a shard that is not there, or one that leaves the directory
    const std::string d = copy("missing");
    json index = json::parse(read_file(d + "/model.safetensors.index.json"));
    index["weight_map"]["model.norm.weight"] = "model-00099-of-00099.safetensors";
    write_file_atomic(d + "/model.safetensors.index.json", index.dump());
    EXPECT_NE(error(d, o).find("model-00099-of-00099.safetensors"), std::string::npos);
    for (const char* outside : {"../ok/model.safetensors", "/etc/passwd"}) {
      index["weight_map"]["model.norm.weight"] = outside;
      write_file_atomic(d + "/model.safetensors.index.json", index.dump());
      EXPECT_NE(error(d, o).find("is not a plain file name"), std::string::npos) << outside;
    }
  }
  {  // an index that puts a tensor in a shard that does not hold it
    const std::string d = copy("elsewhere");
    json index = json::parse(read_file(d + "/model.safetensors.index.json"));
    const std::string other = map.rbegin()->second == map.at("model.norm.weight") ? first_shard : map.rbegin()->second;
    index["weight_map"]["model.norm.weight"] = other;
    write_file_atomic(d + "/model.safetensors.index.json", index.dump());
    EXPECT_NE(error(d, o).find("names tensor 'model.norm.weight' in " + other + ", which does not hold it"),
              std::string::npos);
  }
  // A tensor of the wrong dtype, of the wrong shape, missing, or one the architecture lacks.
  auto edited = [&](const std::string& name, const std::function<void(TensorMap&)>& edit) {
    const std::string d = dir + "/" + name;
    make_dirs(d);
    write_file_atomic(d + "/config.json", read_file(ok + "/config.json"));
    TensorMap all;
    for (const auto& [tensor, shard] : map) all[tensor] = read_safetensors(ok + "/" + shard).tensors.at(tensor);
    edit(all);
    write_safetensors(d + "/model.safetensors", all);
    return error(d, o);
  };
  const std::string up = "model.layers.1.mlp.up_proj.weight";
  EXPECT_NE(edited("int", [&](TensorMap& m) { m[up] = m[up].to(torch::kInt); }).find("tensor '" + up + "' is I32"),
            std::string::npos);
  EXPECT_NE(edited("shape", [&](TensorMap& m) { m[up] = m[up].narrow(0, 0, 8); })
                .find("tensor '" + up + "' has shape [8, 32], config.json says [48, 32]"),
            std::string::npos);
  EXPECT_NE(edited("gone", [&](TensorMap& m) { m.erase(up); }).find("tensor '" + up + "' is missing"), std::string::npos);
  EXPECT_NE(edited("extra", [&](TensorMap& m) { m["model.layers.1.mlp.bias"] = torch::zeros({3}); })
                .find("does not have: model.layers.1.mlp.bias"),
            std::string::npos);
  // What Mixtral cannot hold, and MoE inputs.
  UpcycleOptions every2 = o;
  every2.every = 2;
  EXPECT_NE(error(ok, every2).find("MoE in every layer"), std::string::npos);
  {
    LmConfig q = tiny_lm_config();  // QKV biases: Qwen2
    LmModel model(q);
    export_hf_llama(weights_of(model), dir + "/qwen2");
    EXPECT_NE(error(dir + "/qwen2", o).find("QKV biases"), std::string::npos);
    LmConfig m = tiny_lm_config(true);
    m.qkv_bias = false;
    LmModel mixtral(m);
    export_hf_llama(weights_of(mixtral), dir + "/mixtral");
    EXPECT_NE(error(dir + "/mixtral", o).find("already an MoE model"), std::string::npos);
  }
}

TEST(HfUpcycle, CliWritesMixtralAndNothingOnFailure) {
  const std::string dir = temp_dir("hf_up_cli");
  const std::string in = dense_hf_dir(dir + "/in", torch::kBFloat16);
  write_file_atomic(in + "/generation_config.json", "{\"do_sample\": false}\n");
  CliRun run = run_cli("upcycle " + in + " " + dir + "/out --experts 4 --top-k 2 --shard-size 30KB");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("Hugging Face Mixtral: 4 experts, top-2"), std::string::npos) << run.output;
  EXPECT_TRUE(path_exists(dir + "/out/model.safetensors.index.json"));
  EXPECT_TRUE(path_exists(dir + "/out/generation_config.json"));
  run = run_cli("grow " + in + " " + dir + "/grown --d-model 64 --n-layers 4 --width aki --depth interpolate --dtype fp32");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("Hugging Face layout; aki + interpolate"), std::string::npos) << run.output;
  EXPECT_EQ(json::parse(read_file(dir + "/grown/config.json"))["torch_dtype"], "float32");
  EXPECT_EQ(import_hf_llama(dir + "/grown").config.n_layers, 4);
  run = run_cli("import hf " + dir + "/out " + dir + "/imported");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  run = run_cli("export hf " + dir + "/imported " + dir + "/exported --dtype bf16 --shard-size 30KB");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  std::set<std::string> exported, upcycled;
  for (const auto& [name, shard] : weight_map(dir + "/exported")) exported.insert(name);
  for (const auto& [name, shard] : weight_map(dir + "/out")) upcycled.insert(name);
  EXPECT_EQ(exported, upcycled) << "import hf + export hf give the same tensors back";
  // A truncated shard: a one-line error, no output directory.
  const std::string shard = weight_map(in).begin()->second;
  const std::string bytes = read_file(in + "/" + shard);
  write_file_atomic(in + "/" + shard, bytes.substr(0, bytes.size() / 2));
  run = run_cli("upcycle " + in + " " + dir + "/out2 --experts 4");
  EXPECT_NE(run.exit_code, 0);
  EXPECT_EQ(lines(run.output), 1) << run.output;
  EXPECT_NE(run.output.find(shard), std::string::npos) << run.output;
  EXPECT_FALSE(path_exists(dir + "/out2"));
  // Options that only a Hugging Face input takes, and bad sizes.
  run = run_cli("upcycle " + dir + "/imported " + dir + "/out3 --experts 4 --dtype bf16");
  EXPECT_NE(run.output.find("--dtype and --shard-size apply to a Hugging Face input"), std::string::npos) << run.output;
  run = run_cli("export hf " + dir + "/imported " + dir + "/out4 --shard-size 5XB");
  EXPECT_NE(run.output.find("size '5XB' is not a byte size"), std::string::npos) << run.output;
  EXPECT_FALSE(path_exists(dir + "/out3"));
  EXPECT_FALSE(path_exists(dir + "/out4"));
}

// A LLaMA-shaped bf16 checkpoint of 1.6 GB (d_model 2048, 24 layers, GQA,
// vocabulary 32000) upcycled to 8 experts (7.4 GB written in 2 GB shards)
// and grown to 32 wider layers by the CLI, the peak resident memory of each
// measured by the kernel (wait4).
TEST(HfUpcycle, AFewGigabyteCheckpointGrowsAndUpcyclesInBoundedMemory) {
  const std::string dir = temp_dir("hf_up_big");
  LmConfig c;
  c.vocab_size = 32000;
  c.d_model = 2048;
  c.n_layers = 24;
  c.n_heads = 16;
  c.n_kv_heads = 4;
  c.d_ffn = 2816;
  c.max_seq_len = 4096;
  c.qkv_bias = false;
  const std::string in = dir + "/in";
  make_dirs(in);
  {
    json config = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"vocab_size", c.vocab_size},
                   {"hidden_size", c.d_model}, {"intermediate_size", c.d_ffn}, {"num_hidden_layers", c.n_layers},
                   {"num_attention_heads", c.n_heads}, {"num_key_value_heads", c.n_kv_heads},
                   {"max_position_embeddings", c.max_seq_len}, {"rms_norm_eps", 1e-5}, {"rope_theta", 500000.0},
                   {"tie_word_embeddings", false}, {"torch_dtype", "bfloat16"}, {"bos_token_id", 1}};
    write_file_atomic(in + "/config.json", config.dump(2));
    std::vector<PlannedTensor> plan;
    int64_t seed = 0;
    for (const auto& [name, shape] : hf_tensor_shapes(c))
      plan.push_back({name, torch::kBFloat16, shape, [shape = shape, s = seed++] {
                        torch::manual_seed(s);
                        return torch::randn(shape).to(torch::kBFloat16);
                      },
                      nullptr});
    write_sharded_safetensors(in, plan, parse_byte_size("1GB"));
  }
  uint64_t in_bytes = 0;
  for (const auto& entry : std::filesystem::directory_iterator(in)) in_bytes += entry.file_size();
  // Each command reports its own peak resident memory (VmHWM, which starts
  // afresh at exec: the test process's memory is not in it).
  const CliRun run = run_cli("--threads 1 upcycle " + in + " " + dir + "/out --experts 8 --top-k 2 --shard-size 2GB");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const int64_t peak = megabytes_after(run.output, "peak memory ");
  uint64_t out_bytes = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir + "/out")) out_bytes += entry.file_size();
  std::cout << "upcycle of a " << in_bytes / 1e9 << " GB bf16 checkpoint to 8 experts: " << out_bytes / 1e9
            << " GB written, peak memory " << peak << " MB\n";
  const json index = json::parse(read_file(dir + "/out/model.safetensors.index.json"));
  const uint64_t expected_total = [&] {
    uint64_t n = 0;
    LmConfig moe = c;
    moe.moe.num_experts = 8;
    moe.moe.top_k = 2;
    for (const auto& [name, shape] : hf_tensor_shapes(moe)) {
      uint64_t t = 2;
      for (int64_t d : shape) t *= static_cast<uint64_t>(d);
      n += t;
    }
    return n;
  }();
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), expected_total);
  std::set<std::string> shards;
  for (const auto& [name, file] : index["weight_map"].items()) shards.insert(file.get<std::string>());
  EXPECT_GE(shards.size(), (expected_total + 1999999999) / 2000000000);
  for (int64_t s = 0; s < static_cast<int64_t>(shards.size()); ++s) {
    const std::string shard = dir + "/out/" + shard_file_name(s, static_cast<int64_t>(shards.size()));
    ASSERT_TRUE(path_exists(shard)) << shard;
    EXPECT_LE(std::filesystem::file_size(shard), 2000000000u + 1000000u) << shard;
  }
  {  // an expert is its dense source, byte for byte
    const std::string source = "model.layers.17.mlp.down_proj.weight";
    const std::string expert = "model.layers.17.block_sparse_moe.experts.7.w2.weight";
    const MappedSafetensors a(in + "/" + weight_map(in).at(source));
    const MappedSafetensors b(dir + "/out/" + index["weight_map"][expert].get<std::string>());
    EXPECT_TRUE(torch::equal(a.view(source), b.view(expert)));
  }
  // The bound: the process itself (LibTorch loaded) and three of the
  // largest tensor (the 131 MB embedding: its source pages, a copy, a
  // product), here a third of the input and a twentieth of the output.
  const CliRun bare = run_cli("--threads 1 info --system");
  const int64_t base = megabytes_after(bare.output, "memory: ");
  ASSERT_GT(base, 0) << bare.output;
  const int64_t largest = 2 * c.vocab_size * c.d_model / 1000000;
  const int64_t bound = base + 3 * largest;
  std::cout << "bound: the bare process " << base << " MB + 3 x the largest tensor (" << largest << " MB) = " << bound
            << " MB\n";
  EXPECT_GT(peak, 0) << run.output;
  if (kMemoryBoundsApply) {
    EXPECT_LT(peak, bound);
  }
  // The Mixtral directory imported as a MoEKit model directory (each
  // layer's 8 experts stacked into one tensor), in the same bound.
  const CliRun imported = run_cli("--threads 1 import hf " + dir + "/out " + dir + "/imported");
  ASSERT_EQ(imported.exit_code, 0) << imported.output;
  const int64_t import_peak = megabytes_after(imported.output, "peak memory ");
  std::cout << "import hf of the upcycled checkpoint: "
            << std::filesystem::file_size(dir + "/imported/model.safetensors") / 1e9 << " GB written, peak memory "
            << import_peak << " MB\n";
  EXPECT_GT(import_peak, 0) << imported.output;
  if (kMemoryBoundsApply) {
    EXPECT_LT(import_peak, bound);
  }
  {
    MappedSafetensors got(dir + "/imported/model.safetensors");
    const HfCheckpoint source(dir + "/out");
    EXPECT_TRUE(torch::equal(got.view("layers.23.mlp.experts.w2")[5],
                             source.view("model.layers.23.block_sparse_moe.experts.5.w2.weight")));
    EXPECT_EQ(got.entry("layers.0.mlp.experts.w1").dtype, torch::kBFloat16);
  }
  remove_path(dir + "/imported");
  remove_path(dir + "/out");
  // Scale-Up of the same checkpoint (AKI-Pro: wider FFN, 32 layers), in the same bound.
  const CliRun grow = run_cli("--threads 1 grow " + in + " " + dir +
                              "/grown --d-ffn 4224 --n-layers 32 --width aki --depth interpolate");
  ASSERT_EQ(grow.exit_code, 0) << grow.output;
  const int64_t grow_peak = megabytes_after(grow.output, "peak memory ");
  uint64_t grown_bytes = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir + "/grown")) grown_bytes += entry.file_size();
  std::cout << "grow of the same checkpoint to 32 layers, FFN 4224 (aki + interpolate): " << grown_bytes / 1e9
            << " GB written, peak memory " << grow_peak << " MB\n";
  EXPECT_GT(grow_peak, 0) << grow.output;
  if (kMemoryBoundsApply) {
    EXPECT_LT(grow_peak, bound);
  }
  remove_path(dir);
}
