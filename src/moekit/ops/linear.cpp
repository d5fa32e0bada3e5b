#include "moekit/ops/linear.h"

#include <vector>

#include "moekit/ops/fast_path.h"
#include "moekit/ops/grouped_linear.h"

namespace moekit {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// y = x W^T + b recording gradients, every GEMM on the panel kernel (the
// weight packed per call: training changes it every step). x [rows, in]
// contiguous; bias [out], or [0] for none (LibTorch 1.13's Function::apply
// takes no undefined tensors).
class PanelLinearFunction : public torch::autograd::Function<PanelLinearFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Variable& x, const Variable& weight,
                               const Variable& bias) {
    MOEKIT_FAST_PATH("linear.training_panels");
    const int64_t rows = x.size(0), out = weight.size(0);
    const bool has_bias = bias.numel() > 0;
    torch::Tensor y = torch::empty({rows, out}, x.options());
    grouped_linear_into(x, RowGroups::from_counts({rows}), weight.unsqueeze(0),
                        has_bias ? bias.view({1, out}) : torch::Tensor(), pack_panels(weight).unsqueeze(0), {true}, y);
    ctx->save_for_backward({x, weight});
    ctx->saved_data["has_bias"] = has_bias;
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    const torch::Tensor& weight = saved[1];
    const int64_t rows = x.size(0);
    if (!grad_outputs[0].defined()) return {Variable(), Variable(), Variable()};
    const torch::Tensor grad_y = grad_outputs[0].contiguous();  // [rows, out]
    torch::Tensor grad_x, grad_w, grad_b;
    if (ctx->needs_input_grad(0)) {  // dX = dY W: W^T [in, out] as the weight
      const torch::Tensor weight_t = weight.t();
      grad_x = torch::empty_like(x);
      grouped_linear_into(grad_y, RowGroups::from_counts({rows}), weight_t.unsqueeze(0), torch::Tensor(),
                          pack_panels(weight_t).unsqueeze(0), {true}, grad_x);
    }
    if (ctx->needs_input_grad(1)) {  // dW = dY^T X
      grad_w = torch::empty_like(weight);
      panel_matmul_nt_into(grad_y.t(), x.t(), grad_w);
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) grad_b = grad_y.sum(0);
    return {grad_x, grad_w, grad_b};
  }
};

bool records_gradient(std::initializer_list<const torch::Tensor*> tensors) {
  if (!torch::GradMode::is_enabled()) return false;
  for (const torch::Tensor* t : tensors)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

bool cpu_float(const torch::Tensor& t) { return !t.defined() || (t.device().is_cpu() && t.scalar_type() == torch::kFloat); }

}  // namespace

bool training_panels_apply(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  const int64_t in = weight.dim() == 2 ? weight.size(1) : -1;
  return records_gradient({&x, &weight, &bias}) && cpu_float(x) && cpu_float(weight) && cpu_float(bias) &&
         weight.dim() == 2 && x.dim() >= 2 && x.size(-1) == in && in > 0 && panels_serve_training(x.numel() / in);
}

torch::Tensor fast_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                          PanelCache* panels) {
  if (panels != nullptr && torch::GradMode::is_enabled()) panels->clear();
  const int64_t in = weight.size(1), out = weight.size(0);
  const int64_t rows = x.numel() / std::max<int64_t>(in, 1);
  if (training_panels_apply(x, weight, bias)) {
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = out;
    const torch::Tensor b = bias.defined() ? bias : torch::empty({0}, weight.options().requires_grad(false));
    return PanelLinearFunction::apply(x.reshape({rows, in}).contiguous(), weight.contiguous(), b)[0].view(shape);
  }
  const bool with_panels = panels != nullptr && weight_panels_enabled();
  // A bfloat16 weight (inference in bf16, LmModel::set_weight_dtype) runs
  // only on its bf16 panels, at any row count.
  const bool bf16 = weight.scalar_type() == torch::kBFloat16;
  const bool weight_served = bf16 ? with_panels && !torch::GradMode::is_enabled() && weight.device().is_cpu() &&
                                        weight.is_contiguous()
                                  : cpu_float_inference({&weight});
  const bool applies = weight_served && cpu_float_inference({&bias}) && x.device().is_cpu() &&
                       x.scalar_type() == torch::kFloat && x.dim() >= 1 && x.size(-1) == in && x.numel() > 0 &&
                       (bf16 || rows <= kSmallRows || small_rows_serves(rows, with_panels));
  if (!applies) {
    // Elsewhere a weight stored narrower than the rows is widened per call.
    const bool widen = weight.scalar_type() != x.scalar_type() && x.is_floating_point();
    return torch::nn::functional::linear(x, widen ? weight.to(x.scalar_type()) : weight, bias);
  }
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
