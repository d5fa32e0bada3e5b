#pragma once
// Timing helpers shared by the `moekit bench` commands.
#include <torch/torch.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"

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

// A fresh directory under $TMPDIR (else /tmp), removed with everything in
// it when this goes out of scope.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& prefix) {
    const char* tmp = std::getenv("TMPDIR");
    path_ = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/" + prefix + ".XXXXXX";
    MOEKIT_CHECK(::mkdtemp(path_.data()) != nullptr, "cannot create a directory under ", path_);
  }
  ~ScratchDir() {
    try {
      remove_path(path_);
    } catch (const std::exception&) {
    }
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  if (n == 0) return 0.0;
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Sum of p[0..n) through eight independent vector accumulators: a plain
// stream of loads (LibTorch's sum() reached 10-40% less on the machine
// measured, so alone it understated the bandwidth).
inline float stream_sum(const float* p, int64_t n) {
  typedef float V4 __attribute__((vector_size(16)));
  V4 acc[8] = {};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (int j = 0; j < 8; ++j) {
      V4 v;
      std::memcpy(&v, p + i + 4 * j, sizeof(v));
      acc[j] += v;
    }
  }
  float total = 0.f;
  for (; i < n; ++i) total += p[i];
  for (const V4& a : acc) total += a[0] + a[1] + a[2] + a[3];
  return total;
}

// Read bandwidth in bytes/s with the current threads: the best of several
// full reads of a buffer 8x larger than any last-level cache, each by
// LibTorch's sum() and by stream_sum split over the intra-op threads.
inline double read_bandwidth_bytes_per_s() {
  torch::NoGradGuard no_grad;
  const torch::Tensor buffer = torch::ones({64 * 1024 * 1024});  // 256 MiB
  const float* data = buffer.data_ptr<float>();
  const int64_t n = buffer.numel();
  const double bytes = static_cast<double>(n) * 4.0;
  double best = 0.0;
  for (int i = 0; i < 5; ++i) {
    auto start = Clock::now();
    const double sum = buffer.sum().item<double>();
    double s = std::chrono::duration<double>(Clock::now() - start).count();
    MOEKIT_CHECK(sum > 0, "bandwidth probe failed");
    best = std::max(best, bytes / s);

    std::vector<double> partial(static_cast<size_t>(std::max(1, at::get_num_threads())), 0.0);
    start = Clock::now();
    at::parallel_for(0, n, n / static_cast<int64_t>(partial.size()) + 1, [&](int64_t begin, int64_t end) {
      partial[static_cast<size_t>(at::get_thread_num())] += stream_sum(data + begin, end - begin);
    });
    s = std::chrono::duration<double>(Clock::now() - start).count();
    double streamed = 0.0;
    for (double v : partial) streamed += v;
    MOEKIT_CHECK(streamed > 0, "bandwidth probe failed");
    best = std::max(best, bytes / s);
  }
  return best;
}

}  // namespace moekit::cli
