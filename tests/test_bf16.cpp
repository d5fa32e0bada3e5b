// bfloat16 weights under float32 activations on the CPU: the panel kernel's
// bf16 variants against the float kernel on the same rounded weights (bit
// for bit) and a naive loop; the linear map, the MoE experts and the whole
// LM and the seq2seq model with bf16 matrices against their float32 forms
// holding the same rounded values; and a bf16 model directory loading as bf16.
#include <gtest/gtest.h>

#include "lm_test_util.h"
#include "moe_reference.h"
#include "seq2seq_test_util.h"
#include "moekit/core/model_dir.h"
#include "moekit/kernels/panel_kernel.h"
#include "moekit/models/model.h"
#include "moekit/models/seq2seq/seq2seq_model.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/ops/linear.h"
#include "moekit/ops/packed_weights.h"
#include "test_util.h"

namespace moekit {
namespace {

using detail::kPanelWidth;
using testing::max_abs_diff;

// w rounded to bfloat16 and back: the float32 values a bf16 weight holds.
torch::Tensor bf16_rounded(const torch::Tensor& w) { return w.to(torch::kBFloat16).to(torch::kFloat); }

TEST(PackPanels, Bf16PanelsHoldTheFloatPanelsValues) {
  const torch::Tensor w = torch::randn({2, 70, 9}).to(torch::kBFloat16);
  const torch::Tensor p = pack_panels(w);
  EXPECT_EQ(p.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(p.is_contiguous());
  EXPECT_TRUE(torch::equal(p.to(torch::kFloat), pack_panels(w.to(torch::kFloat))));
  EXPECT_THROW(pack_panels(torch::randn({64, 7}).to(torch::kHalf)), std::invalid_argument);
}

// Each bf16 variant computes exactly what the float variant of the same name
// computes on the rounded weights (the widening is exact and the sums run
// in the same order), and so matches a naive double loop as closely.
TEST(PanelKernel, Bf16VariantsEqualTheFloatKernelOnTheRoundedWeights) {
  const auto bf16_variants = detail::panel_bf16_variants();
  const auto float_variants = detail::panel_variants();
  ASSERT_EQ(bf16_variants.size(), float_variants.size());
  const int64_t out_features = 70;
  const std::vector<std::pair<int64_t, int64_t>> ranges = {{0, 70}, {32, 64}, {64, 70}};
  for (size_t v = 0; v < bf16_variants.size(); ++v) {
    const auto& [name, kernel] = bf16_variants[v];
    ASSERT_EQ(name, float_variants[v].first);
    for (int64_t in : {1, 5, 16, 37, 256}) {
      const torch::Tensor w = bf16_rounded(torch::randn({out_features, in}));
      const torch::Tensor b = torch::randn({out_features});
      const torch::Tensor panels = pack_panels(w.to(torch::kBFloat16));
      const torch::Tensor float_panels = pack_panels(w);
      for (int64_t rows : {1, 2, 3, 5, 12, 13, 17, 25, 40, 41}) {
        const int64_t ld_x = in + 3, ld_out = out_features + 5;
        const torch::Tensor x = torch::randn({rows, ld_x});
        const torch::Tensor exact = torch::mm(x.narrow(1, 0, in).to(torch::kFloat64), w.to(torch::kFloat64).t());
        for (const auto& [o_begin, o_end] : ranges) {
          for (bool with_bias : {false, true}) {
            torch::Tensor y = torch::full({rows, ld_out}, 7.0f);
            torch::Tensor y_float = torch::full({rows, ld_out}, 7.0f);
            const float* bias = with_bias ? b.data_ptr<float>() : nullptr;
            kernel(x.data_ptr<float>(), rows, ld_x, in,
                   reinterpret_cast<const uint16_t*>(panels.data_ptr<at::BFloat16>()), bias, o_begin, o_end,
                   y.data_ptr<float>(), ld_out);
            float_variants[v].second(x.data_ptr<float>(), rows, ld_x, in, float_panels.data_ptr<float>(), bias,
                                     o_begin, o_end, y_float.data_ptr<float>(), ld_out);
            const std::string where = name + " in " + std::to_string(in) + " rows " + std::to_string(rows) +
                                      " outputs [" + std::to_string(o_begin) + ", " + std::to_string(o_end) + ")";
            EXPECT_TRUE(torch::equal(y, y_float)) << where;
            torch::Tensor part = exact.narrow(1, o_begin, o_end - o_begin);
            if (with_bias) part = part + b.narrow(0, o_begin, o_end - o_begin).to(torch::kFloat64);
            EXPECT_LT(max_abs_diff(y.narrow(1, o_begin, o_end - o_begin).to(torch::kFloat64), part), 1e-4) << where;
            // Outside [o_begin, o_end) the sentinel survives.
            EXPECT_TRUE(torch::equal(y.narrow(1, 0, o_begin), torch::full({rows, o_begin}, 7.0f))) << where;
          }
        }
      }
    }
  }
}

// A bf16 weight in fast_linear: its bf16 panels at every row count, the
// values of linear() on the widened weight; with panels off, or recording
// gradients, the weight is widened per call to the same values.
TEST(FastLinear, Bf16WeightRunsItsPanelsAndEqualsTheWidenedWeight) {
  PanelCache cache;
  const torch::Tensor w = torch::randn({131, 37}).to(torch::kBFloat16);
  const torch::Tensor widened = w.to(torch::kFloat);
  for (int64_t rows : {1, 4, 17, 300}) {
    for (bool with_bias : {false, true}) {
      torch::NoGradGuard no_grad;
      const torch::Tensor x = torch::randn({2, rows, 37});
      const torch::Tensor b = with_bias ? torch::randn({131}) : torch::Tensor();
      const torch::Tensor want = torch::nn::functional::linear(x, widened, b);
      const FastPathProbe probe;
      const torch::Tensor got = fast_linear(x, w, b, &cache);
      EXPECT_EQ(probe.ran("linear.panels_bf16"), 1) << rows;
      EXPECT_EQ(got.scalar_type(), torch::kFloat);
      EXPECT_LT(max_abs_diff(got, want), 1e-4) << rows;
      set_weight_panels(false);
      const torch::Tensor unpacked = fast_linear(x, w, b, &cache);
      set_weight_panels(true);
      EXPECT_LT(max_abs_diff(unpacked, want), 1e-4) << rows;
    }
  }
  const torch::Tensor x = torch::randn({3, 37}, torch::requires_grad());
  const torch::Tensor y = fast_linear(x, w, {}, &cache);
  y.sum().backward();
  EXPECT_LT(max_abs_diff(y.detach(), torch::mm(x.detach(), widened.t())), 1e-4);
  EXPECT_LT(max_abs_diff(x.grad(), widened.sum(0).expand({3, 37})), 1e-4);
}

// An MoE layer whose experts are stored in bf16 against the same layer with
// float experts holding the rounded values: the bf16 panels serve every
// expert, the output agrees to float rounding.
TEST(MoELayer, Bf16ExpertsEqualFloatExpertsOfTheRoundedWeights) {
  MoEOptions o;
  o.d_model = 48;
  o.d_hidden = 80;
  o.num_experts = 6;
  o.top_k = 2;
  o.activation = Activation::SwiGLU;
  o.expert_bias = false;
  torch::manual_seed(3);
  MoELayer layer(o);
  layer->eval();
  torch::NoGradGuard no_grad;
  for (torch::Tensor* t : {&layer->experts->w1, &layer->experts->w3, &layer->experts->w2})
    t->copy_(bf16_rounded(*t));
  const torch::Tensor x = torch::randn({3, 9, 48});
  const torch::Tensor want = layer->forward(x);
  layer->experts->set_weight_dtype(torch::kBFloat16);
  EXPECT_EQ(layer->experts->w1.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(layer->gate->weight.scalar_type(), torch::kFloat);  // the router stays float32
  const FastPathProbe probe;
  const torch::Tensor got = layer->forward(x);
  EXPECT_GT(probe.ran("linear.panels_bf16"), 0);
  EXPECT_LT(max_abs_diff(got, want), 1e-5);
  layer->experts->set_weight_dtype(torch::kFloat);
  EXPECT_LT(max_abs_diff(layer->forward(x), want), 1e-5);
  EXPECT_THROW(layer->experts->set_weight_dtype(torch::kHalf), std::invalid_argument);
}

// The whole LM with bf16 matrices: logits (full forward and incremental
// decoding with the float32 KV cache) equal the float32 model holding the
// same rounded matrices; norms, biases and routers stay float32.
TEST(LmModel, Bf16MatricesGiveTheLogitsOfTheRoundedFloatModel) {
  for (bool moe : {false, true}) {
    LmConfig c = tiny_lm_config(moe);
    c.tie_embeddings = !moe;  // both output layers: the tied table and lm_head
    torch::manual_seed(11);
    LmModel model(c);
    model.eval();
    torch::NoGradGuard no_grad;
    model.set_weight_dtype(torch::kBFloat16);
    model.set_weight_dtype(torch::kFloat);  // now every matrix holds bf16-representable values
    const torch::Tensor tokens = random_tokens(2, 12, c.vocab_size, 5);
    const torch::Tensor want = model.forward(tokens);
    model.set_weight_dtype(torch::kBFloat16);
    EXPECT_EQ(model.weight_dtype(), torch::kBFloat16);
    for (const auto& item : model.named_parameters()) {
      const bool matrix = item.value().dim() >= 2 && item.key().find(".gate.") == std::string::npos;
      EXPECT_EQ(item.value().scalar_type(), matrix ? torch::kBFloat16 : torch::kFloat) << item.key();
    }
    const FastPathProbe probe;
    const torch::Tensor got = model.forward(tokens);
    EXPECT_GT(probe.ran("linear.panels_bf16"), 0);
    EXPECT_EQ(got.scalar_type(), torch::kFloat);
    EXPECT_LT(relative_diff(want, got), 1e-5) << "moe " << moe;
    LmKvCache cache = model.make_cache(2, 12);
    EXPECT_EQ(cache.k[0].scalar_type(), torch::kFloat);
    torch::Tensor steps = model.forward(tokens.narrow(1, 0, 5), &cache);
    for (int64_t t = 5; t < 12; ++t) steps = torch::cat({steps, model.forward(tokens.narrow(1, t, 1), &cache)}, 1);
    EXPECT_LT(relative_diff(want, steps), 1e-5) << "moe " << moe;
  }
  LmModel model(tiny_lm_config());
  EXPECT_THROW(model.set_weight_dtype(torch::kHalf), std::invalid_argument);
}

// Teacher-forced and step by step (the KV caches, the projected memory),
// with dense, token- and task-routed FFNs.
TEST(Seq2seqModel, Bf16MatricesGiveTheLogitsOfTheRoundedFloatModel) {
  for (Routing decoder : {Routing::Token, Routing::Task}) {
    torch::manual_seed(9);
    Seq2seqModel model(tiny_seq2seq_config(Routing::Token, decoder));
    model.eval();
    torch::NoGradGuard no_grad;
    model.set_weight_dtype(torch::kBFloat16);
    model.set_weight_dtype(torch::kFloat);  // now every matrix holds bf16-representable values
    const Seq2seqBatch b = random_seq2seq_batch({5, 3, 7});
    const int64_t L = b.tgt.size(1);
    // The decoder reads bos, then the target but its last token.
    const torch::Tensor tgt_in = torch::cat({torch::ones({3, 1}, torch::kLong), b.tgt.narrow(1, 0, L - 1)}, 1);
    auto forced = [&] { return model.decode(model.encode(b.src, b.src_lens, b.task), tgt_in, b.tgt_lens); };
    auto stepped = [&] {
      Seq2seqDecoderState state = model.start_decoding(model.encode(b.src, b.src_lens, b.task));
      std::vector<torch::Tensor> steps;
      for (int64_t t = 0; t < L; ++t) steps.push_back(model.step(state, tgt_in.select(1, t)));
      return torch::stack(steps, 1);
    };
    const torch::Tensor want = forced(), want_steps = stepped();
    model.set_weight_dtype(torch::kBFloat16);
    EXPECT_EQ(model.weight_dtype(), torch::kBFloat16);
    int64_t bf16 = 0;
    for (const auto& item : model.named_parameters()) {
      const std::string& name = item.key();
      const bool matrix = item.value().dim() >= 2 && name.find(".gate.") == std::string::npos &&
                          name.find("task_embedding") == std::string::npos &&
                          name.find("experts.b") == std::string::npos;  // the experts' biases are [E, H]
      EXPECT_EQ(item.value().scalar_type(), matrix ? torch::kBFloat16 : torch::kFloat) << name;
      bf16 += matrix;
    }
    EXPECT_GE(bf16, 1 + 2 * 4 + 2 * 4 + 4);  // the table, 12 attention maps, the FFNs and experts
    const FastPathProbe probe;
    const torch::Tensor got = forced();
    EXPECT_GT(probe.ran("linear.panels_bf16"), 0);
    EXPECT_EQ(got.scalar_type(), torch::kFloat);
    EXPECT_LT(relative_diff(want, got), 1e-5) << routing_name(decoder);
    EXPECT_LT(relative_diff(want_steps, stepped()), 1e-5) << routing_name(decoder);
  }
  Seq2seqModel model(tiny_seq2seq_config());
  EXPECT_THROW(model.set_weight_dtype(torch::kHalf), std::invalid_argument);
  // Loading in bf16 by name; as stored (float32) otherwise.
  const std::string dir = temp_dir("seq2seq_bf16") + "/model";
  save_model(dir, model);
  EXPECT_EQ(load_seq2seq_model(dir, WeightStorage::kMap)->weight_dtype(), torch::kFloat);
  EXPECT_EQ(load_seq2seq_model(dir, WeightStorage::kMap, torch::kBFloat16)->weight_dtype(), torch::kBFloat16);
}

// A directory that stores bf16 matrices loads with them in bf16 by default,
// in float32 when asked; one that stores float32 loads in float32.
TEST(LmModel, LoadKeepsTheStoredBf16UnlessAskedOtherwise) {
  const std::string dir = temp_dir("lm_bf16");
  torch::manual_seed(2);
  LmModel model(tiny_lm_config(true));
  save_model(dir + "/fp32", model);
  model.set_weight_dtype(torch::kBFloat16);
  save_model(dir + "/bf16", model);
  EXPECT_EQ(read_model_weights(dir + "/bf16").at("embed_tokens.weight").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(load_lm_model(dir + "/bf16")->weight_dtype(), torch::kBFloat16);
  EXPECT_EQ(load_lm_model(dir + "/bf16", torch::kFloat)->weight_dtype(), torch::kFloat);
  EXPECT_EQ(load_lm_model(dir + "/fp32")->weight_dtype(), torch::kFloat);
  EXPECT_EQ(load_lm_model(dir + "/fp32", torch::kBFloat16)->weight_dtype(), torch::kBFloat16);
  EXPECT_EQ(parse_weight_dtype("auto"), c10::nullopt);
  EXPECT_EQ(parse_weight_dtype("auto", torch::Device("cuda:0")), torch::kFloat);
  EXPECT_EQ(parse_weight_dtype("bf16"), torch::kBFloat16);
  EXPECT_EQ(parse_weight_dtype("fp32"), torch::kFloat);
  EXPECT_EQ(error_of([] { parse_weight_dtype("fp16"); }), "weight dtype 'fp16' is not one of auto, fp32, bf16");
}

}  // namespace
}  // namespace moekit
