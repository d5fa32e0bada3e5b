#include "moekit/nn/attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "moekit/core/check.h"
#include "moekit/kernels/attention_kernel.h"
#include "moekit/kernels/panel_kernel.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/linear.h"

namespace moekit {
namespace {

// Points the kernel at a bool mask [B or 1, T1 or 1, T2] (true = may
// attend); returns the tensor it reads, to be held while it runs.
torch::Tensor set_mask(detail::AttentionProblem& a, const torch::Tensor& mask) {
  if (!mask.defined() || mask.numel() == 0) return {};
  torch::Tensor allowed = mask.to(torch::kBool).contiguous();
  a.mask = allowed.data_ptr<bool>();
  a.mask_sb = allowed.size(0) == 1 ? 0 : allowed.stride(0);
  a.mask_si = allowed.size(1) == 1 ? 0 : allowed.stride(1);
  return allowed;
}

}  // namespace

MultiHeadedAttentionImpl::MultiHeadedAttentionImpl(const AttentionOptions& options) : options_(options) {
  MOEKIT_CHECK_ARG(options.heads > 0 && options.d_model % options.heads == 0, "attention: d_model ",
                   options.d_model, " is not divisible by heads ", options.heads);
  d_k_ = options.d_model / options.heads;
  const int64_t d = options.d_model;
  linear_q = register_module("linear_q", PackedLinear(d, d));
  linear_k = register_module("linear_k", PackedLinear(d, d));
  linear_v = register_module("linear_v", PackedLinear(d, d));
  linear_out = register_module("linear_out", PackedLinear(d, d));
  if (options.rel_pos) {
    linear_pos = register_module("linear_pos", PackedLinear(torch::nn::LinearOptions(d, d).bias(false)));
    pos_bias_u = register_parameter("pos_bias_u", torch::empty({options.heads, d_k_}));
    pos_bias_v = register_parameter("pos_bias_v", torch::empty({options.heads, d_k_}));
    torch::NoGradGuard no_grad;
    torch::nn::init::xavier_uniform_(pos_bias_u);
    torch::nn::init::xavier_uniform_(pos_bias_v);
  }
  dropout_ = register_module("dropout", torch::nn::Dropout(options.dropout));
}

torch::Tensor MultiHeadedAttentionImpl::split_heads(const torch::Tensor& x) const {
  return x.view({x.size(0), x.size(1), options_.heads, d_k_}).transpose(1, 2);
}

bool MultiHeadedAttentionImpl::fused_core_applies(const torch::Tensor& q, const torch::Tensor& k,
                                                  const torch::Tensor& v, const torch::Tensor& p,
                                                  const torch::Tensor& mask) const {
  if (torch::GradMode::is_enabled() || (is_training() && options_.dropout > 0.0)) return false;
  auto fits = [](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.dim() == 4 && t.stride(3) == 1;
  };
  if (!fits(q) || !fits(k) || !fits(v) || k.size(0) != q.size(0) || v.size(0) != q.size(0)) return false;
  if (options_.rel_pos) {
    if (!fits(p) || (p.size(0) != 1 && p.size(0) != q.size(0))) return false;
    if (pos_bias_u.scalar_type() != torch::kFloat || pos_bias_v.scalar_type() != torch::kFloat) return false;
  }
  // Masks as the callers make them: [B or 1, T1 or 1, T2].
  return !mask.defined() || mask.numel() == 0 ||
         (mask.dim() == 3 && (mask.size(0) == 1 || mask.size(0) == q.size(0)) &&
          (mask.size(1) == 1 || mask.size(1) == q.size(1)) && mask.size(2) == k.size(2));
}

torch::Tensor MultiHeadedAttentionImpl::fused_core(const torch::Tensor& q, const torch::Tensor& k,
                                                  const torch::Tensor& v, const torch::Tensor& p,
                                                  const torch::Tensor& mask, double scale) const {
  MOEKIT_FAST_PATH("attention.fused_core");
  const int64_t batch = q.size(0), t1 = q.size(1), t2 = k.size(2);
  // q is [B, T1, H, d_k]; k, v, p are [B, H, T2, d_k].
  detail::AttentionProblem a;
  a.batch = batch;
  a.heads = options_.heads;
  a.queries = t1;
  a.keys = t2;
  a.d_k = d_k_;
  a.q = {q.data_ptr<float>(), q.stride(0), q.stride(2), q.stride(1)};
  a.k = {k.data_ptr<float>(), k.stride(0), k.stride(1), k.stride(2)};
  a.v = {v.data_ptr<float>(), v.stride(0), v.stride(1), v.stride(2)};
  torch::Tensor bias_u, bias_v, allowed;
  if (p.defined()) {
    a.p = {p.data_ptr<float>(), p.size(0) == 1 ? 0 : p.stride(0), p.stride(1), p.stride(2)};
    bias_u = pos_bias_u.contiguous();
    bias_v = pos_bias_v.contiguous();
    a.bias_u = bias_u.data_ptr<float>();
    a.bias_v = bias_v.data_ptr<float>();
  }
  allowed = set_mask(a, mask);
  a.scale = static_cast<float>(scale);
  torch::Tensor x = torch::empty({batch, t1, options_.d_model}, q.options());
  a.out = x.data_ptr<float>();
  a.out_sb = x.stride(0);
  a.out_si = x.stride(1);
  at::parallel_for(0, batch * options_.heads, 1,
                   [&](int64_t begin, int64_t end) { detail::attention_forward(a, begin, end); });
  return x;
}

bool MultiHeadedAttentionImpl::self_attention_cpu_applies(const torch::Tensor& query, const torch::Tensor& key,
                                                          const torch::Tensor& value, const torch::Tensor& mask,
                                                          const torch::Tensor& pos_emb) const {
  if (torch::GradMode::is_enabled() || (is_training() && options_.dropout > 0.0) || !weight_panels_enabled()) {
    return false;
  }
  if (!key.is_same(query) || !value.is_same(query) || query.dim() != 3 || !query.device().is_cpu() ||
      query.scalar_type() != torch::kFloat || query.size(2) != options_.d_model ||
      query.size(0) * query.size(1) > kSmallRows || query.numel() == 0) {
    return false;
  }
  if (!cpu_float_inference({&linear_q->weight, &linear_q->bias, &linear_k->weight, &linear_k->bias, &linear_v->weight,
                            &linear_v->bias, &linear_out->weight, &linear_out->bias})) {
    return false;
  }
  if (options_.rel_pos && !cpu_float_inference({&linear_pos->weight, &pos_bias_u, &pos_bias_v})) return false;
  if (options_.rel_pos &&
      (!pos_emb.defined() || pos_emb.dim() != 3 || pos_emb.size(0) != 1 || pos_emb.size(2) != options_.d_model ||
       pos_emb.scalar_type() != torch::kFloat || !pos_emb.device().is_cpu())) {
    return false;
  }
  const int64_t batch = query.size(0), t = query.size(1);
  // Masks as the callers make them: [B or 1, T or 1, keys].
  return !mask.defined() || mask.numel() == 0 ||
         (mask.dim() == 3 && (mask.size(0) == 1 || mask.size(0) == batch) && (mask.size(1) == 1 || mask.size(1) == t));
}

void MultiHeadedAttentionImpl::project_qkv_cpu(const float* x, int64_t rows, float* qkv) {
  const int64_t d = options_.d_model;
  const torch::Tensor panels[3] = {linear_q->panels(), linear_k->panels(), linear_v->panels()};
  const torch::Tensor* biases[3] = {&linear_q->bias, &linear_k->bias, &linear_v->bias};
  const int64_t panels_each = (d + detail::kPanelWidth - 1) / detail::kPanelWidth;
  at::parallel_for(0, 3 * panels_each, 2, [&](int64_t begin, int64_t end) {
    for (int64_t which = 0; which < 3; ++which) {
      const int64_t lo = std::max(begin, which * panels_each) - which * panels_each;
      const int64_t hi = std::min(end, (which + 1) * panels_each) - which * panels_each;
      if (lo >= hi) continue;
      detail::panel_linear(x, rows, d, d, panels[which].data_ptr<float>(),
                           biases[which]->defined() ? biases[which]->data_ptr<float>() : nullptr,
                           lo * detail::kPanelWidth, std::min(hi * detail::kPanelWidth, d), qkv + which * d, 3 * d);
    }
  });
}

detail::AttentionProblem MultiHeadedAttentionImpl::self_attention_problem(float* qkv, int64_t batch, int64_t t,
                                                                          const torch::Tensor& mask,
                                                                          const torch::Tensor& pos_emb, KvCache* cache,
                                                                          float* out, std::vector<torch::Tensor>& held) {
  const int64_t d = options_.d_model, heads = options_.heads;
  const auto options = torch::TensorOptions().dtype(torch::kFloat);
  detail::AttentionProblem a;
  a.batch = batch;
  a.heads = heads;
  a.queries = t;
  a.d_k = d_k_;
  a.q = {qkv, t * 3 * d, d_k_, 3 * d};
  const int64_t cached = cache ? cache->size() : 0;
  if (cache) {
    cache->k.append_rows(qkv + d, batch, t, heads, d_k_, t * 3 * d, 3 * d, options);
    cache->v.append_rows(qkv + 2 * d, batch, t, heads, d_k_, t * 3 * d, 3 * d, options);
    const torch::Tensor k = cache->k.view(), v = cache->v.view();  // views, held while the kernel reads them
    held.push_back(k);
    held.push_back(v);
    a.keys = k.size(2);
    a.k = {k.data_ptr<float>(), k.stride(0), k.stride(1), k.stride(2)};
    a.v = {v.data_ptr<float>(), v.stride(0), v.stride(1), v.stride(2)};
  } else {
    a.keys = t;
    a.k = {qkv + d, t * 3 * d, d_k_, 3 * d};
    a.v = {qkv + 2 * d, t * 3 * d, d_k_, 3 * d};
  }
  if (options_.rel_pos) {
    MOEKIT_CHECK_ARG(pos_emb.size(1) == a.keys, "rel-pos attention: pos_emb covers ", pos_emb.size(1),
                     " positions, keys ", a.keys);
    // With a cache, only the new keys' positions are projected (the cached
    // keys' are kept); see KvCache.
    const bool reuse = cache && cached > 0 && cache->p.size() == cached;
    if (cache && !reuse) cache->p.clear();
    const int64_t first = reuse ? cached : 0, count = a.keys - first;
    const torch::Tensor positions = pos_emb.slice(1, first).contiguous();
    const torch::Tensor projected = torch::empty({count, d}, options);  // [new positions, D]
    const int64_t panels_each = (d + detail::kPanelWidth - 1) / detail::kPanelWidth;
    const float* pos_panels = linear_pos->panels().data_ptr<float>();
    at::parallel_for(0, panels_each, 2, [&](int64_t begin, int64_t end) {
      detail::panel_linear(positions.data_ptr<float>(), count, d, d, pos_panels, nullptr, begin * detail::kPanelWidth,
                           std::min(end * detail::kPanelWidth, d), projected.data_ptr<float>(), d);
    });
    if (cache) {
      cache->p.append_rows(projected.data_ptr<float>(), 1, count, heads, d_k_, 0, d, options);
      const torch::Tensor p = cache->p.view();
      held.push_back(p);
      a.p = {p.data_ptr<float>(), 0, p.stride(1), p.stride(2)};
    } else {
      held.push_back(projected);
      a.p = {projected.data_ptr<float>(), 0, d_k_, d};
    }
    a.bias_u = pos_bias_u.data_ptr<float>();
    a.bias_v = pos_bias_v.data_ptr<float>();
  }
  MOEKIT_CHECK_ARG(!mask.defined() || mask.numel() == 0 || mask.size(2) == a.keys, "attention: mask covers ",
                   mask.defined() ? mask.size(2) : 0, " keys, not ", a.keys);
  held.push_back(set_mask(a, mask));
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d_k_)));
  a.out = out;
  a.out_sb = t * d;
  a.out_si = d;
  return a;
}

torch::Tensor MultiHeadedAttentionImpl::self_attention_cpu(const torch::Tensor& x, const torch::Tensor& mask,
                                                           const torch::Tensor& pos_emb, KvCache* cache) {
  MOEKIT_FAST_PATH("attention.self_attention_cpu");
  const int64_t batch = x.size(0), t = x.size(1), d = options_.d_model;
  const torch::Tensor xs = x.contiguous();
  // qkv [B, T, 3D]: q, k, v side by side in each row.
  torch::Tensor qkv = torch::empty({batch, t, 3 * d}, xs.options());
  project_qkv_cpu(xs.data_ptr<float>(), batch * t, qkv.data_ptr<float>());
  torch::Tensor core = torch::empty({batch, t, d}, xs.options());
  std::vector<torch::Tensor> held;
  const detail::AttentionProblem a =
      self_attention_problem(qkv.data_ptr<float>(), batch, t, mask, pos_emb, cache, core.data_ptr<float>(), held);
  at::parallel_for(0, batch * options_.heads, 1,
                   [&](int64_t begin, int64_t end) { detail::attention_forward(a, begin, end); });
  return linear_out(core);
}

torch::Tensor MultiHeadedAttentionImpl::self_attention_streams(const torch::Tensor& x,
                                                               const std::vector<int64_t>& lengths,
                                                               const std::vector<torch::Tensor>& pos_embs,
                                                               const std::vector<KvCache*>& caches) {
  MOEKIT_CHECK_ARG(x.dim() == 3 && x.size(0) == 1 && lengths.size() == pos_embs.size() &&
                       lengths.size() == caches.size(),
                   "attention streams: x must be [1, rows, D] with a length, positions and cache per stream");
  bool fused = true;
  int64_t rows = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const torch::Tensor xi = x.narrow(1, rows, lengths[i]);
    fused = fused && caches[i] != nullptr && self_attention_cpu_applies(xi, xi, xi, {}, pos_embs[i]);
    rows += lengths[i];
  }
  MOEKIT_CHECK_ARG(rows == x.size(1), "attention streams: lengths sum to ", rows, ", x has ", x.size(1), " rows");
  if (!fused) {
    std::vector<torch::Tensor> parts;
    int64_t start = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      const torch::Tensor xi = x.narrow(1, start, lengths[i]);
      parts.push_back(forward(xi, xi, xi, {}, pos_embs[i], caches[i]));
      start += lengths[i];
    }
    return torch::cat(parts, 1);
  }
  // Every stream's rows through the q, k, v and output projections at once
  // (each weight read once for all streams); the attention itself per stream
  // over its own cache. Row by row the same arithmetic as self_attention_cpu.
  MOEKIT_FAST_PATH("attention.self_attention_streams");
  const int64_t d = options_.d_model, heads = options_.heads;
  const torch::Tensor xs = x.contiguous();
  torch::Tensor qkv = torch::empty({rows, 3 * d}, xs.options());
  project_qkv_cpu(xs.data_ptr<float>(), rows, qkv.data_ptr<float>());
  torch::Tensor core = torch::empty({1, rows, d}, xs.options());
  std::vector<torch::Tensor> held;
  std::vector<detail::AttentionProblem> problems;
  int64_t start = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    problems.push_back(self_attention_problem(qkv.data_ptr<float>() + start * 3 * d, 1, lengths[i], {}, pos_embs[i],
                                              caches[i], core.data_ptr<float>() + start * d, held));
    start += lengths[i];
  }
  const auto n = static_cast<int64_t>(problems.size());
  at::parallel_for(0, n * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin / heads; s * heads < end; ++s) {
      const int64_t lo = std::max(begin, s * heads) - s * heads, hi = std::min(end, (s + 1) * heads) - s * heads;
      detail::attention_forward(problems[static_cast<size_t>(s)], lo, hi);
    }
  });
  return linear_out(core);
}

torch::Tensor MultiHeadedAttentionImpl::forward(const torch::Tensor& query, const torch::Tensor& key,
                                                const torch::Tensor& value, const torch::Tensor& mask,
                                                const torch::Tensor& pos_emb, KvCache* cache) {
  if (self_attention_cpu_applies(query, key, value, mask, pos_emb)) {
    return self_attention_cpu(query, mask, pos_emb, cache);
  }
  const int64_t batch = query.size(0), t1 = query.size(1);
  torch::Tensor q = linear_q(query).view({batch, t1, options_.heads, d_k_});
  torch::Tensor k = split_heads(linear_k(key));  // [B, H, T2, d_k]
  torch::Tensor v = split_heads(linear_v(value));
  const int64_t cached = cache ? cache->size() : 0;
  if (cache) {
    cache->k.append(k);
    cache->v.append(v);
    k = cache->k.view();
    v = cache->v.view();
  }
  torch::Tensor p;  // rel_pos: the keys' projected positions [1 or B, H, T2, d_k]
  if (options_.rel_pos) {
    MOEKIT_CHECK_ARG(pos_emb.defined() && pos_emb.size(1) == k.size(2), "rel-pos attention: pos_emb covers ",
                     pos_emb.defined() ? pos_emb.size(1) : 0, " positions, keys ", k.size(2));
    auto project = [&](const torch::Tensor& positions) {
      return linear_pos(positions)
          .view({positions.size(0), -1, options_.heads, d_k_})
          .transpose(1, 2);
    };
    if (cache && pos_emb.size(0) == 1) {
      // Project only the new keys' positions; the cached keys' are kept.
      const bool reuse = cached > 0 && cache->p.size() == cached;
      if (!reuse) cache->p.clear();
      cache->p.append(project(reuse ? pos_emb.slice(1, cached) : pos_emb));
      p = cache->p.view();
    } else {
      p = project(pos_emb);
    }
  }
  return attention_core(q, k, v, p, mask);
}

ProjectedMemory MultiHeadedAttentionImpl::project_memory(const torch::Tensor& memory) {
  MOEKIT_CHECK_ARG(memory.dim() == 3 && memory.size(2) == options_.d_model, "attention: memory must be [B, T, ",
                   options_.d_model, "], got ", memory.sizes());
  return {split_heads(linear_k(memory)), split_heads(linear_v(memory))};
}

torch::Tensor MultiHeadedAttentionImpl::attend(const torch::Tensor& query, const ProjectedMemory& memory,
                                               const torch::Tensor& mask) {
  MOEKIT_CHECK_ARG(!options_.rel_pos, "attention: attend() is for plain attention, not rel_pos");
  const torch::Tensor q = linear_q(query).view({query.size(0), query.size(1), options_.heads, d_k_});
  return attention_core(q, memory.k, memory.v, {}, mask);
}

torch::Tensor MultiHeadedAttentionImpl::attention_core(const torch::Tensor& q, const torch::Tensor& k,
                                                       const torch::Tensor& v, const torch::Tensor& p,
                                                       const torch::Tensor& mask) {
  const int64_t batch = q.size(0), t1 = q.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d_k_));
  if (fused_core_applies(q, k, v, p, mask)) {
    const torch::Tensor x = fused_core(q, k, v, p, mask, scale);  // [B, T1, D]
    return linear_out(x);
  }
  torch::Tensor scores;
  if (options_.rel_pos) {
    torch::Tensor q_u = (q + pos_bias_u).transpose(1, 2);
    torch::Tensor q_v = (q + pos_bias_v).transpose(1, 2);
    scores = (torch::matmul(q_u, k.transpose(-2, -1)) + torch::matmul(q_v, p.transpose(-2, -1))) * scale;
  } else {
    scores = torch::matmul(q.transpose(1, 2), k.transpose(-2, -1)) * scale;
  }
  torch::Tensor attn;
  if (mask.defined() && mask.numel() > 0) {
    const torch::Tensor blocked = mask.unsqueeze(1).logical_not();  // [B, 1, T1|1, T2]
    attn = torch::softmax(scores.masked_fill(blocked, -std::numeric_limits<float>::infinity()), -1)
               .masked_fill(blocked, 0.0);
  } else {
    attn = torch::softmax(scores, -1);
  }
  torch::Tensor x = torch::matmul(dropout_->forward(attn), v);  // [B, H, T1, d_k]
  x = x.transpose(1, 2).contiguous().view({batch, t1, options_.d_model});
  return linear_out(x);
}

torch::Tensor sinusoid_positions(int64_t offset, int64_t length, int64_t d_model, const torch::Device& device) {
  MOEKIT_CHECK_ARG(offset >= 0 && length >= 0, "positions: offset ", offset, ", length ", length);
  // One table per device and width, grown on demand (WeNet stops at 5000 positions).
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int64_t>, torch::Tensor> tables;  // (device type, index, width)
  std::lock_guard<std::mutex> lock(mutex);
  torch::Tensor& table = tables[{static_cast<int>(device.type()), device.index(), d_model}];
  if (!table.defined() || table.size(0) < offset + length) {
    const int64_t rows = std::max<int64_t>(5000, 2 * (offset + length));
    torch::NoGradGuard no_grad;
    torch::Tensor pe = torch::zeros({rows, d_model});
    torch::Tensor position = torch::arange(0, rows, torch::kFloat).unsqueeze(1);
    torch::Tensor div_term =
        torch::exp(torch::arange(0, d_model, 2, torch::kFloat) * -(std::log(10000.0) / d_model));
    pe.index_put_({torch::indexing::Slice(), torch::indexing::Slice(0, torch::indexing::None, 2)},
                  torch::sin(position * div_term));
    pe.index_put_({torch::indexing::Slice(), torch::indexing::Slice(1, torch::indexing::None, 2)},
                  torch::cos(position * div_term));
    table = pe.to(device);
  }
  return table.slice(0, offset, offset + length).unsqueeze(0);
}

}  // namespace moekit
