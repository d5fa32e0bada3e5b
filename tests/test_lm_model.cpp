// The LLaMA-style LM: each part against a naive reference (RMSNorm, rotary
// positions, grouped-query causal attention), gradients against finite
// differences, the KV cache against the full forward, sampling rules,
// the tokenizer round trip, and exact resume of LM training.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <optional>

#include "lm_test_util.h"
#include "resume_test_util.h"
#include "moekit/core/model_dir.h"
#include "moekit/data/lm_tokenizer.h"
#include "moekit/data/sentencepiece.h"
#include "moekit/decode/lm_generate.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/linear.h"
#include "moekit/train/lm_task.h"

using namespace moekit;

namespace {

// Naive attention block output (before o_proj) computed head by head, position by position.
torch::Tensor naive_attention(LmAttentionImpl& attn, const LmConfig& c, const torch::Tensor& x) {
  const int64_t T = x.size(1), H = c.n_heads, KV = c.kv_heads(), hd = c.head_dim();
  const torch::Tensor q = attn.q_proj(x)[0], k = attn.k_proj(x)[0], v = attn.v_proj(x)[0];  // [T, *]
  torch::Tensor out = torch::zeros({T, H * hd});
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / (H / KV);  // HF repeat_kv: query head h reads KV head h / (H / KV)
    for (int64_t t = 0; t < T; ++t) {
      auto rot = [&](torch::Tensor vec, int64_t pos) {  // rotate-half RoPE by hand
        torch::Tensor r = torch::empty_like(vec);
        for (int64_t i = 0; i < hd / 2; ++i) {
          const double angle = pos * std::pow(c.rope_theta, -2.0 * i / hd);
          const double a = vec[i].item<double>(), b = vec[i + hd / 2].item<double>();
          r[i] = a * std::cos(angle) - b * std::sin(angle);
          r[i + hd / 2] = b * std::cos(angle) + a * std::sin(angle);
        }
        return r;
      };
      const torch::Tensor qt = rot(q[t].narrow(0, h * hd, hd), t);
      std::vector<double> scores;
      for (int64_t s = 0; s <= t; ++s)
        scores.push_back((qt * rot(k[s].narrow(0, g * hd, hd), s)).sum().item<double>() / std::sqrt(hd));
      const double top = *std::max_element(scores.begin(), scores.end());
      double z = 0;
      for (double& sc : scores) z += (sc = std::exp(sc - top));
      for (int64_t s = 0; s <= t; ++s)
        out[t].narrow(0, h * hd, hd) += v[s].narrow(0, g * hd, hd) * (scores[static_cast<size_t>(s)] / z);
    }
  }
  return out;
}

}  // namespace

TEST(LmModel, RmsNormMatchesItsDefinition) {
  RMSNorm norm(8, 1e-5);
  torch::NoGradGuard no_grad;
  norm->weight.uniform_(0.5, 1.5);
  const torch::Tensor x = torch::randn({3, 8});
  for (int64_t r = 0; r < 3; ++r) {
    double ms = 0;
    for (int64_t i = 0; i < 8; ++i) ms += std::pow(x[r][i].item<double>(), 2) / 8;
    for (int64_t i = 0; i < 8; ++i)
      EXPECT_NEAR(norm(x)[r][i].item<double>(), x[r][i].item<double>() / std::sqrt(ms + 1e-5) * norm->weight[i].item<double>(),
                  1e-5);
  }
}

TEST(LmModel, GroupedQueryAttentionMatchesANaiveLoop) {
  for (int64_t kv : {4, 2, 1}) {
    LmConfig c = tiny_lm_config();
    c.n_kv_heads = kv;
    torch::manual_seed(1);
    LmAttention attn(c);
    torch::NoGradGuard no_grad;
    const torch::Tensor x = torch::randn({1, 6, c.d_model});
    const RotaryTables rope = rotary_tables(0, 6, c.head_dim(), c.rope_theta);
    const torch::Tensor got = attn->forward(x, rope, 0, nullptr, nullptr);
    const torch::Tensor want = attn->o_proj(naive_attention(*attn, c, x)).unsqueeze(0);
    EXPECT_LT((got - want).abs().max().item<double>(), 1e-5) << "kv heads " << kv;
  }
}

TEST(LmModel, KvCacheEqualsTheFullForward) {
  for (bool moe : {false, true}) {
    for (bool tie : {false, true}) {
      LmConfig c = tiny_lm_config(moe);
      c.tie_embeddings = tie;
      torch::manual_seed(2);
      LmModel model(c);
      model.eval();
      torch::NoGradGuard no_grad;
      const torch::Tensor tokens = random_tokens(2, 13, c.vocab_size, 3);
      const torch::Tensor full = model.forward(tokens);  // [2, 13, V]
      LmKvCache cache = model.make_cache(2, 20);
      std::vector<torch::Tensor> pieces;
      int64_t at = 0;
      for (int64_t len : {5, 1, 4, 1, 2}) {
        pieces.push_back(model.forward(tokens.narrow(1, at, len), &cache));
        at += len;
      }
      EXPECT_EQ(cache.length, 13);
      EXPECT_LT(relative_diff(full, torch::cat(pieces, 1)), 1e-5) << "moe " << moe << " tie " << tie;
      LmKvCache again = model.make_cache(2, 20);
      model.forward(tokens.narrow(1, 0, 12), &again);
      const torch::Tensor last = model.forward(tokens.narrow(1, 12, 1), &again, /*last_only=*/true);
      EXPECT_LT(relative_diff(full.narrow(1, 12, 1), last), 1e-5);
    }
  }
}

// The CPU decoding fast paths (RMSNorm and rotary as loops, one step's
// attention over the cache in one loop) against the general form of the
// same model, which runs where gradients are recorded: the same logits
// step by step, every fast path counted.
TEST(LmModel, DecodingFastPathsEqualTheGeneralForm) {
  for (bool moe : {false, true}) {
    LmConfig c = tiny_lm_config(moe);
    c.d_model = 48;  // head_dim 12, not a power of two: the score scale is sqrt(12)
    torch::manual_seed(5);
    LmModel model(c);
    model.eval();
    const torch::Tensor tokens = random_tokens(2, 9, c.vocab_size, 6);
    auto decode = [&](bool fast) {
      std::optional<torch::NoGradGuard> no_grad;
      if (fast) no_grad.emplace();
      LmKvCache cache = model.make_cache(2, 12);
      std::vector<torch::Tensor> steps = {model.forward(tokens.narrow(1, 0, 3), &cache).detach()};
      for (int64_t t = 3; t < 9; ++t) steps.push_back(model.forward(tokens.narrow(1, t, 1), &cache).detach());
      return torch::cat(steps, 1);
    };
    const int64_t norms = fast_path_count("lm.rms_norm"), rotary = fast_path_count("lm.rotary"),
                  steps = fast_path_count("lm.attention_step");
    const torch::Tensor fast = decode(true);
    EXPECT_EQ(fast_path_count("lm.rms_norm") - norms, 7 * (2 * c.n_layers + 1));
    EXPECT_EQ(fast_path_count("lm.rotary") - rotary, 7 * 2 * c.n_layers);
    EXPECT_EQ(fast_path_count("lm.attention_step") - steps, 6 * c.n_layers);
    const torch::Tensor general = decode(false);
    EXPECT_EQ(fast_path_count("lm.attention_step") - steps, 6 * c.n_layers) << "gradients recorded: no fast path";
    EXPECT_LT(relative_diff(general, fast), 1e-6) << "moe " << moe;
  }
}

TEST(LmModel, GradientsMatchFiniteDifferences) {
  LmConfig c = tiny_lm_config();
  c.n_layers = 1;
  c.d_model = 8;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.d_ffn = 12;
  c.vocab_size = 11;
  torch::manual_seed(4);
  LmModel model(c);
  model.to(torch::kDouble);
  const torch::Tensor tokens = random_tokens(2, 7, c.vocab_size, 5);
  model.zero_grad();
  model.loss(tokens).loss.backward();
  for (const auto& item : model.named_parameters()) {
    torch::Tensor p = item.value();
    const torch::Tensor flat = p.detach().view({-1});
    const torch::Tensor grad = p.grad().view({-1});
    for (int64_t i : {int64_t{0}, flat.numel() / 2, flat.numel() - 1}) {
      const double saved = flat[i].item<double>(), h = 1e-6;
      torch::NoGradGuard no_grad;
      flat[i] = saved + h;
      const double up = model.loss(tokens).loss.item<double>();
      flat[i] = saved - h;
      const double down = model.loss(tokens).loss.item<double>();
      flat[i] = saved;
      EXPECT_NEAR(grad[i].item<double>(), (up - down) / (2 * h), 1e-6) << item.key() << "[" << i << "]";
    }
  }
}

TEST(LmModel, ParameterNamesAndCounts) {
  LmModel dense(tiny_lm_config());
  const TensorMap names = module_state(dense);
  for (const char* name : {"embed_tokens.weight", "layers.2.self_attn.q_proj.bias", "layers.0.self_attn.o_proj.weight",
                           "layers.1.mlp.w3.weight", "layers.0.post_attention_layernorm.weight", "norm.weight",
                           "lm_head.weight"})
    EXPECT_TRUE(names.count(name)) << name;
  EXPECT_FALSE(names.count("layers.0.self_attn.o_proj.bias"));
  LmConfig moe_config = tiny_lm_config(true);
  moe_config.moe.every = 2;
  LmModel moe(moe_config);
  const TensorMap moe_names = module_state(moe);
  EXPECT_TRUE(moe_names.count("layers.0.mlp.experts.w1"));
  EXPECT_TRUE(moe_names.count("layers.1.mlp.w1.weight"));
  EXPECT_TRUE(moe_names.count("layers.2.mlp.gate.weight"));
  // Active parameters: 2 of 4 experts in layers 0 and 2.
  const ParameterCount count = count_parameters(moe);
  const int64_t expert = 3 * 32 * 48;
  EXPECT_EQ(count.total - count.active, 2 * 2 * expert);
}

TEST(LmGenerate, GreedyEqualsArgmaxOfTheFullForward) {
  LmConfig c = tiny_lm_config(true);
  torch::manual_seed(6);
  LmModel model(c);
  model.eval();
  const std::vector<int64_t> prompt = {3, 14, 15, 9};
  SamplingOptions o;
  o.max_new_tokens = 8;
  o.stop_at_eos = false;
  std::vector<int64_t> streamed;
  const auto out = generate(model, prompt, o, -1, [&](int64_t id) { streamed.push_back(id); });
  EXPECT_EQ(out, streamed);
  ASSERT_EQ(out.size(), 8u);
  std::vector<int64_t> seq = prompt;
  torch::NoGradGuard no_grad;
  for (int64_t step = 0; step < 8; ++step) {
    const torch::Tensor logits = model.forward(torch::tensor(seq, torch::kLong).view({1, -1}));
    const int64_t next = logits[0][-1].argmax().item<int64_t>();
    EXPECT_EQ(out[static_cast<size_t>(step)], next) << "step " << step;
    seq.push_back(next);
  }
  // The context bounds the output: 40 positions, a 36-token prompt.
  std::vector<int64_t> long_prompt(36, 1);
  o.max_new_tokens = 100;
  EXPECT_EQ(generate(model, long_prompt, o, -1).size(), 5u);
  std::vector<int64_t> too_long(40, 1);
  EXPECT_NE(error_of([&] { generate(model, too_long, o, -1); }).find("the prompt has 40 tokens"), std::string::npos);
  EXPECT_NE(error_of([&] { generate(model, {1, 50}, o, -1); }).find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(error_of([&] { generate(model, {}, o, -1); }).find("empty prompt"), std::string::npos);
}

TEST(LmGenerate, SamplingRules) {
  const torch::Tensor logits = torch::tensor({1.0f, 3.0f, 2.0f, 0.5f});
  at::Generator gen = at::detail::createCPUGenerator(1);
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_k = 1;
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_token(logits, o, gen), 1);
  o.top_k = 2;  // only ids 1 and 2 can come out
  std::set<int64_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(sample_token(logits, o, gen));
  EXPECT_EQ(seen, (std::set<int64_t>{1, 2}));
  o.top_k = 0;
  o.top_p = 0.5;  // p(1) = 0.61 > 0.5 alone
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_token(logits, o, gen), 1);
  o.top_p = 0.9;  // p(1) + p(2) = 0.84 < 0.9: three tokens
  seen.clear();
  for (int i = 0; i < 400; ++i) seen.insert(sample_token(logits, o, gen));
  EXPECT_EQ(seen, (std::set<int64_t>{0, 1, 2}));
  // The same seed gives the same samples.
  LmConfig c = tiny_lm_config();
  torch::manual_seed(7);
  LmModel model(c);
  model.eval();
  SamplingOptions s;
  s.temperature = 1.0;
  s.max_new_tokens = 10;
  s.seed = 42;
  EXPECT_EQ(generate(model, {1, 2, 3}, s, -1), generate(model, {1, 2, 3}, s, -1));
  // A vocabulary limit (a Hub model's padded embedding rows): ids past it
  // never come out, which they do without it.
  s.max_new_tokens = 30;
  s.stop_at_eos = false;
  const std::vector<int64_t> free = generate(model, {1, 2, 3}, s, -1);
  EXPECT_TRUE(std::any_of(free.begin(), free.end(), [](int64_t id) { return id >= 40; }));
  s.vocab_limit = 40;
  for (double temperature : {0.0, 1.0}) {
    s.temperature = temperature;
    for (int64_t id : generate(model, {1, 2, 3}, s, -1)) EXPECT_LT(id, 40) << "temperature " << temperature;
  }
}

TEST(LmConfig, BadConfigsAreRefusedByName) {
  auto error = [](const std::string& yaml) {
    return error_of([&] { LmConfig::from_yaml(YAML::Load(yaml), "lm.yaml"); });
  };
  EXPECT_NE(error("{vocab_size: 10, d_model: 32, n_heads: 4, n_kv_heads: 3}").find("not divisible by n_kv_heads"),
            std::string::npos);
  EXPECT_NE(error("{vocab_size: 10, d_model: 30, n_heads: 4}").find("not divisible by n_heads"), std::string::npos);
  EXPECT_NE(error("{vocab_size: 10, d_model: 32, n_heads: 4, dropout: 0.1}").find("unknown option 'dropout'"),
            std::string::npos);
  EXPECT_NE(error("{vocab_size: 10, moe: {num_experts: 4, top_k: 5}}").find("top_k"), std::string::npos);
  EXPECT_NE(error("{vocab_size: 10, n_layers: x}").find("n_layers"), std::string::npos);
  EXPECT_NE(error("{d_model: 32}").find("vocab_size"), std::string::npos);
  const LmConfig c = tiny_lm_config(true);
  const LmConfig back = LmConfig::from_yaml(c.to_yaml(), "round trip");
  EXPECT_EQ(back.to_string(), c.to_string());
}

TEST(LmTokenizer, TrainEncodeDecode) {
  if (!have_sentencepiece() || std::system("command -v spm_train > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "SentencePiece tools (package sentencepiece) not installed";
  const std::string dir = temp_dir("lm_tok");
  std::string text;
  for (int i = 0; i < 200; ++i)
    text += "the quick brown fox " + std::to_string(i) + " jumps over the lazy dog number " + std::to_string(i * 7) + "\n";
  write_file_atomic(dir + "/corpus.txt", text);
  TokenizerTrainOptions o;
  o.input = dir + "/corpus.txt";
  o.output = dir + "/tok.model";
  o.vocab_size = 320;  // 256 byte pieces + specials + a few merges
  train_tokenizer(o);
  const LmTokenizer tok(o.output);
  EXPECT_EQ(tok.vocab_size(), 320);
  // spm_train's defaults: <unk> 0, <s> 1, </s> 2; ids are piece positions.
  ASSERT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.piece(tok.eos_id()), "</s>");
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.piece(tok.bos_id()), "<s>");
  // Byte fallback: characters never seen in training survive the round trip.
  for (const std::string s : {"the lazy fox 123", "Grüße, 猫!"}) {
    const auto ids = tok.encode({s}).at(0);
    EXPECT_EQ(tok.decode(ids), s);
  }
  const auto stream = tok.encode_file(o.input);
  EXPECT_EQ(std::count(stream.begin(), stream.end(), tok.eos_id()), 200);
  // Bad input.
  o.vocab_size = 100000;
  EXPECT_NE(error_of([&] { train_tokenizer(o); }).find("spm_train failed"), std::string::npos);
  write_file_atomic(dir + "/junk.model", "not a model");
  EXPECT_NE(error_of([&] { LmTokenizer t(dir + "/junk.model"); }).find("not a SentencePiece model"), std::string::npos);
  EXPECT_NE(error_of([&] { tok.decode({320}); }).find("outside the vocabulary"), std::string::npos);
}

TEST(LmTraining, KilledRunResumesToTheSameWeights) {
  const std::string dir = temp_dir("lm_resume");
  LmConfig c = tiny_lm_config(true);
  const std::vector<int64_t> stream = patterned_tokens(2000, 13), valid = patterned_tokens(300, 11);
  LmDataOptions data;
  data.seq_len = 16;
  data.batch_size = 8;
  TrainerOptions o;
  o.epochs = 3;
  o.lr = 0.01;
  o.scheduler = "cosine";
  o.warmup_steps = 3;
  o.total_steps = 30;  // inside epoch 3 (15 batches an epoch)
  o.eval_interval = 10;
  o.log_interval = 100;
  o.average_last = 1;
  o.seed = 9;
  auto run = [&](const std::string& exp, int64_t max_steps, bool resume) {
    torch::manual_seed(o.seed);
    auto model = std::make_shared<LmModel>(c);
    LmTrainTask task(model, stream, valid, data, o.seed, "");
    TrainerOptions oo = o;
    oo.max_steps = max_steps;
    return train(task, oo, exp, resume);
  };
  TrainSummary whole;
  expect_killed_run_resumes(dir, 17, 30, run, &whole);
  EXPECT_LT(whole.last_validation.at("loss"), std::log(50.0));
  // Validation every 10 steps: three records with token counts.
  const std::string metrics = read_file(dir + "/whole/metrics.jsonl");
  EXPECT_NE(metrics.find("\"cv_loss\""), std::string::npos);
  EXPECT_NE(metrics.find("\"tokens\":3840"), std::string::npos);  // 30 steps x 8 x 16
}

TEST(LmTraining, DataErrors) {
  auto model = std::make_shared<LmModel>(tiny_lm_config());
  LmDataOptions data;
  data.seq_len = 16;
  data.batch_size = 4;
  std::vector<int64_t> ok(200, 1), bad(200, 1);
  bad[10] = 77;
  EXPECT_NE(error_of([&] { LmTrainTask(model, bad, ok, data, 1, ""); }).find("token id 77"), std::string::npos);
  EXPECT_NE(error_of([&] { LmTrainTask(model, std::vector<int64_t>(20, 1), ok, data, 1, ""); }).find("fewer than one batch"),
            std::string::npos);
  data.seq_len = 64;
  EXPECT_NE(error_of([&] { LmTrainTask(model, ok, ok, data, 1, ""); }).find("max_seq_len"), std::string::npos);
}

TEST(SmallRowsLinear, EqualsTorchLinear) {
  torch::NoGradGuard no_grad;
  for (int64_t rows : {1, 3, 4, 7}) {
    for (bool with_bias : {false, true}) {
      const torch::Tensor x = torch::randn({1, rows, 37});
      const torch::Tensor w = torch::randn({131, 37});
      const torch::Tensor b = with_bias ? torch::randn({131}) : torch::Tensor();
      const torch::Tensor got = fast_linear(x, w, b);
      EXPECT_EQ(got.sizes(), (std::vector<int64_t>{1, rows, 131}));
      EXPECT_LT((got - torch::nn::functional::linear(x, w, b)).abs().max().item<double>(), 1e-4) << rows;
    }
  }
  // With autograd on, torch's path (gradients flow).
  torch::AutoGradMode grad(true);
  const torch::Tensor w = torch::randn({5, 3}, torch::requires_grad());
  fast_linear(torch::randn({1, 3}), w).sum().backward();
  EXPECT_TRUE(w.grad().defined());
}
