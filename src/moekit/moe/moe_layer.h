#pragma once
// One MoE feed-forward layer for every model family.
//
//   y = moe(x [B, T, D], RouteInput{mask [B, T], task [B]})  ->  [B, T, D]
//
// Padding (mask == false) is never routed, never counted, and gets 0 output.
// Parameters (checkpoint names):
//   gate.weight      [E, D]   router, bias-free
//   task_embedding   [num_tasks, D]   task routing only: the router's input per task
//   experts.w1 [E, H, D], experts.b1 [E, H], experts.w3 [E, H, D] (SwiGLU),
//   experts.w2 [E, D, H], experts.b2 [E, D]
#include <torch/torch.h>

#include <mutex>
#include <optional>
#include <vector>

#include "moekit/dist/process_group.h"
#include "moekit/moe/options.h"
#include "moekit/ops/grouped_ffn.h"
#include "moekit/ops/packed_linear.h"
#include "moekit/ops/packed_weights.h"

namespace moekit {

struct RouteInput {
  // {mask}, {mask, task}, {mask, task, sentence}: every part may be left out.
  RouteInput(torch::Tensor mask = {}, torch::Tensor task = {}, torch::Tensor sentence = {})
      : mask(std::move(mask)), task(std::move(task)), sentence(std::move(sentence)) {}

  torch::Tensor mask;  // [B, T] bool (or integer, nonzero = real token); undefined = no padding
  torch::Tensor task;  // [B] int64 task ids in [0, num_tasks); required for task routing
  // Sentence routing: the vector each sequence is gated on, [B, D]
  // (undefined: the masked mean of its token states). A decoder that
  // generates token by token passes its source's, which does not change
  // while it generates.
  torch::Tensor sentence;
};

// What the last forward did (copied out, so callers can keep it).
struct RouterStats {
  std::vector<int64_t> tokens_per_expert;  // [E] rows each expert processed (after capacity)
  int64_t routed_tokens = 0;               // non-padding tokens routed
  int64_t capacity = 0;                    // per-expert capacity, 0 = dropless
  int64_t dropped_assignments = 0;         // (token, expert) pairs over capacity
  int64_t dropped_tokens = 0;              // tokens that lost all k experts (MoE output 0)
  // Unweighted losses, detached; defined in training mode or when their
  // coefficient is nonzero.
  torch::Tensor load_balancing_loss;       // Switch loss, 1.0 = uniform routing
  torch::Tensor z_loss;                    // router z-loss
};

// While one lives on a thread, Experts built on that thread skip their
// random init: for a model whose every weight is about to be loaded
// (load_model, which refuses a file that misses any). Drawing 200M uniform
// numbers took ~2 s of loading a 12-block, 8-expert ASR model.
class SkipExpertInit {
 public:
  SkipExpertInit();
  ~SkipExpertInit();
  SkipExpertInit(const SkipExpertInit&) = delete;
  SkipExpertInit& operator=(const SkipExpertInit&) = delete;
  static bool active();

 private:
  bool previous_;
};

// Stacked expert weights of one MoE layer.
class ExpertsImpl : public torch::nn::Module {
 public:
  ExpertsImpl(int64_t num_experts, int64_t d_model, int64_t d_hidden, bool gated, bool bias);
  void reset_parameters();  // torch.nn.Linear's default init, per expert
  ExpertWeights weights() const {
    return {w1, b1, w3, w2, b2, {}, {}, {}, w1_scale, w3_scale, w2_scale, bf16_gemm_};
  }
  // The weights for a forward of rows x routed as tokens_per_expert: with
  // packed panels attached (packed on first use, kept until the weights
  // change) when no gradient is being recorded, panels are enabled and some
  // expert runs the small-rows kernel. A forward that records gradients
  // frees the panels (training would make them stale).
  ExpertWeights weights_for(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                            GroupedFfnKernel kernel);

  torch::Tensor w1, b1, w3, w2, b2;  // see the file comment; b1/b2/w3 undefined when absent

  // int8 experts (`moekit quantize --experts int8`): w1, w3 and w2 hold int8
  // weights and these buffers their per-output-channel scales
  // (experts.w1_scale [E, H], experts.w3_scale [E, H], experts.w2_scale
  // [E, D]); undefined for float experts. Biases stay float.
  torch::Tensor w1_scale, w3_scale, w2_scale;
  bool int8() const { return w1_scale.defined(); }
  // Turns float experts into int8 ones: quantize_int8 (ops/int8_weights.h)
  // of each weight; with quantize = false only the int8 storage is made,
  // for a model whose int8 weights are loaded next. Inference only: a
  // forward that records gradients through int8 experts is refused.
  void to_int8(bool quantize = true);
  // Stores float experts' w1, w3 and w2 in `dtype` (float32 or bfloat16;
  // biases stay as they are), for inference: bf16 experts run the panel
  // kernel on bf16 panels under float32 rows. int8 experts are left as they are.
  void set_weight_dtype(torch::ScalarType dtype);
  // bf16 experts for serving (`moekit quantize --experts bf16`): the weights
  // stored as bfloat16 (set_weight_dtype), and experts with many rows run as
  // bf16 row GEMMs on CPUs with native bf16 (ExpertWeights::bf16_gemm).
  void to_bf16();
  bool bf16_gemm() const { return bf16_gemm_; }
  // Keeps experts [first, first + count) only (expert parallelism: the other
  // members of the group hold the rest).
  void keep_experts(int64_t first, int64_t count);
  int64_t num_local_experts() const { return w1.size(0); }

 private:
  PanelCache w1_panels_, w3_panels_, w2_panels_;
  Int8PanelCache w1_int8_panels_, w3_int8_panels_, w2_int8_panels_;
  bool bf16_gemm_ = false;
};
TORCH_MODULE(Experts);

// How a forward finds each expert's tokens.
enum class MoEDispatch {
  // On a GPU: Padded in capacity mode, and dropless where at::_grouped_mm
  // can take the group ends on the device (grouped_mm_offsets_applies);
  // Sorted everywhere else.
  Auto,
  // Rows sorted by expert, each expert's count on the host (make_dispatch_plan):
  // no padding and no wasted rows; off the CPU, reading the counts waits
  // for the device once per layer (and once more with a padding mask).
  Sorted,
  // GShard's layout: every expert gets C rows of an [E, C, D] buffer (the
  // capacity; dropless: C = the token count, which no expert can exceed),
  // tokens scattered in and gathered back by index, the experts as batched
  // GEMMs. Every step stays on the device: no host sync in the forward or
  // the backward, at the cost of computing the empty rows. Dropless where
  // at::_grouped_mm applies, the rows are sorted by expert instead, with
  // the group ends computed on the device (no empty rows). The same
  // routing, drops, output and gradients as Sorted. With row budgets
  // (MoELayerImpl::set_row_budgets) dropless training forwards give each
  // expert its own block instead (see there).
  Padded,
};

// What a budgeted dropless forward leaves for its caller to check (see
// MoELayerImpl::set_row_budgets): each expert's load, on the device,
// against the rows it was given.
struct RowBudgetRecord {
  torch::Tensor load;         // [E] int64 on the forward's device: the assignments each expert was sent
  std::vector<int64_t> rows;  // [E] rows each expert had; load > rows somewhere: assignments were dropped
  int64_t positions = 0;      // N, the positions routed (padding included)
};

class MoELayerImpl : public torch::nn::Module {
 public:
  explicit MoELayerImpl(const MoEOptions& options);

  // x: [B, T, D] (or [N, D], treated as B = N sequences of one token).
  torch::Tensor forward(const torch::Tensor& x, const RouteInput& route = {});

  // Router logits [B*T, E] fp32 for every position (padding included); for
  // inspection and extraction, not used by forward.
  torch::Tensor router_logits(const torch::Tensor& x, const RouteInput& route = {});

  const MoEOptions& options() const { return options_; }
  // Router statistics of the latest forward (a copy: safe while other
  // threads run forwards on the same layer).
  RouterStats last_stats() const;
  // Weighted aux_loss_coef * load-balancing + z_loss_coef * z-loss of the last
  // forward, differentiable; undefined when both coefficients are 0.
  torch::Tensor aux_loss() const;
  // Runtime (not stored) choice of grouped-FFN kernel; Auto by default.
  void set_kernel(GroupedFfnKernel kernel) { kernel_ = kernel; }
  // Runtime (not stored) choice of dispatch; Auto by default. Padded is
  // refused for int8 experts and with expert parallelism (both need the
  // host's counts).
  void set_dispatch(MoEDispatch dispatch);
  // Row budgets for dropless training forwards on the Padded dispatch:
  // expert e gets its own block of ceil(factors[e] * k * N / E) rows
  // (rounded up to a multiple of 8, at most N), factors[e] times the mean
  // load, instead of N rows each; the blocks run as one grouped FFN whose
  // sizes the host knows. Whether each expert's tokens fit is known only on
  // the device: each such forward appends a RowBudgetRecord, and a forward
  // in which an expert's load exceeds its rows dropped assignments and must
  // not be used (the trainer reads the records with the loss, one wait for
  // the device per batch, and reruns such a batch with budgets raised).
  // With budgets set, Auto picks Padded on a GPU for dropless training
  // forwards that would otherwise read the counts on the host. Empty (the
  // default): no budgets (every expert N rows, never exceeded).
  void set_row_budgets(std::vector<double> factors);
  // The same factor for every expert.
  void set_row_budget(double factor) { set_row_budgets(std::vector<double>(options_.num_experts, factor)); }
  const std::vector<double>& row_budgets() const { return row_budgets_; }
  // The records of the budgeted forwards since the last take, oldest first;
  // taking them clears them.
  std::vector<RowBudgetRecord> take_row_budget_records();

  // Expert parallelism: the layer keeps experts [r * E/P, (r + 1) * E/P) of
  // its E, r being this process's rank in `group` and P its size, and
  // exchanges routed rows with the group's members, which hold the others:
  // per-expert counts first, then the rows (all-to-all, differentiable, the
  // backward being the reverse exchange); the results come back the same
  // way. Routing, capacity and the router's losses stay per process, so
  // each member's output equals what one process holding every expert
  // computes on that member's tokens. Call on every member, on identical
  // full weights; P must divide E. Every member must run every forward of
  // the layer (an exchange waits for all of them).
  void shard_experts(std::shared_ptr<const dist::Group> group);
  const std::shared_ptr<const dist::Group>& expert_group() const { return ep_group_; }
  // The global index of this process's first expert (0 without sharding).
  int64_t first_local_expert() const { return first_local_expert_; }

  PackedLinear gate{nullptr};
  torch::Tensor task_embedding;  // [num_tasks, D], task routing only
  Experts experts{nullptr};

 private:
  // fp32 router logits for each routed token: [N, E].
  torch::Tensor routed_logits(const torch::Tensor& x, const torch::Tensor& tokens,
                              const torch::Tensor& mask, const torch::Tensor& token_batch,
                              const RouteInput& route);
  void check_route(const torch::Tensor& x, const RouteInput& route) const;
  // Inference on the CPU (eval mode, float32, token routing, no padding
  // mask, dropless; router losses are training signals and not computed): gating, dispatch and combine in plain loops, about 15
  // fewer ATen ops per layer, which at a streaming chunk's 16 rows cost more
  // than the gating's arithmetic. Same result as the general path.
  bool cpu_inference_applies(const torch::Tensor& x, const RouteInput& route) const;
  torch::Tensor cpu_inference_forward(const torch::Tensor& input, const torch::Tensor& x);

  // The router losses a forward records in `stats`, over the `valid` tokens
  // of `logits` (undefined: all); returns their weighted sum (undefined
  // when both coefficients are 0).
  torch::Tensor router_losses(const torch::Tensor& logits, const torch::Tensor& expert_index,
                              const torch::Tensor& valid, RouterStats& stats) const;
  // The Padded dispatch (see MoEDispatch), for any routing, mask and capacity.
  bool padded_dispatch_applies(const torch::Tensor& x) const;
  // Dropless rows run as at::_grouped_mm with group ends on the device
  // (CUDA bfloat16 or bfloat16 autocast), unless set_kernel chose another kernel.
  bool offsets_gemm_applies(const torch::Tensor& tokens) const;
  torch::Tensor padded_forward(const torch::Tensor& input, const torch::Tensor& x, const RouteInput& route);

  // Statistics still on the device, copied out when last_stats() is called
  // (the Padded dispatch): [E] kept rows per expert, then scalars.
  struct DeviceStats {
    torch::Tensor tokens_per_expert, routed_tokens, capacity, dropped_assignments, dropped_tokens;
  };
  void publish(RouterStats stats, torch::Tensor aux, DeviceStats device = {});
  // The experts on rows grouped by expert (tokens_per_expert over all E):
  // locally, or across the expert-parallel group.
  torch::Tensor run_experts(const torch::Tensor& rows, const std::vector<int64_t>& tokens_per_expert);
  torch::Tensor run_experts_parallel(const torch::Tensor& rows, const std::vector<int64_t>& tokens_per_expert);

  MoEOptions options_;
  GroupedFfnKernel kernel_ = GroupedFfnKernel::Auto;
  MoEDispatch dispatch_ = MoEDispatch::Auto;
  std::vector<double> row_budgets_;  // per expert, empty: none
  std::vector<RowBudgetRecord> row_budget_records_;  // guarded by stats_mutex_
  mutable std::mutex stats_mutex_;
  RouterStats stats_;
  DeviceStats device_stats_;
  torch::Tensor aux_loss_;
  std::shared_ptr<const dist::Group> ep_group_;
  int64_t first_local_expert_ = 0;
};
TORCH_MODULE(MoELayer);

// Every MoE layer of a module tree, the root included, in module order.
// The functions below walk a tree through it.
std::vector<MoELayerImpl*> moe_layers(torch::nn::Module& root);
std::vector<const MoELayerImpl*> moe_layers(const torch::nn::Module& root);

// Every MoE layer's experts in a module tree to int8 (ExpertsImpl::to_int8);
// returns how many layers were converted.
int64_t experts_to_int8(torch::nn::Module& root, bool quantize = true);
// The same for bf16 experts (ExpertsImpl::to_bf16).
int64_t experts_to_bf16(torch::nn::Module& root);
// MoELayerImpl::shard_experts on every MoE layer of a module tree; returns
// how many layers were sharded.
int64_t shard_experts(torch::nn::Module& root, const std::shared_ptr<const dist::Group>& group);
// The parameters of sharded experts in a module tree (each member holds its
// own): their gradients are averaged only over the members that hold the
// same experts.
std::vector<torch::Tensor> sharded_expert_parameters(const torch::nn::Module& root);
// Whether any MoE layer in the tree has int8 experts.
bool has_int8_experts(const torch::nn::Module& root);

// Sum of aux_loss() over every MoE layer in a module tree (undefined if none
// has one): add it to the training loss.
torch::Tensor collect_moe_aux_loss(const torch::nn::Module& root);

}  // namespace moekit
