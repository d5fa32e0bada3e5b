#include "moekit/dist/all_to_all.h"

namespace moekit::dist {

namespace {

class AllToAllRows : public torch::autograd::Function<AllToAllRows> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input, const Group* group,
                               const std::vector<int64_t>& send_counts, const std::vector<int64_t>& recv_counts) {
    ctx->saved_data["group"] = reinterpret_cast<int64_t>(group);
    ctx->saved_data["send"] = send_counts;
    ctx->saved_data["recv"] = recv_counts;
    ctx->saved_data["shape"] = input.sizes().vec();
    ctx->saved_data["dtype"] = static_cast<int64_t>(input.scalar_type());
    return group->all_to_all(input, send_counts, recv_counts);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto* group = reinterpret_cast<const Group*>(ctx->saved_data["group"].toInt());
    const std::vector<int64_t> send = ctx->saved_data["send"].toIntVector();
    const std::vector<int64_t> recv = ctx->saved_data["recv"].toIntVector();
    // The rows came from where this rank's gradient must go: the reverse
    // exchange, which every member must join even when nothing downstream
    // of this rank's rows needed a gradient (autograd passes none then).
    torch::Tensor grad = grads[0];
    if (!grad.defined()) {
      std::vector<int64_t> shape = ctx->saved_data["shape"].toIntVector();
      shape[0] = 0;
      for (int64_t c : recv) shape[0] += c;
      grad = torch::zeros(shape, torch::TensorOptions().dtype(
                                     static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt())));
    }
    return {group->all_to_all(grad, recv, send), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor all_to_all_rows(const Group& group, const torch::Tensor& input, const std::vector<int64_t>& send_counts,
                              const std::vector<int64_t>& recv_counts) {
  if (!input.requires_grad() || !torch::GradMode::is_enabled())
    return group.all_to_all(input, send_counts, recv_counts);
  return AllToAllRows::apply(input, &group, send_counts, recv_counts);
}

}  // namespace moekit::dist
