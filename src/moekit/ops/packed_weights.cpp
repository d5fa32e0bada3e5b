#include "moekit/ops/packed_weights.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "moekit/core/check.h"

namespace moekit {
namespace {

std::atomic<bool>& panels_flag() {
  static std::atomic<bool> flag{[] {
    const char* v = std::getenv("MOEKIT_WEIGHT_PANELS");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }()};
  return flag;
}

}  // namespace

torch::Tensor pack_panels(const torch::Tensor& w) {
  MOEKIT_CHECK_ARG(w.dim() >= 2 && packs_into_panels(w),
                   "pack_panels: expected a CPU float32 or bfloat16 tensor [..., out, in], got ", w.scalar_type(), " ",
                   w.device(), " ", w.sizes());
  torch::NoGradGuard no_grad;
  const int64_t out = w.size(-2), in = w.size(-1);
  const int64_t panels = (out + detail::kPanelWidth - 1) / detail::kPanelWidth;
  // Pad out to whole panels (a copy only when out is not a multiple), then
  // [..., P, kPanelWidth, in] -> [..., P, in, kPanelWidth]: one more copy.
  const int64_t pad = panels * detail::kPanelWidth - out;
  const torch::Tensor padded = pad > 0 ? torch::constant_pad_nd(w.detach(), {0, 0, 0, pad}) : w.detach();
  std::vector<int64_t> shape = w.sizes().vec();
  shape.pop_back();
  shape.pop_back();
  shape.insert(shape.end(), {panels, detail::kPanelWidth, in});
  return padded.reshape(shape).transpose(-1, -2).contiguous();
}

bool packs_into_panels(const torch::Tensor& w) {
  return w.device().is_cpu() && (w.scalar_type() == torch::kFloat || w.scalar_type() == torch::kBFloat16);
}

bool weight_panels_enabled() { return panels_flag().load(std::memory_order_relaxed); }
void set_weight_panels(bool enabled) { panels_flag().store(enabled, std::memory_order_relaxed); }

torch::Tensor PanelCache::get(const torch::Tensor& w) {
  MOEKIT_CHECK_ARG(w.is_contiguous(), "PanelCache: the weight must be contiguous");
  std::lock_guard<std::mutex> lock(mutex_);
  if (!panels_.defined() || !stamp_.matches(w)) {
    panels_ = pack_panels(w);
    stamp_.take(w);
  }
  return panels_;
}

void PanelCache::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  panels_ = torch::Tensor();
  stamp_.clear();
}

}  // namespace moekit
