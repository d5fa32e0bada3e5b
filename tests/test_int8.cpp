// int8 experts (kernels/int8_kernel.h, ops/int8_weights.h, `moekit
// quantize`): the kernel in every instruction-set variant against exact
// integer sums, row and weight quantization against their formulas, the
// grouped FFN against the same scheme written with LibTorch ops, and int8
// model directories. bf16 experts (`quantize --experts bf16`): the grouped
// FFN against bf16 row GEMMs and float rows written with LibTorch ops, and
// bf16 model directories.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "asr_test_util.h"
#include "lm_test_util.h"
#include "seq2seq_test_util.h"
#include "moe_reference.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/kernels/int8_kernel.h"
#include "moekit/models/asr/asr_model.h"
#include "moekit/models/ffn_stack/ffn_stack.h"
#include "moekit/models/lm/lm_model.h"
#include "moekit/models/model.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/grouped_ffn.h"
#include "moekit/ops/grouped_linear.h"
#include "moekit/ops/int8_weights.h"
#include "moekit/scale/extract.h"
#include "test_util.h"

namespace moekit {
namespace {

using detail::kPanelWidth;
using testing::max_abs_diff;

// Row quantization as int8_kernel.h states it, in LibTorch ops: the row's
// range widened to include 0 over 255 steps, q = round(x / s) + zero in
// [0, 255]; returns q - zero (int32), s and zero.
struct RowsQ {
  torch::Tensor q, scale, zero;
};
RowsQ reference_quantize_rows(const torch::Tensor& x) {
  const torch::Tensor lo = x.amin(1).clamp_max(0), hi = x.amax(1).clamp_min(0);
  const torch::Tensor s = (hi - lo) / 255.0f;
  const torch::Tensor inv = torch::where(s > 0, 1.0f / s, torch::zeros_like(s));
  const torch::Tensor zero = torch::where(s > 0, (-lo * inv).round().clamp(0, 255), torch::zeros_like(s)).to(torch::kInt);
  const torch::Tensor q = ((x * inv.unsqueeze(1)).round().to(torch::kInt) + zero.unsqueeze(1)).clamp(0, 255);
  return {q - zero.unsqueeze(1), s, zero};
}

TEST(Int8Quantization, RowsFollowTheFormulaWithPaddingAndZeroRows) {
  for (int64_t in : {1, 3, 4, 17, 64, 250}) {
    torch::Tensor x = torch::randn({6, in + 2}) * 3.0;
    x[2].zero_();                      // a zero row: scale 0, zero point 0
    x[4] = x[4].abs() + 0.5;           // all positive: the zero point at 0, all 255 steps above it
    const int64_t in4 = detail::int8_padded_inputs(in), ld_xq = in4 + 4;
    std::vector<uint8_t> xq(static_cast<size_t>(6 * ld_xq), 7);
    std::vector<detail::RowQuant> quant(6, detail::RowQuant{-1.0f, -1});
    detail::quantize_rows_u8(x.data_ptr<float>(), 6, in + 2, in, xq.data(), ld_xq, quant.data());
    const RowsQ want = reference_quantize_rows(x.narrow(1, 0, in));
    // x * (1 / scale) exactly (a product of two floats fits a double): the
    // SIMD variants round it in one fused step, the reference after
    // rounding the product to float, so a value within float rounding of a
    // tie may go either way.
    const torch::Tensor inv = torch::where(want.scale > 0, 1.0f / want.scale, torch::zeros_like(want.scale));
    const torch::Tensor exact = x.narrow(1, 0, in).to(torch::kDouble) * inv.to(torch::kDouble).unsqueeze(1);
    for (int64_t r = 0; r < 6; ++r) {
      EXPECT_FLOAT_EQ(quant[r].scale, want.scale[r].item<float>()) << "row " << r;
      const int zero = want.zero[r].item<int>();
      EXPECT_EQ(quant[r].zero, zero) << "row " << r;
      if (r == 2) {
        EXPECT_EQ(quant[r].scale, 0.0f);
      }
      if (r == 4 && in > 1) {
        EXPECT_EQ(zero, 0);
      }
      for (int64_t k = 0; k < in4; ++k) {
        const int expect = k < in ? want.q[r][k].item<int>() + zero : zero;
        const int got = xq[r * ld_xq + k];
        if (got != expect && k < in) {
          const double v = exact[r][k].item<double>();
          const bool near_tie = std::fabs(std::fabs(v - std::trunc(v)) - 0.5) < 1e-5 * std::fabs(v);
          ASSERT_TRUE(near_tie && std::abs(got - expect) == 1) << "in " << in << " row " << r << " k " << k;
          continue;
        }
        ASSERT_EQ(got, expect) << "in " << in << " row " << r << " k " << k;
      }
      EXPECT_EQ(xq[r * ld_xq + in4], 7) << "wrote past the padded row";
    }
  }
}

TEST(Int8Quantization, WeightsArePerOutputChannelSymmetric) {
  torch::Tensor w = torch::randn({3, 40, 24});
  w[1][5].zero_();
  const Int8Weight q = quantize_int8(w);
  ASSERT_EQ(q.q.scalar_type(), torch::kChar);
  ASSERT_EQ(q.scale.sizes(), torch::IntArrayRef({3, 40}));
  EXPECT_EQ(q.q.abs().amax().item<int>(), 127);
  EXPECT_EQ(q.scale[1][5].item<float>(), 0.0f);
  // Every weight within half a step of its channel's scale.
  const torch::Tensor err = (dequantize_int8(q.q, q.scale) - w).abs();
  EXPECT_TRUE((err <= q.scale.unsqueeze(-1) * 0.5001f).all().item<bool>());
  EXPECT_THROW(quantize_int8(torch::ones({4, 4}, torch::kInt)), std::invalid_argument);
  torch::Tensor bad = torch::randn({4, 4});
  bad[0][0] = std::nanf("");
  EXPECT_THROW(quantize_int8(bad), std::invalid_argument);
}

TEST(Int8Kernel, EveryVariantEqualsExactIntegerSums) {
  const auto variants = detail::int8_panel_variants();
  ASSERT_FALSE(variants.empty());
  EXPECT_EQ(variants.back().first, "generic");
  const int64_t out_features = 70;  // 2 whole panels + 6 channels
  const std::vector<std::pair<int64_t, int64_t>> ranges = {{0, 70}, {32, 64}, {64, 70}};
  for (const auto& [name, kernel] : variants) {
    for (int64_t in : {1, 5, 16, 37, 256}) {
      const Int8Weight w = quantize_int8(torch::randn({out_features, in}));
      const torch::Tensor b = torch::randn({out_features});
      const torch::Tensor panels = pack_int8_panels(w.q, w.scale);
      ASSERT_EQ(panels.sizes(), torch::IntArrayRef({3, detail::int8_panel_bytes(in)}));
      for (int64_t rows : {1, 2, 3, 5, 11, 12, 13, 25, 40}) {
        const int64_t ld_out = out_features + 5, in4 = detail::int8_padded_inputs(in);
        const torch::Tensor x = torch::randn({rows, in});
        std::vector<uint8_t> xq(static_cast<size_t>(rows * in4));
        std::vector<detail::RowQuant> xs(static_cast<size_t>(rows));
        detail::quantize_rows_u8(x.data_ptr<float>(), rows, in, in, xq.data(), in4, xs.data());
        // The exact sums in int64 of the rows as quantized, scaled in double.
        std::vector<int32_t> zeros;
        std::vector<float> scales;
        for (const auto& q : xs) {
          zeros.push_back(q.zero);
          scales.push_back(q.scale);
        }
        const torch::Tensor q = torch::from_blob(xq.data(), {rows, in4}, torch::kUInt8).narrow(1, 0, in).to(torch::kInt) -
                                torch::tensor(zeros).unsqueeze(1);
        const torch::Tensor s = torch::tensor(scales);
        const torch::Tensor sums = torch::mm(q.to(torch::kLong), w.q.to(torch::kLong).t());  // [rows, out]
        const torch::Tensor expected_all =
            sums.to(torch::kDouble) * s.to(torch::kDouble).unsqueeze(1) * w.scale.to(torch::kDouble).unsqueeze(0);
        for (const auto& [o_begin, o_end] : ranges) {
          for (bool with_bias : {false, true}) {
            torch::Tensor y = torch::full({rows, ld_out}, 7.0f);
            kernel(xq.data(), xs.data(), rows, in4, in, panels.data_ptr<int8_t>(),
                   with_bias ? b.data_ptr<float>() : nullptr, o_begin, o_end, y.data_ptr<float>(), ld_out);
            torch::Tensor expected = torch::full({rows, ld_out}, 7.0, torch::kDouble);
            torch::Tensor part = expected_all.narrow(1, o_begin, o_end - o_begin);
            if (with_bias) part = part + b.narrow(0, o_begin, o_end - o_begin).to(torch::kDouble);
            expected.narrow(1, o_begin, o_end - o_begin).copy_(part);
            EXPECT_LT(max_abs_diff(y.to(torch::kDouble), expected), 1e-4 * (1.0 + expected.abs().max().item<double>()))
                << name << " in " << in << " rows " << rows << " outputs [" << o_begin << ", " << o_end << ") bias "
                << with_bias;
          }
        }
      }
    }
  }
}

// The int8 grouped FFN computes, per expert: rows quantized per row, times
// the dequantized weights; the activation in float; its rows quantized
// again, times the dequantized w2.
torch::Tensor reference_int8_ffn(const torch::Tensor& x, const std::vector<int64_t>& counts, const ExpertWeights& w,
                                 Activation act) {
  auto qdq_rows = [](const torch::Tensor& t) {
    const RowsQ q = reference_quantize_rows(t);
    return q.q.to(torch::kFloat) * q.scale.unsqueeze(1);
  };
  std::vector<torch::Tensor> outs;
  int64_t row = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    const torch::Tensor xe = x.narrow(0, row, counts[e]);
    row += counts[e];
    const auto i = static_cast<int64_t>(e);
    torch::Tensor h1 = torch::mm(qdq_rows(xe), dequantize_int8(w.w1[i], w.w1_scale[i]).t());
    if (w.b1.defined()) h1 = h1 + w.b1[i];
    torch::Tensor h3;
    if (w.w3.defined()) h3 = torch::mm(qdq_rows(xe), dequantize_int8(w.w3[i], w.w3_scale[i]).t());
    torch::Tensor y = torch::mm(qdq_rows(testing::reference_activation(act, h1, h3)),
                                dequantize_int8(w.w2[i], w.w2_scale[i]).t());
    if (w.b2.defined()) y = y + w.b2[i];
    outs.push_back(y);
  }
  return torch::cat(outs, 0);
}

TEST(Int8GroupedFfn, EqualsTheSchemeInLibTorchOpsAndStaysNearFloat) {
  torch::manual_seed(3);
  for (Activation act : {Activation::Swish, Activation::SwiGLU}) {
    const int64_t experts = 4, d = 40, h = 72;
    const bool gated = act == Activation::SwiGLU;
    ExpertWeights f{torch::randn({experts, h, d}) * 0.2, gated ? torch::Tensor() : torch::randn({experts, h}),
                    gated ? torch::randn({experts, h, d}) * 0.2 : torch::Tensor(), torch::randn({experts, d, h}) * 0.2,
                    gated ? torch::Tensor() : torch::randn({experts, d}), {}, {}, {}, {}, {}, {}};
    ExpertWeights q = f;
    auto to_q = [](torch::Tensor& w, torch::Tensor& scale) {
      if (!w.defined()) return;
      Int8Weight i = quantize_int8(w);
      w = i.q;
      scale = i.scale;
    };
    to_q(q.w1, q.w1_scale);
    to_q(q.w3, q.w3_scale);
    to_q(q.w2, q.w2_scale);
    const std::vector<int64_t> counts = {5, 0, 17, 1};  // an idle expert, one with a single row
    const torch::Tensor x = torch::randn({23, d});
    const torch::Tensor y = grouped_ffn(x, counts, q, {act});
    const torch::Tensor want = reference_int8_ffn(x, counts, q, act);
    EXPECT_LT(max_abs_diff(y, want), 1e-3 * (1.0 + want.abs().max().item<double>())) << activation_name(act);
    // And near the float experts it was made from (8-bit weights and rows).
    const torch::Tensor y_float = grouped_ffn(x, counts, f, {act});
    const double rel = (y - y_float).norm().item<double>() / y_float.norm().item<double>();
    EXPECT_LT(rel, 0.03) << activation_name(act);
    // Off the int8 kernel (float64 rows): the dequantized weights, same result up to the rows' rounding.
    const torch::Tensor y64 = grouped_ffn(x.to(torch::kDouble), counts, q, {act});
    EXPECT_LT((y64.to(torch::kFloat) - y_float).norm().item<double>() / y_float.norm().item<double>(), 0.03);
  }
}

TEST(Int8Experts, MoELayerQuantizesInPlaceAndRefusesTraining) {
  torch::manual_seed(5);
  MoEOptions o;
  o.d_model = 32;
  o.d_hidden = 64;
  o.num_experts = 4;
  o.top_k = 2;
  MoELayer moe(o);
  moe->eval();
  const torch::Tensor x = torch::randn({2, 9, 32});
  torch::Tensor y_float;
  {
    torch::NoGradGuard no_grad;
    y_float = moe->forward(x);
  }
  // The tree walk counts the layer itself when it is the root.
  EXPECT_FALSE(has_int8_experts(*moe));
  EXPECT_EQ(experts_to_int8(*moe), 1);
  ASSERT_TRUE(moe->experts->int8());
  EXPECT_TRUE(has_int8_experts(*moe));
  EXPECT_EQ(moe->experts->w1.scalar_type(), torch::kChar);
  EXPECT_FALSE(moe->experts->w1.requires_grad());
  EXPECT_EQ(moe->experts->w1_scale.sizes(), torch::IntArrayRef({4, 64}));
  torch::Tensor y_int8;
  {
    torch::NoGradGuard no_grad;
    y_int8 = moe->forward(x);
  }
  EXPECT_LT((y_int8 - y_float).norm().item<double>() / y_float.norm().item<double>(), 0.03);
  EXPECT_FALSE(y_int8.equal(y_float));
  EXPECT_NE(error_of([&] { moe->experts->to_int8(); }).find("int8 already"), std::string::npos);
  moe->train();
  const torch::Tensor xg = x.clone().requires_grad_(true);
  EXPECT_NE(error_of([&] { moe->forward(xg); }).find("inference only"), std::string::npos);
}

TEST(Int8ModelDir, QuantizedDirectoryLoadsAndComputesWhatTheQuantizedModelDoes) {
  const std::string base = temp_dir("int8");
  auto fresh_dir = [&](const std::string& name) { return base + "/" + name; };
  torch::manual_seed(7);
  FfnStack model(small_stack_options(32, 2));
  const std::string dir = fresh_dir("float"), out = fresh_dir("q");
  save_model(dir, model);
  write_file_atomic(dir + "/units.txt", "a 0\n");
  const QuantizeReport report = quantize_model_dir(dir, out);
  EXPECT_EQ(report.layers, 2);
  EXPECT_GT(report.float_bytes, 3 * report.quantized_bytes);
  EXPECT_EQ(read_file(out + "/units.txt"), "a 0\n");
  EXPECT_EQ(read_model_config(out)["quantization"]["experts"].as<std::string>(), "int8");
  const TensorMap weights = read_model_weights(out);
  EXPECT_EQ(weights.at("layers.0.ffn.experts.w1").scalar_type(), torch::kChar);
  EXPECT_EQ(weights.at("layers.0.ffn.experts.w1_scale").scalar_type(), torch::kFloat);
  EXPECT_EQ(weights.at("layers.0.ffn.experts.b1").scalar_type(), torch::kFloat);

  std::shared_ptr<Model> loaded = load_model(out);
  EXPECT_TRUE(has_int8_experts(*loaded));
  model.eval();
  experts_to_int8(model);
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({2, 5, 32});
  EXPECT_TRUE(dynamic_cast<FfnStack*>(loaded.get())->forward(x).equal(model.forward(x)));

  // Quantizing twice, a model without MoE layers, and bad entries are clear errors.
  EXPECT_NE(error_of([&] { quantize_model_dir(out, fresh_dir("twice")); }).find("quantized already"),
            std::string::npos);
  FfnStackOptions dense = small_stack_options(32, 2);
  dense.moe = false;
  FfnStack dense_model(dense);
  save_model(fresh_dir("dense"), dense_model);
  EXPECT_NE(error_of([&] { quantize_model_dir(fresh_dir("dense"), fresh_dir("dq")); }).find("no MoE layers"),
            std::string::npos);
  YAML::Node config = read_model_config(out);
  config["quantization"]["experts"] = "int4";
  write_file_atomic(out + "/config.yaml", YAML::Dump(config));
  EXPECT_NE(error_of([&] { load_model(out); }).find("quantization.experts must be int8 or bf16"), std::string::npos);
  config["quantization"] = YAML::Node();
  config["quantization"]["attention"] = "int8";
  write_file_atomic(out + "/config.yaml", YAML::Dump(config));
  EXPECT_NE(error_of([&] { load_model(out); }).find("unknown quantization entry 'attention'"),
            std::string::npos);
  // int8 weights in a directory that does not say so: named, not loaded as floats.
  config.remove("quantization");
  write_file_atomic(out + "/config.yaml", YAML::Dump(config));
  EXPECT_NE(error_of([&] { load_model(out); }).find("w1_scale"), std::string::npos);
}

// One expert's FFN in LibTorch ops: float rows on the bf16 weights widened
// (what the panels compute), or, with bf16_rows, each product's rows and
// result rounded to bf16 as a bf16 row GEMM does.
torch::Tensor reference_bf16_expert(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& w3,
                                    const torch::Tensor& w2, bool bf16_rows) {
  auto linear = [&](const torch::Tensor& in, const torch::Tensor& w) {
    if (bf16_rows) return torch::mm(in.to(torch::kBFloat16), w.t()).to(torch::kFloat);
    return torch::mm(in, w.to(torch::kFloat).t());
  };
  const torch::Tensor a = torch::silu(linear(x, w1)) * linear(x, w3);
  return linear(a, w2);
}

TEST(Bf16Experts, ManyRowsRunAsBf16RowGemmsFewStayExactOnPanels) {
  torch::manual_seed(5);
  const int64_t experts = 4, d = 64, h = 96;
  Experts e(experts, d, h, /*gated=*/true, /*bias=*/false);
  e->to_bf16();
  ASSERT_EQ(e->w1.scalar_type(), torch::kBFloat16);
  ASSERT_TRUE(e->bf16_gemm());
  // Two experts at and above kBf16GemmRows (69 rows: padded to 96 for the
  // GEMM, the padding's products dropped), one with a few rows, one idle.
  const std::vector<int64_t> counts = {kBf16GemmRows, 3, 0, 2 * kBf16GemmRows + 5};
  const int64_t rows = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const torch::Tensor x = torch::randn({rows, d});
  torch::NoGradGuard no_grad;
  const int64_t gemms_before = fast_path_count("linear.bf16_gemm");
  const torch::Tensor y = grouped_ffn(x, counts, e->weights_for(x, counts, GroupedFfnKernel::Auto), {Activation::SwiGLU});
  const bool native = cpu_has_native_bf16();
  // Three products (w1, w3, w2) per expert with many rows.
  EXPECT_EQ(fast_path_count("linear.bf16_gemm") - gemms_before, native ? 6 : 0);
  if (!native) std::cout << "[ note ] this CPU has no native bf16: the bf16 row GEMMs were not exercised\n";
  int64_t begin = 0;
  for (int64_t i = 0; i < experts; ++i) {
    const int64_t n = counts[static_cast<size_t>(i)];
    if (n == 0) continue;
    const torch::Tensor xi = x.narrow(0, begin, n), yi = y.narrow(0, begin, n);
    const bool gemm = native && n >= kBf16GemmRows;
    const torch::Tensor want = reference_bf16_expert(xi, e->w1[i], e->w3[i], e->w2[i], gemm);
    EXPECT_LT(max_abs_diff(yi, want), 1e-4 * (1.0 + want.abs().max().item<double>())) << "expert " << i;
    // Rounded rows stay near the float rows on the same weights.
    const torch::Tensor exact = reference_bf16_expert(xi, e->w1[i], e->w3[i], e->w2[i], false);
    EXPECT_LT((yi - exact).norm().item<double>() / exact.norm().item<double>(), 0.02) << "expert " << i;
    begin += n;
  }
  // The same experts stored as bf16 for a language model (set_weight_dtype)
  // keep float rows at every row count.
  Experts lm_experts(experts, d, h, true, false);
  lm_experts->set_weight_dtype(torch::kBFloat16);
  ASSERT_FALSE(lm_experts->bf16_gemm());
  const int64_t before_lm = fast_path_count("linear.bf16_gemm");
  grouped_ffn(x, counts, lm_experts->weights_for(x, counts, GroupedFfnKernel::Auto), {Activation::SwiGLU});
  EXPECT_EQ(fast_path_count("linear.bf16_gemm"), before_lm);
  Experts int8_experts(experts, d, h, true, false);
  int8_experts->to_int8();
  EXPECT_NE(error_of([&] { int8_experts->to_bf16(); }).find("int8"), std::string::npos);
}

TEST(Bf16ModelDir, QuantizedDirectoryLoadsAsBf16ExpertsAndStaysNearFloat) {
  const std::string base = temp_dir("bf16dir");
  torch::manual_seed(9);
  FfnStack model(small_stack_options(32, 2));
  const std::string dir = base + "/float", out = base + "/bf16";
  save_model(dir, model);
  const QuantizeReport report = quantize_model_dir(dir, out, "bf16");
  EXPECT_EQ(report.layers, 2);
  EXPECT_EQ(report.float_bytes, 2 * report.quantized_bytes);
  EXPECT_EQ(read_model_config(out)["quantization"]["experts"].as<std::string>(), "bf16");
  const TensorMap weights = read_model_weights(out);
  EXPECT_EQ(weights.at("layers.0.ffn.experts.w1").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(weights.at("layers.0.ffn.experts.b1").scalar_type(), torch::kFloat);
  std::shared_ptr<Model> loaded = load_model(out);
  torch::NoGradGuard no_grad;
  model.eval();
  const torch::Tensor x = torch::randn({4, 40, 32});
  const torch::Tensor y_float = model.forward(x);
  experts_to_bf16(model);
  const torch::Tensor y = dynamic_cast<FfnStack*>(loaded.get())->forward(x);
  EXPECT_TRUE(y.equal(model.forward(x)));
  EXPECT_LT((y - y_float).norm().item<double>() / y_float.norm().item<double>(), 0.02);
  EXPECT_NE(error_of([&] { quantize_model_dir(out, base + "/twice", "int8"); }).find("quantized already"),
            std::string::npos);
  EXPECT_NE(error_of([&] { quantize_model_dir(dir, base + "/x", "fp8"); }).find("int8 or bf16, not 'fp8'"),
            std::string::npos);
}

TEST(Int8Experts, SpeechEncoderStaysNearFloatInFullContextAndStreaming) {
  torch::manual_seed(11);
  AsrConfig c = small_asr_config();
  c.encoder.output_size = 64;  // rows wide enough that 8-bit rounding averages out as in real models
  c.encoder.ffn.hidden = 128;
  AsrModel model(c);
  model.eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor feats = torch::randn({1, 67, 20});
  const torch::Tensor lens = torch::full({1}, 67, torch::kLong);
  auto stream = [&] {
    EncoderStreamCache cache;
    std::vector<torch::Tensor> out;
    const int64_t window = model.encoder->window_frames(4), stride = model.encoder->subsampling_rate() * 4;
    for (int64_t t = 0; t + window <= feats.size(1); t += stride) {
      out.push_back(model.encoder->forward_chunk(feats.narrow(1, t, window), cache, -1));
    }
    return torch::cat(out, 1);
  };
  const torch::Tensor full_float = model.encoder->forward(feats, lens).first, chunk_float = stream();
  experts_to_int8(model);
  const FastPathProbe probe;
  const torch::Tensor full_int8 = model.encoder->forward(feats, lens).first, chunk_int8 = stream();
  EXPECT_GT(probe.ran("linear.int8"), 0);
  auto rel = [](const torch::Tensor& a, const torch::Tensor& b) { return (a - b).norm().item<double>() / b.norm().item<double>(); };
  EXPECT_LT(rel(full_int8, full_float), 0.03);
  EXPECT_LT(rel(chunk_int8, chunk_float), 0.03);
}

TEST(Int8Experts, LanguageModelDecodesWithTheCacheNearFloat) {
  torch::manual_seed(13);
  LmConfig c = tiny_lm_config(/*moe=*/true);
  c.d_model = 64;
  c.d_ffn = 96;
  LmModel model(c);
  model.eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor tokens = random_tokens(2, 12, c.vocab_size, 3);
  const torch::Tensor float_logits = model.forward(tokens);
  experts_to_int8(model);
  const torch::Tensor int8_logits = model.forward(tokens);
  EXPECT_LT(relative_diff(float_logits, int8_logits), 0.05);
  // Token by token with the KV cache: the int8 model's own full forward.
  LmKvCache cache = model.make_cache(2, tokens.size(1));
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < tokens.size(1); ++t) steps.push_back(model.forward(tokens.narrow(1, t, 1), &cache));
  EXPECT_LT(relative_diff(int8_logits, torch::cat(steps, 1)), 2e-3);
}

// Scale-Up / Scale-Out and export take float weights: an int8 LM directory
// is refused by name, while it still loads for inference.
TEST(Int8Experts, ScalingAndExportNeedTheFloatLanguageModel) {
  LmModel model(tiny_lm_config(/*moe=*/true));
  const std::string dir = temp_dir("int8_lm_scale");
  save_lm_dir({model.config(), module_state(model)}, dir + "/lm");
  quantize_model_dir(dir + "/lm", dir + "/lm_int8");
  EXPECT_NO_THROW(load_lm_model(dir + "/lm_int8"));
  EXPECT_NE(error_of([&] { read_lm_dir(dir + "/lm_int8"); }).find("lm_int8 is quantized"), std::string::npos);
  EXPECT_NO_THROW(read_lm_dir(dir + "/lm"));
}

TEST(Int8Experts, ExtractionNeedsTheFloatModel) {
  Seq2seqModel model(tiny_seq2seq_config(Routing::Task, Routing::Task));
  experts_to_int8(model);
  EXPECT_NE(error_of<std::invalid_argument>([&] { extract_task(model, model.config().tasks.front()); })
                .find("the experts are int8; extract from the float model"),
            std::string::npos);
}

}  // namespace
}  // namespace moekit
