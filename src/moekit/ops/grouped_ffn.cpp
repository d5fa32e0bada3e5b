#include "moekit/ops/grouped_ffn.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <iterator>
#include <numeric>

#include "moekit/core/check.h"
#include "moekit/kernels/panel_kernel.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/grouped_linear.h"
#include "moekit/ops/packed_weights.h"

// at::_grouped_mm (a grouped GEMM with autograd) arrived in LibTorch 2.8
// (-DMOEKIT_HAVE_GROUPED_MM=0 leaves it out).
#ifndef MOEKIT_HAVE_GROUPED_MM
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define MOEKIT_HAVE_GROUPED_MM 1
#else
#define MOEKIT_HAVE_GROUPED_MM 0
#endif
#endif

namespace moekit {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// mm/sum into a view (the out= overloads want an lvalue).
void mm_into(torch::Tensor out, const torch::Tensor& a, const torch::Tensor& b) { torch::mm_out(out, a, b); }
void sum_rows_into(torch::Tensor out, const torch::Tensor& a) { torch::sum_out(out, a, {0}); }

struct ForwardResult {
  torch::Tensor y, h1, h3;
};

ForwardResult grouped_ffn_forward(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                                  const ExpertWeights& w, const GroupedFfnOptions& options) {
  const int64_t rows = x.size(0);
  const int64_t d_hidden = w.w1.size(1);
  const bool gated = is_gated(options.activation);
  ForwardResult r;
  r.h1 = torch::empty({rows, d_hidden}, x.options());
  if (gated) r.h3 = torch::empty({rows, d_hidden}, x.options());
  r.y = torch::empty({rows, x.size(1)}, x.options());
  if (rows == 0) return r;
  // Each expert's rows go through the small-rows kernel or a GEMM.
  std::vector<bool> small =
      grouped_ffn_small_rows_experts(x, tokens_per_expert, options.kernel, w.w1_panels.defined());
  const bool bf16_gemm = w.bf16_gemm && w.w1.scalar_type() == torch::kBFloat16 && x.device().is_cpu() &&
                         x.scalar_type() == torch::kFloat && options.kernel == GroupedFfnKernel::Auto &&
                         cpu_has_native_bf16();
  if (bf16_gemm) {
    for (size_t e = 0; e < small.size(); ++e) small[e] = small[e] && tokens_per_expert[e] < kBf16GemmRows;
  }
  const RowGroups groups = RowGroups::from_counts(tokens_per_expert);
  auto linear = [&](const torch::Tensor& in, const torch::Tensor& weight, const torch::Tensor& bias,
                    const torch::Tensor& panels, torch::Tensor& out) {
    if (w.int8()) {
      grouped_linear_int8_into(in, tokens_per_expert, panels, weight.size(1), bias, out);
    } else {
      grouped_linear_into(in, groups, weight, bias, panels, small, out, bf16_gemm);
    }
  };
  linear(x, w.w1, w.b1, w.w1_panels, r.h1);
  if (gated) linear(x, w.w3, torch::Tensor(), w.w3_panels, r.h3);
  // The activation over all rows at once: LibTorch's vectorized kernels.
  const torch::Tensor a = apply_activation(options.activation, r.h1, r.h3);  // [M, H]
  linear(a, w.w2, w.b2, w.w2_panels, r.y);
  return r;
}

// LibTorch 1.13's Function::apply cannot take undefined tensors: absent
// biases and w3 travel as empty placeholders.
torch::Tensor to_placeholder(const torch::Tensor& t, const torch::Tensor& like) {
  return t.defined() ? t.contiguous() : torch::empty({0}, like.options().requires_grad(false));
}
torch::Tensor from_placeholder(const torch::Tensor& t) { return t.numel() == 0 ? torch::Tensor() : t; }

// Whether a training forward runs its GEMMs (and its backward's) on the
// panel kernel: Auto or SmallRows requested, CPU float32, and
// panels_serve_training (ops/grouped_linear.h) for the rows an active
// expert has on average (every expert's weights are packed per call).
bool training_on_panels(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                        GroupedFfnKernel kernel) {
  const int64_t active = std::count_if(tokens_per_expert.begin(), tokens_per_expert.end(), [](int64_t n) { return n > 0; });
  return (kernel == GroupedFfnKernel::Auto || kernel == GroupedFfnKernel::SmallRows) && x.device().is_cpu() &&
         x.scalar_type() == torch::kFloat && active > 0 && panels_serve_training(x.size(0) / active);
}

// The backward's GEMMs on the panel kernel: the input gradients as grouped
// maps on the transposed weights (packed here), the weight gradients as one
// panel GEMM per expert (dW = dH^T X). Gradients of idle experts are
// already zero; each active expert's slices are overwritten.
void panel_backward(const std::vector<int64_t>& tokens_per_expert, Activation activation, const torch::Tensor& x,
                    const torch::Tensor& w1, const torch::Tensor& w3, const torch::Tensor& w2,
                    const torch::Tensor& h1, const torch::Tensor& h3, const torch::Tensor& a,
                    const torch::Tensor& grad_y, torch::Tensor& grad_a, torch::Tensor& grad_x, torch::Tensor& grad_w1,
                    torch::Tensor& grad_b1, torch::Tensor& grad_w3, torch::Tensor& grad_w2, torch::Tensor& grad_b2) {
  const RowGroups groups = RowGroups::from_counts(tokens_per_expert);
  const std::vector<bool> all(tokens_per_expert.size(), true);
  auto transposed_map = [&](const torch::Tensor& in, const torch::Tensor& weight, torch::Tensor& out) {
    const torch::Tensor weight_t = weight.transpose(1, 2);  // [E, in, out]: the map back
    grouped_linear_into(in, groups, weight_t, torch::Tensor(), pack_panels(weight_t), all, out);
  };
  auto per_expert = [&](const std::function<void(int64_t, int64_t, int64_t)>& fn) {
    for (int64_t e : detail::active_groups_by_size(tokens_per_expert)) fn(e, groups.offsets[e], tokens_per_expert[e]);
  };
  transposed_map(grad_y, w2, grad_a);  // dA = dY W2
  per_expert([&](int64_t e, int64_t begin, int64_t rows) {
    const torch::Tensor dy = grad_y.narrow(0, begin, rows);
    if (grad_w2.defined()) {
      torch::Tensor g = grad_w2[e];
      panel_matmul_nt_into(dy.t(), a.narrow(0, begin, rows).t(), g);
    }
    if (grad_b2.defined()) sum_rows_into(grad_b2[e], dy);
  });
  torch::Tensor grad_h1, grad_h3;
  activation_backward(activation, grad_a, h1, h3, &grad_h1, &grad_h3);
  if (grad_x.defined()) {
    transposed_map(grad_h1, w1, grad_x);  // dX = dH1 W1 (+ dH3 W3)
    if (w3.defined()) {
      torch::Tensor from_w3 = torch::empty_like(grad_x);
      transposed_map(grad_h3, w3, from_w3);
      grad_x.add_(from_w3);
    }
  }
  per_expert([&](int64_t e, int64_t begin, int64_t rows) {
    const torch::Tensor xe_t = x.narrow(0, begin, rows).t();
    if (grad_w1.defined()) {
      torch::Tensor g = grad_w1[e];
      panel_matmul_nt_into(grad_h1.narrow(0, begin, rows).t(), xe_t, g);
    }
    if (grad_b1.defined()) sum_rows_into(grad_b1[e], grad_h1.narrow(0, begin, rows));
    if (grad_w3.defined()) {
      torch::Tensor g = grad_w3[e];
      panel_matmul_nt_into(grad_h3.narrow(0, begin, rows).t(), xe_t, g);
    }
  });
}

class GroupedFfnFunction : public torch::autograd::Function<GroupedFfnFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& x, const Variable& w1,
                               const Variable& b1, const Variable& w3, const Variable& w2,
                               const Variable& b2, std::vector<int64_t> tokens_per_expert,
                               int64_t activation, int64_t kernel) {
    GroupedFfnOptions options{static_cast<Activation>(activation), static_cast<GroupedFfnKernel>(kernel)};
    ExpertWeights w{w1, from_placeholder(b1), from_placeholder(w3), w2, from_placeholder(b2), {}, {}, {}, {}, {}, {}};
    const bool panels = training_on_panels(x, tokens_per_expert, options.kernel);
    if (panels) {  // packed per call: every optimizer step changes the weights
      MOEKIT_FAST_PATH("grouped_ffn.training_panels");
      w.w1_panels = pack_panels(w1);
      if (w.w3.defined()) w.w3_panels = pack_panels(w.w3);
      w.w2_panels = pack_panels(w2);
    }
    ForwardResult r = grouped_ffn_forward(x, tokens_per_expert, w, options);
    ctx->saved_data["panels"] = panels;
    ctx->save_for_backward({x, w1, w3, w2, r.h1, r.h3.defined() ? r.h3 : torch::empty({0}, x.options())});
    ctx->saved_data["tokens_per_expert"] = tokens_per_expert;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["has_b1"] = b1.numel() > 0;
    ctx->saved_data["has_b2"] = b2.numel() > 0;
    return {r.y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& w1 = saved[1];
    const torch::Tensor w3 = from_placeholder(saved[2]);
    const torch::Tensor& w2 = saved[3];
    const torch::Tensor& h1 = saved[4];
    const std::vector<int64_t> tokens_per_expert = ctx->saved_data["tokens_per_expert"].toIntVector();
    const auto activation = static_cast<Activation>(ctx->saved_data["activation"].toInt());
    // Not from_placeholder: with no rows at all (an expert-parallel rank
    // that received none) a gated h3 is [0, H], empty but present.
    const torch::Tensor h3 = is_gated(activation) ? saved[5] : torch::Tensor();
    const bool has_b1 = ctx->saved_data["has_b1"].toBool();
    const bool has_b2 = ctx->saved_data["has_b2"].toBool();
    const bool gated = is_gated(activation);
    // Autograd passes no gradient for an output nothing downstream needed
    // one for (an expert-parallel rank's rows whose tokens all went unused):
    // zeros, so the weights' gradients are still defined.
    const torch::Tensor grad_y = grad_outputs[0].defined()
                                     ? grad_outputs[0].contiguous()
                                     : torch::zeros({x.size(0), w2.size(1)}, x.options());  // [M, D]
    const std::vector<int64_t> offsets = RowGroups::from_counts(tokens_per_expert).offsets;

    const bool need_x = ctx->needs_input_grad(0);
    const bool need_w1 = ctx->needs_input_grad(1), need_b1 = has_b1 && ctx->needs_input_grad(2);
    const bool need_w3 = gated && ctx->needs_input_grad(3);
    const bool need_w2 = ctx->needs_input_grad(4), need_b2 = has_b2 && ctx->needs_input_grad(5);

    // Every expert with rows overwrites its slice of each gradient below (and
    // the rows cover all of x), so only the idle experts' slices are zeroed:
    // zeroing whole [E, H, D] gradients cost more than the GEMMs at few rows.
    torch::Tensor grad_w1 = need_w1 ? torch::empty_like(w1) : torch::Tensor();
    torch::Tensor grad_b1 = need_b1 ? torch::empty({w1.size(0), w1.size(1)}, w1.options()) : torch::Tensor();
    torch::Tensor grad_w3 = need_w3 ? torch::empty_like(w3) : torch::Tensor();
    torch::Tensor grad_w2 = need_w2 ? torch::empty_like(w2) : torch::Tensor();
    torch::Tensor grad_b2 = need_b2 ? torch::empty({w2.size(0), w2.size(1)}, w2.options()) : torch::Tensor();
    torch::Tensor grad_x = need_x ? torch::empty_like(x) : torch::Tensor();
    for (size_t e = 0; e < tokens_per_expert.size(); ++e) {
      if (tokens_per_expert[e] > 0) continue;
      const int64_t i = static_cast<int64_t>(e);
      for (torch::Tensor* g : {&grad_w1, &grad_b1, &grad_w3, &grad_w2, &grad_b2})
        if (g->defined()) (*g)[i].zero_();
    }

    const torch::Tensor a = need_w2 ? apply_activation(activation, h1, h3) : torch::Tensor();  // [M, H]
    torch::Tensor grad_a = torch::empty_like(h1);                                              // [M, H]
    if (ctx->saved_data["panels"].toBool()) {
      panel_backward(tokens_per_expert, activation, x, w1, w3, w2, h1, h3, a, grad_y, grad_a, grad_x, grad_w1,
                     grad_b1, grad_w3, grad_w2, grad_b2);
      return {grad_x, grad_w1, grad_b1, grad_w3, grad_w2, grad_b2, Variable(), Variable(), Variable()};
    }
    // Experts are independent: on CPU with several threads each runs its
    // GEMMs single-threaded on one thread.
    const std::vector<int64_t> experts = detail::active_groups_by_size(tokens_per_expert);
    auto for_each_expert = [&](const std::function<void(int64_t)>& fn) {
      if (x.device().is_cpu()) {
        detail::for_each_item_dynamic(static_cast<int64_t>(experts.size()), [&](int64_t i) { fn(experts[i]); });
      } else {
        for (int64_t e : experts) fn(e);
      }
    };
    for_each_expert([&](int64_t e) {
      const int64_t rows = tokens_per_expert[e];
      const torch::Tensor dy = grad_y.narrow(0, offsets[e], rows);  // [n_e, D]
      if (need_w2) mm_into(grad_w2[e], dy.t(), a.narrow(0, offsets[e], rows));
      if (need_b2) sum_rows_into(grad_b2[e], dy);
      mm_into(grad_a.narrow(0, offsets[e], rows), dy, w2[e]);
    });
    torch::Tensor grad_h1, grad_h3;
    activation_backward(activation, grad_a, h1, h3, &grad_h1, &grad_h3);
    for_each_expert([&](int64_t e) {
      const int64_t rows = tokens_per_expert[e];
      const torch::Tensor xe = x.narrow(0, offsets[e], rows);
      const torch::Tensor dh1 = grad_h1.narrow(0, offsets[e], rows);  // [n_e, H]
      if (need_w1) mm_into(grad_w1[e], dh1.t(), xe);
      if (need_b1) sum_rows_into(grad_b1[e], dh1);
      torch::Tensor dx = need_x ? grad_x.narrow(0, offsets[e], rows) : torch::Tensor();
      if (need_x) torch::mm_out(dx, dh1, w1[e]);
      if (gated) {
        const torch::Tensor dh3 = grad_h3.narrow(0, offsets[e], rows);
        if (need_w3) mm_into(grad_w3[e], dh3.t(), xe);
        if (need_x) dx.addmm_(dh3, w3[e]);
      }
    });
    return {grad_x, grad_w1, grad_b1, grad_w3, grad_w2, grad_b2, Variable(), Variable(), Variable()};
  }
};

#if MOEKIT_HAVE_GROUPED_MM
// All experts in three grouped GEMMs (two with SwiGLU's w3): rows stay
// grouped by expert, `offs` ([E] int32 on the device) holds each expert's
// end row and expert_of_row ([M] int64, only needed with biases) each row's
// expert.
torch::Tensor grouped_mm_core(const torch::Tensor& x, const torch::Tensor& offs, const torch::Tensor& expert_of_row,
                              const ExpertWeights& w, Activation activation) {
  auto linear = [&](const torch::Tensor& in, const torch::Tensor& weight, const torch::Tensor& bias) {
    torch::Tensor out = at::_grouped_mm(in, weight.transpose(1, 2), offs);  // [M, out]
    return bias.defined() ? out + bias.index_select(0, expert_of_row) : out;
  };
  const torch::Tensor h1 = linear(x, w.w1, w.b1);
  const torch::Tensor h3 = w.w3.defined() ? linear(x, w.w3, torch::Tensor()) : torch::Tensor();
  return linear(apply_activation(activation, h1, h3), w.w2, w.b2);
}

torch::Tensor grouped_mm_ffn(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                             const ExpertWeights& w, Activation activation) {
  const int64_t rows = x.size(0);
  if (rows == 0) return torch::zeros_like(x);
  MOEKIT_FAST_PATH("grouped_ffn.grouped_mm");
  std::vector<int32_t> ends(tokens_per_expert.size());
  int64_t end = 0;
  for (size_t e = 0; e < ends.size(); ++e) ends[e] = static_cast<int32_t>(end += tokens_per_expert[e]);
  const torch::Tensor offs = torch::tensor(ends, torch::kInt32).to(x.device(), /*non_blocking=*/true);
  torch::Tensor expert_of_row;  // [M] for the biases, made on the device without a sync
  if (w.b1.defined() || w.b2.defined()) {
    const torch::Tensor counts = torch::tensor(tokens_per_expert, torch::kLong).to(x.device(), true);
    expert_of_row = torch::repeat_interleave(counts, c10::optional<int64_t>(rows));  // [0 x n0, 1 x n1, ...]
  }
  return grouped_mm_core(x, offs, expert_of_row, w, activation);
}

// CUDA autocast to bfloat16 is on (the trainer's train_conf.autocast: bf16).
bool cuda_autocast_bf16() {
  return at::autocast::is_autocast_enabled(at::kCUDA) && at::autocast::get_autocast_dtype(at::kCUDA) == at::kBFloat16;
}

// GroupedMm's shape conditions (16-byte strides in bfloat16, the expert limit).
bool grouped_mm_shapes_fit(const torch::Tensor& x, const ExpertWeights& w) {
  return x.dim() == 2 && x.size(1) % 8 == 0 && w.w1.dim() == 3 && w.w1.size(1) % 8 == 0 && w.w1.size(0) < 1024;
}
#endif

// int8 experts: the int8 kernel on CPU float32 rows (packing the panels
// here when the caller has none), the dequantized weights elsewhere.
torch::Tensor int8_grouped_ffn(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                               const ExpertWeights& weights, const GroupedFfnOptions& options) {
  MOEKIT_CHECK_ARG(!(torch::GradMode::is_enabled() && x.requires_grad()),
                   "grouped_ffn: int8 experts serve inference only (train the float model, then quantize it)");
  MOEKIT_CHECK_ARG(weights.w1.scalar_type() == torch::kChar && weights.w2.scalar_type() == torch::kChar &&
                       weights.w2_scale.defined() && (!weights.w3.defined() || weights.w3_scale.defined()),
                   "grouped_ffn: int8 experts need int8 w1/w2(/w3) with their scales");
  if (!(x.device().is_cpu() && x.scalar_type() == torch::kFloat)) {
    auto dq = [&](const torch::Tensor& q, const torch::Tensor& s) {
      return q.defined() ? dequantize_int8(q, s).to(x.options()) : torch::Tensor();
    };
    auto cast = [&](const torch::Tensor& t) { return t.defined() ? t.to(x.options()) : t; };
    const ExpertWeights w{dq(weights.w1, weights.w1_scale), cast(weights.b1), dq(weights.w3, weights.w3_scale),
                          dq(weights.w2, weights.w2_scale), cast(weights.b2), {}, {}, {}, {}, {}, {}};
    return grouped_ffn(x, tokens_per_expert, w, options);
  }
  ExpertWeights w = weights;
  auto panels = [](const torch::Tensor& given, const torch::Tensor& q, const torch::Tensor& s) {
    return given.defined() ? given : pack_int8_panels(q, s);
  };
  w.w1_panels = panels(w.w1_panels, w.w1, w.w1_scale);
  if (w.w3.defined()) w.w3_panels = panels(w.w3_panels, w.w3, w.w3_scale);
  w.w2_panels = panels(w.w2_panels, w.w2, w.w2_scale);
  if (w.b1.defined()) w.b1 = w.b1.to(torch::kFloat).contiguous();
  if (w.b2.defined()) w.b2 = w.b2.to(torch::kFloat).contiguous();
  torch::NoGradGuard no_grad;
  return grouped_ffn_forward(x.contiguous(), tokens_per_expert, w, options).y;
}

}  // namespace

bool grouped_mm_applies(const torch::Tensor& x, const ExpertWeights& weights) {
#if MOEKIT_HAVE_GROUPED_MM
  const auto bf16 = [](const torch::Tensor& t) { return !t.defined() || t.scalar_type() == torch::kBFloat16; };
  return x.is_cuda() && x.scalar_type() == torch::kBFloat16 && bf16(weights.w1) && bf16(weights.w2) &&
         bf16(weights.w3) && bf16(weights.b1) && bf16(weights.b2) && grouped_mm_shapes_fit(x, weights);
#else
  (void)x;
  (void)weights;
  return false;
#endif
}

std::vector<bool> grouped_ffn_small_rows_experts(const torch::Tensor& x,
                                                 const std::vector<int64_t>& tokens_per_expert,
                                                 GroupedFfnKernel requested, bool with_panels) {
  const bool small_rows_possible = x.device().is_cpu() && x.scalar_type() == torch::kFloat32;
  if (requested == GroupedFfnKernel::SmallRows) {
    MOEKIT_CHECK_ARG(small_rows_possible, "the SmallRows grouped-FFN kernel needs CPU float32 inputs, got ",
                     x.device(), " ", x.scalar_type());
  }
  std::vector<bool> small(tokens_per_expert.size(), false);
  if (!small_rows_possible || requested == GroupedFfnKernel::PerExpertGemm) return small;
  for (size_t e = 0; e < small.size(); ++e) {
    small[e] = requested == GroupedFfnKernel::SmallRows || small_rows_serves(tokens_per_expert[e], with_panels);
  }
  return small;
}

torch::Tensor grouped_ffn(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                          const ExpertWeights& weights, const GroupedFfnOptions& options) {
  const int64_t num_experts = static_cast<int64_t>(tokens_per_expert.size());
  MOEKIT_CHECK_ARG(x.dim() == 2, "grouped_ffn: x must be [rows, d_model], got ", x.sizes());
  MOEKIT_CHECK_ARG(weights.w1.dim() == 3 && weights.w1.size(0) == num_experts &&
                       weights.w1.size(2) == x.size(1),
                   "grouped_ffn: w1 must be [E=", num_experts, ", H, D=", x.size(1), "], got ",
                   weights.w1.sizes());
  const int64_t d_hidden = weights.w1.size(1);
  MOEKIT_CHECK_ARG(weights.w2.sizes() == torch::IntArrayRef({num_experts, x.size(1), d_hidden}),
                   "grouped_ffn: w2 must be [", num_experts, ", ", x.size(1), ", ", d_hidden, "], got ",
                   weights.w2.sizes());
  MOEKIT_CHECK_ARG(is_gated(options.activation) == weights.w3.defined(),
                   "grouped_ffn: w3 must be given exactly for gated activations");
  MOEKIT_CHECK_ARG(std::accumulate(tokens_per_expert.begin(), tokens_per_expert.end(), int64_t{0}) == x.size(0),
                   "grouped_ffn: tokens_per_expert sums to a different count than x's ", x.size(0), " rows");
  if (weights.int8()) return int8_grouped_ffn(x, tokens_per_expert, weights, options);
  auto check_panels = [&](const torch::Tensor& panels, const torch::Tensor& w, const char* name) {
    if (!panels.defined()) return;
    const int64_t out = w.size(1), in = w.size(2);
    MOEKIT_CHECK_ARG(panels.scalar_type() == w.scalar_type() && packs_into_panels(panels) && panels.is_contiguous() &&
                         panels.sizes() == torch::IntArrayRef({num_experts, (out + detail::kPanelWidth - 1) /
                                                                                  detail::kPanelWidth,
                                                               in, detail::kPanelWidth}),
                     "grouped_ffn: ", name, " must be pack_panels of its weight, got ", panels.sizes());
  };
  check_panels(weights.w1_panels, weights.w1, "w1_panels");
  if (weights.w3.defined()) check_panels(weights.w3_panels, weights.w3, "w3_panels");
  check_panels(weights.w2_panels, weights.w2, "w2_panels");
  const torch::Tensor x_contiguous = x.contiguous();
  if (options.kernel == GroupedFfnKernel::GroupedMm) {
    MOEKIT_CHECK_ARG(grouped_mm_applies(x, weights), "the GroupedMm grouped-FFN kernel needs LibTorch >= 2.8 (this is ",
                     TORCH_VERSION, "), CUDA bfloat16 inputs and weights and widths that are multiples of 8; got ",
                     x.device(), " ", x.scalar_type(), " rows of width ", x.size(1));
  }
#if MOEKIT_HAVE_GROUPED_MM
  if (options.kernel == GroupedFfnKernel::GroupedMm ||
      (options.kernel == GroupedFfnKernel::Auto && grouped_mm_applies(x, weights))) {
    return grouped_mm_ffn(x_contiguous, tokens_per_expert, weights, options.activation);
  }
#endif
  const bool needs_grad = torch::GradMode::is_enabled() &&
                          (x.requires_grad() || weights.w1.requires_grad() || weights.w2.requires_grad() ||
                           (weights.w3.defined() && weights.w3.requires_grad()) ||
                           (weights.b1.defined() && weights.b1.requires_grad()) ||
                           (weights.b2.defined() && weights.b2.requires_grad()));
  if (!needs_grad) {
    // Inference: no autograd node, and the panels when given.
    ExpertWeights w = weights;
    w.w1 = w.w1.contiguous();
    w.w2 = w.w2.contiguous();
    if (w.w3.defined()) w.w3 = w.w3.contiguous();
    if (w.b1.defined()) w.b1 = w.b1.contiguous();
    if (w.b2.defined()) w.b2 = w.b2.contiguous();
    return grouped_ffn_forward(x_contiguous, tokens_per_expert, w, options).y;
  }
  return GroupedFfnFunction::apply(x_contiguous, weights.w1.contiguous(), to_placeholder(weights.b1, x),
                                   to_placeholder(weights.w3, x), weights.w2.contiguous(),
                                   to_placeholder(weights.b2, x), tokens_per_expert,
                                   static_cast<int64_t>(options.activation),
                                   static_cast<int64_t>(options.kernel))[0];
}

bool grouped_mm_offsets_applies(const torch::Tensor& x, const ExpertWeights& weights) {
#if MOEKIT_HAVE_GROUPED_MM
  if (!x.is_cuda() || weights.int8() || !grouped_mm_shapes_fit(x, weights)) return false;
  return grouped_mm_applies(x, weights) || (cuda_autocast_bf16() && x.is_floating_point());
#else
  (void)x;
  (void)weights;
  return false;
#endif
}

torch::Tensor grouped_mm_ffn_offsets(const torch::Tensor& x, const torch::Tensor& offsets,
                                     const ExpertWeights& weights, Activation activation) {
  MOEKIT_CHECK_ARG(grouped_mm_offsets_applies(x, weights), "grouped_mm_ffn_offsets needs LibTorch >= 2.8 (this is ",
                   TORCH_VERSION, ") and CUDA bfloat16 rows and weights (or CUDA bfloat16 autocast), widths that "
                   "are multiples of 8; got ", x.device(), " ", x.scalar_type());
  MOEKIT_CHECK_ARG(offsets.dim() == 1 && offsets.size(0) == weights.w1.size(0) && offsets.device() == x.device(),
                   "grouped_mm_ffn_offsets: offsets must be [E=", weights.w1.size(0), "] on ", x.device());
#if MOEKIT_HAVE_GROUPED_MM
  MOEKIT_FAST_PATH("grouped_ffn.grouped_mm_offsets");
  // Under autocast the rows and weights are cast here (autocast does not
  // know at::_grouped_mm); gradients flow back to the float32 weights.
  auto bf16 = [](const torch::Tensor& t) { return t.defined() ? t.to(torch::kBFloat16) : t; };
  ExpertWeights w = weights;
  w.w1 = bf16(w.w1);
  w.b1 = bf16(w.b1);
  w.w3 = bf16(w.w3);
  w.w2 = bf16(w.w2);
  w.b2 = bf16(w.b2);
  const torch::Tensor rows = bf16(x).contiguous();
  const torch::Tensor offs = offsets.to(torch::kInt32);
  torch::Tensor expert_of_row;  // rows past the last offset get the last expert's bias (their output is unused)
  if (w.b1.defined() || w.b2.defined()) {
    const torch::Tensor index = torch::arange(rows.size(0), offs.options().dtype(torch::kInt64));
    expert_of_row = torch::searchsorted(offs.to(torch::kInt64), index, /*out_int32=*/false, /*right=*/true)
                        .clamp_max(w.w1.size(0) - 1);
  }
  return grouped_mm_core(rows, offs, expert_of_row, w, activation);
#else
  return torch::Tensor();
#endif
}

}  // namespace moekit
