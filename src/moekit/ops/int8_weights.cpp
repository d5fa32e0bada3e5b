#include "moekit/ops/int8_weights.h"

#include <ATen/Parallel.h>

#include <vector>

#include "moekit/core/check.h"
#include "moekit/kernels/int8_kernel.h"
#include "moekit/ops/fast_path.h"

namespace moekit {

Int8Weight quantize_int8(const torch::Tensor& w) {
  MOEKIT_CHECK_ARG(w.is_floating_point() && w.dim() >= 2, "quantize_int8: needs a float weight [..., out, in], got ",
                   w.scalar_type(), " ", w.sizes());
  const torch::Tensor wf = w.detach().to(torch::kFloat);
  MOEKIT_CHECK_ARG(torch::isfinite(wf).all().item<bool>(), "quantize_int8: the weight has non-finite values");
  const torch::Tensor scale = wf.abs().amax(-1) / 127.0;                    // [..., out]
  const torch::Tensor inv = torch::where(scale > 0, 1.0 / scale, torch::zeros_like(scale));
  const torch::Tensor q = (wf * inv.unsqueeze(-1)).round().clamp(-127, 127).to(torch::kChar);
  return {q.contiguous(), scale.contiguous()};
}

torch::Tensor dequantize_int8(const torch::Tensor& q, const torch::Tensor& scale) {
  return q.to(torch::kFloat) * scale.to(torch::kFloat).unsqueeze(-1);
}

torch::Tensor pack_int8_panels(const torch::Tensor& q, const torch::Tensor& scale) {
  MOEKIT_CHECK_ARG(q.scalar_type() == torch::kChar && q.dim() >= 2 && q.device().is_cpu(),
                   "pack_int8_panels: needs a CPU int8 weight [..., out, in], got ", q.scalar_type(), " ", q.sizes());
  MOEKIT_CHECK_ARG(scale.scalar_type() == torch::kFloat && scale.sizes() == q.sizes().slice(0, q.dim() - 1),
                   "pack_int8_panels: scales must be float32 ", q.sizes().slice(0, q.dim() - 1), ", got ",
                   scale.scalar_type(), " ", scale.sizes());
  const int64_t out = q.size(-2), in = q.size(-1);
  const int64_t panels_per = (out + detail::kPanelWidth - 1) / detail::kPanelWidth;
  const int64_t panel_bytes = detail::int8_panel_bytes(in);
  const int64_t groups = q.numel() / std::max<int64_t>(1, out * in);
  std::vector<int64_t> shape(q.sizes().begin(), q.sizes().end() - 2);
  shape.push_back(panels_per);
  shape.push_back(panel_bytes);
  torch::Tensor panels = torch::empty(shape, q.options());
  const torch::Tensor qc = q.contiguous(), sc = scale.contiguous();
  const int8_t* qp = qc.data_ptr<int8_t>();
  const float* sp = sc.data_ptr<float>();
  int8_t* pp = panels.data_ptr<int8_t>();
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      detail::pack_int8_panels(qp + g * out * in, sp + g * out, out, in, pp + g * panels_per * panel_bytes);
    }
  });
  return panels;
}

torch::Tensor Int8PanelCache::get(const torch::Tensor& q, const torch::Tensor& scale) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!panels_.defined() || !q_stamp_.matches(q) || !scale_stamp_.matches(scale)) {
    panels_ = pack_int8_panels(q, scale);
    q_stamp_.take(q);
    scale_stamp_.take(scale);
  }
  return panels_;
}

void Int8PanelCache::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  panels_ = torch::Tensor();
  q_stamp_.clear();
  scale_stamp_.clear();
}

void grouped_linear_int8_into(const torch::Tensor& in, const std::vector<int64_t>& group_rows,
                              const torch::Tensor& panels, int64_t out_features, const torch::Tensor& bias,
                              torch::Tensor& out) {
  MOEKIT_FAST_PATH("linear.int8");
  const int64_t rows = in.size(0), in_dim = in.size(1), in4 = detail::int8_padded_inputs(in_dim);
  if (rows == 0) return;
  std::vector<uint8_t> xq(static_cast<size_t>(rows * in4));
  std::vector<detail::RowQuant> quant(static_cast<size_t>(rows));
  const float* in_ptr = in.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    detail::quantize_rows_u8(in_ptr + begin * in_dim, end - begin, in_dim, in_dim, xq.data() + begin * in4, in4,
                             quant.data() + begin);
  });
  struct Item {
    int64_t group, row0, o_begin, o_end;
  };
  std::vector<Item> items;
  int64_t row0 = 0;
  for (int64_t g = 0; g < static_cast<int64_t>(group_rows.size()); ++g) {
    if (group_rows[g] > 0) {
      for (int64_t o = 0; o < out_features; o += detail::kPanelWidth) {
        items.push_back({g, row0, o, std::min(o + detail::kPanelWidth, out_features)});
      }
    }
    row0 += group_rows[g];
  }
  const int8_t* p_ptr = panels.data_ptr<int8_t>();
  const int64_t group_stride = panels.numel() / std::max<int64_t>(1, static_cast<int64_t>(group_rows.size()));
  const float* b_ptr = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* out_ptr = out.data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Item& it = items[i];
      detail::int8_panel_linear(xq.data() + it.row0 * in4, quant.data() + it.row0, group_rows[it.group], in4,
                                in_dim, p_ptr + it.group * group_stride,
                                b_ptr ? b_ptr + it.group * out_features : nullptr, it.o_begin, it.o_end,
                                out_ptr + it.row0 * out_features, out_features);
    }
  });
}

}  // namespace moekit
