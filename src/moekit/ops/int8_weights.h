#pragma once
// int8 weights for inference: per-output-channel symmetric quantization,
// the packed panels the int8 kernel reads (kernels/int8_kernel.h), and a
// cache that keeps the panels in step with the weights.
//
// A weight w [..., out, in] becomes q = round(w / scale) in [-127, 127]
// (int8) with scale [..., out] = max_k |w[..., o, k]| / 127 (float32): the
// scheme of PyTorch's per-channel dynamic quantization. The rows multiplied
// by it are quantized per row when the product runs.
#include <torch/torch.h>

#include <mutex>

#include "moekit/ops/packed_weights.h"

namespace moekit {

struct Int8Weight {
  torch::Tensor q;      // int8 [..., out, in]
  torch::Tensor scale;  // float32 [..., out]
};

// w float (any float dtype, CPU) -> its int8 form. A row of zeros gets scale 0.
Int8Weight quantize_int8(const torch::Tensor& w);
// q * scale as float32 [..., out, in].
torch::Tensor dequantize_int8(const torch::Tensor& q, const torch::Tensor& scale);

// q [..., out, in] int8 and scale [..., out] -> [..., ceil(out / 32),
// int8_panel_bytes(in)] int8, contiguous: the int8 kernel's panels.
torch::Tensor pack_int8_panels(const torch::Tensor& q, const torch::Tensor& scale);

// The panels of one int8 weight, rebuilt when the weight or its scales
// change (the rules of PanelCache). Thread-safe.
class Int8PanelCache {
 public:
  torch::Tensor get(const torch::Tensor& q, const torch::Tensor& scale);
  void clear();

 private:
  std::mutex mutex_;
  WeightStamp q_stamp_, scale_stamp_;
  torch::Tensor panels_;
};

// out[rows of g] = in[rows of g] W[g]^T (+ bias[g]) for every group with W
// int8 panels (pack_int8_panels of [G, out, in]): each row of `in` (CPU
// float32 [M, in], contiguous) quantized once, the groups' weight panels
// split over LibTorch's intra-op threads. out: [M, out] float32, contiguous.
void grouped_linear_int8_into(const torch::Tensor& in, const std::vector<int64_t>& group_rows,
                              const torch::Tensor& panels, int64_t out_features, const torch::Tensor& bias,
                              torch::Tensor& out);

}  // namespace moekit
