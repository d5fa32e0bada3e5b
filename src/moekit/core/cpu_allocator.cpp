#include "moekit/core/cpu_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/version.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace moekit {
namespace {

// Blocks under 1 KiB are malloc's business. From 64 KiB on glibc serves
// sizes from the top of its heap or by mmap and gives them back to the
// kernel when freed (trim, munmap), so a decoding loop that allocates the
// same few hundred KiB per step page-faulted on every step; below that,
// LibTorch's 64-byte-aligned allocations take glibc's memalign path, which
// skips its per-thread cache and consolidates free chunks (a streaming
// chunk makes hundreds of such tensors). So both are cached: from 1 KiB in
// 1 KiB steps, from 64 KiB in 64 KiB steps.
constexpr size_t kMinCachedBytes = size_t{1} << 10;
constexpr size_t kTinyRoundBytes = size_t{1} << 10;    // below kSmallBytes
constexpr size_t kSmallBytes = size_t{64} << 10;
constexpr size_t kSmallRoundBytes = size_t{64} << 10;  // below kRoundBytes
constexpr size_t kRoundBytes = size_t{1} << 20;
// Blocks of at least kHugeMinBytes are aligned to, and sized in, 2 MiB and
// marked for transparent huge pages (Linux, where THP is "madvise" or
// "always"): a weight streamed from memory then crosses no 4 KiB page
// boundaries, where the hardware prefetcher stops, and a fresh block faults
// in per 2 MiB instead of per 4 KiB. Streaming expert panels went from 14.0
// to 15.2 GB/s at 8 rows on the Intel VM of bench/results/2026-11-26.md ("Weight prefetch, huge
// pages, SiLU"). From 2 MiB on, so that a 1024 x 1024 bf16 matrix (exactly
// 2 MiB) is one huge page too.
constexpr size_t kHugeMinBytes = size_t{2} << 20;
constexpr size_t kHugeBytes = size_t{2} << 20;

size_t block_bytes(size_t nbytes) {
  const size_t round = nbytes >= kHugeMinBytes ? kHugeBytes
                       : nbytes >= kRoundBytes  ? kRoundBytes
                       : nbytes >= kSmallBytes  ? kSmallRoundBytes
                                                : kTinyRoundBytes;
  return (nbytes + round - 1) / round * round;
}

void* alloc_block(size_t bytes) {
#if defined(__linux__)
  if (bytes >= kHugeMinBytes) {
    void* data = nullptr;
    if (posix_memalign(&data, kHugeBytes, bytes) == 0) {
      madvise(data, bytes, MADV_HUGEPAGE);  // advice only: no THP, no harm
      return data;
    }
  }
#endif
  return c10::alloc_cpu(bytes);  // throws on failure
}

// LibTorch 2.3 made allocate() non-const and added copy_data().
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define MOEKIT_ALLOCATOR_CONST
#define MOEKIT_ALLOCATOR_HAS_COPY_DATA 1
#else
#define MOEKIT_ALLOCATOR_CONST const
#define MOEKIT_ALLOCATOR_HAS_COPY_DATA 0
#endif

class CachingCpuAllocator final : public c10::Allocator {
 public:
#if MOEKIT_ALLOCATOR_HAS_COPY_DATA
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
#endif

  c10::DataPtr allocate(size_t nbytes) MOEKIT_ALLOCATOR_CONST override {
    if (nbytes < kMinCachedBytes) {
      void* data = c10::alloc_cpu(nbytes);
      return {data, data, &free_small, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t rounded = block_bytes(nbytes);
    void* data = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // The smallest cached block that fits, if it wastes at most a
      // quarter of the request: tensors whose sizes vary from batch to
      // batch (training on utterances of different lengths) reuse each
      // other's blocks instead of each size faulting in fresh memory.
      auto it = free_blocks_.lower_bound(rounded);
      if (it != free_blocks_.end() && it->first <= rounded + rounded / 4) {
        const size_t size = it->first;
        data = it->second.back();
        it->second.pop_back();
        if (it->second.empty()) free_blocks_.erase(it);
        cached_bytes_ -= size;
        ++hits_;
        live_sizes_[data] = size;
      } else {
        ++misses_;
      }
    }
    if (data == nullptr) {
      data = alloc_block(rounded);
      std::lock_guard<std::mutex> lock(mutex_);
      live_sizes_[data] = rounded;
    }
    return {data, data, &free_large, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &free_large_or_small; }

  void release(void* data) {
    size_t size = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_sizes_.find(data);
      if (it == live_sizes_.end()) {
        c10::free_cpu(data);
        return;
      }
      size = it->second;
      live_sizes_.erase(it);
      if (cached_bytes_ + size <= limit_) {
        free_blocks_[size].push_back(data);
        cached_bytes_ += size;
        return;
      }
    }
    c10::free_cpu(data);
  }

  void empty() {
    std::map<size_t, std::vector<void*>> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_blocks_);
      cached_bytes_ = 0;
    }
    for (auto& [size, list] : blocks) {
      for (void* data : list) c10::free_cpu(data);
    }
  }

  CpuCacheStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(cached_bytes_), hits_, misses_};
  }

  void set_limit(size_t limit) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = limit;
  }

  static CachingCpuAllocator& instance() {
    static CachingCpuAllocator* allocator = new CachingCpuAllocator();  // never destroyed: tensors may outlive main
    return *allocator;
  }

 private:
  static void free_small(void* data) { c10::free_cpu(data); }
  static void free_large(void* data) { instance().release(data); }
  static void free_large_or_small(void* data) { instance().release(data); }

  mutable std::mutex mutex_;
  // Free blocks by rounded size, the most recently freed last (warmest in cache).
  mutable std::map<size_t, std::vector<void*>> free_blocks_;
  mutable std::unordered_map<void*, size_t> live_sizes_;
  mutable size_t cached_bytes_ = 0;
  mutable int64_t hits_ = 0, misses_ = 0;
  size_t limit_ = size_t{4096} << 20;
};

}  // namespace

void install_caching_cpu_allocator(size_t limit_bytes) {
  static std::once_flag once;
  CachingCpuAllocator& allocator = CachingCpuAllocator::instance();
  if (limit_bytes == 0) {
    limit_bytes = size_t{4096} << 20;
    if (const char* env = std::getenv("MOEKIT_CPU_CACHE_MB")) {
      const long mb = std::strtol(env, nullptr, 10);
      if (mb >= 0) limit_bytes = static_cast<size_t>(mb) << 20;
    }
  }
  allocator.set_limit(limit_bytes);
  std::call_once(once, [&] { c10::SetCPUAllocator(&allocator, /*priority=*/10); });
}

void empty_cpu_cache() { CachingCpuAllocator::instance().empty(); }

void release_cpu_memory() {
  empty_cpu_cache();
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

CpuCacheStats cpu_cache_stats() { return CachingCpuAllocator::instance().stats(); }

}  // namespace moekit
