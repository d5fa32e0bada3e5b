#pragma once
// A caching CPU allocator for LibTorch.
//
// LibTorch's default CPU allocator returns every large block to the OS, so the
// next tensor of that size is mmap'ed again and page-faulted in, zeroed page by
// page. On the machines MoEKit is measured on that costs ~10 us per 4 KiB page:
// allocating a 32 MiB activation took longer than the GEMM that fills it (see
// bench/results/2026-11-24.md). This allocator keeps freed blocks of >= 1 KiB, keyed by
// size rounded up to 1 KiB (64 KiB from 64 KiB on, 1 MiB from 1 MiB on;
// 2 MiB, huge-page backed, from 2 MiB on), and hands them out again, up to a
// cache limit: a request takes the smallest cached block that fits if it is
// at most a quarter larger, so tensors whose sizes vary from batch to batch
// share blocks. (glibc also returns blocks of a few hundred KiB to the OS, so
// a decoding loop faulted them in again on every step, and serves LibTorch's
// aligned small blocks on a slow path.)
#include <cstddef>
#include <cstdint>

namespace moekit {

struct CpuCacheStats {
  int64_t cached_bytes = 0;  // held in the cache, free for reuse
  int64_t hits = 0;          // allocations served from the cache
  int64_t misses = 0;        // large allocations that went to the OS
};

// Installs the caching allocator as LibTorch's CPU allocator (idempotent).
// limit_bytes bounds the memory held while unused; 0 keeps the default
// (MOEKIT_CPU_CACHE_MB from the environment, else 4096 MiB).
void install_caching_cpu_allocator(size_t limit_bytes = 0);

// Frees every cached block.
void empty_cpu_cache();

// empty_cpu_cache(), then glibc's free heap memory back to the OS
// (malloc_trim): after a phase that freed much, such as loading a model.
void release_cpu_memory();

CpuCacheStats cpu_cache_stats();

}  // namespace moekit
