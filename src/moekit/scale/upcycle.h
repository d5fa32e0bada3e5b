#pragma once
// Scale-Out (sparse upcycling): a dense LM becomes an MoE LM whose experts
// are copies of each chosen layer's FFN and whose routers are new, drawn
// from N(0, router_std). With top-k softmax weights summing to 1 the MoE
// model computes the dense function exactly at step 0.
//
// Granular upcycling (Megatron-LM's --moe-upcycling-granularity): the FFN
// hidden width is cut into G slices; expert r*G + s holds slice s of replica
// r, all G slices of a replica share one router row (so top-k, k a multiple
// of G, picks whole replicas) and the down projections are scaled by G, which
// keeps the dense function exactly too.
#include <cstdint>
#include <map>

#include "moekit/scale/grow.h"

namespace moekit {

struct UpcycleOptions {
  int64_t num_experts = 8;      // E (a multiple of granularity)
  int64_t top_k = 2;            // experts per token (a multiple of granularity)
  int64_t granularity = 1;      // G: slices of the FFN per replica (1 = whole-FFN experts)
  int64_t first_layer = 0;      // MoE in layers first_layer, first_layer + every, ...
  int64_t every = 1;
  double router_std = 0.02;     // router init N(0, router_std)
  double aux_loss_coef = 0.001; // AquilaMoE's load-balancing coefficient
  double z_loss_coef = 0.01;    // AquilaMoE's router z-loss coefficient
  uint64_t seed = 0;            // router init
};

// Throws std::invalid_argument when the model is already MoE or an option does not fit it.
LmWeights upcycle_lm(const LmWeights& dense, const UpcycleOptions& options);

// The pieces upcycle_lm is made of, for writers that go tensor by tensor
// (scale/hf_scale.h):
// the MoE model's config (`dense` with the options' MoE section), every
// option checked against the dense model;
LmConfig upcycled_config(const LmConfig& dense, const UpcycleOptions& options);
// expert e's copy of a dense FFN matrix, [F, D] (w1, w3) or [D, F] (w2,
// `down`): slice e mod G of the hidden width, the down projection times G;
torch::Tensor upcycled_expert(const torch::Tensor& dense, bool down, int64_t expert, int64_t granularity);
// the router of every MoE layer of `moe` (layer -> [E, D] float32), drawn
// from N(0, router_std) with options.seed in layer order, one row per
// replica repeated over its G slices.
std::map<int64_t, torch::Tensor> upcycled_routers(const LmConfig& moe, const UpcycleOptions& options);

}  // namespace moekit
