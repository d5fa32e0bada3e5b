// The fused attention kernel (kernels/attention_kernel.h): every variant against
// a double-precision loop on strided arrays, and the attention module's
// inference path (which uses it) against its ATen form (which runs when a
// gradient is recorded), with masks, relative positions and a streaming cache.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "moekit/kernels/attention_kernel.h"
#include "moekit/nn/attention.h"
#include "moekit/ops/linear.h"
#include "test_util.h"

namespace moekit {
namespace {

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// The definition, in double: out[b, i, h] = sum_j softmax_j(s) v[b, h, j],
// s = scale * ((q + bu) . k + (q + bv) . p), masked keys left out, a query
// with no key left gets 0.
torch::Tensor reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& p, const torch::Tensor& bu, const torch::Tensor& bv,
                        const torch::Tensor& mask, double scale) {
  const int64_t batch = q.size(0), t1 = q.size(1), heads = q.size(2), d_k = q.size(3), t2 = k.size(2);
  const torch::Tensor q64 = q.to(torch::kFloat64), k64 = k.to(torch::kFloat64), v64 = v.to(torch::kFloat64);
  const torch::Tensor p64 = p.defined() ? p.to(torch::kFloat64) : torch::zeros({1, heads, t2, d_k}, torch::kFloat64);
  const torch::Tensor bu64 = bu.to(torch::kFloat64), bv64 = bv.to(torch::kFloat64);
  const torch::Tensor m = mask.defined() ? mask : torch::ones({1, 1, t2}, torch::kBool);
  const auto qa = q64.accessor<double, 4>();
  const auto ka = k64.accessor<double, 4>();
  const auto va = v64.accessor<double, 4>();
  const auto pa = p64.accessor<double, 4>();
  const auto bua = bu64.accessor<double, 2>();
  const auto bva = bv64.accessor<double, 2>();
  const auto ma = m.accessor<bool, 3>();
  const bool rel = p.defined();
  torch::Tensor out = torch::zeros({batch, t1, heads * d_k}, torch::kFloat64);
  auto oa = out.accessor<double, 3>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < t1; ++i) {
        std::vector<double> s(static_cast<size_t>(t2));
        std::vector<bool> allowed(static_cast<size_t>(t2), true);
        double max = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < t2; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < d_k; ++d) {
            const double qd = qa[b][i][h][d];
            if (rel) {
              dot += (qd + bua[h][d]) * ka[b][h][j][d];
              dot += (qd + bva[h][d]) * pa[p64.size(0) == 1 ? 0 : b][h][j][d];
            } else {
              dot += qd * ka[b][h][j][d];
            }
          }
          s[j] = dot * scale;
          allowed[j] = ma[m.size(0) == 1 ? 0 : b][m.size(1) == 1 ? 0 : i][j];
          if (allowed[j]) max = std::max(max, s[j]);
        }
        if (max == -std::numeric_limits<double>::infinity()) continue;  // no key: zeros
        double sum = 0;
        for (int64_t j = 0; j < t2; ++j) sum += allowed[j] ? std::exp(s[j] - max) : 0.0;
        for (int64_t d = 0; d < d_k; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < t2; ++j) {
            if (allowed[j]) acc += std::exp(s[j] - max) / sum * va[b][h][j][d];
          }
          oa[b][i][h * d_k + d] = acc;
        }
      }
    }
  }
  return out;
}

TEST(AttentionKernel, EveryVariantEqualsADoubleLoopOnStridedViews) {
  torch::manual_seed(3);
  const int64_t batch = 2, heads = 3;
  struct Case {
    int64_t t1, t2, d_k;
    bool rel, mask;
  };
  // Query counts below, at and past each vector width (4, 8, 16 lanes);
  // key counts past the 4- and 8-key steps; d_k past the value passes.
  const std::vector<Case> cases = {{1, 1, 8, false, false},   {5, 7, 20, true, false}, {16, 33, 64, true, false},
                                   {17, 9, 16, false, true},  {3, 40, 24, true, true}, {9, 12, 8, true, true}};
  for (const auto& [name, fn] : detail::attention_variants()) {
    for (const Case& c : cases) {
      // q as the projection leaves it ([B, T1, H, d_k] view of [B, T1, D]);
      // k, v, p as views into larger buffers (a cache with spare capacity).
      const torch::Tensor q = torch::randn({batch, c.t1, heads * c.d_k}).view({batch, c.t1, heads, c.d_k});
      const torch::Tensor k = torch::randn({batch, heads, c.t2 + 5, c.d_k}).slice(2, 2, 2 + c.t2);
      const torch::Tensor v = torch::randn({batch, heads, c.t2 + 5, c.d_k}).slice(2, 1, 1 + c.t2);
      const torch::Tensor p = c.rel ? torch::randn({1, c.t2, heads, c.d_k}).transpose(1, 2) : torch::Tensor();
      const torch::Tensor bu = torch::randn({heads, c.d_k}), bv = torch::randn({heads, c.d_k});
      torch::Tensor mask;
      if (c.mask) {
        mask = torch::rand({batch, c.t1, c.t2}) > 0.3;
        mask[0][0].fill_(false);  // a query that may attend nowhere
      }
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.d_k));
      detail::AttentionProblem a;
      a.batch = batch;
      a.heads = heads;
      a.queries = c.t1;
      a.keys = c.t2;
      a.d_k = c.d_k;
      a.q = {q.data_ptr<float>(), q.stride(0), q.stride(2), q.stride(1)};
      a.k = {k.data_ptr<float>(), k.stride(0), k.stride(1), k.stride(2)};
      a.v = {v.data_ptr<float>(), v.stride(0), v.stride(1), v.stride(2)};
      if (c.rel) {
        a.p = {p.data_ptr<float>(), 0, p.stride(1), p.stride(2)};
        a.bias_u = bu.data_ptr<float>();
        a.bias_v = bv.data_ptr<float>();
      }
      if (c.mask) {
        a.mask = mask.data_ptr<bool>();
        a.mask_sb = mask.stride(0);
        a.mask_si = mask.stride(1);
      }
      a.scale = static_cast<float>(scale);
      // Output rows wider than H * d_k: only the head slots are written.
      torch::Tensor out = torch::full({batch, c.t1, heads * c.d_k + 3}, 7.0f);
      a.out = out.data_ptr<float>();
      a.out_sb = out.stride(0);
      a.out_si = out.stride(1);
      fn(a, 0, batch * heads);
      const torch::Tensor want = reference(q, k, v, p, bu, bv, mask, scale);
      const std::string what = name + " t1=" + std::to_string(c.t1) + " t2=" + std::to_string(c.t2) +
                               " d_k=" + std::to_string(c.d_k) + (c.rel ? " rel" : "") + (c.mask ? " mask" : "");
      EXPECT_LT(max_abs_diff(out.narrow(2, 0, heads * c.d_k), want), 2e-5) << what;
      EXPECT_TRUE(out.narrow(2, heads * c.d_k, 3).eq(7.0f).all().item<bool>()) << what << ": wrote past a row";
      if (c.mask) {
        EXPECT_TRUE(out[0][0].narrow(0, 0, heads * c.d_k).eq(0.0f).all().item<bool>()) << what;
      }
    }
  }
}

// The module without a gradient (fused kernel) and with one (ATen ops).
TEST(AttentionKernel, ModuleInferenceEqualsItsAtenFormWithMasksAndCache) {
  torch::manual_seed(5);
  for (bool rel : {false, true}) {
    AttentionOptions options;
    options.heads = 4;
    options.d_model = 32;
    options.rel_pos = rel;
    MultiHeadedAttention att(options);
    att->eval();
    // 22 rows: the fused core on ATen's projections; 14 rows: the
    // self-attention path on weight panels as well.
    for (int64_t t : {11, 7}) {
      const int64_t batch = 2;
      const torch::Tensor x = torch::randn({batch, t, 32});
      const torch::Tensor pos = rel ? torch::randn({1, t, 32}) : torch::Tensor();
      torch::Tensor padding = torch::ones({batch, 1, t}, torch::kBool);
      padding[1].narrow(1, t - 3, 3).fill_(false);
      torch::Tensor chunked = torch::ones({batch, t, t}, torch::kBool).tril();
      chunked[0][2].fill_(false);
      for (const torch::Tensor& mask : {torch::Tensor(), padding, chunked}) {
        const torch::Tensor aten = att->forward(x, x, x, mask, pos).detach();
        torch::NoGradGuard no_grad;
        const FastPathProbe probe;
        const torch::Tensor fused = att->forward(x, x, x, mask, pos);
        EXPECT_EQ(probe.ran("attention.fused_core") + probe.ran("attention.self_attention_cpu"), 1);
        if (batch * t <= kSmallRows) {
          EXPECT_EQ(probe.ran("attention.self_attention_cpu"), 1) << "t " << t;
        }
        EXPECT_LT(max_abs_diff(fused, aten), 1e-5)
            << "rel " << rel << " t " << t << " mask " << (mask.defined() ? mask.sizes() : torch::IntArrayRef{});
      }
    }
    const int64_t t = 11;
    const torch::Tensor x = torch::randn({2, t, 32});
    const torch::Tensor pos = rel ? torch::randn({1, t, 32}) : torch::Tensor();
    // Streaming: chunks of 4 and 3 frames through a cache, batch 1.
    const torch::Tensor x1 = x.narrow(0, 0, 1);
    KvCache aten_cache, fused_cache;
    for (int64_t begin = 0; begin < t; begin += 4) {
      const int64_t n = std::min<int64_t>(4, t - begin);
      const torch::Tensor chunk = x1.narrow(1, begin, n);
      const torch::Tensor chunk_pos = rel ? pos.narrow(1, 0, begin + n) : torch::Tensor();
      const torch::Tensor aten = att->forward(chunk, chunk, chunk, {}, chunk_pos, &aten_cache).detach();
      torch::NoGradGuard no_grad;
      const FastPathProbe probe;
      const torch::Tensor fused = att->forward(chunk, chunk, chunk, {}, chunk_pos, &fused_cache);
      EXPECT_EQ(probe.ran("attention.self_attention_cpu"), 1) << "rel " << rel << " chunk at " << begin;
      EXPECT_LT(max_abs_diff(fused, aten), 1e-5) << "rel " << rel << " chunk at " << begin;
    }
  }
}

}  // namespace
}  // namespace moekit
