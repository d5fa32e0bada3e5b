#include "moekit/ops/conv_weight_cache.h"

#include <variant>

#include "moekit/ops/fast_path.h"

namespace moekit {

torch::Tensor ConvWeightCache::forward(const torch::nn::Conv2dImpl& conv, const torch::Tensor& x) {
  // LibTorch's option variants are c10::variant in 1.13 and std::variant in
  // 2.x: unqualified calls find either (argument-dependent lookup).
  using std::get;
  using std::holds_alternative;
  const auto& o = conv.options;
  const torch::Tensor& w = conv.weight;
  const bool applies = !torch::GradMode::is_enabled() && at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() &&
                       x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() == 4 && x.is_contiguous() &&
                       w.device().is_cpu() && w.scalar_type() == torch::kFloat && w.is_contiguous() &&
                       (!conv.bias.defined() || conv.bias.scalar_type() == torch::kFloat) && o.groups() == 1 &&
                       holds_alternative<torch::ExpandingArray<2>>(o.padding()) &&
                       holds_alternative<torch::enumtype::kZeros>(o.padding_mode());
  if (!applies) return {};
  const torch::IntArrayRef padding = get<torch::ExpandingArray<2>>(o.padding());
  const torch::IntArrayRef stride = o.stride(), dilation = o.dilation();
  torch::Tensor packed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (unavailable_) return {};
    if (!packed_.defined() || !stamp_.matches(w)) {
      try {
        packed_ = at::mkldnn_reorder_conv2d_weight(w.to_mkldnn(), padding, stride, dilation, 1);
      } catch (const c10::Error&) {
        unavailable_ = true;  // this LibTorch's oneDNN does not take it: LibTorch's own conv2d from now on
        return {};
      }
      stamp_.take(w);
    }
    packed = packed_;
  }
  const c10::optional<torch::Tensor> bias =
      conv.bias.defined() ? c10::optional<torch::Tensor>(conv.bias) : c10::nullopt;
  try {
    torch::Tensor y = at::mkldnn_convolution(x, packed, bias, padding, stride, dilation, 1);
    MOEKIT_FAST_PATH("conv2d.kept_onednn_weight");
    return y;
  } catch (const c10::Error&) {
    std::lock_guard<std::mutex> lock(mutex_);
    unavailable_ = true;
    return {};
  }
}

}  // namespace moekit
