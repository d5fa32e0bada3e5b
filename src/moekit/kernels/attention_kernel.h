#pragma once
// The core of multi-head attention for inference on the CPU, fused: scores
// (with WeNet's relative-position term and biases), mask, softmax and the
// weighted sum of values in one pass per head and block of queries, on the
// caller's strided arrays (a streaming cache's keys are read where they
// lie). Vectorized across queries: a block of queries fills the vector
// lanes, so scores, softmax and the weighted sum need no horizontal sums.
// It replaces the ATen form (two or three matmuls on strided views, adds,
// softmax, a transposing copy: ~20 ops, each with its own dispatch and
// allocation, which on a streaming chunk's 16 queries cost more than the
// arithmetic; bench/results/2026-11-26.md, "Interleaved row groups, fused
// attention, leaner MoE evaluation").
//
// No LibTorch here: this unit is compiled with its own flags.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moekit::detail {

// A [B, H, T, d_k] float array: (b, h, t, d) at data[b*sb + h*sh + t*st + d].
struct HeadsView {
  const float* data = nullptr;
  int64_t sb = 0, sh = 0, st = 0;
};

// out = softmax(scale * ((q + bias_u) k^T + (q + bias_v) p^T), masked) v per
// batch and head; without p (data null), scale * q k^T (biases unused).
struct AttentionProblem {
  int64_t batch = 0, heads = 0, queries = 0, keys = 0, d_k = 0;
  HeadsView q;                    // [B, H, T1, d_k]
  HeadsView k, v;                 // [B, H, T2, d_k]
  HeadsView p;                    // [B, H, T2, d_k] (sb = 0: one for all); data null: no position term
  const float* bias_u = nullptr;  // [H, d_k], with p only
  const float* bias_v = nullptr;  // [H, d_k], with p only
  // true = may attend: (b, i, j) at mask[b*mask_sb + i*mask_si + j]
  // (mask_si = 0: one row for all queries); null: everywhere. A query that
  // may attend nowhere gets zeros (WeNet's masked_fill after the softmax).
  const bool* mask = nullptr;
  int64_t mask_sb = 0, mask_si = 0;
  float scale = 1.0f;
  float* out = nullptr;  // (b, i, h, d) at out[b*out_sb + i*out_si + h*d_k + d]
  int64_t out_sb = 0, out_si = 0;
};

// Batch-heads [bh_begin, bh_end) of a (b * heads + h order), so callers can
// spread them over threads.
void attention_forward(const AttentionProblem& a, int64_t bh_begin, int64_t bh_end);

// Every variant this CPU can run, fastest first ("avx512", "avx2",
// "generic"); attention_forward uses the first. For tests and benchmarks.
using AttentionFn = void (*)(const AttentionProblem&, int64_t, int64_t);
std::vector<std::pair<std::string, AttentionFn>> attention_variants();

}  // namespace moekit::detail
