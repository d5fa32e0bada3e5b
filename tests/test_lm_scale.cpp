// Scale-Up (grow), Scale-Out (upcycle) and the Hugging Face layout:
// function preservation where the method promises it, exact shapes and
// trainability for every method, exact round trips, and refusals.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "lm_test_util.h"
#include "moekit/core/model_dir.h"
#include "moekit/decode/lm_perplexity.h"
#include "moekit/models/lm/hf_llama.h"
#include "moekit/scale/grow.h"
#include "moekit/scale/upcycle.h"

using namespace moekit;

namespace {

LmWeights weights_of(LmModel& model) { return {model.config(), module_state(model)}; }

std::shared_ptr<LmModel> build(const LmWeights& w) {
  auto model = std::make_shared<LmModel>(w.config);
  load_module_state(*model, w.weights, "test");
  model->eval();
  return model;
}

torch::Tensor logits_of(LmModel& model, const torch::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  return model.forward(tokens);
}

// Trains a few steps at a fixed batch; returns the first and the last loss.
std::pair<double, double> train_a_little(LmModel& model, const torch::Tensor& batch) {
  model.train();
  torch::optim::Adam adam(model.parameters(), torch::optim::AdamOptions(3e-3));
  double first = 0, last = 0;
  for (int step = 0; step < 8; ++step) {
    adam.zero_grad();
    const LmLoss loss = model.loss(batch);
    loss.loss.backward();
    adam.step();
    (step == 0 ? first : last) = loss.ce.item<double>();
  }
  return {first, last};
}

}  // namespace

TEST(Grow, FpiWidthGrowthByAnIntegerFactorPreservesTheLogits) {
  for (bool tie : {false, true}) {
    for (int64_t factor : {2, 3}) {
      LmConfig c = tiny_lm_config();
      c.tie_embeddings = tie;
      torch::manual_seed(10);
      LmModel small(c);
      small.eval();
      GrowOptions o;
      o.d_model = c.d_model * factor;  // heads grow with it (head_dim kept), inside the 2 KV groups
      o.d_ffn = c.d_ffn * factor;
      const LmWeights grown = grow_lm(weights_of(small), o);
      EXPECT_EQ(grown.config.n_heads, c.n_heads * factor);
      EXPECT_EQ(grown.config.kv_heads(), c.kv_heads());
      const auto big = build(grown);
      const torch::Tensor tokens = random_tokens(2, 12, c.vocab_size, 11);
      EXPECT_LT(relative_diff(logits_of(small, tokens), logits_of(*big, tokens)), 1e-4)
          << "tie " << tie << " factor " << factor;
    }
  }
}

TEST(Grow, NonMultipleWidthIsOnlyApproximate) {
  // RMSNorm statistics change when units are copied unevenly: close, not exact.
  LmConfig c = tiny_lm_config();
  torch::manual_seed(12);
  LmModel small(c);
  small.eval();
  GrowOptions o;
  o.d_model = 48;  // 6 heads of 8: 3 per KV group
  o.d_ffn = 60;
  const auto big = build(grow_lm(weights_of(small), o));
  const torch::Tensor tokens = random_tokens(1, 10, c.vocab_size, 13);
  const double diff = relative_diff(logits_of(small, tokens), logits_of(*big, tokens));
  EXPECT_GT(diff, 1e-4);
  EXPECT_LT(diff, 0.5);
}

TEST(Grow, EveryMethodGivesTheRequestedShapeAndTrains) {
  LmConfig c = tiny_lm_config();
  torch::manual_seed(14);
  LmModel small(c);
  const torch::Tensor batch = random_tokens(4, 17, c.vocab_size, 15);
  for (auto width : {WidthGrowth::Fpi, WidthGrowth::Aki}) {
    for (auto depth : {DepthGrowth::Stack, DepthGrowth::Interpolate}) {
      GrowOptions o;
      o.d_model = 64;
      o.n_heads = 8;
      o.d_ffn = 96;
      o.n_layers = 5;
      o.width = width;
      o.depth = depth;
      const LmWeights grown = grow_lm(weights_of(small), o);
      EXPECT_EQ(grown.config.d_model, 64);
      EXPECT_EQ(grown.config.n_heads, 8);
      EXPECT_EQ(grown.config.d_ffn, 96);
      EXPECT_EQ(grown.config.n_layers, 5);
      const auto big = build(grown);  // every tensor name and shape checked
      EXPECT_EQ(module_state(*big).at("layers.4.mlp.w2.weight").sizes(), (std::vector<int64_t>{64, 96}));
      const auto [first, last] = train_a_little(*big, batch);
      EXPECT_TRUE(std::isfinite(first));
      EXPECT_LT(last, first) << "width " << static_cast<int>(width) << " depth " << static_cast<int>(depth);
    }
  }
}

TEST(Grow, DepthMapsAndAkiRows) {
  LmConfig c = tiny_lm_config();
  torch::manual_seed(16);
  LmModel small(c);
  const LmWeights w = weights_of(small);
  const std::string name = "self_attn.k_proj.weight";  // not widened: copied as is
  auto layer = [&](const LmWeights& m, int64_t l) { return m.weights.at("layers." + std::to_string(l) + "." + name); };
  GrowOptions o;
  o.n_layers = 7;
  o.depth = DepthGrowth::Stack;  // 0 1 2 0 1 2 0
  const LmWeights stacked = grow_lm(w, o);
  for (int64_t i = 0; i < 7; ++i) EXPECT_TRUE(torch::equal(layer(stacked, i), layer(w, i % 3))) << i;
  o.depth = DepthGrowth::Interpolate;  // floor(i * 3 / 7): 0 0 0 1 1 2 2
  const LmWeights interpolated = grow_lm(w, o);
  const int64_t expected[] = {0, 0, 0, 1, 1, 2, 2};
  for (int64_t i = 0; i < 7; ++i) EXPECT_TRUE(torch::equal(layer(interpolated, i), layer(w, expected[i]))) << i;
  // AKI: rows of new FFN units in block l come from block l + 1 (the last block from itself).
  GrowOptions wide;
  wide.d_ffn = 96;
  wide.width = WidthGrowth::Aki;
  const LmWeights aki = grow_lm(w, wide);
  const torch::Tensor w1_0 = aki.weights.at("layers.0.mlp.w1.weight"), w1_2 = aki.weights.at("layers.2.mlp.w1.weight");
  EXPECT_TRUE(torch::equal(w1_0.narrow(0, 0, 48), w.weights.at("layers.0.mlp.w1.weight")));
  EXPECT_TRUE(torch::equal(w1_0.narrow(0, 48, 48), w.weights.at("layers.1.mlp.w1.weight")));
  EXPECT_TRUE(torch::equal(w1_2.narrow(0, 48, 48), w.weights.at("layers.2.mlp.w1.weight")));
  // The down projection reads 2 copies of each unit: halved.
  EXPECT_TRUE(torch::allclose(aki.weights.at("layers.0.mlp.w2.weight").narrow(1, 0, 48),
                              w.weights.at("layers.0.mlp.w2.weight") / 2));
}

TEST(Grow, BadTargetsAreRefused) {
  LmConfig c = tiny_lm_config();
  LmModel small(c);
  const LmWeights w = weights_of(small);
  auto error = [&](GrowOptions o) { return error_of([&] { grow_lm(w, o); }); };
  GrowOptions o;
  o.d_model = 16;
  EXPECT_NE(error(o).find("d_model 16 is smaller"), std::string::npos);
  o = {};
  o.n_layers = 2;
  EXPECT_NE(error(o).find("n_layers 2 is smaller"), std::string::npos);
  o = {};
  o.d_model = 48;
  o.n_heads = 4;
  EXPECT_NE(error(o).find("changes head_dim"), std::string::npos);
  o = {};
  o.d_model = 40;  // 5 heads of 8: not divisible by 2 KV groups
  EXPECT_NE(error(o).find("not divisible by the 2 KV groups"), std::string::npos);
  LmModel moe(tiny_lm_config(true));
  EXPECT_NE(error_of([&] { grow_lm(weights_of(moe), GrowOptions{}); }).find("has MoE layers"), std::string::npos);
}

TEST(Upcycle, TheMoeModelComputesTheDenseFunctionAtStepZero) {
  LmConfig c = tiny_lm_config();
  c.n_layers = 4;
  torch::manual_seed(20);
  LmModel dense(c);
  dense.eval();
  const torch::Tensor tokens = random_tokens(2, 15, c.vocab_size, 21);
  const torch::Tensor want = logits_of(dense, tokens);
  struct Case {
    int64_t experts, top_k, granularity, first, every;
  };
  for (const Case& k : {Case{8, 2, 1, 0, 1}, Case{4, 1, 1, 1, 2}, Case{8, 4, 2, 0, 1}, Case{6, 3, 3, 0, 1}}) {
    UpcycleOptions o;
    o.num_experts = k.experts;
    o.top_k = k.top_k;
    o.granularity = k.granularity;
    o.first_layer = k.first;
    o.every = k.every;
    const LmWeights moe = upcycle_lm(weights_of(dense), o);
    EXPECT_EQ(moe.config.expert_hidden(), c.d_ffn / k.granularity);
    const auto model = build(moe);
    EXPECT_LT(relative_diff(want, logits_of(*model, tokens)), 1e-5)
        << k.experts << " experts top-" << k.top_k << " granularity " << k.granularity;
    // Routers are fresh N(0, 0.02); MoE only where asked.
    const torch::Tensor gate = moe.weights.at("layers." + std::to_string(k.first) + ".mlp.gate.weight");
    EXPECT_NEAR(gate.std().item<double>(), 0.02, 0.004);
    if (k.every == 2) {
      EXPECT_TRUE(moe.weights.count("layers.0.mlp.w1.weight"));
    }
  }
}

TEST(Upcycle, BadOptionsAreRefused) {
  LmModel dense(tiny_lm_config());
  const LmWeights w = weights_of(dense);
  auto error = [&](UpcycleOptions o) { return error_of([&] { upcycle_lm(w, o); }); };
  UpcycleOptions o;
  o.granularity = 5;  // 48 % 5 != 0
  EXPECT_NE(error(o).find("must divide d_ffn"), std::string::npos);
  o = {};
  o.top_k = 9;
  EXPECT_NE(error(o).find("top_k 9"), std::string::npos);
  o = {};
  o.first_layer = 3;
  EXPECT_NE(error(o).find("first_layer"), std::string::npos);
  const LmWeights moe = upcycle_lm(w, UpcycleOptions{});
  EXPECT_NE(error_of([&] { upcycle_lm(moe, UpcycleOptions{}); }).find("already an MoE model"), std::string::npos);
}

TEST(HfLayout, ExactRoundTrips) {
  const std::string dir = temp_dir("hf");
  for (int variant = 0; variant < 3; ++variant) {
    LmConfig c = tiny_lm_config(variant == 2);
    c.qkv_bias = variant == 1;  // llama, qwen2, mixtral
    c.tie_embeddings = variant == 1;
    torch::manual_seed(30 + variant);
    LmModel model(c);
    const LmWeights w = weights_of(model);
    const std::string hf = dir + "/hf" + std::to_string(variant);
    export_hf_llama(w, hf);
    const nlohmann::json j = nlohmann::json::parse(read_file(hf + "/config.json"));
    EXPECT_EQ(j["model_type"], (std::vector<std::string>{"llama", "qwen2", "mixtral"}[variant]));
    const TensorMap files = read_safetensors(hf + "/model.safetensors").tensors;
    EXPECT_TRUE(files.count("model.layers.0.self_attn.q_proj.weight"));
    if (variant == 2) {
      EXPECT_TRUE(files.count("model.layers.2.block_sparse_moe.experts.3.w2.weight"));
      EXPECT_TRUE(files.count("model.layers.0.block_sparse_moe.gate.weight"));
    } else {
      EXPECT_TRUE(files.count("model.layers.1.mlp.gate_proj.weight"));
      EXPECT_EQ(files.count("lm_head.weight"), variant == 1 ? 0u : 1u);
    }
    const LmWeights back = import_hf_llama(hf);
    EXPECT_EQ(back.config.to_string(), c.to_string());
    ASSERT_EQ(back.weights.size(), w.weights.size());
    for (const auto& [name, t] : w.weights) EXPECT_TRUE(torch::equal(t, back.weights.at(name))) << name;
  }
}

TEST(HfLayout, ForeignAndCorruptInputsAreRefused) {
  const std::string dir = temp_dir("hf_bad");
  LmModel model(tiny_lm_config());
  export_hf_llama(weights_of(model), dir + "/ok");
  auto with_config = [&](const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
    const std::string d = dir + "/" + name;
    make_dirs(d);
    nlohmann::json j = nlohmann::json::parse(read_file(dir + "/ok/config.json"));
    edit(j);
    write_file_atomic(d + "/config.json", j.dump());
    write_file_atomic(d + "/model.safetensors", read_file(dir + "/ok/model.safetensors"));
    return error_of([&] { import_hf_llama(d); });
  };
  EXPECT_NE(with_config("rope", [](auto& j) { j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}}; }).find("rope_scaling"),
            std::string::npos);
  EXPECT_NE(with_config("gpt2", [](auto& j) { j["model_type"] = "gpt2"; }).find("'gpt2' is not supported"), std::string::npos);
  EXPECT_NE(with_config("act", [](auto& j) { j["hidden_act"] = "gelu"; }).find("hidden_act"), std::string::npos);
  EXPECT_NE(with_config("noheads", [](auto& j) { j.erase("num_attention_heads"); }).find("num_attention_heads"),
            std::string::npos);
  // Weights for another shape: named by the loader when the model is built.
  const std::string wrong = with_config("wide", [](auto& j) { j["intermediate_size"] = 64; });
  EXPECT_EQ(wrong, "");
  EXPECT_NE(error_of([&] { build(import_hf_llama(dir + "/wide")); }).find("mlp.w1.weight"), std::string::npos);
  make_dirs(dir + "/broken");
  write_file_atomic(dir + "/broken/config.json", "{not json");
  EXPECT_NE(error_of([&] { import_hf_llama(dir + "/broken"); }).find("invalid JSON"), std::string::npos);
  make_dirs(dir + "/trunc");
  write_file_atomic(dir + "/trunc/config.json", read_file(dir + "/ok/config.json"));
  const std::string bytes = read_file(dir + "/ok/model.safetensors");
  write_file_atomic(dir + "/trunc/model.safetensors", bytes.substr(0, bytes.size() / 2));
  EXPECT_NE(error_of([&] { import_hf_llama(dir + "/trunc"); }), "");
  // An MoE model with MoE in only some layers has no Mixtral form.
  LmConfig partial = tiny_lm_config(true);
  partial.qkv_bias = false;
  partial.moe.every = 2;
  LmModel p(partial);
  EXPECT_NE(error_of([&] { export_hf_llama(weights_of(p), dir + "/p"); }).find("every layer"), std::string::npos);
}

TEST(LmDir, ForeignAndCorruptModelDirectories) {
  const std::string dir = temp_dir("lm_dir");
  LmModel model(tiny_lm_config());
  save_lm_dir(weights_of(model), dir + "/lm");
  EXPECT_NO_THROW(load_lm_model(dir + "/lm"));
  // Another family's directory.
  YAML::Node config;
  config["model_type"] = "ffn_stack";
  config["architecture"] = YAML::Node(YAML::NodeType::Map);
  save_model_dir(dir + "/other", config, {});
  EXPECT_NE(error_of([&] { read_lm_dir(dir + "/other"); }).find("not an 'lm'"), std::string::npos);
  // Truncated weights, and weights of another architecture.
  make_dirs(dir + "/trunc");
  write_file_atomic(dir + "/trunc/config.yaml", read_file(dir + "/lm/config.yaml"));
  const std::string bytes = read_file(dir + "/lm/model.safetensors");
  write_file_atomic(dir + "/trunc/model.safetensors", bytes.substr(0, bytes.size() - 100));
  EXPECT_NE(error_of([&] { load_lm_model(dir + "/trunc"); }), "");
  LmWeights deeper = weights_of(model);
  deeper.config.n_layers = 4;
  const std::string err = error_of([&] { save_lm_dir(deeper, dir + "/deeper"); });
  EXPECT_NE(err.find("layers.3"), std::string::npos) << err;
}

TEST(HfLayout, AnIndependentPyTorchImplementationComputesTheSameLogits) {
  // bench/lm_pytorch.py: HF transformers' LLaMA / Qwen2 / Mixtral forward in
  // PyTorch eager, reading the exported directory with bench/safetensors_io.py.
  const std::string source = std::string(__FILE__);
  const std::string script = source.substr(0, source.rfind("/tests/")) + "/bench/lm_pytorch.py";
  if (!path_exists(script) || std::system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "needs /usr/bin/python3 with torch (python3-torch) and " << script;
  const std::string dir = temp_dir("hf_pytorch");
  const std::vector<int64_t> tokens = {5, 17, 3, 42, 8, 8, 0, 49, 21, 13};
  std::string csv;
  for (int64_t t : tokens) csv += (csv.empty() ? "" : ",") + std::to_string(t);
  for (int variant = 0; variant < 3; ++variant) {
    LmConfig c = tiny_lm_config(variant == 2);
    c.qkv_bias = variant == 1;
    c.tie_embeddings = variant == 1;
    torch::manual_seed(40 + variant);
    LmModel model(c);
    model.eval();
    const std::string hf = dir + "/v" + std::to_string(variant);
    export_hf_llama(weights_of(model), hf);
    const std::string out = hf + "/logits.f32";
    ASSERT_EQ(std::system(("/usr/bin/python3 " + script + " logits " + hf + " --tokens " + csv + " --out " + out).c_str()), 0);
    const std::string bytes = read_file(out);
    const int64_t T = static_cast<int64_t>(tokens.size());
    ASSERT_EQ(bytes.size(), static_cast<size_t>(T * c.vocab_size * 4));
    const torch::Tensor theirs =
        torch::from_blob(const_cast<char*>(bytes.data()), {T, c.vocab_size}, torch::kFloat).clone();
    const torch::Tensor ours = logits_of(model, torch::tensor(tokens, torch::kLong).view({1, T}))[0];
    EXPECT_LT(relative_diff(theirs, ours), 1e-5) << "variant " << variant;
  }
}

TEST(LmPerplexity, SlidingWindowsMatchHuggingFacesRecipeInPyTorch) {
  // bench/lm_pytorch.py perplexity: HF's recipe (labels -100 where an
  // earlier window scored them, loss shifted inside) on the exported model.
  const std::string source = std::string(__FILE__);
  const std::string script = source.substr(0, source.rfind("/tests/")) + "/bench/lm_pytorch.py";
  const bool have_torch =
      path_exists(script) && std::system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") == 0;
  const std::string dir = temp_dir("lm_perplexity");
  const std::vector<int64_t> ids = [] {
    const torch::Tensor t = random_tokens(1, 101, 50, 7)[0].contiguous();
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  }();
  std::string listed;
  for (int64_t t : ids) listed += std::to_string(t) + " ";
  write_file_atomic(dir + "/ids.txt", listed);
  for (bool moe : {false, true}) {
    LmConfig c = tiny_lm_config(moe);
    c.init_std = 1.0;  // peaked predictions, so that context and window placement matter
    c.qkv_bias = !moe; // Qwen2 dense, Mixtral MoE (which has no QKV bias)
    torch::manual_seed(moe ? 61 : 60);
    LmModel model(c);
    model.eval();
    // One window over everything: the model's own loss on the stream.
    std::vector<int64_t> head(ids.begin(), ids.begin() + 40);
    const PerplexityResult all = lm_perplexity(model, head, {40, 40, 1});
    EXPECT_EQ(all.tokens, 39);
    // float32 sums of two code paths (the inference kernels, LibTorch's):
    // equal to ~1e-6 relative; a misplaced window moves nll by far more.
    const double loss = model.loss(torch::tensor(head, torch::kLong).view({1, 40})).ce.item<double>();
    EXPECT_NEAR(all.nll, loss, 1e-5 * std::max(1.0, std::abs(loss)));
    // Windows: overlapping (each token scored once), disjoint, and a
    // stride that leaves a short last window; batching changes nothing.
    const PerplexityResult overlapping = lm_perplexity(model, ids, {16, 8, 4});
    EXPECT_EQ(overlapping.tokens, 100);
    EXPECT_NEAR(lm_perplexity(model, ids, {16, 8, 1}).nll, overlapping.nll, 1e-6);
    const PerplexityResult disjoint = lm_perplexity(model, ids, {16, 16, 3});
    EXPECT_EQ(disjoint.tokens, 101 - 7);  // each window's first token has no context
    EXPECT_GT(std::abs(disjoint.nll - overlapping.nll), 1e-3) << "window placement should matter";
    EXPECT_NEAR(overlapping.perplexity, std::exp(overlapping.nll), 1e-9 * overlapping.perplexity);
    if (!have_torch) continue;
    const std::string hf = dir + (moe ? "/moe" : "/dense");
    export_hf_llama(weights_of(model), hf);
    for (auto [window, stride] : {std::pair<int64_t, int64_t>{16, 8}, {16, 16}, {24, 7}, {40, 20}}) {
      const PerplexityResult ours = lm_perplexity(model, ids, {window, stride, 4});
      const std::string out = hf + "/ppl.json";
      ASSERT_EQ(std::system(("/usr/bin/python3 " + script + " perplexity " + hf + " --tokens-file " + dir +
                             "/ids.txt --window " + std::to_string(window) + " --stride " + std::to_string(stride) +
                             " > " + out).c_str()),
                0);
      const nlohmann::json theirs = nlohmann::json::parse(read_file(out));
      EXPECT_EQ(ours.tokens, theirs["tokens"].get<int64_t>()) << window << "/" << stride;
      EXPECT_NEAR(ours.nll, theirs["nll"].get<double>(), 1e-5 * ours.nll) << window << "/" << stride;
    }
  }
  if (!have_torch) GTEST_SKIP() << "checked without the PyTorch reference: needs /usr/bin/python3 with torch";
}

TEST(LmPerplexity, BadWindowsAndStreamsAreRefusedByName) {
  LmModel model(tiny_lm_config());
  const std::vector<int64_t> ids = {1, 2, 3, 4, 5};
  EXPECT_NE(error_of([&] { lm_perplexity(model, ids, {1, 1, 1}); }).find("--window must be in [2, 40]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lm_perplexity(model, ids, {41, 1, 1}); }).find("--window"), std::string::npos);
  EXPECT_NE(error_of([&] { lm_perplexity(model, ids, {8, 9, 1}); }).find("--stride must be in [1, --window = 8]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { lm_perplexity(model, ids, {8, 4, 0}); }).find("--batch-size"), std::string::npos);
  EXPECT_NE(error_of([&] { lm_perplexity(model, {3}, {}); }).find("at least 2"), std::string::npos);
  EXPECT_NE(error_of([&] { lm_perplexity(model, {3, 50}, {}); }).find("token 1 is id 50"), std::string::npos);
  // Defaults: the model's context, half of it as stride.
  const PerplexityResult r = lm_perplexity(model, ids, {});
  EXPECT_EQ(r.window, 40);
  EXPECT_EQ(r.stride, 20);
  EXPECT_EQ(r.tokens, 4);
}
