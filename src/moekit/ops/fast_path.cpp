#include "moekit/ops/fast_path.h"

#include <memory>
#include <mutex>

namespace moekit {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, std::unique_ptr<std::atomic<int64_t>>> counts;
};

Registry& registry() {
  static Registry* r = new Registry;  // never destroyed: counters may run during static destruction
  return *r;
}

}  // namespace

bool cpu_float_inference(std::initializer_list<const torch::Tensor*> tensors) {
  if (torch::GradMode::is_enabled()) return false;
  for (const torch::Tensor* t : tensors) {
    if (t->defined() && (!t->device().is_cpu() || t->scalar_type() != torch::kFloat || !t->is_contiguous())) {
      return false;
    }
  }
  return true;
}

FastPathCounter::FastPathCounter(const char* name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto& slot = r.counts[name];
  if (!slot) slot = std::make_unique<std::atomic<int64_t>>(0);
  count_ = slot.get();
}

int64_t fast_path_count(const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto it = r.counts.find(name);
  return it == r.counts.end() ? 0 : it->second->load(std::memory_order_relaxed);
}

std::map<std::string, int64_t> fast_path_counts() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::map<std::string, int64_t> out;
  for (const auto& [name, count] : r.counts) out[name] = count->load(std::memory_order_relaxed);
  return out;
}

}  // namespace moekit
