#include "moekit/ops/linear.h"

#include <vector>

#include "moekit/ops/fast_path.h"
#include "moekit/ops/grouped_linear.h"

namespace moekit {

torch::Tensor fast_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                          PanelCache* panels) {
  if (panels != nullptr && torch::GradMode::is_enabled()) panels->clear();
  const int64_t in = weight.size(1), out = weight.size(0);
  const int64_t rows = x.numel() / std::max<int64_t>(in, 1);
  const bool with_panels = panels != nullptr && weight_panels_enabled();
  const bool applies = cpu_float_inference({&weight, &bias}) && x.device().is_cpu() &&
                       x.scalar_type() == torch::kFloat && x.dim() >= 1 && x.size(-1) == in && x.numel() > 0 &&
                       (rows <= kSmallRows || small_rows_serves(rows, with_panels));
  if (!applies) return torch::nn::functional::linear(x, weight, bias);
  // The one-group case of the grouped linear map. A contiguous x is read in
  // place and y made in its final shape: a streaming chunk makes several
  // calls per layer, each op a dispatch.
  const torch::Tensor x_rows = (x.is_contiguous() ? x : x.contiguous()).view({rows, in});
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  torch::Tensor y = torch::empty(shape, x.options());
  torch::Tensor y_rows = y.view({rows, out});
  const torch::Tensor packed = with_panels ? panels->get(weight).unsqueeze(0) : torch::Tensor();
  grouped_linear_into(x_rows, RowGroups::from_counts({rows}), weight.view({1, out, in}),
                      bias.defined() ? bias.view({1, out}) : torch::Tensor(), packed, {true}, y_rows);
  return y;
}

}  // namespace moekit
