#pragma once
// Weights packed into panels for inference (panel_kernel.h), and a cache
// that keeps a packed copy in step with its source tensor.
//
// Packing costs one pass over the weights and a second copy of them in
// memory; it pays off when the same weights serve many forwards on few rows
// (decoding, streaming recognition). MoEKit packs only in inference (no
// gradient needed), for CPU float32 and bfloat16 weights, and only once a forward has
// rows the small-rows kernels serve. Set MOEKIT_WEIGHT_PANELS=0 in the
// environment, or call set_weight_panels(false), to never pack (the memory
// then stays at one copy; decoding gets slower, results do not change beyond
// float rounding).
#include <torch/torch.h>

#include <mutex>
#include <vector>

#include "moekit/core/mapped_tensors.h"
#include "moekit/kernels/panel_kernel.h"

namespace moekit {

// w [..., out, in] float32 or bfloat16 -> [..., ceil(out / kPanelWidth), in,
// kPanelWidth] of the same dtype (zero-padded past out), contiguous. bf16
// panels feed panel_linear_bf16: half the bytes streamed per product.
torch::Tensor pack_panels(const torch::Tensor& w);
// Whether pack_panels takes w's dtype and device (CPU float32 or bfloat16).
bool packs_into_panels(const torch::Tensor& w);

// Whether inference packs weights (MOEKIT_WEIGHT_PANELS, default on).
bool weight_panels_enabled();
void set_weight_panels(bool enabled);

// What a kept copy of a weight was made from: the tensor (kept alive, so no
// other tensor can take its address), its data address, version counter and
// shape. matches(w): w is that weight as it was then (views of it made
// afresh per call share its memory and version). Not thread-safe: the
// caches below hold it under their lock.
class WeightStamp {
 public:
  bool matches(const torch::Tensor& w) const {
    return data_ != nullptr && data_ == w.data_ptr() && version_ == w._version() && sizes_ == w.sizes();
  }
  // Records w as the source of a packed copy just made. A weight mapped
  // from its model file (mapped_tensors.h) gives its pages back: the packed
  // copy serves from now on.
  void take(const torch::Tensor& w) {
    source_ = w;
    data_ = w.data_ptr();
    version_ = w._version();
    sizes_ = w.sizes().vec();
    release_mapped_tensor(w);
  }
  void clear() { *this = WeightStamp(); }

 private:
  torch::Tensor source_;
  const void* data_ = nullptr;
  int64_t version_ = -1;
  std::vector<int64_t> sizes_;
};

// A packed copy of one weight, rebuilt when the weight changes: other memory
// (another tensor, set_data), an in-place update (the version counter
// LibTorch bumps on every in-place write: optimizer steps, load_state_dict,
// copy_) or a new shape. Views of the weight made per call (w.view(...))
// share its memory and version, so they hit the cache. Writes through an
// alias with its own version counter (from_blob over the same memory,
// Tensor::data()) are not seen: MoEKit writes weights only in place.
// Thread-safe: forwards on one model from several threads share it.
class PanelCache {
 public:
  // The panels of w (CPU, float32 or bfloat16, contiguous).
  torch::Tensor get(const torch::Tensor& w);
  // Frees the packed copy (training: the next step would make it stale).
  void clear();

 private:
  std::mutex mutex_;
  WeightStamp stamp_;  // what panels_ was packed from
  torch::Tensor panels_;
};

}  // namespace moekit
