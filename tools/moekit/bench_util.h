#pragma once
// Timing helpers shared by the `moekit bench` commands.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

#include "moekit/core/check.h"

namespace moekit::cli {

using Clock = std::chrono::steady_clock;

// Seconds per call of fn, averaged over a sample of about `seconds`.
inline double time_sample(const std::function<void()>& fn, double seconds) {
  fn();
  int64_t calls = 0;
  const auto start = Clock::now();
  double elapsed = 0.0;
  do {
    fn();
    ++calls;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  return elapsed / static_cast<double>(calls);
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Best of several full reads of a buffer 8x larger than any last-level cache.
inline double read_bandwidth_bytes_per_s() {
  torch::NoGradGuard no_grad;
  const torch::Tensor buffer = torch::ones({64 * 1024 * 1024});  // 256 MiB
  double best = 0.0;
  for (int i = 0; i < 5; ++i) {
    const auto start = Clock::now();
    const double sum = buffer.sum().item<double>();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    MOEKIT_CHECK(sum > 0, "bandwidth probe failed");
    best = std::max(best, static_cast<double>(buffer.numel()) * 4.0 / s);
  }
  return best;
}


}  // namespace moekit::cli
