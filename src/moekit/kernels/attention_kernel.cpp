// See attention_kernel.h. One body, compiled per instruction set and picked
// at run time by CPU feature (as panel_kernel.cpp does).
#include "moekit/kernels/attention_kernel.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "moekit/kernels/simd.h"

namespace moekit::detail {
namespace {

// Scores of one block of queries (the lanes) against NK keys from j:
// s[j + c][lane] = scale * (qu[:, lane] . k[j + c] + qp[:, lane] . p[j + c]).
// qu, qp: the block's queries transposed, [d_k][L].
template <int L, int NK, bool Rel>
__attribute__((always_inline)) inline void score_keys(const float* qu, const float* qp, const float* k, int64_t k_st,
                                                      const float* p, int64_t p_st, int64_t j, int64_t d_k,
                                                      float scale, float* s) {
  using V = typename Vec<L>::type;
  V acc[NK], acc_p[NK];
  const float* kj[NK];
  const float* pj[NK];
  for (int c = 0; c < NK; ++c) {
    acc[c] = V{};
    acc_p[c] = V{};
    kj[c] = k + (j + c) * k_st;
    pj[c] = Rel ? p + (j + c) * p_st : nullptr;
  }
  for (int64_t d = 0; d < d_k; ++d) {
    const V u = load<L>(qu + d * L);
    for (int c = 0; c < NK; ++c) acc[c] += u * kj[c][d];
    if constexpr (Rel) {
      const V w = load<L>(qp + d * L);
      for (int c = 0; c < NK; ++c) acc_p[c] += w * pj[c][d];
    }
  }
  for (int c = 0; c < NK; ++c) {
    const V r = (acc[c] + acc_p[c]) * scale;
    std::memcpy(s + (j + c) * L, &r, sizeof(V));
  }
}

// out[lane, d0 + c] = inv[lane] * sum_j s[j][lane] * v[j, d0 + c] for c < n
// (1..ND), written for the block's first `lanes` queries.
template <int L, int ND>
__attribute__((always_inline)) inline void weighted_values(int64_t n, const float* s, int64_t keys, const float* v,
                                                           int64_t v_st, int64_t d0,
                                                           const typename Vec<L>::type& inv, int64_t lanes,
                                                           float* out, int64_t out_si) {
  if constexpr (ND > 1) {
    if (n < ND) {
      weighted_values<L, ND - 1>(n, s, keys, v, v_st, d0, inv, lanes, out, out_si);
      return;
    }
  }
  using V = typename Vec<L>::type;
  V acc[ND];
  for (int c = 0; c < ND; ++c) acc[c] = V{};
  for (int64_t j = 0; j < keys; ++j) {
    const V w = load<L>(s + j * L);
    const float* vj = v + j * v_st + d0;
    for (int c = 0; c < ND; ++c) acc[c] += w * vj[c];
  }
  for (int c = 0; c < ND; ++c) {
    const V r = acc[c] * inv;
    for (int64_t l = 0; l < lanes; ++l) out[l * out_si + d0 + c] = r[l];
  }
}

// KB keys per step of the score loop, DB output features per pass over the
// keys in the weighted sum: what fits in the vector registers.
template <int L, int KB, int DB, bool Rel>
__attribute__((always_inline)) inline void attention_body(const AttentionProblem& a, int64_t bh_begin,
                                                          int64_t bh_end) {
  using V = typename Vec<L>::type;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t d_k = a.d_k, t1 = a.queries, t2 = a.keys;
  std::vector<float> qu(static_cast<size_t>(d_k * L)), qp(Rel ? static_cast<size_t>(d_k * L) : 0);
  std::vector<float> s(static_cast<size_t>(t2 * L));
  for (int64_t bh = bh_begin; bh < bh_end; ++bh) {
    const int64_t b = bh / a.heads, h = bh % a.heads;
    const float* q = a.q.data + b * a.q.sb + h * a.q.sh;
    const float* k = a.k.data + b * a.k.sb + h * a.k.sh;
    const float* v = a.v.data + b * a.v.sb + h * a.v.sh;
    const float* p = Rel ? a.p.data + b * a.p.sb + h * a.p.sh : nullptr;
    const float* bias_u = Rel && a.bias_u != nullptr ? a.bias_u + h * d_k : nullptr;
    const float* bias_v = Rel && a.bias_v != nullptr ? a.bias_v + h * d_k : nullptr;
    for (int64_t i0 = 0; i0 < t1; i0 += L) {
      const int64_t lanes = std::min<int64_t>(L, t1 - i0);
      // The block's queries transposed, plus the biases; idle lanes stay 0.
      std::fill(qu.begin(), qu.end(), 0.0f);
      std::fill(qp.begin(), qp.end(), 0.0f);
      for (int64_t l = 0; l < lanes; ++l) {
        const float* qi = q + (i0 + l) * a.q.st;
        for (int64_t d = 0; d < d_k; ++d) {
          qu[d * L + l] = qi[d] + (bias_u != nullptr ? bias_u[d] : 0.0f);
          if constexpr (Rel) qp[d * L + l] = qi[d] + (bias_v != nullptr ? bias_v[d] : 0.0f);
        }
      }
      int64_t j = 0;
      for (; j + KB <= t2; j += KB) {
        score_keys<L, KB, Rel>(qu.data(), qp.data(), k, a.k.st, p, a.p.st, j, d_k, a.scale, s.data());
      }
      for (; j < t2; ++j) {
        score_keys<L, 1, Rel>(qu.data(), qp.data(), k, a.k.st, p, a.p.st, j, d_k, a.scale, s.data());
      }
      if (a.mask != nullptr) {
        for (int64_t l = 0; l < lanes; ++l) {
          const bool* m = a.mask + b * a.mask_sb + (i0 + l) * a.mask_si;
          for (int64_t jj = 0; jj < t2; ++jj) {
            if (!m[jj]) s[jj * L + l] = kNegInf;
          }
        }
      }
      // Softmax over the keys, per lane. A lane with every key masked has
      // max -inf: all its weights become 0, and so does its output.
      V max = V{} + kNegInf;
      for (int64_t jj = 0; jj < t2; ++jj) {
        const V x = load<L>(s.data() + jj * L);
        max = x > max ? x : max;
      }
      V sum = V{};
      for (int64_t jj = 0; jj < t2; ++jj) {
        const V x = load<L>(s.data() + jj * L);
        V z = x - max;                 // <= 0; NaN where max is -inf
        z = z > -87.0f ? z : V{} - 87.0f;  // exp(-87) ~ 1.6e-38: nothing left to add
        V e = exp_clamped<L>(z);
        e = x > kNegInf ? e : V{};
        std::memcpy(s.data() + jj * L, &e, sizeof(V));
        sum += e;
      }
      const V inv = sum > 0.0f ? 1.0f / sum : V{};
      float* out = a.out + b * a.out_sb + i0 * a.out_si + h * d_k;
      for (int64_t d0 = 0; d0 < d_k; d0 += DB) {
        weighted_values<L, DB>(std::min<int64_t>(DB, d_k - d0), s.data(), t2, v, a.v.st, d0, inv, lanes, out,
                               a.out_si);
      }
    }
  }
}

template <int L, int KB, int DB>
__attribute__((always_inline)) inline void attention_dispatch(const AttentionProblem& a, int64_t bh_begin,
                                                              int64_t bh_end) {
  if (a.p.data != nullptr) {
    attention_body<L, KB, DB, true>(a, bh_begin, bh_end);
  } else {
    attention_body<L, KB, DB, false>(a, bh_begin, bh_end);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// AVX-512: 8 keys x 2 terms = 16 score accumulators, 16 value accumulators.
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void attention_avx512(const AttentionProblem& a,
                                                                           int64_t bh_begin, int64_t bh_end) {
  attention_dispatch<16, 8, 16>(a, bh_begin, bh_end);
}
// AVX2 (16 registers): 4 keys x 2 terms, 8 value accumulators.
__attribute__((target("avx2,fma"))) void attention_avx2(const AttentionProblem& a, int64_t bh_begin,
                                                        int64_t bh_end) {
  attention_dispatch<8, 4, 8>(a, bh_begin, bh_end);
}
#endif
void attention_generic(const AttentionProblem& a, int64_t bh_begin, int64_t bh_end) {
  attention_dispatch<4, 4, 8>(a, bh_begin, bh_end);
}

}  // namespace

std::vector<std::pair<std::string, AttentionFn>> attention_variants() {
#if defined(__x86_64__) && defined(__GNUC__)
  return cpu_variants<AttentionFn>(attention_avx512, attention_avx2, attention_generic);
#else
  return cpu_variants<AttentionFn>(nullptr, nullptr, attention_generic);
#endif
}

void attention_forward(const AttentionProblem& a, int64_t bh_begin, int64_t bh_end) {
  static const AttentionFn impl = attention_variants().front().second;
  impl(a, bh_begin, bh_end);
}

}  // namespace moekit::detail
