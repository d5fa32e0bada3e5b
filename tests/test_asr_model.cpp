// The U2++ model on random weights: streaming equals the chunk-masked
// forward for many configurations, padding does not leak, losses equal
// their definitions, and a few steps of training lower the loss.
#include <gtest/gtest.h>

#include <set>
#include <sstream>

#include <cmath>
#include <thread>

#include "moekit/decode/ctc_search.h"
#include "moekit/decode/recognizer.h"
#include "moekit/models/asr/asr_model.h"
#include "moekit/nn/conv_module.h"
#include "moekit/nn/subsampling.h"
#include "test_util.h"

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
  const FastPathProbe probe;
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
  // The streaming side ran the inference kernels, not LibTorch's forms.
  const Variant& v = GetParam();
  EXPECT_GT(probe.ran("attention.self_attention_cpu"), 0);
  EXPECT_GT(probe.ran("linear.panels"), 0);
  EXPECT_GT(probe.ran("subsampling.first_conv_rows"), 0);
  if (v.normalize_before) {
    EXPECT_GT(probe.ran("conformer.in_place"), 0);
    EXPECT_GT(probe.ran("layer_norm.row_kernel"), 0);
  }
  if (v.moe) {
    EXPECT_GT(probe.ran("moe.cpu_inference"), 0);
  }
  if (v.cnn) {
    EXPECT_GT(probe.ran("conv_module.inference_cpu"), 0);
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

TEST_P(AsrVariants, FullContextInferenceWithoutMasksEqualsTheMaskedForward) {
  // With every frame valid, CPU inference hands the layers no masks (their
  // unmasked paths); recording gradients keeps the masks and the ATen paths.
  torch::manual_seed(13);
  for (bool causal : {true, false}) {
    AsrModel model(small_config(GetParam(), causal));
    randomize(model);
    const torch::Tensor feats = torch::randn({2, 97, 20}), lens = torch::full({2}, 97, torch::kLong);
    torch::Tensor masked;
    {
      torch::AutoGradMode grad(true);
      masked = model.encoder->forward(feats, lens).first.detach();
    }
    torch::NoGradGuard no_grad;
    for (int64_t chunk : {-1, 3}) {
      torch::Tensor reference = masked;
      if (chunk > 0) {
        torch::AutoGradMode grad(true);
        reference = model.encoder->forward(feats, lens, chunk, -1).first.detach();
      }
      const FastPathProbe probe;
      const torch::Tensor unmasked = model.encoder->forward(feats, lens, chunk, -1).first;
      if (chunk < 0) {
        EXPECT_GT(probe.ran("encoder.unmasked"), 0) << "causal " << causal;
      }
      EXPECT_LE(max_diff(unmasked, reference), 1e-5) << "causal " << causal << " chunk " << chunk;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, AsrVariants, ::testing::ValuesIn(kVariants),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(AsrModel, FrameBufferAppendsKeepsTheNewestAndCopiesOwnTheirFrames) {
  torch::manual_seed(5);
  // Recording gradients (ATen copies) and not (row copies), batch 2.
  for (bool grad : {true, false}) {
    torch::AutoGradMode mode(grad);
    FrameBuffer buffer;
    EXPECT_EQ(buffer.size(), 0);
    EXPECT_FALSE(buffer.view().defined());
    std::vector<torch::Tensor> chunks;
    // Past the first capacity (64) and through several growths.
    for (int64_t t : {16, 16, 1, 40, 16, 100, 3}) {
      chunks.push_back(torch::randn({2, 4, t, 8}));
      buffer.append(chunks.back());
      EXPECT_TRUE(buffer.view().equal(torch::cat(chunks, 2))) << "grad " << grad;
    }
    buffer.keep_last(50);
    torch::Tensor all = torch::cat(chunks, 2);
    EXPECT_TRUE(buffer.view().equal(all.slice(2, all.size(2) - 50)));
    buffer.keep_last(80);  // more than held: unchanged
    EXPECT_EQ(buffer.size(), 50);
    // Growth after keep_last: the held frames start inside the buffer.
    const torch::Tensor more = torch::randn({2, 4, 300, 8});
    buffer.append(more);
    EXPECT_TRUE(buffer.view().equal(torch::cat({all.slice(2, all.size(2) - 50), more}, 2))) << "grad " << grad;
    // Rows laid out (b, i, h, d), as a projection writes them.
    const torch::Tensor rows = torch::randn({2, 5, 4 * 8});
    buffer.append_rows(rows.data_ptr<float>(), 2, 5, 4, 8, 5 * 32, 32, rows.options());
    EXPECT_TRUE(buffer.view().slice(2, -5).equal(rows.view({2, 5, 4, 8}).transpose(1, 2))) << "grad " << grad;
    // A copy does not share the space the original appends into.
    FrameBuffer copy = buffer;
    const torch::Tensor a = torch::ones({2, 4, 2, 8}), b = torch::zeros({2, 4, 2, 8});
    buffer.append(a);
    copy.append(b);
    EXPECT_TRUE(buffer.view().slice(2, -2).equal(a));
    EXPECT_TRUE(copy.view().slice(2, -2).equal(b));
    // Frames of another shape cannot continue it.
    EXPECT_THROW(buffer.append(torch::randn({1, 2, 3, 8})), std::invalid_argument);
    buffer.clear();
    buffer.append(torch::randn({1, 2, 3, 8}));  // a cleared buffer takes any shape
    EXPECT_EQ(buffer.size(), 3);
  }
}

TEST(AsrModel, CausalConvModuleInferencePathEqualsTheTrainingPath) {
  torch::manual_seed(9);
  for (int variant = 0; variant < 4; ++variant) {
    const bool bias = (variant & 1) != 0, layer_norm = (variant & 2) != 0;
    ConvModuleOptions o;
    o.channels = 24;
    o.kernel_size = 5;
    o.layer_norm = layer_norm;
    o.causal = true;
    o.bias = bias;
    ConvModule conv(o);
    if (!layer_norm) {
      // Batch norm in eval mode: its running statistics and affine map.
      torch::NoGradGuard no_grad;
      conv->batch_norm->running_mean.copy_(torch::randn({24}));
      conv->batch_norm->running_var.copy_(torch::rand({24}) + 0.5);
      conv->batch_norm->weight.copy_(torch::randn({24}));
      conv->batch_norm->bias.copy_(torch::randn({24}));
    }
    conv->eval();
    const torch::Tensor x = torch::randn({2, 13, 24});
    // Recording gradients: LibTorch's depthwise Conv1d on [B, C, T].
    const torch::Tensor reference = conv->forward(x, {}, nullptr).detach();
    torch::NoGradGuard no_grad;  // inference: the time-major kernel
    const FastPathProbe probe;
    EXPECT_TRUE(torch::allclose(conv->forward(x, {}, nullptr), reference, 1e-5, 1e-5))
        << "bias " << bias << " layer_norm " << layer_norm;
    EXPECT_EQ(probe.ran("conv_module.inference_cpu"), 1) << "bias " << bias << " layer_norm " << layer_norm;
    // Chunk by chunk with the cache: the same frames.
    torch::Tensor cache;
    std::vector<torch::Tensor> parts;
    for (int64_t begin : {0, 4, 5, 11}) {
      const int64_t end = begin == 11 ? 13 : (begin == 0 ? 4 : (begin == 4 ? 5 : 11));
      parts.push_back(conv->forward(x.slice(1, begin, end), {}, &cache));
      EXPECT_EQ(cache.sizes(), torch::IntArrayRef({2, 24, 4}));
    }
    EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), reference, 1e-5, 1e-5))
        << "bias " << bias << " layer_norm " << layer_norm;
  }
}

// The front end through LibTorch's own convolutions: recording gradients
// with features that need a gradient too.
static torch::Tensor subsampling_by_libtorch(Conv2dSubsampling& sub, const torch::Tensor& x) {
  torch::AutoGradMode grad(true);
  return sub->forward(x.detach().requires_grad_());
}

TEST(AsrModel, SubsamplingInferencePathEqualsTheTrainingPath) {
  torch::manual_seed(10);
  for (int64_t rate : {4, 6, 8}) {
    Conv2dSubsampling sub(20, 16, rate);
    const torch::Tensor x = torch::randn({2, 41, 20});
    const torch::Tensor reference = subsampling_by_libtorch(sub, x).detach();
    const torch::Tensor training = sub->forward(x).detach();  // recording gradients: the first convolution's own path
    EXPECT_TRUE(torch::allclose(training, reference, 1e-5, 1e-5)) << "rate " << rate;
    torch::NoGradGuard no_grad;  // inference: the first convolution in a loop
    const FastPathProbe probe;
    EXPECT_TRUE(torch::allclose(sub->forward(x), reference, 1e-5, 1e-5)) << "rate " << rate;
    EXPECT_EQ(probe.ran("subsampling.first_conv_rows"), 1) << "rate " << rate;
  }
}

TEST(AsrModel, SubsamplingTrainingPathGivesLibTorchsOutputAndGradients) {
  // Training with features that need no gradient runs the first convolution
  // and its ReLU by the row kernel with a backward of its own: the output
  // and every parameter's gradient are LibTorch's (its convolutions' own
  // autograd is the reference), with and without the first bias, over
  // utterances of odd and even lengths.
  torch::manual_seed(12);
  for (int64_t rate : {4, 6, 8}) {
    for (bool bias : {true, false}) {
      Conv2dSubsampling sub(23, 16, rate);
      auto& first = *sub->conv->ptr<torch::nn::Conv2dImpl>(0);
      if (!bias) first.bias = torch::Tensor();
      for (int64_t frames : {41, 56}) {
        const torch::Tensor x = torch::randn({3, frames, 23});
        auto grads_of = [&](const torch::Tensor& y) {
          for (auto& p : sub->parameters()) p.mutable_grad() = torch::Tensor();
          const torch::Tensor weights = torch::linspace(-1.0, 1.0, y.numel()).view(y.sizes());
          (y * weights).sum().backward();
          std::vector<torch::Tensor> out;
          // (Without the first bias, the module still lists the tensor it dropped: no gradient.)
          for (const auto& p : sub->parameters()) out.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
          return out;
        };
        const torch::Tensor reference = subsampling_by_libtorch(sub, x);
        const std::vector<torch::Tensor> reference_grads = grads_of(reference);
        const FastPathProbe probe;
        const torch::Tensor y = sub->forward(x);
        EXPECT_EQ(probe.ran("subsampling.first_conv_train"), 1);
        const std::vector<torch::Tensor> grads = grads_of(y);
        const std::string where = "rate " + std::to_string(rate) + (bias ? " bias" : " no bias") + " frames " +
                                  std::to_string(frames);
        EXPECT_TRUE(torch::allclose(y, reference, 1e-5, 1e-5)) << where;
        ASSERT_EQ(grads.size(), reference_grads.size());
        for (size_t i = 0; i < grads.size(); ++i) {
          const double scale = reference_grads[i].abs().max().item<double>();
          EXPECT_LE((grads[i] - reference_grads[i]).abs().max().item<double>(), 1e-5 * std::max(1.0, scale))
              << where << " parameter " << i;
        }
        EXPECT_GT(grads[0].abs().max().item<double>(), 0.0) << where;  // the first weight's gradient is not empty
      }
    }
  }
}

TEST(AsrModel, SubsamplingKeepsItsConvolutionWeightsInStepWithTheModule) {
  // The inference path keeps oneDNN-layout copies of the later convolutions'
  // weights: an in-place update, new memory and a new bias must show.
  torch::manual_seed(11);
  Conv2dSubsampling sub(20, 16, 8);
  const torch::Tensor x = torch::randn({1, 45, 20});
  auto reference = [&] { return subsampling_by_libtorch(sub, x).detach(); };
  torch::NoGradGuard no_grad;
  const FastPathProbe probe;
  EXPECT_TRUE(torch::allclose(sub->forward(x), reference(), 1e-5, 1e-5));
  // Both later convolutions through the kept oneDNN weights, where LibTorch has oneDNN.
  if (at::hasMKLDNN()) {
    EXPECT_EQ(probe.ran("conv2d.kept_onednn_weight"), 2);
  }
  auto& second = *sub->conv->ptr<torch::nn::Conv2dImpl>(2);
  auto& third = *sub->conv->ptr<torch::nn::Conv2dImpl>(4);
  second.weight.mul_(-1.5);  // in place: same memory, new version
  EXPECT_TRUE(torch::allclose(sub->forward(x), reference(), 1e-5, 1e-5)) << "in-place update";
  third.weight.set_data(torch::randn_like(third.weight));  // other memory
  EXPECT_TRUE(torch::allclose(sub->forward(x), reference(), 1e-5, 1e-5)) << "new memory";
  second.bias.zero_();
  EXPECT_TRUE(torch::allclose(sub->forward(x), reference(), 1e-5, 1e-5)) << "bias";
}

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

TEST_P(AsrVariants, BatchedStreamingStepsEqualOneStreamAtATime) {
  // Four streams of different lengths starting at different steps, so the
  // batched steps mix offsets, cache sizes and last (short) windows.
  torch::manual_seed(13);
  AsrModel model(small_config(GetParam(), /*causal=*/true));
  randomize(model);
  torch::NoGradGuard no_grad;
  const int64_t chunk = 2, cache_frames = 6;
  const int64_t window = model.encoder->window_frames(chunk);
  const int64_t stride = model.encoder->subsampling_rate() * chunk;
  const int64_t context = model.encoder->right_context() + 1;
  std::vector<torch::Tensor> inputs;
  for (int i = 0; i < 4; ++i) inputs.push_back(torch::randn({1, 90 + 23 * i, 20}));
  auto windows = [&](const torch::Tensor& feats) {
    std::vector<torch::Tensor> out;
    for (int64_t cur = 0; cur + context <= feats.size(1); cur += stride)
      out.push_back(feats.slice(1, cur, std::min(cur + window, feats.size(1))));
    return out;
  };
  std::vector<torch::Tensor> expected;
  for (const torch::Tensor& feats : inputs) {
    EncoderStreamCache cache;
    std::vector<torch::Tensor> pieces;
    for (const torch::Tensor& w : windows(feats)) pieces.push_back(model.encoder->forward_chunk(w, cache, cache_frames));
    expected.push_back(torch::cat(pieces, 1));
  }
  std::vector<std::vector<torch::Tensor>> todo;
  for (const torch::Tensor& feats : inputs) todo.push_back(windows(feats));
  std::vector<EncoderStreamCache> caches(4);
  std::vector<std::vector<torch::Tensor>> got(4);
  size_t batched_steps = 0;
  const FastPathProbe probe;
  for (size_t step = 0;; ++step) {
    std::vector<torch::Tensor> feats;
    std::vector<EncoderStreamCache*> cache_ptrs;
    std::vector<size_t> who;
    for (size_t i = 0; i < 4; ++i) {
      if (step < i) continue;  // stream i starts at step i
      const size_t k = step - i;
      if (k >= todo[i].size()) continue;
      feats.push_back(todo[i][k]);
      cache_ptrs.push_back(&caches[i]);
      who.push_back(i);
    }
    if (feats.empty()) break;
    batched_steps += feats.size() > 1;
    const std::vector<torch::Tensor> outs =
        model.encoder->forward_chunks(feats, cache_ptrs, std::vector<int64_t>(feats.size(), cache_frames));
    ASSERT_EQ(outs.size(), feats.size());
    for (size_t j = 0; j < who.size(); ++j) got[who[j]].push_back(outs[j]);
  }
  EXPECT_GT(batched_steps, 5u);
  // The batched steps ran attention and convolution over all streams' rows
  // at once (their position-wise maps), not stream by stream.
  EXPECT_GT(probe.ran("attention.self_attention_streams"), 0);
  if (GetParam().cnn) {
    EXPECT_GT(probe.ran("conv_module.streams"), 0);
  }
  for (size_t i = 0; i < 4; ++i) {
    const torch::Tensor batched = torch::cat(got[i], 1);
    ASSERT_EQ(batched.sizes(), expected[i].sizes()) << i;
    EXPECT_LT(max_diff(batched, expected[i]), 1e-4) << "stream " << i;
    EXPECT_EQ(caches[i].offset, expected[i].size(1));
  }
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

// WeNet's filter_blank_embedding, as a loop over frames.
std::vector<std::vector<int64_t>> naive_non_blank(const torch::Tensor& log_probs, const std::vector<int64_t>& lens) {
  std::vector<std::vector<int64_t>> kept;
  for (int64_t b = 0; b < log_probs.size(0); ++b) {
    std::vector<int64_t> frames;
    for (int64_t t = 0; t < lens[b]; ++t)
      if (log_probs[b][t].argmax().item<int64_t>() != 0) frames.push_back(t);
    if (frames.empty())
      for (int64_t t = 0; t < lens[b]; ++t) frames.push_back(t);  // none: all frames stay
    kept.push_back(frames);
  }
  return kept;
}

TEST(AsrModel, NonBlankFramesEqualANaiveSelection) {
  torch::manual_seed(5);
  AsrModel model(small_config(kVariants[0], true));
  const torch::Tensor encoder_out = torch::randn({3, 7, 16}).requires_grad_();
  torch::Tensor log_probs = torch::randn({3, 7, 12});
  // Argmax per frame; utterance 1 has 4 valid frames and a non-blank one in
  // its padding, utterance 2 only blanks.
  const int64_t argmax[3][7] = {{0, 3, 0, 0, 5, 1, 0}, {2, 0, 0, 4, 0, 7, 0}, {0, 0, 0, 0, 0, 0, 0}};
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t t = 0; t < 7; ++t) log_probs[b][t][argmax[b][t]] = 10.0;
  const std::vector<int64_t> lens = {7, 4, 5};
  torch::Tensor mask = torch::zeros({3, 7}, torch::kBool);
  for (int64_t b = 0; b < 3; ++b) mask[b].narrow(0, 0, lens[b]).fill_(true);
  auto [frames, frames_mask] = model.non_blank_frames(encoder_out, log_probs, mask);
  const auto expected = naive_non_blank(log_probs, lens);
  EXPECT_EQ(expected[0], (std::vector<int64_t>{1, 4, 5}));
  EXPECT_EQ(expected[1], (std::vector<int64_t>{0, 3}));
  ASSERT_EQ(frames.sizes(), (std::vector<int64_t>{3, 5, 16}));
  ASSERT_EQ(frames_mask.sizes(), (std::vector<int64_t>{3, 5}));
  for (int64_t b = 0; b < 3; ++b) {
    const int64_t n = static_cast<int64_t>(expected[b].size());
    for (int64_t j = 0; j < 5; ++j) {
      EXPECT_EQ(frames_mask[b][j].item<bool>(), j < n) << b << " " << j;
      const torch::Tensor want = j < n ? encoder_out[b][expected[b][j]] : torch::zeros({16});
      EXPECT_TRUE(torch::equal(frames[b][j], want)) << b << " " << j;
    }
  }
  // Gradients reach exactly the kept frames.
  const torch::Tensor w = torch::randn({3, 5, 16});
  (frames * w).sum().backward();
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t t = 0; t < 7; ++t) {
      const auto& kept = expected[b];
      const auto at = std::find(kept.begin(), kept.end(), t);
      const torch::Tensor want = at == kept.end() ? torch::zeros({16}) : w[b][at - kept.begin()];
      EXPECT_TRUE(torch::equal(encoder_out.grad()[b][t], want)) << b << " " << t;
    }
  }
  EXPECT_THROW(model.non_blank_frames(encoder_out, log_probs.slice(1, 0, 6), mask), std::invalid_argument);
}

TEST(AsrModel, NonBlankEmbeddingInTrainingAndRescoring) {
  torch::manual_seed(17);
  AsrConfig config = small_config(kVariants[0], true);
  config.encoder.dropout_rate = config.encoder.positional_dropout_rate = 0.0;
  config.decoder.dropout_rate = config.decoder.positional_dropout_rate = 0.0;
  config.apply_non_blank_embedding = true;
  config.encoder.use_dynamic_chunk = false;  // training runs full context too, so the same encoder output
  EXPECT_TRUE(AsrConfig::from_yaml(config.to_yaml(), "test").apply_non_blank_embedding);
  auto model = std::make_shared<AsrModel>(config);
  randomize(*model);  // eval mode: full context, deterministic
  const torch::Tensor feats = torch::randn({2, 120, 20});
  const torch::Tensor lens = torch::tensor({120, 90}, torch::kLong);
  torch::NoGradGuard no_grad;
  // Shift the blank logit so that about half of the frames are blank.
  auto [encoder_out, mask] = model->encoder->forward(feats, lens, -1, -1);
  {
    const torch::Tensor logits = model->ctc->ctc_lo->forward(encoder_out);
    const torch::Tensor margin = std::get<0>(logits.slice(2, 1).max(-1)) - logits.select(2, 0);
    model->ctc->ctc_lo->bias[0] += margin.median().item<double>();
  }
  const torch::Tensor log_probs = model->ctc_log_probs(encoder_out);
  const std::vector<int64_t> enc_lens = {mask[0].sum().item<int64_t>(), mask[1].sum().item<int64_t>()};
  const auto kept = naive_non_blank(log_probs, enc_lens);
  for (int64_t b = 0; b < 2; ++b) {
    ASSERT_GT(kept[b].size(), 2u);
    ASSERT_LT(static_cast<int64_t>(kept[b].size()), enc_lens[b]);
  }

  // Training: the decoders attend to the kept frames only.
  const std::vector<std::vector<int64_t>> targets = {{1, 2, 3, 4}, {5, 6, 7}};
  const AsrLosses losses = model->forward_train(feats, lens, targets);
  const int64_t longest = static_cast<int64_t>(std::max(kept[0].size(), kept[1].size()));
  torch::Tensor memory = torch::zeros({2, longest, 16});
  torch::Tensor memory_mask = torch::zeros({2, 1, longest}, torch::kBool);
  for (int64_t b = 0; b < 2; ++b) {
    for (size_t j = 0; j < kept[b].size(); ++j) {
      memory[b][static_cast<int64_t>(j)] = encoder_out[b][kept[b][j]];
      memory_mask[b][0][static_cast<int64_t>(j)] = true;
    }
  }
  auto [ys_in, ys_lens] = decoder_inputs(targets, config.sos_id(), config.eos_id(), false);
  torch::Tensor ys_out = torch::full(ys_in.sizes(), -1, torch::kLong);
  for (int64_t b = 0; b < 2; ++b) {
    for (size_t j = 0; j < targets[b].size(); ++j) ys_out[b][static_cast<int64_t>(j)] = targets[b][j];
    ys_out[b][static_cast<int64_t>(targets[b].size())] = config.eos_id();
  }
  const torch::Tensor logits = model->decoder->left_decoder->forward(memory, memory_mask, ys_in, ys_lens);
  const double want = label_smoothing_loss(logits, ys_out, config.lsm_weight, config.length_normalized_loss).item<double>();
  EXPECT_NEAR(losses.att.item<double>(), want, 1e-6 * std::abs(want));
  const torch::Tensor all_logits = model->decoder->left_decoder->forward(encoder_out, mask.unsqueeze(1), ys_in, ys_lens);
  const double all = label_smoothing_loss(all_logits, ys_out, config.lsm_weight, config.length_normalized_loss).item<double>();
  EXPECT_GT(std::abs(all - want), 1e-4);

  // Attention rescoring: the same as rescoring the kept frames directly,
  // and not the same as rescoring all frames.
  DecodeOptions options;
  options.mode = DecodeMode::AttentionRescoring;
  options.beam_size = 4;
  const Recognizer recognizer(model, Units(), options);
  const torch::Tensor one = encoder_out.slice(0, 0, 1);
  const Recognition got = recognizer.search(one);
  const auto nbest = ctc_prefix_beam_search(log_probs[0], options.beam_size, config.blank_id());
  const torch::Tensor kept_memory = memory.slice(0, 0, 1).slice(1, 0, static_cast<int64_t>(kept[0].size()));
  const Hypothesis direct = attention_rescoring(*model, kept_memory, nbest, options.ctc_weight, recognizer.reverse_weight());
  EXPECT_EQ(got.tokens, direct.tokens);
  EXPECT_NEAR(got.score, direct.score, 1e-6);
  const Hypothesis all_frames = attention_rescoring(*model, one, nbest, options.ctc_weight, recognizer.reverse_weight());
  EXPECT_GT(std::abs(all_frames.score - direct.score), 1e-4);
  // The ranking: every CTC hypothesis once, best first, led by the best;
  // the recognizer's result carries it.
  const std::vector<Hypothesis> ranked =
      attention_rescoring_nbest(*model, kept_memory, nbest, options.ctc_weight, recognizer.reverse_weight());
  ASSERT_EQ(ranked.size(), nbest.size());
  EXPECT_EQ(ranked.front().tokens, direct.tokens);
  std::set<std::vector<int64_t>> in, out;
  for (size_t i = 0; i < ranked.size(); ++i) {
    in.insert(nbest[i].tokens);
    out.insert(ranked[i].tokens);
    if (i > 0) {
      EXPECT_GE(ranked[i - 1].score, ranked[i].score);
    }
  }
  EXPECT_EQ(in, out);
  ASSERT_EQ(got.nbest.size(), ranked.size());
  for (size_t i = 0; i < ranked.size(); ++i) EXPECT_EQ(got.nbest[i].tokens, ranked[i].tokens) << i;
}

TEST(AsrModel, TiedDecoderEmbeddingIsOneParameterTrainedByBothUses) {
  torch::manual_seed(23);
  AsrConfig config = small_config(kVariants[0], true);
  config.encoder.use_dynamic_chunk = false;
  config.encoder.dropout_rate = config.encoder.positional_dropout_rate = 0.0;
  config.decoder.dropout_rate = config.decoder.positional_dropout_rate = 0.0;
  AsrConfig tied_config = config;
  tied_config.decoder.tie_word_embedding = true;
  EXPECT_TRUE(AsrConfig::from_yaml(tied_config.to_yaml(), "test").decoder.tie_word_embedding);
  AsrModel tied(tied_config), untied(config);
  randomize(tied);
  auto count = [](AsrModel& m) {
    int64_t n = 0;
    for (const auto& p : m.parameters()) n += p.numel();
    return n;
  };
  const int64_t d = config.encoder.output_size, vocab = config.vocab_size;
  EXPECT_EQ(count(untied) - count(tied), 2 * vocab * d);  // one [V, D] less per decoder
  const auto tied_params = tied.named_parameters();
  EXPECT_FALSE(tied_params.contains("decoder.left_decoder.output_layer.weight"));
  EXPECT_TRUE(tied_params.contains("decoder.left_decoder.output_layer.bias"));
  // The untied model with the same numbers, its output weights copies of the embeddings.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : untied.named_parameters()) {
      std::string name = p.key();
      const size_t at = name.find("output_layer.weight");
      if (at != std::string::npos) name = name.substr(0, at) + "embed.0.weight";
      p.value().copy_(tied_params[name]);
    }
    for (auto& b : untied.named_buffers()) b.value().copy_(tied.named_buffers()[b.key()]);
  }
  untied.eval();
  const torch::Tensor feats = torch::randn({2, 90, 20});
  const torch::Tensor lens = torch::tensor({90, 70}, torch::kLong);
  const std::vector<std::vector<int64_t>> targets = {{1, 2, 3}, {4, 5, 6, 7}};
  const AsrLosses a = tied.forward_train(feats, lens, targets), b = untied.forward_train(feats, lens, targets);
  EXPECT_NEAR(a.loss.item<double>(), b.loss.item<double>(), 1e-6 * std::abs(b.loss.item<double>()));
  a.loss.backward();
  b.loss.backward();
  // The tied weight's gradient is the sum of the two uses' gradients.
  const auto untied_params = untied.named_parameters();
  for (const std::string side : {"left_decoder", "right_decoder"}) {
    const std::string prefix = "decoder." + side + ".";
    const torch::Tensor want =
        untied_params[prefix + "embed.0.weight"].grad() + untied_params[prefix + "output_layer.weight"].grad();
    EXPECT_LT(max_diff(tied_params[prefix + "embed.0.weight"].grad(), want), 1e-5) << side;
  }
  // Saved and loaded, the model stays tied and computes the same.
  const std::string dir = temp_dir("tied_asr");
  save_model(dir + "/m", tied);
  auto loaded = std::dynamic_pointer_cast<AsrModel>(load_model(dir + "/m"));
  ASSERT_TRUE(loaded);
  EXPECT_TRUE(loaded->config().decoder.tie_word_embedding);
  torch::NoGradGuard no_grad;
  auto [out, mask] = tied.encoder->forward(feats, lens, -1, -1);
  const auto want = tied.decoder_log_probs(out.slice(0, 0, 1), {{1, 2}, {3}});
  const auto got = loaded->decoder_log_probs(out.slice(0, 0, 1), {{1, 2}, {3}});
  EXPECT_LT(max_diff(want.first, got.first), 1e-6);
  EXPECT_LT(max_diff(want.second, got.second), 1e-6);
}

// A lexicon holds every beam decoding, whole or streaming, CTC or rescored,
// to its words, even for a random model that would spell anything.
TEST(AsrModel, LexiconHoldsDecodingToItsWords) {
  torch::manual_seed(31);
  auto model = std::make_shared<AsrModel>(small_config(kVariants[0], true));
  randomize(*model);
  const Units units({"<blank>", "<unk>", "a", "b", "c", "d", "e", "\xe2\x96\x81", "f", "g", "h", "<sos/eos>"});
  const std::set<std::string> words = {"hb", "bad", "cafe", "he"};
  const std::string dir = temp_dir("asr_lexicon");
  write_file_atomic(dir + "/words.txt", "hb\nbad\ncafe\nhe\n");
  auto words_of = [](const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string w; in >> w;) out.push_back(w);
    return out;
  };
  std::vector<float> samples(24000);
  for (size_t i = 0; i < samples.size(); ++i) samples[i] = 0.3f * std::sin(0.01f * i * (1 + i % 7));
  for (DecodeMode mode : {DecodeMode::CtcPrefixBeam, DecodeMode::AttentionRescoring}) {
    DecodeOptions options;
    options.mode = mode;
    options.beam_size = 6;
    options.chunk_size = 4;
    const Recognizer free(model, units, options);
    options.lexicon = dir + "/words.txt";
    const Recognizer held(model, units, options);
    ASSERT_TRUE(held.lexicon());
    const Recognition whole = held.recognize(samples);
    StreamingSession session(held);
    for (size_t pos = 0; pos < samples.size(); pos += 1600) {
      const Recognition partial = session.accept_waveform(samples.data() + pos, std::min<size_t>(1600, samples.size() - pos));
      const auto partial_words = words_of(partial.text);
      for (size_t i = 0; i + 1 < partial_words.size(); ++i) EXPECT_TRUE(words.count(partial_words[i])) << partial.text;
    }
    const Recognition streamed = session.finish();
    for (const Recognition* r : {&whole, &streamed}) {
      for (const Hypothesis& h : r->nbest)
        for (const std::string& w : words_of(units.to_text(h.tokens))) EXPECT_TRUE(words.count(w)) << w;
    }
    EXPECT_FALSE(whole.text.empty()) << "free: " << free.recognize(samples).text;
    EXPECT_EQ(streamed.text.empty(), whole.text.empty());
    EXPECT_NE(free.recognize(samples).text, whole.text) << "the random model spells other words when free";
  }
  // A lexicon the units cannot spell, or a model without units: named.
  write_file_atomic(dir + "/bad.txt", "ab\nzebra\n");
  DecodeOptions options;
  options.mode = DecodeMode::CtcPrefixBeam;
  options.lexicon = dir + "/bad.txt";
  EXPECT_NE(error_of([&] { Recognizer(model, units, options); }).find("cannot spell 'zebra'"), std::string::npos);
  options.lexicon = dir + "/words.txt";
  EXPECT_NE(error_of([&] { Recognizer(model, Units(), options); }).find("--lexicon needs the model's units"),
            std::string::npos);
}
