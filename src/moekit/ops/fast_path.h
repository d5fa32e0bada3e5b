#pragma once
// What every inference fast path shares: the predicate of its common
// condition, and a counter that says it ran.
//
// Each fast path (a row kernel, the panel kernel, a fused attention, the MoE
// layer's loop form...) has one predicate beside it that says when it
// applies, and computes the same values as the LibTorch form it replaces.
// Tests compare the two; the counters let them also assert that the fast
// path really ran (a regressed predicate would otherwise compare LibTorch
// with itself and pass). A counter is one relaxed atomic add per call.
#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <string>

namespace moekit {

// No gradient is being recorded and every defined tensor given is a CPU
// float32 tensor with contiguous memory: the condition under every CPU
// inference kernel. Undefined tensors (an absent bias) pass.
bool cpu_float_inference(std::initializer_list<const torch::Tensor*> tensors);

// A named count of how often a fast path ran, registered on first use.
class FastPathCounter {
 public:
  explicit FastPathCounter(const char* name);
  void hit() { count_->fetch_add(1, std::memory_order_relaxed); }

 private:
  std::atomic<int64_t>* count_;
};

// How often the fast path `name` ran in this process (0 if never).
int64_t fast_path_count(const std::string& name);
// Every fast path that ran, with its count: for `moekit info` and tests.
std::map<std::string, int64_t> fast_path_counts();

}  // namespace moekit

// Counts one run of the fast path `name` (a string literal, "module.path").
#define MOEKIT_FAST_PATH(name)                                    \
  do {                                                            \
    static ::moekit::FastPathCounter moekit_fast_path_counter_(name); \
    moekit_fast_path_counter_.hit();                              \
  } while (0)
