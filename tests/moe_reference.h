#pragma once
// A naive per-token MoE, written independently of src/moekit/moe: one token
// at a time, experts chosen by sorting a std::vector, every expert applied as
// plain matrix-vector products. Differentiable through LibTorch autograd, so
// gradients can be compared too.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "moekit/moe/moe_layer.h"

namespace moekit::testing {

inline torch::Tensor reference_activation(Activation activation, const torch::Tensor& h1, const torch::Tensor& h3) {
  switch (activation) {
    case Activation::Relu: return h1.clamp_min(0.0);
    case Activation::Gelu: return 0.5 * h1 * (1.0 + torch::erf(h1 / std::sqrt(2.0)));
    case Activation::Swish: return h1 * torch::sigmoid(h1);
    case Activation::SwiGLU: return h1 * torch::sigmoid(h1) * h3;
  }
  return {};
}

inline torch::Tensor reference_expert(const MoELayerImpl& moe, int64_t e, const torch::Tensor& v) {
  const auto& ex = *moe.experts;
  torch::Tensor h1 = torch::mv(ex.w1[e], v);
  if (ex.b1.defined()) h1 = h1 + ex.b1[e];
  const torch::Tensor h3 = ex.w3.defined() ? torch::mv(ex.w3[e], v) : torch::Tensor();
  torch::Tensor y = torch::mv(ex.w2[e], reference_activation(moe.options().activation, h1, h3));
  if (ex.b2.defined()) y = y + ex.b2[e];
  return y;
}

struct ReferenceChoice {
  std::vector<int64_t> experts;       // k experts in priority order
  std::vector<torch::Tensor> weights; // k scalar gate weights
  std::vector<bool> kept;             // false where capacity dropped the assignment
};

// Naive MoE forward. x [B, T, D]; mask/task as in RouteInput.
inline torch::Tensor reference_moe_forward(const MoELayerImpl& moe, const torch::Tensor& x, const RouteInput& route,
                                           int64_t* dropped_assignments = nullptr) {
  const MoEOptions& o = moe.options();
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2), E = o.num_experts, k = o.top_k;
  auto valid = [&](int64_t b, int64_t t) { return !route.mask.defined() || route.mask[b][t].item<bool>(); };
  const torch::Tensor gate_w = moe.gate->weight.to(torch::kFloat64);

  std::vector<ReferenceChoice> choices;        // one per routed token, in (b, t) order
  std::vector<std::pair<int64_t, int64_t>> where;
  for (int64_t b = 0; b < B; ++b) {
    torch::Tensor sentence_mean;
    if (o.routing == Routing::Sentence) {
      torch::Tensor sum = torch::zeros({D}, x.options().dtype(torch::kFloat64));
      int64_t count = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (valid(b, t)) { sum = sum + x[b][t].to(torch::kFloat64); ++count; }
      }
      sentence_mean = sum / static_cast<double>(std::max<int64_t>(count, 1));
    }
    for (int64_t t = 0; t < T; ++t) {
      if (!valid(b, t)) continue;
      torch::Tensor u;
      if (o.routing == Routing::Token) u = x[b][t].to(torch::kFloat64);
      if (o.routing == Routing::Sentence) u = sentence_mean;
      if (o.routing == Routing::Task) u = moe.task_embedding[route.task[b].item<int64_t>()].to(torch::kFloat64);
      const torch::Tensor logits = torch::mv(gate_w, u);  // [E]
      const torch::Tensor scores = o.gating == Gating::SoftmaxTopK ? torch::softmax(logits, 0) : logits;
      std::vector<double> values(E);
      for (int64_t e = 0; e < E; ++e) values[e] = scores[e].item<double>();
      std::vector<int64_t> order(E);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return values[a] > values[c]; });
      ReferenceChoice choice;
      choice.experts.assign(order.begin(), order.begin() + k);
      std::vector<torch::Tensor> picked;
      for (int64_t e : choice.experts) picked.push_back(scores[e]);
      torch::Tensor w = torch::stack(picked);  // [k]
      if (o.gating == Gating::TopKSoftmax) {
        w = torch::exp(w - w.max()) / torch::exp(w - w.max()).sum();
      } else if (o.renormalize) {
        w = w / w.sum();
      }
      for (int64_t j = 0; j < k; ++j) choice.weights.push_back(w[j]);
      choice.kept.assign(k, true);
      choices.push_back(choice);
      where.emplace_back(b, t);
    }
  }
  // GShard capacity: first choices of all tokens before second choices.
  int64_t dropped = 0;
  if (o.capacity_factor > 0.0) {
    const int64_t N = static_cast<int64_t>(choices.size());
    const int64_t capacity =
        std::max<int64_t>(1, static_cast<int64_t>(std::ceil(o.capacity_factor * N * k / E - 1e-9)));
    std::vector<int64_t> load(E, 0);
    for (int64_t j = 0; j < k; ++j) {
      for (auto& c : choices) {
        if (load[c.experts[j]] < capacity) {
          ++load[c.experts[j]];
        } else {
          c.kept[j] = false;
          ++dropped;
        }
      }
    }
  }
  if (dropped_assignments != nullptr) *dropped_assignments = dropped;

  std::vector<torch::Tensor> out(B * T);
  for (auto& t : out) t = torch::zeros({D}, x.options());
  for (size_t i = 0; i < choices.size(); ++i) {
    const auto [b, t] = where[i];
    torch::Tensor y = torch::zeros({D}, x.options());
    for (int64_t j = 0; j < k; ++j) {
      if (!choices[i].kept[j]) continue;
      y = y + choices[i].weights[j].to(x.scalar_type()) * reference_expert(moe, choices[i].experts[j], x[b][t]);
    }
    out[b * T + t] = y;
  }
  return torch::stack(out).reshape({B, T, D});
}

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

}  // namespace moekit::testing
