#include "moekit/scale/upcycle.h"

#include <ATen/CPUGeneratorImpl.h>

#include "moekit/core/check.h"

namespace moekit {

LmWeights upcycle_lm(const LmWeights& dense, const UpcycleOptions& o) {
  const LmConfig& old = dense.config;
  MOEKIT_CHECK_ARG(!old.moe.enabled(), "upcycle: the model is already an MoE model (moe.num_experts=",
                   old.moe.num_experts, "); upcycle a dense model");
  const int64_t G = o.granularity;
  MOEKIT_CHECK_ARG(G >= 1 && old.d_ffn % G == 0, "upcycle: granularity ", G, " must divide d_ffn ", old.d_ffn);
  MOEKIT_CHECK_ARG(o.num_experts >= 1 && o.num_experts % G == 0, "upcycle: num_experts ", o.num_experts,
                   " must be a positive multiple of granularity ", G);
  MOEKIT_CHECK_ARG(o.top_k >= 1 && o.top_k <= o.num_experts && o.top_k % G == 0, "upcycle: top_k ", o.top_k,
                   " must be in [1, num_experts] and a multiple of granularity ", G);
  MOEKIT_CHECK_ARG(o.router_std > 0, "upcycle: router_std must be positive");
  LmWeights out;
  out.config = old;
  out.config.moe.num_experts = o.num_experts;
  out.config.moe.top_k = o.top_k;
  out.config.moe.d_hidden = old.d_ffn / G;
  out.config.moe.first_layer = o.first_layer;
  out.config.moe.every = o.every;
  out.config.moe.aux_loss_coef = o.aux_loss_coef;
  out.config.moe.z_loss_coef = o.z_loss_coef;
  try {
    out.config.validate();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("upcycle: ") + e.what());
  }
  at::Generator generator = at::detail::createCPUGenerator(o.seed);
  const int64_t replicas = o.num_experts / G, slice = old.d_ffn / G;
  for (const auto& [name, t] : dense.weights) out.weights[name] = t;
  for (int64_t l = 0; l < old.n_layers; ++l) {
    if (!out.config.is_moe_layer(l)) continue;
    const std::string prefix = "layers." + std::to_string(l) + ".mlp.";
    auto take = [&](const std::string& name) {
      auto it = out.weights.find(prefix + name);
      MOEKIT_CHECK_ARG(it != out.weights.end(), "upcycle: the model has no tensor '", prefix + name, "'");
      torch::Tensor t = it->second;
      out.weights.erase(it);
      return t;
    };
    const torch::Tensor w1 = take("w1.weight"), w3 = take("w3.weight"), w2 = take("w2.weight");  // [F, D], [F, D], [D, F]
    std::vector<torch::Tensor> e1, e3, e2;
    for (int64_t r = 0; r < replicas; ++r) {
      for (int64_t s = 0; s < G; ++s) {
        e1.push_back(w1.narrow(0, s * slice, slice));
        e3.push_back(w3.narrow(0, s * slice, slice));
        e2.push_back(w2.narrow(1, s * slice, slice) * static_cast<double>(G));
      }
    }
    out.weights[prefix + "experts.w1"] = torch::stack(e1);  // [E, F/G, D]
    out.weights[prefix + "experts.w3"] = torch::stack(e3);  // [E, F/G, D]
    out.weights[prefix + "experts.w2"] = torch::stack(e2);  // [E, D, F/G]
    const torch::Tensor rows =
        torch::randn({replicas, old.d_model}, generator, torch::TensorOptions().dtype(torch::kFloat)) * o.router_std;
    out.weights[prefix + "gate.weight"] = rows.repeat_interleave(G, 0).to(w1.scalar_type());  // [E, D]
  }
  return out;
}

}  // namespace moekit
