// The caching CPU allocator: blocks from 1 KiB are reused, contents are
// intact, smaller ones bypass the cache, blocks from 2 MiB on are huge-page
// blocks, a request takes a larger cached block that wastes at most a
// quarter of it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moekit/core/cpu_allocator.h"

namespace moekit {
namespace {

TEST(CachingCpuAllocator, ReusesLargeBlocksAndKeepsDataIntact) {
  install_caching_cpu_allocator();
  empty_cpu_cache();
  const int64_t n = 3 * 1024 * 1024;  // 12 MiB of floats
  const CpuCacheStats before = cpu_cache_stats();
  { torch::Tensor a = torch::full({n}, 1.5f); }
  EXPECT_GE(cpu_cache_stats().cached_bytes, n * 4);
  torch::Tensor b = torch::arange(n, torch::kFloat32);  // same size: served from the cache
  const CpuCacheStats after = cpu_cache_stats();
  EXPECT_EQ(after.hits, before.hits + 1);
  EXPECT_EQ(b[n - 1].item<float>(), static_cast<float>(n - 1));
  EXPECT_EQ(b.sum().item<double>(), static_cast<double>(n - 1) * n / 2);
  // Small tensors never enter the cache.
  const int64_t cached = cpu_cache_stats().cached_bytes;
  { torch::Tensor small = torch::ones({100}); }
  EXPECT_EQ(cpu_cache_stats().cached_bytes, cached);
  empty_cpu_cache();
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 0);
}

TEST(CachingCpuAllocator, HugePageBlocksAreAlignedAndSizedIn2MiB) {
  install_caching_cpu_allocator();
  empty_cpu_cache();
  constexpr int64_t kTwoMiB = int64_t{2} << 20;
  // 5 MiB + 4 bytes: a huge-page block, 6 MiB, 2 MiB aligned; its bytes intact.
  {
    torch::Tensor big = torch::arange((5 << 20) / 4 + 1, torch::kFloat32);
#if defined(__linux__)
    EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data_ptr()) % kTwoMiB, 0u);
#endif
    EXPECT_EQ(big[-1].item<float>(), static_cast<float>((5 << 20) / 4));
  }
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 6 << 20);
  // 3 MiB + 4 bytes: 2 MiB steps, 4 MiB.
  empty_cpu_cache();
  { torch::Tensor mid = torch::ones({(3 << 20) / 4 + 1}); }
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 4 << 20);
  // A block of `first` floats is cached as `cached` bytes and serves a later
  // tensor of `again` floats (the same block size), its data intact.
  auto expect_cached_and_reused = [](int64_t first, int64_t cached, int64_t again) {
    empty_cpu_cache();
    { torch::Tensor block = torch::ones({first}); }
    EXPECT_EQ(cpu_cache_stats().cached_bytes, cached) << first << " floats";
    const int64_t hits = cpu_cache_stats().hits;
    torch::Tensor reused = torch::arange(again, torch::kFloat32);
    EXPECT_EQ(cpu_cache_stats().hits, hits + 1) << again << " floats";
    EXPECT_EQ(reused[again - 1].item<float>(), static_cast<float>(again - 1));
  };
  // 100 KB (a streaming chunk's activations): 64 KiB steps, 128 KiB; then 120,000 bytes.
  expect_cached_and_reused(25000, 128 << 10, 30000);
  // 16 KiB and a bit (a chunk's [16, 256] activations): 1 KiB steps, 17 KiB; then 16,800 bytes.
  expect_cached_and_reused(4097, 17 << 10, 4200);
  // Under 1 KiB: not cached.
  empty_cpu_cache();
  { torch::Tensor tiny = torch::ones({200}); }
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 0);
  empty_cpu_cache();
}

TEST(CachingCpuAllocator, ALargerBlockServesARequestWithinAQuarterOfIt) {
  install_caching_cpu_allocator();
  empty_cpu_cache();
  constexpr int64_t kMiB = int64_t{1} << 20;
  { torch::Tensor first = torch::ones({10 * kMiB / 4}); }  // a 10 MiB block
  ASSERT_EQ(cpu_cache_stats().cached_bytes, 10 * kMiB);
  // 6 MiB would waste 4 of the 10: a fresh block; the 10 MiB one stays cached.
  {
    const int64_t hits = cpu_cache_stats().hits;
    torch::Tensor small = torch::ones({6 * kMiB / 4});
    EXPECT_EQ(cpu_cache_stats().hits, hits);
    EXPECT_EQ(cpu_cache_stats().cached_bytes, 10 * kMiB);
  }
  // 8 MiB takes the cached 10 MiB block (2 MiB to spare: a quarter of 8),
  // which goes back to the cache at its own size, its data written in full.
  empty_cpu_cache();
  { torch::Tensor first = torch::ones({10 * kMiB / 4}); }
  {
    const int64_t hits = cpu_cache_stats().hits;
    torch::Tensor eight = torch::arange(8 * kMiB / 4, torch::kFloat32);
    EXPECT_EQ(cpu_cache_stats().hits, hits + 1);
    EXPECT_EQ(cpu_cache_stats().cached_bytes, 0);
    EXPECT_EQ(eight[-1].item<float>(), static_cast<float>(8 * kMiB / 4 - 1));
  }
  EXPECT_EQ(cpu_cache_stats().cached_bytes, 10 * kMiB);
  empty_cpu_cache();
}

}  // namespace
}  // namespace moekit
