#include "moekit/moe/grouped_ffn.h"

#include <ATen/Parallel.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <iterator>
#include <numeric>

#include "moekit/core/check.h"
#include "moekit/core/runtime.h"
#include "moekit/moe/panel_kernel.h"

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

// Experts with up to this many rows run the small-rows kernel, the others a
// BLAS GEMM each (OpenBLAS 0.3.21, D = 256, H = 2048, 1 thread, uniform
// routing: the small-rows kernel's packed form is 1.2x faster at 64 rows per
// expert and on par at 96; see bench/README.md). Per expert, so one expert that draws many rows does not
// push the rest of an unevenly routed batch onto GEMMs too small for BLAS.
constexpr int64_t kSmallRowsMaxRows = 80;
// Weight rows per small-rows work item: one weight panel.
constexpr int64_t kSmallRowsTile = 32;
static_assert(kSmallRowsTile % detail::kPanelWidth == 0, "work items must cover whole panels");

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

// out[rows of e] = in[rows of e] W[e]^T (+ bias[e]) for every expert with
// rows in `tokens` (the experts this kernel serves; the others have 0 there),
// by the small-rows kernel, or its panel form when `panels` (W packed by
// pack_panels) is given: tiles of weight rows in parallel. `offsets` are the
// experts' first rows in the full row order.
void small_rows_linear_experts(const torch::Tensor& in, const std::vector<int64_t>& tokens,
                               const std::vector<int64_t>& offsets, const torch::Tensor& weight,
                               const torch::Tensor& bias, const torch::Tensor& panels, torch::Tensor& out) {
  const int64_t in_dim = in.size(1), out_dim = weight.size(1);
  const float* in_ptr = in.data_ptr<float>();
  const float* w_ptr = weight.data_ptr<float>();
  const float* b_ptr = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* out_ptr = out.data_ptr<float>();
  const std::vector<WorkItem> items = tile_work(tokens, out_dim);
  if (panels.defined()) {
    const float* p_ptr = panels.data_ptr<float>();
    const int64_t expert_stride = panels.stride(0);
    at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const WorkItem& it = items[item];
        const int64_t row0 = offsets[it.expert];
        detail::panel_linear(in_ptr + row0 * in_dim, tokens[it.expert], in_dim, in_dim,
                             p_ptr + it.expert * expert_stride, b_ptr ? b_ptr + it.expert * out_dim : nullptr,
                             it.begin, it.end, out_ptr + row0 * out_dim, out_dim);
      }
    });
    return;
  }
  // Each expert's rows packed once for all its weight tiles.
  std::vector<int64_t> packed_at(tokens.size() + 1, 0);
  for (size_t e = 0; e < tokens.size(); ++e) {
    packed_at[e + 1] = packed_at[e] + detail::small_rows_packed_floats(tokens[e], in_dim);
  }
  std::vector<float> packed(static_cast<size_t>(packed_at.back()));
  for (size_t e = 0; e < tokens.size(); ++e) {
    if (packed_at[e + 1] > packed_at[e]) {
      detail::small_rows_pack(in_ptr + offsets[e] * in_dim, tokens[e], in_dim, in_dim, packed.data() + packed_at[e]);
    }
  }
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const WorkItem& it = items[item];
      const int64_t row0 = offsets[it.expert];
      const float* xt = packed_at[it.expert + 1] > packed_at[it.expert] ? packed.data() + packed_at[it.expert] : nullptr;
      detail::small_rows_linear(in_ptr + row0 * in_dim, xt, tokens[it.expert], in_dim, in_dim,
                                w_ptr + static_cast<size_t>(it.expert) * out_dim * in_dim,
                                b_ptr ? b_ptr + it.expert * out_dim : nullptr, it.begin, it.end,
                                out_ptr + row0 * out_dim, out_dim);
    }
  });
}

// The same map for the experts in `tokens`, one BLAS GEMM per expert. On CPU
// with several threads: one single-threaded GEMM per row block, the blocks
// spread over threads. Elsewhere (one thread, CUDA): one GEMM per expert, the
// BLAS using the device.
void gemm_linear_experts(const torch::Tensor& in, const std::vector<int64_t>& tokens,
                         const std::vector<int64_t>& offsets, const torch::Tensor& weight, const torch::Tensor& bias,
                         torch::Tensor& out) {
  auto linear_into = [&](int64_t e, int64_t begin, int64_t rows) {
    torch::Tensor dst = out.narrow(0, begin, rows);
    const torch::Tensor src = in.narrow(0, begin, rows);
    if (bias.defined()) {
      torch::addmm_out(dst, bias[e], src, weight[e].t());
    } else {
      torch::mm_out(dst, src, weight[e].t());
    }
  };
  if (in.device().is_cpu() && at::get_num_threads() > 1) {
    const std::vector<RowBlock> blocks = row_blocks(tokens, offsets);
    for_each_item_dynamic(static_cast<int64_t>(blocks.size()),
                          [&](int64_t i) { linear_into(blocks[i].expert, blocks[i].begin, blocks[i].rows); });
    return;
  }
  for (int64_t e = 0; e < static_cast<int64_t>(tokens.size()); ++e) {
    if (tokens[e] > 0) linear_into(e, offsets[e], tokens[e]);
  }
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
  r.y = torch::empty({rows, x.size(1)}, x.options());
  if (rows == 0) return r;
  // Each expert's rows go through the small-rows kernel or a GEMM.
  const std::vector<bool> small =
      grouped_ffn_small_rows_experts(x, tokens_per_expert, options.kernel, w.w1_panels.defined());
  std::vector<int64_t> small_tokens(tokens_per_expert.size(), 0), gemm_tokens(tokens_per_expert.size(), 0);
  for (size_t e = 0; e < tokens_per_expert.size(); ++e) {
    (small[e] ? small_tokens : gemm_tokens)[e] = tokens_per_expert[e];
  }
  const bool any_small = std::any_of(small_tokens.begin(), small_tokens.end(), [](int64_t n) { return n > 0; });
  const bool any_gemm = std::any_of(gemm_tokens.begin(), gemm_tokens.end(), [](int64_t n) { return n > 0; });
  const std::vector<int64_t> offsets = row_offsets(tokens_per_expert);
  auto linear = [&](const torch::Tensor& in, const torch::Tensor& weight, const torch::Tensor& bias,
                    const torch::Tensor& panels, torch::Tensor& out) {
    if (any_small) small_rows_linear_experts(in, small_tokens, offsets, weight, bias, panels, out);
    if (any_gemm) gemm_linear_experts(in, gemm_tokens, offsets, weight, bias, out);
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

class GroupedFfnFunction : public torch::autograd::Function<GroupedFfnFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& x, const Variable& w1,
                               const Variable& b1, const Variable& w3, const Variable& w2,
                               const Variable& b2, std::vector<int64_t> tokens_per_expert,
                               int64_t activation, int64_t kernel) {
    GroupedFfnOptions options{static_cast<Activation>(activation), static_cast<GroupedFfnKernel>(kernel)};
    ForwardResult r = grouped_ffn_forward(x, tokens_per_expert,
                                          {w1, from_placeholder(b1), from_placeholder(w3), w2, from_placeholder(b2), {}, {}, {}},
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

#if MOEKIT_HAVE_GROUPED_MM
// All experts in three grouped GEMMs (two with SwiGLU's w3): rows stay
// grouped by expert and `offs` holds each expert's end row.
torch::Tensor grouped_mm_ffn(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                             const ExpertWeights& w, Activation activation) {
  const int64_t rows = x.size(0);
  if (rows == 0) return torch::zeros_like(x);
  std::vector<int32_t> ends(tokens_per_expert.size());
  int64_t end = 0;
  for (size_t e = 0; e < ends.size(); ++e) ends[e] = static_cast<int32_t>(end += tokens_per_expert[e]);
  const torch::Tensor offs = torch::tensor(ends, torch::kInt32).to(x.device(), /*non_blocking=*/true);
  torch::Tensor expert_of_row;  // [M] for the biases, made on the device without a sync
  if (w.b1.defined() || w.b2.defined()) {
    const torch::Tensor counts = torch::tensor(tokens_per_expert, torch::kLong).to(x.device(), true);
    expert_of_row = torch::repeat_interleave(counts, c10::optional<int64_t>(rows));  // [0 x n0, 1 x n1, ...]
  }
  auto linear = [&](const torch::Tensor& in, const torch::Tensor& weight, const torch::Tensor& bias) {
    torch::Tensor out = at::_grouped_mm(in, weight.transpose(1, 2), offs);  // [M, out]
    return bias.defined() ? out + bias.index_select(0, expert_of_row) : out;
  };
  const torch::Tensor h1 = linear(x, w.w1, w.b1);
  const torch::Tensor h3 = w.w3.defined() ? linear(x, w.w3, torch::Tensor()) : torch::Tensor();
  return linear(apply_activation(activation, h1, h3), w.w2, w.b2);
}
#endif

}  // namespace

bool small_rows_beats_blas() {
  // OpenBLAS's AVX-512 cores (the names openblas_get_corename gives).
  static const char* const kAvx512Cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
  const std::string core = openblas_core();
  return std::none_of(std::begin(kAvx512Cores), std::end(kAvx512Cores),
                      [&](const char* name) { return core == name; });
}

bool grouped_mm_applies(const torch::Tensor& x, const ExpertWeights& weights) {
#if MOEKIT_HAVE_GROUPED_MM
  const auto bf16 = [](const torch::Tensor& t) { return !t.defined() || t.scalar_type() == torch::kBFloat16; };
  return x.is_cuda() && x.scalar_type() == torch::kBFloat16 && bf16(weights.w1) && bf16(weights.w2) &&
         bf16(weights.w3) && bf16(weights.b1) && bf16(weights.b2) && x.size(1) % 8 == 0 &&
         weights.w1.size(1) % 8 == 0 && weights.w1.size(0) < 1024;
#else
  (void)x;
  (void)weights;
  return false;
#endif
}

std::vector<bool> grouped_ffn_small_rows_experts(const torch::Tensor& x,
                                                 const std::vector<int64_t>& tokens_per_expert,
                                                 GroupedFfnKernel requested, bool with_panels) {
  static const bool panels_fast = detail::panel_variants().front().first != "generic";
  const bool small_rows_possible = x.device().is_cpu() && x.scalar_type() == torch::kFloat32;
  if (requested == GroupedFfnKernel::SmallRows) {
    MOEKIT_CHECK_ARG(small_rows_possible, "the SmallRows grouped-FFN kernel needs CPU float32 inputs, got ",
                     x.device(), " ", x.scalar_type());
  }
  static const bool beats_blas = small_rows_beats_blas();
  std::vector<bool> small(tokens_per_expert.size(), false);
  if (!small_rows_possible || requested == GroupedFfnKernel::PerExpertGemm) return small;
  for (size_t e = 0; e < small.size(); ++e) {
    small[e] = requested == GroupedFfnKernel::SmallRows || (with_panels && panels_fast) ||
               (beats_blas && tokens_per_expert[e] <= kSmallRowsMaxRows);
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
  auto check_panels = [&](const torch::Tensor& panels, const torch::Tensor& w, const char* name) {
    if (!panels.defined()) return;
    const int64_t out = w.size(1), in = w.size(2);
    MOEKIT_CHECK_ARG(panels.scalar_type() == torch::kFloat && panels.is_contiguous() &&
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

}  // namespace moekit
