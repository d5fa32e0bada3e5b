#include "moekit/moe/grouped_ffn.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <numeric>

#include "moekit/core/check.h"
#include "moekit/core/runtime.h"

namespace moekit {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// Up to this many rows per active expert the small-rows kernel beats BLAS
// GEMMs (measured with OpenBLAS 0.3.21, D=256, H=1024; see bench/README.md).
constexpr int64_t kSmallRowsMaxAverage = 24;
// Weight rows per small-rows work item.
constexpr int64_t kSmallRowsTile = 32;

// mm/sum into a view (the out= overloads want an lvalue).
void mm_into(torch::Tensor out, const torch::Tensor& a, const torch::Tensor& b) { torch::mm_out(out, a, b); }
void sum_rows_into(torch::Tensor out, const torch::Tensor& a) { torch::sum_out(out, a, {0}); }

// Runs fn(0..num_items-1) on LibTorch's intra-op threads, each thread taking
// the next item when it finishes one (items come largest first, so this
// balances experts with uneven row counts). BLAS calls inside run
// single-threaded: the parallelism is across GEMMs, not within one.
void for_each_item_dynamic(int64_t num_items, const std::function<void(int64_t)>& fn) {
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), num_items);
  if (workers <= 1) {
    for (int64_t i = 0; i < num_items; ++i) fn(i);
    return;
  }
  ScopedSingleThreadedBlas single_threaded_blas;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    // Grad mode is thread-local and worker threads start with it on; these
    // GEMMs write into preallocated outputs and must not be recorded.
    torch::NoGradGuard no_grad;
    for (int64_t i = next++; i < num_items; i = next++) fn(i);
  });
}

// Experts with rows, largest first.
std::vector<int64_t> active_experts_by_size(const std::vector<int64_t>& tokens_per_expert) {
  std::vector<int64_t> experts;
  for (int64_t e = 0; e < static_cast<int64_t>(tokens_per_expert.size()); ++e) {
    if (tokens_per_expert[e] > 0) experts.push_back(e);
  }
  std::stable_sort(experts.begin(), experts.end(),
                   [&](int64_t a, int64_t b) { return tokens_per_expert[a] > tokens_per_expert[b]; });
  return experts;
}

// Row blocks of at most kGemmRowBlock rows per expert, largest first: the
// forward's units of parallel work.
constexpr int64_t kGemmRowBlock = 256;
struct RowBlock {
  int64_t expert, begin, rows;  // begin: absolute row index
};
std::vector<RowBlock> row_blocks(const std::vector<int64_t>& tokens_per_expert, const std::vector<int64_t>& offsets) {
  std::vector<RowBlock> blocks;
  for (int64_t e : active_experts_by_size(tokens_per_expert)) {
    const int64_t n = tokens_per_expert[e];
    const int64_t pieces = (n + kGemmRowBlock - 1) / kGemmRowBlock;
    const int64_t size = (n + pieces - 1) / pieces;
    for (int64_t r = 0; r < n; r += size) blocks.push_back({e, offsets[e] + r, std::min(size, n - r)});
  }
  std::stable_sort(blocks.begin(), blocks.end(), [](const RowBlock& a, const RowBlock& b) { return a.rows > b.rows; });
  return blocks;
}

std::vector<int64_t> row_offsets(const std::vector<int64_t>& tokens_per_expert) {
  std::vector<int64_t> offsets(tokens_per_expert.size() + 1, 0);
  std::partial_sum(tokens_per_expert.begin(), tokens_per_expert.end(), offsets.begin() + 1);
  return offsets;
}

struct WorkItem {
  int64_t expert;
  int64_t begin;  // first weight row (output feature) of the tile
  int64_t end;
};

std::vector<WorkItem> tile_work(const std::vector<int64_t>& tokens_per_expert, int64_t out_features) {
  std::vector<WorkItem> items;
  for (int64_t e = 0; e < static_cast<int64_t>(tokens_per_expert.size()); ++e) {
    if (tokens_per_expert[e] == 0) continue;
    for (int64_t o = 0; o < out_features; o += kSmallRowsTile) {
      items.push_back({e, o, std::min(o + kSmallRowsTile, out_features)});
    }
  }
  return items;
}

// Forward of the small-rows kernel. h1/h3 (pre-activations) are written when
// defined; `a` always receives the activation.
void small_rows_forward(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                        const ExpertWeights& w, Activation activation, torch::Tensor& h1,
                        torch::Tensor& h3, torch::Tensor& a, torch::Tensor& y) {
  const int64_t d_model = x.size(1);
  const int64_t d_hidden = w.w1.size(1);
  const std::vector<int64_t> offsets = row_offsets(tokens_per_expert);
  const bool gated = is_gated(activation);
  const float* x_ptr = x.data_ptr<float>();
  const float* w1 = w.w1.data_ptr<float>();
  const float* w3 = gated ? w.w3.data_ptr<float>() : nullptr;
  const float* w2 = w.w2.data_ptr<float>();
  const float* b1 = w.b1.defined() ? w.b1.data_ptr<float>() : nullptr;
  const float* b2 = w.b2.defined() ? w.b2.data_ptr<float>() : nullptr;
  float* h1_ptr = h1.data_ptr<float>();
  float* h3_ptr = gated ? h3.data_ptr<float>() : nullptr;
  float* y_ptr = y.data_ptr<float>();

  // Phase 1: h1 = x W1^T + b1 (h3 = x W3^T), tiles of hidden units in parallel.
  const std::vector<WorkItem> hidden_items = tile_work(tokens_per_expert, d_hidden);
  at::parallel_for(0, static_cast<int64_t>(hidden_items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const WorkItem& it = hidden_items[item];
      const int64_t rows = tokens_per_expert[it.expert];
      const int64_t row0 = offsets[it.expert];
      const float* xe = x_ptr + row0 * d_model;
      const size_t weight_offset = static_cast<size_t>(it.expert) * d_hidden * d_model;
      float* h1e = h1_ptr + row0 * d_hidden;
      detail::small_rows_linear(xe, rows, d_model, d_model, w1 + weight_offset,
                                b1 ? b1 + it.expert * d_hidden : nullptr, it.begin, it.end, h1e, d_hidden);
      if (gated) {
        detail::small_rows_linear(xe, rows, d_model, d_model, w3 + weight_offset, nullptr, it.begin, it.end,
                                  h3_ptr + row0 * d_hidden, d_hidden);
      }
    }
  });
  // The activation over all rows at once: LibTorch's vectorized kernels.
  a = apply_activation(activation, h1, h3);
  const float* a_ptr = a.data_ptr<float>();

  // Phase 2: y = a W2^T + b2, tiles of output features in parallel.
  const std::vector<WorkItem> output_items = tile_work(tokens_per_expert, d_model);
  at::parallel_for(0, static_cast<int64_t>(output_items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const WorkItem& it = output_items[item];
      const int64_t rows = tokens_per_expert[it.expert];
      const int64_t row0 = offsets[it.expert];
      detail::small_rows_linear(a_ptr + row0 * d_hidden, rows, d_hidden, d_hidden,
                                w2 + static_cast<size_t>(it.expert) * d_model * d_hidden,
                                b2 ? b2 + it.expert * d_model : nullptr, it.begin, it.end,
                                y_ptr + row0 * d_model, d_model);
    }
  });
}

void per_expert_gemm_forward(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                             const ExpertWeights& w, Activation activation, torch::Tensor& h1,
                             torch::Tensor& h3, torch::Tensor& a, torch::Tensor& y) {
  const std::vector<int64_t> offsets = row_offsets(tokens_per_expert);
  const bool gated = is_gated(activation);
  auto linear_into = [](torch::Tensor out, const torch::Tensor& in, const torch::Tensor& weight,
                        const torch::Tensor& bias) {
    if (bias.defined()) {
      torch::addmm_out(out, bias, in, weight.t());
    } else {
      torch::mm_out(out, in, weight.t());
    }
  };
  // On CPU with several threads: one single-threaded GEMM per row block, the
  // blocks spread over threads. Elsewhere (one thread, CUDA): one GEMM per
  // expert, the BLAS using the device.
  const bool spread = x.device().is_cpu() && at::get_num_threads() > 1;
  const std::vector<RowBlock> blocks =
      spread ? row_blocks(tokens_per_expert, offsets) : std::vector<RowBlock>{};
  auto for_each_block = [&](const std::function<void(int64_t expert, int64_t begin, int64_t rows)>& fn) {
    if (spread) {
      for_each_item_dynamic(static_cast<int64_t>(blocks.size()),
                            [&](int64_t i) { fn(blocks[i].expert, blocks[i].begin, blocks[i].rows); });
      return;
    }
    for (int64_t e = 0; e < static_cast<int64_t>(tokens_per_expert.size()); ++e) {
      if (tokens_per_expert[e] > 0) fn(e, offsets[e], tokens_per_expert[e]);
    }
  };
  for_each_block([&](int64_t e, int64_t begin, int64_t rows) {
    const torch::Tensor xe = x.narrow(0, begin, rows);  // [n, D]
    linear_into(h1.narrow(0, begin, rows), xe, w.w1[e], w.b1.defined() ? w.b1[e] : torch::Tensor());
    if (gated) linear_into(h3.narrow(0, begin, rows), xe, w.w3[e], torch::Tensor());
  });
  a = apply_activation(activation, h1, h3);  // [M, H]
  for_each_block([&](int64_t e, int64_t begin, int64_t rows) {
    linear_into(y.narrow(0, begin, rows), a.narrow(0, begin, rows), w.w2[e],
                w.b2.defined() ? w.b2[e] : torch::Tensor());
  });
}

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
  torch::Tensor a;  // [M, H] activations, made by the kernel
  r.y = torch::empty({rows, x.size(1)}, x.options());
  if (rows == 0) return r;
  if (resolve_grouped_ffn_kernel(x, tokens_per_expert, options.kernel) == GroupedFfnKernel::SmallRows) {
    small_rows_forward(x, tokens_per_expert, w, options.activation, r.h1, r.h3, a, r.y);
  } else {
    per_expert_gemm_forward(x, tokens_per_expert, w, options.activation, r.h1, r.h3, a, r.y);
  }
  return r;
}

// LibTorch 1.13's Function::apply cannot take undefined tensors: absent
// biases and w3 travel as empty placeholders.
torch::Tensor to_placeholder(const torch::Tensor& t, const torch::Tensor& like) {
  return t.defined() ? t.contiguous() : torch::empty({0}, like.options().requires_grad(false));
}
torch::Tensor from_placeholder(const torch::Tensor& t) { return t.numel() == 0 ? torch::Tensor() : t; }

class GroupedFfnFunction : public torch::autograd::Function<GroupedFfnFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& x, const Variable& w1,
                               const Variable& b1, const Variable& w3, const Variable& w2,
                               const Variable& b2, std::vector<int64_t> tokens_per_expert,
                               int64_t activation, int64_t kernel) {
    GroupedFfnOptions options{static_cast<Activation>(activation), static_cast<GroupedFfnKernel>(kernel)};
    ForwardResult r = grouped_ffn_forward(x, tokens_per_expert,
                                          {w1, from_placeholder(b1), from_placeholder(w3), w2, from_placeholder(b2)},
                                          options);
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
    const torch::Tensor h3 = from_placeholder(saved[5]);
    const std::vector<int64_t> tokens_per_expert = ctx->saved_data["tokens_per_expert"].toIntVector();
    const auto activation = static_cast<Activation>(ctx->saved_data["activation"].toInt());
    const bool has_b1 = ctx->saved_data["has_b1"].toBool();
    const bool has_b2 = ctx->saved_data["has_b2"].toBool();
    const bool gated = is_gated(activation);
    const torch::Tensor grad_y = grad_outputs[0].contiguous();  // [M, D]
    const std::vector<int64_t> offsets = row_offsets(tokens_per_expert);

    const bool need_x = ctx->needs_input_grad(0);
    const bool need_w1 = ctx->needs_input_grad(1), need_b1 = has_b1 && ctx->needs_input_grad(2);
    const bool need_w3 = gated && ctx->needs_input_grad(3);
    const bool need_w2 = ctx->needs_input_grad(4), need_b2 = has_b2 && ctx->needs_input_grad(5);

    torch::Tensor grad_w1 = need_w1 ? torch::zeros_like(w1) : torch::Tensor();
    torch::Tensor grad_b1 = need_b1 ? torch::zeros({w1.size(0), w1.size(1)}, w1.options()) : torch::Tensor();
    torch::Tensor grad_w3 = need_w3 ? torch::zeros_like(w3) : torch::Tensor();
    torch::Tensor grad_w2 = need_w2 ? torch::zeros_like(w2) : torch::Tensor();
    torch::Tensor grad_b2 = need_b2 ? torch::zeros({w2.size(0), w2.size(1)}, w2.options()) : torch::Tensor();
    torch::Tensor grad_x = need_x ? torch::zeros_like(x) : torch::Tensor();

    const torch::Tensor a = need_w2 ? apply_activation(activation, h1, h3) : torch::Tensor();  // [M, H]
    torch::Tensor grad_a = torch::empty_like(h1);                                              // [M, H]
    // Experts are independent: on CPU with several threads each runs its
    // GEMMs single-threaded on one thread.
    const std::vector<int64_t> experts = active_experts_by_size(tokens_per_expert);
    auto for_each_expert = [&](const std::function<void(int64_t)>& fn) {
      if (x.device().is_cpu()) {
        for_each_item_dynamic(static_cast<int64_t>(experts.size()), [&](int64_t i) { fn(experts[i]); });
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

}  // namespace

GroupedFfnKernel resolve_grouped_ffn_kernel(const torch::Tensor& x,
                                            const std::vector<int64_t>& tokens_per_expert,
                                            GroupedFfnKernel requested) {
  const bool small_rows_possible = x.device().is_cpu() && x.scalar_type() == torch::kFloat32;
  if (requested == GroupedFfnKernel::SmallRows) {
    MOEKIT_CHECK_ARG(small_rows_possible, "the SmallRows grouped-FFN kernel needs CPU float32 inputs, got ",
                     x.device(), " ", x.scalar_type());
    return requested;
  }
  if (requested == GroupedFfnKernel::PerExpertGemm || !small_rows_possible) {
    return GroupedFfnKernel::PerExpertGemm;
  }
  const int64_t active = std::count_if(tokens_per_expert.begin(), tokens_per_expert.end(),
                                       [](int64_t n) { return n > 0; });
  if (active == 0) return GroupedFfnKernel::PerExpertGemm;
  return x.size(0) <= kSmallRowsMaxAverage * active ? GroupedFfnKernel::SmallRows
                                                     : GroupedFfnKernel::PerExpertGemm;
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
  const torch::Tensor x_contiguous = x.contiguous();
  return GroupedFfnFunction::apply(x_contiguous, weights.w1.contiguous(), to_placeholder(weights.b1, x),
                                   to_placeholder(weights.w3, x), weights.w2.contiguous(),
                                   to_placeholder(weights.b2, x), tokens_per_expert,
                                   static_cast<int64_t>(options.activation),
                                   static_cast<int64_t>(options.kernel))[0];
}

}  // namespace moekit
