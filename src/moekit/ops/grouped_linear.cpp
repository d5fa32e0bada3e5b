#include "moekit/ops/grouped_linear.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iterator>
#include <numeric>
#include <string>

#include "moekit/core/check.h"
#include "moekit/core/runtime.h"
#include "moekit/kernels/panel_kernel.h"
#include "moekit/kernels/small_rows_kernel.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/packed_weights.h"

namespace moekit {
namespace {

// Without panels, groups of up to this many rows run the small-rows kernel,
// the others a BLAS GEMM each (OpenBLAS 0.3.21, D = 256, H = 2048, 1 thread,
// uniform routing: the small-rows kernel's packed form is 1.2x faster at 64
// rows per expert and on par at 96; bench/results/2026-11-24.md). Per group, so one
// expert that draws many rows does not push the rest of an unevenly routed
// batch onto GEMMs too small for BLAS.
constexpr int64_t kSmallRowsMaxRows = 80;
// Weight rows per small-rows work item: one weight panel.
constexpr int64_t kSmallRowsTile = 32;
static_assert(kSmallRowsTile % detail::kPanelWidth == 0, "work items must cover whole panels");

// Row blocks of at most kGemmRowBlock rows per group, largest first: the
// GEMM form's units of parallel work.
constexpr int64_t kGemmRowBlock = 256;
struct RowBlock {
  int64_t group, begin, rows;  // begin: absolute row index
};
std::vector<RowBlock> row_blocks(const RowGroups& groups) {
  std::vector<RowBlock> blocks;
  for (int64_t g : detail::active_groups_by_size(groups.rows)) {
    const int64_t n = groups.rows[g];
    const int64_t pieces = (n + kGemmRowBlock - 1) / kGemmRowBlock;
    const int64_t size = (n + pieces - 1) / pieces;
    for (int64_t r = 0; r < n; r += size) blocks.push_back({g, groups.offsets[g] + r, std::min(size, n - r)});
  }
  std::stable_sort(blocks.begin(), blocks.end(), [](const RowBlock& a, const RowBlock& b) { return a.rows > b.rows; });
  return blocks;
}

struct WorkItem {
  int64_t group;
  int64_t begin;  // first weight row (output feature) of the tile
  int64_t end;
};

std::vector<WorkItem> tile_work(const std::vector<int64_t>& rows, int64_t out_features) {
  std::vector<WorkItem> items;
  for (int64_t g = 0; g < static_cast<int64_t>(rows.size()); ++g) {
    if (rows[g] == 0) continue;
    for (int64_t o = 0; o < out_features; o += kSmallRowsTile) {
      items.push_back({g, o, std::min(o + kSmallRowsTile, out_features)});
    }
  }
  return items;
}

// The groups with rows in `rows` (the others have 0 there) by the small-rows
// kernel, or its panel form when `panels` is given: tiles of weight rows in
// parallel.
void small_rows_groups(const torch::Tensor& in, const std::vector<int64_t>& rows, const std::vector<int64_t>& offsets,
                       const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& panels,
                       torch::Tensor& out) {
  const int64_t in_dim = in.size(1), out_dim = weight.size(1);
  const float* in_ptr = in.data_ptr<float>();
  const float* b_ptr = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* out_ptr = out.data_ptr<float>();
  const std::vector<WorkItem> items = tile_work(rows, out_dim);
  // The panel kernel for the panels' element type W (float, or bf16 as its bits).
  auto run_panels = [&](const auto* p_ptr, auto kernel) {
    const int64_t group_stride = panels.stride(0);
    at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const WorkItem& it = items[item];
        const int64_t row0 = offsets[it.group];
        kernel(in_ptr + row0 * in_dim, rows[it.group], in_dim, in_dim, p_ptr + it.group * group_stride,
               b_ptr ? b_ptr + it.group * out_dim : nullptr, it.begin, it.end, out_ptr + row0 * out_dim, out_dim);
      }
    });
  };
  if (panels.defined() && panels.scalar_type() == torch::kBFloat16) {
    MOEKIT_FAST_PATH("linear.panels_bf16");
    run_panels(reinterpret_cast<const uint16_t*>(panels.data_ptr<at::BFloat16>()), detail::panel_linear_bf16);
    return;
  }
  if (panels.defined()) {
    MOEKIT_FAST_PATH("linear.panels");
    run_panels(panels.data_ptr<float>(), detail::panel_linear);
    return;
  }
  MOEKIT_FAST_PATH("linear.small_rows");
  const float* w_ptr = weight.data_ptr<float>();
  // Each group's rows packed once for all its weight tiles.
  std::vector<int64_t> packed_at(rows.size() + 1, 0);
  for (size_t g = 0; g < rows.size(); ++g) {
    packed_at[g + 1] = packed_at[g] + detail::small_rows_packed_floats(rows[g], in_dim);
  }
  std::vector<float> packed(static_cast<size_t>(packed_at.back()));
  for (size_t g = 0; g < rows.size(); ++g) {
    if (packed_at[g + 1] > packed_at[g]) {
      detail::small_rows_pack(in_ptr + offsets[g] * in_dim, rows[g], in_dim, in_dim, packed.data() + packed_at[g]);
    }
  }
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const WorkItem& it = items[item];
      const int64_t row0 = offsets[it.group];
      const float* xt = packed_at[it.group + 1] > packed_at[it.group] ? packed.data() + packed_at[it.group] : nullptr;
      detail::small_rows_linear(in_ptr + row0 * in_dim, xt, rows[it.group], in_dim, in_dim,
                                w_ptr + static_cast<size_t>(it.group) * out_dim * in_dim,
                                b_ptr ? b_ptr + it.group * out_dim : nullptr, it.begin, it.end,
                                out_ptr + row0 * out_dim, out_dim);
    }
  });
}

// The same map for the groups with rows in `gemm`, one BLAS GEMM each. On
// CPU with several threads: one single-threaded GEMM per row block, the
// blocks spread over threads. Elsewhere (one thread, CUDA): one GEMM per
// group, the BLAS using the device.
void gemm_groups(const torch::Tensor& in, const RowGroups& gemm, const torch::Tensor& weight,
                 const torch::Tensor& bias, torch::Tensor& out, bool bf16_gemm) {
  auto linear_into = [&](int64_t g, int64_t begin, int64_t rows) {
    torch::Tensor dst = out.narrow(0, begin, rows);
    const torch::Tensor src = in.narrow(0, begin, rows);
    if (bf16_gemm && weight.scalar_type() == torch::kBFloat16 && src.scalar_type() == torch::kFloat) {
      MOEKIT_FAST_PATH("linear.bf16_gemm");
      // oneDNN builds (and JIT-compiles) a matmul primitive per shape and
      // caches 1024: an expert's row count changes step by step, so exact
      // shapes made a new primitive on most calls (about 1.7 ms each on the
      // Sapphire Rapids VM, longer than the product; past 1024 shapes the
      // cache thrashed for good). Rows padded with zeros to a multiple of
      // kBf16GemmRows keep the shapes few; the padding's products are dropped.
      const int64_t padded = (rows + kBf16GemmRows - 1) / kBf16GemmRows * kBf16GemmRows;
      torch::Tensor a = torch::empty({padded, src.size(1)}, src.options().dtype(torch::kBFloat16));
      a.narrow(0, 0, rows).copy_(src);
      if (padded > rows) a.narrow(0, rows, padded - rows).zero_();
      dst.copy_(torch::mm(a, weight[g].t()).narrow(0, 0, rows));
      if (bias.defined()) dst.add_(bias[g]);
      return;
    }
    // A narrower stored weight (bf16 panels serve the other groups) widened for this GEMM.
    const torch::Tensor w = weight[g].scalar_type() == src.scalar_type() ? weight[g] : weight[g].to(src.scalar_type());
    if (bias.defined()) {
      torch::addmm_out(dst, bias[g], src, w.t());
    } else {
      torch::mm_out(dst, src, w.t());
    }
  };
  if (in.device().is_cpu() && at::get_num_threads() > 1) {
    const std::vector<RowBlock> blocks = row_blocks(gemm);
    detail::for_each_item_dynamic(static_cast<int64_t>(blocks.size()),
                                  [&](int64_t i) { linear_into(blocks[i].group, blocks[i].begin, blocks[i].rows); });
    return;
  }
  for (int64_t g = 0; g < gemm.size(); ++g) {
    if (gemm.rows[g] > 0) linear_into(g, gemm.offsets[g], gemm.rows[g]);
  }
}

}  // namespace

RowGroups RowGroups::from_counts(std::vector<int64_t> rows) {
  RowGroups groups;
  groups.offsets.assign(rows.size() + 1, 0);
  std::partial_sum(rows.begin(), rows.end(), groups.offsets.begin() + 1);
  groups.rows = std::move(rows);
  return groups;
}

void grouped_linear_into(const torch::Tensor& in, const RowGroups& groups, const torch::Tensor& weight_in,
                         const torch::Tensor& bias, const torch::Tensor& panels, const std::vector<bool>& small_rows,
                         torch::Tensor& out, bool bf16_gemm) {
  RowGroups small{std::vector<int64_t>(groups.rows.size(), 0), groups.offsets};
  RowGroups gemm{std::vector<int64_t>(groups.rows.size(), 0), groups.offsets};
  bool any_small = false, any_gemm = false;
  for (size_t g = 0; g < groups.rows.size(); ++g) {
    if (groups.rows[g] == 0) continue;
    (small_rows[g] ? small : gemm).rows[g] = groups.rows[g];
    (small_rows[g] ? any_small : any_gemm) = true;
  }
  // Weights stored narrower than the rows (bf16 under float32) are read
  // through their panels; without panels (weight panels off) they are
  // widened here, per call, for the small-rows kernel and the GEMMs (bf16
  // row GEMMs alone take the bf16 weight as it is).
  const bool bf16_rows_only = bf16_gemm && weight_in.scalar_type() == torch::kBFloat16 && !any_small;
  const bool widen = weight_in.scalar_type() != in.scalar_type() && !panels.defined() && !bf16_rows_only;
  const torch::Tensor weight = widen ? weight_in.to(in.scalar_type()) : weight_in;
  if (any_small) small_rows_groups(in, small.rows, groups.offsets, weight, bias, panels, out);
  if (any_gemm) gemm_groups(in, gemm, weight, bias, out, bf16_gemm);
}

bool cpu_has_native_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool native = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
  }();
  return native;
#else
  return false;
#endif
}

bool small_rows_beats_blas() {
  // OpenBLAS's AVX-512 cores (the names openblas_get_corename gives).
  static const char* const kAvx512Cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
  const std::string core = openblas_core();
  return std::none_of(std::begin(kAvx512Cores), std::end(kAvx512Cores),
                      [&](const char* name) { return core == name; });
}

namespace {
bool simd_panels() {
  static const bool simd = detail::panel_variants().front().first != "generic";
  return simd;
}
}  // namespace

bool small_rows_serves(int64_t rows, bool with_panels) {
  static const bool beats_blas = small_rows_beats_blas();
  return (with_panels && simd_panels()) || (beats_blas && rows <= kSmallRowsMaxRows);
}

bool panels_serve_training(int64_t rows) {
  if (rows < kTrainingPanelRows) return false;
  static const int forced = [] {
    const char* v = std::getenv("MOEKIT_TRAINING_PANELS");
    return v == nullptr || *v == '\0' ? -1 : (std::string(v) == "0" ? 0 : 1);
  }();
  static const bool beats_blas = small_rows_beats_blas();
  return simd_panels() && weight_panels_enabled() && (forced >= 0 ? forced == 1 : beats_blas);
}

void panel_matmul_nt_into(const torch::Tensor& a, const torch::Tensor& b, torch::Tensor& out) {
  MOEKIT_CHECK_ARG(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1) && out.is_contiguous() &&
                       out.sizes() == torch::IntArrayRef({a.size(0), b.size(0)}),
                   "panel_matmul_nt_into: expected a [M, K], b [N, K], out [M, N] contiguous; got ", a.sizes(), ", ",
                   b.sizes(), ", ", out.sizes());
  const int64_t rows = a.size(0);
  if (rows == 0 || b.size(0) == 0) return;
  if (a.size(1) == 0) {
    out.zero_();
    return;
  }
  const torch::Tensor a_rows = a.contiguous();
  small_rows_groups(a_rows, {rows}, {0, rows}, b.unsqueeze(0), torch::Tensor(), pack_panels(b).unsqueeze(0), out);
}

namespace detail {

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

std::vector<int64_t> active_groups_by_size(const std::vector<int64_t>& rows) {
  std::vector<int64_t> groups;
  for (int64_t g = 0; g < static_cast<int64_t>(rows.size()); ++g) {
    if (rows[g] > 0) groups.push_back(g);
  }
  std::stable_sort(groups.begin(), groups.end(), [&](int64_t a, int64_t b) { return rows[a] > rows[b]; });
  return groups;
}

}  // namespace detail
}  // namespace moekit
