// The U2++ model on random weights: streaming equals the chunk-masked
// forward for many configurations, padding does not leak, losses equal
// their definitions, and a few steps of training lower the loss.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "moekit/models/asr/asr_model.h"

using namespace moekit;

namespace {

struct Variant {
  const char* name;
  int64_t rate;
  bool moe, rel_pos, macaron, cnn, layer_norm, normalize_before;
};

AsrConfig small_config(const Variant& v, bool causal) {
  AsrConfig c;
  c.vocab_size = 12;
  c.encoder.input_dim = 20;
  c.fbank.num_mel_bins = 20;
  c.encoder.output_size = 16;
  c.encoder.attention_heads = 2;
  c.encoder.num_blocks = 2;
  c.encoder.ffn.hidden = 24;
  c.encoder.ffn.moe = v.moe;
  c.encoder.ffn.n_expert = 4;
  c.encoder.ffn.n_expert_activated = 2;
  c.encoder.subsampling_rate = v.rate;
  c.encoder.rel_pos = v.rel_pos;
  c.encoder.macaron_style = v.macaron;
  c.encoder.use_cnn_module = v.cnn;
  c.encoder.cnn_layer_norm = v.layer_norm;
  c.encoder.cnn_module_kernel = causal ? 4 : 5;
  c.encoder.causal = causal;
  c.encoder.normalize_before = v.normalize_before;
  c.encoder.use_dynamic_chunk = true;
  c.decoder.attention_heads = 2;
  c.decoder.num_blocks = 1;
  c.decoder.r_num_blocks = 1;
  c.decoder.ffn.hidden = 24;
  c.decoder.ffn.moe = v.moe;
  c.decoder.ffn.n_expert = 3;
  c.decoder.ffn.n_expert_activated = 2;
  c.decoder.ffn.activation = Activation::Relu;
  return c;
}

// Random weights everywhere, batch-norm statistics included.
void randomize(AsrModel& model) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.parameters()) p.uniform_(-0.3, 0.3);
  for (auto& b : model.named_buffers()) {
    if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 1.5);
    else if (b.key().find("running_mean") != std::string::npos || b.key().find("global_cmvn.mean") != std::string::npos)
      b.value().uniform_(-0.2, 0.2);
  }
  model.eval();
}

const Variant kVariants[] = {
    {"x4_moe_relpos", 4, true, true, true, true, true, true},
    {"x4_dense_batchnorm", 4, false, true, true, true, false, true},
    {"x6_moe_abspos", 6, true, false, true, true, true, true},
    {"x8_dense_nomacaron", 8, false, true, false, true, true, true},
    {"x4_moe_nocnn", 4, true, true, true, false, true, true},
    {"x4_dense_postnorm", 4, false, true, true, true, true, false},
};

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

}  // namespace

class AsrVariants : public ::testing::TestWithParam<Variant> {};

TEST_P(AsrVariants, StreamingEqualsChunkMaskedForward) {
  torch::manual_seed(11);
  AsrModel model(small_config(GetParam(), /*causal=*/true));
  randomize(model);
  torch::NoGradGuard no_grad;
  const torch::Tensor feats = torch::randn({1, 137, 20});
  for (int64_t chunk : {1, 2, 5}) {
    for (int64_t left : {-1, 0, 2}) {
      auto [masked, mask] = model.encoder->forward(feats, torch::full({1}, 137, torch::kLong), chunk, left);
      EncoderStreamCache cache;
      std::vector<torch::Tensor> pieces;
      const int64_t window = model.encoder->window_frames(chunk);
      const int64_t stride = model.encoder->subsampling_rate() * chunk;
      const int64_t context = model.encoder->right_context() + 1;
      for (int64_t cur = 0; cur + context <= feats.size(1); cur += stride) {
        const int64_t end = std::min(cur + window, feats.size(1));
        pieces.push_back(model.encoder->forward_chunk(feats.slice(1, cur, end), cache, left < 0 ? -1 : chunk * left));
      }
      const torch::Tensor streamed = torch::cat(pieces, 1);
      ASSERT_EQ(streamed.sizes(), masked.sizes()) << "chunk " << chunk << " left " << left;
      EXPECT_LE(max_diff(streamed, masked), 1e-5) << "chunk " << chunk << " left " << left;
    }
  }
}

TEST_P(AsrVariants, PaddingDoesNotLeakIntoOtherUtterances) {
  torch::manual_seed(12);
  AsrModel model(small_config(GetParam(), /*causal=*/false));
  randomize(model);
  torch::NoGradGuard no_grad;
  const torch::Tensor a = torch::randn({1, 90, 20}), b = torch::randn({1, 61, 20});
  torch::Tensor batch = torch::zeros({2, 90, 20});
  batch[0].copy_(a[0]);
  batch[1].slice(0, 0, 61).copy_(b[0]);
  batch[1].slice(0, 61).fill_(7.0);  // garbage in the padding
  auto [both, mask] = model.encoder->forward(batch, torch::tensor({90, 61}, torch::kLong));
  auto [alone, mask_b] = model.encoder->forward(b, torch::tensor({61}, torch::kLong));
  const int64_t valid = mask[1].sum().item<int64_t>();
  ASSERT_EQ(valid, alone.size(1));
  EXPECT_LE(max_diff(both[1].slice(0, 0, valid), alone[0]), 1e-5);
  // Decoder scores of a hypothesis do not depend on the others in the batch.
  const torch::Tensor memory = alone;
  auto [l1, r1] = model.decoder_log_probs(memory, {{3, 4, 5}});
  auto [l2, r2] = model.decoder_log_probs(memory, {{3, 4, 5}, {6}, {7, 8, 9, 10, 1}});
  EXPECT_LE(max_diff(l1[0], l2[0].slice(0, 0, 4)), 1e-5);
  EXPECT_LE(max_diff(r1[0], r2[0].slice(0, 0, 4)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Configs, AsrVariants, ::testing::ValuesIn(kVariants),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(AsrModel, LabelSmoothingLossMatchesItsDefinition) {
  torch::manual_seed(5);
  const torch::Tensor logits = torch::randn({2, 3, 6});
  const torch::Tensor targets = torch::tensor({{1, 4, -1}, {0, 5, 2}}, torch::kLong);
  const double eps = 0.1;
  double expected = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 3; ++t) {
      const int64_t y = targets[b][t].item<int64_t>();
      if (y < 0) continue;
      const torch::Tensor logp = torch::log_softmax(logits[b][t], 0);
      for (int64_t v = 0; v < 6; ++v) {
        const double q = v == y ? 1 - eps : eps / 5;
        expected += q * (std::log(q) - logp[v].item<double>());
      }
    }
  EXPECT_NEAR(label_smoothing_loss(logits, targets, eps, false).item<double>(), expected / 2, 1e-5);
  EXPECT_NEAR(label_smoothing_loss(logits, targets, eps, true).item<double>(), expected / 5, 1e-5);
}

TEST(AsrModel, TrainingLowersTheLoss) {
  torch::manual_seed(13);
  AsrConfig config = small_config(kVariants[0], true);
  config.encoder.dropout_rate = config.encoder.positional_dropout_rate = 0.0;
  config.decoder.dropout_rate = config.decoder.positional_dropout_rate = 0.0;
  AsrModel model(config);
  torch::optim::Adam adam(model.parameters(), torch::optim::AdamOptions(3e-3));
  const torch::Tensor feats = torch::randn({2, 80, 20});
  const torch::Tensor lens = torch::tensor({80, 64}, torch::kLong);
  const std::vector<std::vector<int64_t>> targets = {{1, 2, 3, 4}, {5, 6, 7}};
  model.train();
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    AsrLosses l = model.forward_train(feats, lens, targets);
    ASSERT_TRUE(l.ctc.defined() && l.att.defined() && l.att_r2l.defined());
    if (step == 0) first = l.loss.item<double>();
    last = l.loss.item<double>();
    adam.zero_grad();
    l.loss.backward();
    adam.step();
  }
  EXPECT_LT(last, first * 0.5) << "first " << first << " last " << last;
}

TEST(AsrModel, RejectsBadConfigsAndInputs) {
  AsrConfig c = small_config(kVariants[0], true);
  c.vocab_size = 2;
  EXPECT_THROW(AsrModel{c}, std::invalid_argument);
  c = small_config(kVariants[0], false);
  c.encoder.cnn_module_kernel = 4;  // even kernel without causal
  EXPECT_THROW(AsrModel{c}, std::invalid_argument);
  c = small_config(kVariants[0], true);
  c.encoder.ffn.n_expert_activated = 5;
  EXPECT_THROW(AsrModel{c}, std::invalid_argument);
  AsrModel model(small_config(kVariants[0], true));
  model.eval();
  torch::NoGradGuard no_grad;
  EXPECT_THROW(model.encoder->forward(torch::randn({1, 5, 20}), torch::tensor({5}, torch::kLong)),
               std::invalid_argument);  // too short for x4 subsampling
  EXPECT_THROW(model.encoder->forward(torch::randn({1, 50, 21}), torch::tensor({50}, torch::kLong)),
               std::invalid_argument);  // wrong feature dimension
  auto [out, mask] = model.encoder->forward(torch::randn({1, 50, 20}), torch::tensor({50}, torch::kLong));
  EXPECT_THROW(model.decoder_log_probs(out, {{3, 99}}), std::invalid_argument);
  YAML::Node bad = c.to_yaml();
  bad["encoder_conf"]["no_such_option"] = 1;
  EXPECT_THROW(AsrConfig::from_yaml(bad, "test"), std::invalid_argument);
  // Round trip of the config.
  const AsrConfig back = AsrConfig::from_yaml(small_config(kVariants[2], true).to_yaml(), "test");
  EXPECT_EQ(YAML::Dump(back.to_yaml()), YAML::Dump(small_config(kVariants[2], true).to_yaml()));
}

TEST(AsrModel, ConcurrentStreamsShareOneModel) {
  torch::manual_seed(21);
  AsrModel model(small_config(kVariants[0], true));
  randomize(model);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> inputs, expected(4), got(4);
  for (int i = 0; i < 4; ++i) inputs.push_back(torch::randn({1, 120 + 13 * i, 20}));
  auto stream = [&](const torch::Tensor& feats) {
    torch::NoGradGuard guard;
    EncoderStreamCache cache;
    std::vector<torch::Tensor> pieces;
    for (int64_t cur = 0; cur + 7 <= feats.size(1); cur += 8)
      pieces.push_back(model.encoder->forward_chunk(feats.slice(1, cur, std::min(cur + 11, feats.size(1))), cache, -1));
    return torch::cat(pieces, 1);
  };
  for (int i = 0; i < 4; ++i) expected[i] = stream(inputs[i]);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) threads.emplace_back([&, i] { got[i] = stream(inputs[i]); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(torch::allclose(got[i], expected[i], 1e-5, 1e-6)) << i;
}
