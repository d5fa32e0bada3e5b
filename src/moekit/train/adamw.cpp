#include "moekit/train/adamw.h"

#include <utility>

#include "moekit/core/check.h"

namespace moekit {

AdamW::AdamW(std::vector<torch::Tensor> params, double lr, double weight_decay)
    : torch::optim::Adam(std::move(params), torch::optim::AdamOptions(lr)), weight_decay_(weight_decay) {
  MOEKIT_CHECK_ARG(weight_decay >= 0, "weight_decay must be >= 0, got ", weight_decay);
}

torch::Tensor AdamW::step(LossClosure closure) {
  if (weight_decay_ > 0) {
    torch::NoGradGuard no_grad;
    for (auto& group : param_groups()) {
      const double lr = static_cast<torch::optim::AdamOptions&>(group.options()).lr();
      for (auto& p : group.params())
        if (p.grad().defined() && p.dim() >= 2) p.mul_(1 - lr * weight_decay_);
    }
  }
  return torch::optim::Adam::step(std::move(closure));
}

}  // namespace moekit
