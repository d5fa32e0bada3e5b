#include "moekit/scale/upcycle.h"

#include <ATen/CPUGeneratorImpl.h>

#include "moekit/core/check.h"

namespace moekit {

LmConfig upcycled_config(const LmConfig& old, const UpcycleOptions& o) {
  MOEKIT_CHECK_ARG(!old.moe.enabled(), "upcycle: the model is already an MoE model (moe.num_experts=",
                   old.moe.num_experts, "); upcycle a dense model");
  const int64_t G = o.granularity;
  MOEKIT_CHECK_ARG(G >= 1 && old.d_ffn % G == 0, "upcycle: granularity ", G, " must divide d_ffn ", old.d_ffn);
  MOEKIT_CHECK_ARG(o.num_experts >= 1 && o.num_experts % G == 0, "upcycle: num_experts ", o.num_experts,
                   " must be a positive multiple of granularity ", G);
  MOEKIT_CHECK_ARG(o.top_k >= 1 && o.top_k <= o.num_experts && o.top_k % G == 0, "upcycle: top_k ", o.top_k,
                   " must be in [1, num_experts] and a multiple of granularity ", G);
  MOEKIT_CHECK_ARG(o.router_std > 0, "upcycle: router_std must be positive");
  LmConfig c = old;
  c.moe.num_experts = o.num_experts;
  c.moe.top_k = o.top_k;
  c.moe.d_hidden = old.d_ffn / G;
  c.moe.first_layer = o.first_layer;
  c.moe.every = o.every;
  c.moe.aux_loss_coef = o.aux_loss_coef;
  c.moe.z_loss_coef = o.z_loss_coef;
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(std::string("upcycle: ") + e.what());
  }
  return c;
}

torch::Tensor upcycled_expert(const torch::Tensor& dense, bool down, int64_t expert, int64_t granularity) {
  const int64_t dim = down ? 1 : 0, slice = dense.size(dim) / granularity, s = expert % granularity;
  const torch::Tensor part = dense.narrow(dim, s * slice, slice);
  return down && granularity > 1 ? part * static_cast<double>(granularity) : part;
}

std::map<int64_t, torch::Tensor> upcycled_routers(const LmConfig& moe, const UpcycleOptions& o) {
  at::Generator generator = at::detail::createCPUGenerator(o.seed);
  const int64_t replicas = moe.moe.num_experts / o.granularity;
  std::map<int64_t, torch::Tensor> routers;
  for (int64_t l = 0; l < moe.n_layers; ++l) {
    if (!moe.is_moe_layer(l)) continue;
    const torch::Tensor rows =
        torch::randn({replicas, moe.d_model}, generator, torch::TensorOptions().dtype(torch::kFloat)) * o.router_std;
    routers[l] = rows.repeat_interleave(o.granularity, 0);  // [E, D]
  }
  return routers;
}

LmWeights upcycle_lm(const LmWeights& dense, const UpcycleOptions& o) {
  LmWeights out;
  out.config = upcycled_config(dense.config, o);
  const std::map<int64_t, torch::Tensor> routers = upcycled_routers(out.config, o);
  for (const auto& [name, t] : dense.weights) out.weights[name] = t;
  for (const auto& [l, router] : routers) {
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
    for (int64_t e = 0; e < out.config.moe.num_experts; ++e) {
      e1.push_back(upcycled_expert(w1, false, e, o.granularity));
      e3.push_back(upcycled_expert(w3, false, e, o.granularity));
      e2.push_back(upcycled_expert(w2, true, e, o.granularity));
    }
    out.weights[prefix + "experts.w1"] = torch::stack(e1);  // [E, F/G, D]
    out.weights[prefix + "experts.w3"] = torch::stack(e3);  // [E, F/G, D]
    out.weights[prefix + "experts.w2"] = torch::stack(e2);  // [E, D, F/G]
    out.weights[prefix + "gate.weight"] = router.to(w1.scalar_type());  // [E, D]
  }
  return out;
}

}  // namespace moekit
