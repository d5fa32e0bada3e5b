#include "moekit/moe/moe_layer.h"

#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "moekit/core/check.h"
#include "moekit/dist/all_to_all.h"
#include "moekit/moe/dispatch.h"
#include "moekit/moe/router.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/linear.h"

namespace moekit {
namespace {

// Inference combine on the CPU in one pass, without the [M, D] weighted copy,
// the zero fill and index_add of the autograd form: out[t] = sum over token
// t's kept slots j of w[t, j] * y[row_of_slot[t, j]]; a slot without a row
// (-1: dropped over capacity) adds nothing. w: [N, k] fp32.
template <typename T>
torch::Tensor combine_rows_cpu(const torch::Tensor& expert_out, const std::vector<int64_t>& row_of_slot,
                               const float* w, int64_t num_tokens, int64_t k) {
  const int64_t d = expert_out.size(1);
  const torch::Tensor y = expert_out.contiguous();
  const T* yp = y.data_ptr<T>();
  torch::Tensor out = torch::empty({num_tokens, d}, expert_out.options());
  T* op = out.data_ptr<T>();
  at::parallel_for(0, num_tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      T* o = op + t * d;
      bool first = true;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t r = row_of_slot[static_cast<size_t>(t * k + j)];
        if (r < 0) continue;
        const T g = static_cast<T>(w[t * k + j]);
        const T* src = yp + r * d;
        if (first) {
          for (int64_t i = 0; i < d; ++i) o[i] = g * src[i];
          first = false;
        } else {
          for (int64_t i = 0; i < d; ++i) o[i] += g * src[i];
        }
      }
      if (first) std::fill(o, o + d, T(0));
    }
  });
  return out;
}

// The same from a dispatch plan's slot_of_row and the gate weights [N, k].
template <typename T>
torch::Tensor combine_rows_cpu(const torch::Tensor& expert_out, const torch::Tensor& slot_of_row,
                               const torch::Tensor& gate_weight, int64_t num_tokens) {
  const int64_t rows = expert_out.size(0), k = gate_weight.size(1);
  std::vector<int64_t> row_of_slot(static_cast<size_t>(num_tokens * k), -1);
  const int64_t* slot = slot_of_row.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) row_of_slot[static_cast<size_t>(slot[r])] = r;
  const torch::Tensor w = gate_weight.to(torch::kFloat).contiguous();
  return combine_rows_cpu<T>(expert_out, row_of_slot, w.data_ptr<float>(), num_tokens, k);
}

}  // namespace

ExpertsImpl::ExpertsImpl(int64_t num_experts, int64_t d_model, int64_t d_hidden, bool gated, bool bias) {
  w1 = register_parameter("w1", torch::empty({num_experts, d_hidden, d_model}));
  if (bias) b1 = register_parameter("b1", torch::empty({num_experts, d_hidden}));
  if (gated) w3 = register_parameter("w3", torch::empty({num_experts, d_hidden, d_model}));
  w2 = register_parameter("w2", torch::empty({num_experts, d_model, d_hidden}));
  if (bias) b2 = register_parameter("b2", torch::empty({num_experts, d_model}));
  if (!SkipExpertInit::active()) reset_parameters();
}

namespace {
thread_local bool skip_expert_init = false;
}  // namespace

SkipExpertInit::SkipExpertInit() : previous_(skip_expert_init) { skip_expert_init = true; }
SkipExpertInit::~SkipExpertInit() { skip_expert_init = previous_; }
bool SkipExpertInit::active() { return skip_expert_init; }

void ExpertsImpl::reset_parameters() {
  MOEKIT_CHECK_ARG(!int8(), "int8 experts cannot be re-initialized");
  torch::NoGradGuard no_grad;
  // torch.nn.Linear: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  const double bound_in = 1.0 / std::sqrt(static_cast<double>(w1.size(2)));
  const double bound_hidden = 1.0 / std::sqrt(static_cast<double>(w2.size(2)));
  w1.uniform_(-bound_in, bound_in);
  if (w3.defined()) w3.uniform_(-bound_in, bound_in);
  if (b1.defined()) b1.uniform_(-bound_in, bound_in);
  w2.uniform_(-bound_hidden, bound_hidden);
  if (b2.defined()) b2.uniform_(-bound_hidden, bound_hidden);
}

void ExpertsImpl::to_int8(bool quantize) {
  MOEKIT_CHECK_ARG(!int8(), "the experts are int8 already");
  torch::NoGradGuard no_grad;
  auto convert = [&](torch::Tensor& w, torch::Tensor& scale, const char* name) {
    if (!w.defined()) return;
    Int8Weight q;
    if (quantize) {
      q = quantize_int8(w);
    } else {
      q.q = torch::empty(w.sizes(), w.options().dtype(torch::kChar));
      q.scale = torch::empty(w.sizes().slice(0, w.dim() - 1), w.options().dtype(torch::kFloat));
    }
    w.requires_grad_(false);
    w.set_data(q.q.to(w.device()));
    scale = register_buffer(std::string(name) + "_scale", q.scale.to(w.device()));
  };
  convert(w1, w1_scale, "w1");
  convert(w3, w3_scale, "w3");
  convert(w2, w2_scale, "w2");
  w1_panels_.clear();
  w3_panels_.clear();
  w2_panels_.clear();
}

void ExpertsImpl::set_weight_dtype(torch::ScalarType dtype) {
  MOEKIT_CHECK_ARG(dtype == torch::kFloat || dtype == torch::kBFloat16,
                   "experts: weights are stored in float32 or bfloat16, not ", dtype);
  if (int8()) return;
  torch::NoGradGuard no_grad;
  for (torch::Tensor* t : {&w1, &w3, &w2})
    if (t->defined() && t->scalar_type() != dtype) t->set_data(t->to(dtype));
  w1_panels_.clear();
  w3_panels_.clear();
  w2_panels_.clear();
}

void ExpertsImpl::to_bf16() {
  MOEKIT_CHECK_ARG(!int8(), "the experts are int8: they cannot be stored as bf16 too");
  set_weight_dtype(torch::kBFloat16);
  bf16_gemm_ = true;
}

void ExpertsImpl::keep_experts(int64_t first, int64_t count) {
  MOEKIT_CHECK_ARG(!int8(), "int8 experts cannot be sharded (inference only)");
  MOEKIT_CHECK_ARG(first >= 0 && count > 0 && first + count <= w1.size(0), "experts [", first, ", ", first + count,
                   ") of ", w1.size(0));
  torch::NoGradGuard no_grad;
  for (torch::Tensor* t : {&w1, &b1, &w3, &w2, &b2})
    if (t->defined()) t->set_data(t->narrow(0, first, count).clone());
  w1_panels_.clear();
  w3_panels_.clear();
  w2_panels_.clear();
}

ExpertWeights ExpertsImpl::weights_for(const torch::Tensor& x, const std::vector<int64_t>& tokens_per_expert,
                                       GroupedFfnKernel kernel) {
  ExpertWeights w = weights();
  if (int8()) {
    // The int8 kernel reads only panels: packed on first use, always (the
    // panels take the int8 weights' own size again).
    if (torch::GradMode::is_enabled() || !w1.device().is_cpu() || !x.device().is_cpu() ||
        x.scalar_type() != torch::kFloat) {
      return w;
    }
    w.w1_panels = w1_int8_panels_.get(w1, w1_scale);
    if (w3.defined()) w.w3_panels = w3_int8_panels_.get(w3, w3_scale);
    w.w2_panels = w2_int8_panels_.get(w2, w2_scale);
    return w;
  }
  if (torch::GradMode::is_enabled()) {
    w1_panels_.clear();
    w3_panels_.clear();
    w2_panels_.clear();
    return w;
  }
  if (!weight_panels_enabled() || !packs_into_panels(w1) || !w1.is_contiguous() || !w2.is_contiguous() ||
      (w3.defined() && !w3.is_contiguous())) {
    return w;
  }
  const std::vector<bool> small = grouped_ffn_small_rows_experts(x, tokens_per_expert, kernel, /*with_panels=*/true);
  bool any = false;
  for (size_t e = 0; e < small.size(); ++e) any = any || (small[e] && tokens_per_expert[e] > 0);
  if (!any) return w;
  w.w1_panels = w1_panels_.get(w1);
  if (w3.defined()) w.w3_panels = w3_panels_.get(w3);
  w.w2_panels = w2_panels_.get(w2);
  return w;
}

MoELayerImpl::MoELayerImpl(const MoEOptions& options) : options_(options) {
  options_.validate();
  gate = register_module(
      "gate", PackedLinear(torch::nn::LinearOptions(options_.d_model, options_.num_experts).bias(false)));
  if (options_.routing == Routing::Task) {
    task_embedding = register_parameter("task_embedding",
                                        torch::randn({options_.num_tasks, options_.d_model}));
  }
  experts = register_module("experts", Experts(options_.num_experts, options_.d_model, options_.d_hidden,
                                               is_gated(options_.activation), options_.expert_bias));
}

void MoELayerImpl::check_route(const torch::Tensor& x, const RouteInput& route) const {
  MOEKIT_CHECK_ARG(x.dim() == 3 && x.size(2) == options_.d_model, "MoE input must be [B, T, d_model=",
                   options_.d_model, "], got ", x.sizes());
  if (route.mask.defined()) {
    MOEKIT_CHECK_ARG(route.mask.dim() == 2 && route.mask.size(0) == x.size(0) && route.mask.size(1) == x.size(1),
                     "MoE mask must be [B=", x.size(0), ", T=", x.size(1), "], got ", route.mask.sizes());
    MOEKIT_CHECK_ARG(!route.mask.is_floating_point(), "MoE mask must be bool or integer, got ",
                     route.mask.scalar_type());
  }
  if (route.sentence.defined()) {
    MOEKIT_CHECK_ARG(route.sentence.dim() == 2 && route.sentence.size(0) == x.size(0) &&
                         route.sentence.size(1) == options_.d_model,
                     "MoE sentence vectors must be [B=", x.size(0), ", d_model=", options_.d_model, "], got ",
                     route.sentence.sizes());
  }
  if (options_.routing == Routing::Task) {
    MOEKIT_CHECK_ARG(route.task.defined(), "MoE layer routes by task but no task ids were given");
    MOEKIT_CHECK_ARG(route.task.dim() == 1 && route.task.size(0) == x.size(0) &&
                         route.task.scalar_type() == torch::kInt64,
                     "MoE task ids must be int64 [B=", x.size(0), "], got ", route.task.scalar_type(), " ",
                     route.task.sizes());
    // Off the CPU the range check would wait for the device; task ids are
    // made (and checked) on the host, where batches are built.
    if (route.task.numel() > 0 && route.task.device().is_cpu()) {
      const int64_t lo = route.task.min().item<int64_t>(), hi = route.task.max().item<int64_t>();
      MOEKIT_CHECK_ARG(lo >= 0 && hi < options_.num_tasks, "MoE task id ", lo < 0 ? lo : hi,
                       " is outside [0, num_tasks=", options_.num_tasks, ")");
    }
  }
}

torch::Tensor MoELayerImpl::routed_logits(const torch::Tensor& x, const torch::Tensor& tokens,
                                          const torch::Tensor& mask, const torch::Tensor& token_batch,
                                          const RouteInput& route) {
  // Router math in fp32, also under CUDA bfloat16 autocast (whose cast
  // policy would run these linears in bfloat16): the top-k choice and the
  // balancing and z losses are taken on fp32 logits.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const torch::Tensor gate_weight = gate->weight.to(torch::kFloat32);  // [E, D]
  switch (options_.routing) {
    case Routing::Token:
      return torch::nn::functional::linear(tokens.to(torch::kFloat32), gate_weight);  // [N, E]
    case Routing::Sentence: {
      if (route.sentence.defined()) {
        return torch::nn::functional::linear(route.sentence.to(torch::kFloat32), gate_weight)
            .index_select(0, token_batch);
      }
      const torch::Tensor xf = x.to(torch::kFloat32);  // [B, T, D]
      torch::Tensor mean;                               // [B, D]
      if (mask.defined()) {
        const torch::Tensor m = mask.to(torch::kFloat32).unsqueeze(-1);  // [B, T, 1]
        mean = (xf * m).sum(1) / m.sum(1).clamp_min(1.0);
      } else {
        mean = xf.mean(1);
      }
      return torch::nn::functional::linear(mean, gate_weight).index_select(0, token_batch);  // [N, E]
    }
    case Routing::Task: {
      const torch::Tensor task_input = task_embedding.to(torch::kFloat32).index_select(0, route.task);  // [B, D]
      return torch::nn::functional::linear(task_input, gate_weight).index_select(0, token_batch);    // [N, E]
    }
  }
  throw std::logic_error("unhandled routing");
}

torch::Tensor MoELayerImpl::router_logits(const torch::Tensor& input, const RouteInput& route) {
  const torch::Tensor x = input.dim() == 2 ? input.unsqueeze(1) : input;  // [B, T, D]
  check_route(x, route);
  const int64_t batch = x.size(0), time = x.size(1);
  const torch::Tensor mask = route.mask.defined() ? route.mask.to(torch::kBool) : torch::Tensor();
  const torch::Tensor token_batch =
      torch::arange(batch * time, torch::TensorOptions().dtype(torch::kInt64).device(x.device())).div(time, "floor");
  return routed_logits(x, x.reshape({batch * time, options_.d_model}), mask, token_batch, route);
}

bool MoELayerImpl::cpu_inference_applies(const torch::Tensor& x, const RouteInput& route) const {
  return !ep_group_ && !torch::GradMode::is_enabled() && !is_training() && x.device().is_cpu() &&
         x.scalar_type() == torch::kFloat && gate->weight.scalar_type() == torch::kFloat &&
         options_.routing == Routing::Token && options_.capacity_factor_for(false) <= 0.0 && !route.mask.defined();
}

torch::Tensor MoELayerImpl::cpu_inference_forward(const torch::Tensor& input, const torch::Tensor& x) {
  MOEKIT_FAST_PATH("moe.cpu_inference");
  const int64_t num_tokens = x.size(0) * x.size(1), d_model = options_.d_model;
  const int64_t num_experts = options_.num_experts, k = options_.top_k;
  RouterStats stats;
  stats.routed_tokens = num_tokens;
  if (num_tokens == 0) {
    stats.tokens_per_expert.assign(num_experts, 0);
    publish(std::move(stats), {});
    return torch::zeros_like(input);
  }
  const torch::Tensor tokens =
      x.is_contiguous() ? x.view({num_tokens, d_model}) : x.reshape({num_tokens, d_model}).contiguous();
  torch::Tensor logits = gate(tokens);  // [N, E]
  if (!logits.is_contiguous()) logits = logits.contiguous();
  const float* lp = logits.data_ptr<float>();
  std::vector<int64_t> expert(static_cast<size_t>(num_tokens * k));
  std::vector<float> weight(static_cast<size_t>(num_tokens * k)), value;
  std::vector<char> taken;
  for (int64_t t = 0; t < num_tokens; ++t) {
    gate_row(lp + t * num_experts, num_experts, k, options_.gating, options_.renormalize, expert.data() + t * k,
             weight.data() + t * k, value, taken);
  }
  // make_dispatch_plan's row order, without its tensors.
  DispatchRows d = dispatch_rows_cpu(expert.data(), num_tokens, k, num_experts, /*capacity=*/0);
  torch::Tensor rows = torch::empty({num_tokens * k, d_model}, tokens.options());
  const float* src = tokens.data_ptr<float>();
  float* dst = rows.data_ptr<float>();
  for (int64_t slot = 0; slot < num_tokens * k; ++slot) {
    std::memcpy(dst + d.row_of_slot[slot] * d_model, src + slot / k * d_model,
                static_cast<size_t>(d_model) * sizeof(float));
  }
  const std::vector<int64_t>& tokens_per_expert = d.tokens_per_expert;
  stats.tokens_per_expert = tokens_per_expert;
  publish(std::move(stats), {});
  const torch::Tensor expert_out = grouped_ffn(rows, tokens_per_expert,
                                               experts->weights_for(rows, tokens_per_expert, kernel_),
                                               {options_.activation, kernel_});  // [N * k, D]
  return combine_rows_cpu<float>(expert_out, d.row_of_slot, weight.data(), num_tokens, k).reshape(input.sizes());
}

torch::Tensor MoELayerImpl::forward(const torch::Tensor& input, const RouteInput& route_in) {
  RouteInput route = route_in;
  if (input.dim() == 2 && route.mask.defined() && route.mask.dim() == 1) route.mask = route.mask.unsqueeze(1);
  const torch::Tensor x = input.dim() == 2 ? input.unsqueeze(1) : input;  // [B, T, D]
  check_route(x, route);
  // A forward that records gradients may precede an optimizer step, which
  // can write the gate through an alias PanelCache does not see (as
  // weights_for does for the experts).
  if (torch::GradMode::is_enabled()) gate->release_panels();
  if (padded_dispatch_applies(x)) return padded_forward(input, x, route);
  if (cpu_inference_applies(x, route)) return cpu_inference_forward(input, x);
  const int64_t batch = x.size(0), time = x.size(1), d_model = options_.d_model;
  const auto index_options = torch::TensorOptions().dtype(torch::kInt64).device(x.device());
  const torch::Tensor x_flat = x.reshape({batch * time, d_model});  // [B*T, D]

  torch::Tensor mask, valid_index, tokens;  // tokens: [N, D] routed (non-padding) tokens
  if (route.mask.defined()) {
    mask = route.mask.to(torch::kBool);
    valid_index = mask.reshape(-1).nonzero().squeeze(1);  // [N]
    tokens = x_flat.index_select(0, valid_index);
  } else {
    tokens = x_flat;
  }
  const int64_t num_tokens = tokens.size(0);
  // Statistics are built locally and published at the end under a lock, so
  // concurrent forwards (streaming sessions sharing one model) do not race.
  RouterStats stats;
  torch::Tensor aux;
  stats.routed_tokens = num_tokens;
  if (num_tokens == 0) {
    stats.tokens_per_expert.assign(options_.num_experts, 0);
    publish(std::move(stats), aux);
    torch::Tensor out = torch::zeros_like(input);
    if (ep_group_) {
      // The other members of an expert-parallel group still exchange rows
      // with this one, and in the backward pass too: the (empty) result
      // joins the output's graph.
      const torch::Tensor none = run_experts(tokens.narrow(0, 0, 0), std::vector<int64_t>(options_.num_experts, 0));
      if (none.requires_grad()) out = out + none.sum() * 0.0;
    }
    return out;
  }

  torch::Tensor token_batch;  // [N] sequence of each routed token (sentence/task routing)
  if (options_.routing != Routing::Token) {
    token_batch = (valid_index.defined() ? valid_index : torch::arange(batch * time, index_options)).div(time, "floor");
  }
  const torch::Tensor logits = routed_logits(x, tokens, mask, token_batch, route);  // [N, E] fp32
  const GateDecision decision = gate_top_k(logits, options_.top_k, options_.gating, options_.renormalize);

  // Router losses.
  aux = router_losses(logits, decision.expert_index, torch::Tensor(), stats);

  // Dispatch, run the experts, combine.
  const DispatchPlan plan = make_dispatch_plan(decision.expert_index, options_.num_experts,
                                                options_.capacity_factor_for(is_training()));
  stats.tokens_per_expert = plan.tokens_per_expert;
  stats.capacity = plan.capacity;
  stats.dropped_assignments = plan.dropped_assignments;
  stats.dropped_tokens = plan.dropped_tokens;

  publish(std::move(stats), aux);

  const torch::Tensor rows = tokens.index_select(0, plan.token_of_row);  // [M, D], grouped by expert
  const torch::Tensor expert_out = run_experts(rows, plan.tokens_per_expert);  // [M, D]
  torch::Tensor combined;  // [N, D]
  const bool fused = expert_out.device().is_cpu() && !expert_out.requires_grad() &&
                     !decision.expert_weight.requires_grad() &&
                     (expert_out.scalar_type() == torch::kFloat || expert_out.scalar_type() == torch::kDouble);
  if (fused && expert_out.scalar_type() == torch::kFloat) {
    combined = combine_rows_cpu<float>(expert_out, plan.slot_of_row, decision.expert_weight, num_tokens);
  } else if (fused) {
    combined = combine_rows_cpu<double>(expert_out, plan.slot_of_row, decision.expert_weight, num_tokens);
  } else {
    const torch::Tensor row_weight =
        decision.expert_weight.reshape(-1).index_select(0, plan.slot_of_row).to(expert_out.scalar_type());  // [M]
    combined = torch::zeros({num_tokens, d_model}, expert_out.options())
                   .index_add(0, plan.token_of_row, expert_out * row_weight.unsqueeze(1));
  }
  if (!valid_index.defined()) return combined.reshape(input.sizes());
  return torch::zeros({batch * time, d_model}, combined.options())
      .index_copy(0, valid_index, combined)
      .reshape(input.sizes());
}

torch::Tensor MoELayerImpl::router_losses(const torch::Tensor& logits, const torch::Tensor& expert_index,
                                          const torch::Tensor& valid, RouterStats& stats) const {
  torch::Tensor aux;
  if (options_.aux_loss_coef > 0.0 || is_training()) {
    const torch::Tensor balance = load_balancing_loss(logits, expert_index, valid);
    stats.load_balancing_loss = balance.detach();
    if (options_.aux_loss_coef > 0.0) aux = balance * options_.aux_loss_coef;
  }
  if (options_.z_loss_coef > 0.0 || is_training()) {
    const torch::Tensor z = router_z_loss(logits, valid);
    stats.z_loss = z.detach();
    if (options_.z_loss_coef > 0.0) aux = aux.defined() ? aux + z * options_.z_loss_coef : z * options_.z_loss_coef;
  }
  return aux;
}

void MoELayerImpl::set_dispatch(MoEDispatch dispatch) {
  MOEKIT_CHECK_ARG(dispatch != MoEDispatch::Padded || (!ep_group_ && !experts->int8()),
                   "MoE layer: the padded dispatch needs float experts held by this process (not ",
                   ep_group_ ? "expert-parallel ones)" : "int8 ones)");
  dispatch_ = dispatch;
}

void MoELayerImpl::set_row_budgets(std::vector<double> factors) {
  MOEKIT_CHECK_ARG(factors.empty() || static_cast<int64_t>(factors.size()) == options_.num_experts,
                   "MoE layer: row budgets are one per expert (", options_.num_experts, "), got ", factors.size());
  for (double f : factors) {
    MOEKIT_CHECK_ARG(std::isfinite(f) && f >= 0.0,
                     "MoE layer: a row budget must be a finite multiple of the mean load >= 0, got ", f);
  }
  row_budgets_ = std::move(factors);
}

std::vector<RowBudgetRecord> MoELayerImpl::take_row_budget_records() {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  return std::exchange(row_budget_records_, {});
}

bool MoELayerImpl::padded_dispatch_applies(const torch::Tensor& x) const {
  if (ep_group_ || experts->int8()) return false;
  switch (dispatch_) {
    case MoEDispatch::Sorted:
      return false;
    case MoEDispatch::Padded:
      return true;
    case MoEDispatch::Auto:
      if (x.device().is_cpu()) return false;
      return options_.capacity_factor_for(is_training()) > 0.0 || (!row_budgets_.empty() && is_training()) ||
             offsets_gemm_applies(x.reshape({-1, options_.d_model}));
  }
  return false;
}

bool MoELayerImpl::offsets_gemm_applies(const torch::Tensor& tokens) const {
  // A kernel set by set_kernel other than GroupedMm is honoured: the
  // sorted dispatch runs it.
  return (kernel_ == GroupedFfnKernel::Auto || kernel_ == GroupedFfnKernel::GroupedMm) &&
         grouped_mm_offsets_applies(tokens, experts->weights());
}

torch::Tensor MoELayerImpl::padded_forward(const torch::Tensor& input, const torch::Tensor& x,
                                           const RouteInput& route) {
  MOEKIT_FAST_PATH("moe.padded_dispatch");
  const int64_t batch = x.size(0), time = x.size(1), d_model = options_.d_model;
  const int64_t num_experts = options_.num_experts, k = options_.top_k, n = batch * time;
  const auto index_options = torch::TensorOptions().dtype(torch::kInt64).device(x.device());
  const torch::Tensor tokens = x.reshape({n, d_model});  // [N, D], padding included
  torch::Tensor mask, valid;                              // valid: [N] bool, undefined = all
  if (route.mask.defined()) {
    mask = route.mask.to(torch::kBool);
    valid = mask.reshape(-1);
  }
  torch::Tensor token_batch;
  if (options_.routing != Routing::Token) token_batch = torch::arange(n, index_options).div(time, "floor");
  const torch::Tensor logits = routed_logits(x, tokens, mask, token_batch, route);  // [N, E] fp32
  const GateDecision decision = gate_top_k(logits, k, options_.gating, options_.renormalize);

  RouterStats stats;
  const torch::Tensor aux = router_losses(logits, decision.expert_index, valid, stats);

  // Capacity: the buffer is sized for all N positions (known on the host);
  // with padding the limit itself comes from the routed count, on the
  // device, exactly as make_dispatch_plan computes it. Dropless: N rows per
  // expert, more than any expert can be given (a token picks an expert
  // once); training under row budgets, blocks of their sizes instead.
  const double capacity_factor = options_.capacity_factor_for(is_training());
  const int64_t rows = capacity_factor > 0.0 ? expert_capacity(n, k, num_experts, capacity_factor) : n;
  torch::Tensor limit;  // [] int64 on the device when padding changes the capacity
  if (capacity_factor > 0.0 && valid.defined()) {
    const torch::Tensor routed = valid.sum().to(torch::kDouble);
    limit = (routed * (capacity_factor * static_cast<double>(k) / static_cast<double>(num_experts)) - 1e-9)
                .ceil()
                .clamp_min(1.0)
                .to(torch::kInt64);
  }

  // Assignment s = j * N + t is token t's j-th choice: first choices before
  // second ones, each in token order (the priority make_dispatch_plan uses).
  // Padding goes to a virtual expert E, which is never run.
  torch::Tensor expert = decision.expert_index;  // [N, k]
  if (valid.defined()) expert = expert.masked_fill(valid.logical_not().unsqueeze(1), num_experts);
  const torch::Tensor by_priority = expert.t().reshape(-1);  // [k*N]
  const detail::ExpertRanks ranked = detail::rank_within_expert(by_priority, num_experts + 1);
  const torch::Tensor& order = ranked.order;
  const torch::Tensor& wanted = ranked.counts;  // [E + 1]
  const torch::Tensor rank = torch::empty_like(by_priority).scatter_(0, order, ranked.rank);  // [k*N], priority order
  const ExpertWeights w = experts->weights();
  const bool offsets_gemm = capacity_factor <= 0.0 && offsets_gemm_applies(tokens);
  // Row budgets (dropless training): expert e's rows are block e of the
  // buffer, its size known on the host; an assignment past its block is
  // dropped (the caller checks the record and runs the batch again).
  const bool budgeted = capacity_factor <= 0.0 && !offsets_gemm && !row_budgets_.empty() && is_training();
  std::vector<int64_t> block;
  torch::Tensor block_start;  // [E + 1] first row of each block; the virtual expert E: past the last
  int64_t total = 0;          // rows in all blocks
  torch::Tensor keep;
  if (budgeted) {
    block.resize(num_experts);
    std::vector<int64_t> start(num_experts + 1, 0);
    const double mean = static_cast<double>(k * n) / static_cast<double>(num_experts);
    for (int64_t e = 0; e < num_experts; ++e) {
      const double share = std::min(std::ceil(row_budgets_[e] * mean), static_cast<double>(n));
      block[e] = std::min<int64_t>(n, (static_cast<int64_t>(share) + 7) / 8 * 8);
      start[e + 1] = start[e] + block[e];
    }
    total = start[num_experts];
    std::vector<int64_t> block_limit(block);
    block_limit.push_back(0);  // the padding's virtual expert E keeps nothing
    auto on_device = [&](const std::vector<int64_t>& v) {
      torch::Tensor t = torch::tensor(v, torch::kInt64);
      if (!x.device().is_cpu()) t = t.pin_memory().to(x.device(), /*non_blocking=*/true);  // no wait
      return t;
    };
    block_start = on_device(start);
    keep = rank < on_device(block_limit).index_select(0, by_priority);
  } else {
    keep = (by_priority < num_experts).logical_and_(limit.defined() ? rank < limit : rank < rows);
  }
  const torch::Tensor weight = decision.expert_weight.t().reshape({k * n, 1});  // priority order
  DeviceStats device;
  const torch::Tensor kept = keep.to(torch::kInt64);
  device.tokens_per_expert =
      torch::zeros({num_experts + 1}, index_options).index_add_(0, by_priority, kept).narrow(0, 0, num_experts);
  device.routed_tokens = valid.defined() ? valid.sum() : torch::full({}, n, index_options);
  device.capacity = capacity_factor > 0.0 ? (limit.defined() ? limit : torch::full({}, rows, index_options))
                                          : torch::zeros({}, index_options);
  if (limit.defined()) device.capacity = device.capacity * (device.routed_tokens > 0);  // nothing routed: 0
  device.dropped_assignments = device.routed_tokens * k - kept.sum();
  torch::Tensor lost = kept.view({k, n}).sum(0) == 0;  // [N] tokens with no kept assignment
  if (valid.defined()) lost = lost.logical_and_(valid);
  device.dropped_tokens = lost.sum();

  const torch::Tensor zero_row = torch::zeros({1, d_model}, tokens.options());
  if (budgeted) {
    const torch::Tensor destination =
        (block_start.index_select(0, by_priority) + rank).masked_fill_(keep.logical_not(), total);  // [k*N]
    const torch::Tensor token_of_row =
        torch::full({total + 1}, n, index_options)
            .scatter_(0, destination, torch::arange(k * n, index_options).remainder(n))
            .narrow(0, 0, total);  // [total]: the token each row holds; n = none (a zero row)
    const torch::Tensor buffer = torch::cat({tokens, zero_row}).index_select(0, token_of_row);
    const torch::Tensor expert_out = run_experts(buffer, block);  // [total, D]
    const torch::Tensor gathered =
        torch::cat({expert_out, zero_row.to(expert_out.scalar_type())}).index_select(0, destination);
    const torch::Tensor combined = (gathered * weight.to(gathered.scalar_type())).view({k, n, d_model}).sum(0);
    {
      RowBudgetRecord record{wanted.narrow(0, 0, num_experts), std::move(block), n};
      std::lock_guard<std::mutex> lock(stats_mutex_);
      row_budget_records_.push_back(std::move(record));
    }
    publish(std::move(stats), aux, std::move(device));
    return combined.view(input.sizes());
  }
  if (offsets_gemm) {
    // Dropless where at::_grouped_mm takes its group ends on the device: the
    // rows sorted by expert (padding last, past the final end), no buffer.
    const torch::Tensor offsets = wanted.narrow(0, 0, num_experts).cumsum(0);  // [E] end rows
    const torch::Tensor expert_out =
        grouped_mm_ffn_offsets(tokens.index_select(0, order.remainder(n)), offsets, w, options_.activation);
    const torch::Tensor row_of_assignment =
        torch::empty_like(order).scatter_(0, order, torch::arange(k * n, index_options));  // [k*N]
    const torch::Tensor gathered =
        torch::cat({expert_out, zero_row.to(expert_out.scalar_type())})
            .index_select(0, row_of_assignment.masked_fill(keep.logical_not(), k * n));  // [k*N, D]
    const torch::Tensor combined = (gathered * weight.to(gathered.scalar_type())).view({k, n, d_model}).sum(0);
    publish(std::move(stats), aux, std::move(device));
    return combined.view(input.sizes());
  }

  const int64_t dump = num_experts * rows;  // one row past the buffer: zeros in, ignored out
  const torch::Tensor destination = (by_priority * rows + rank).masked_fill_(keep.logical_not(), dump);  // [k*N]
  const torch::Tensor token_of_row =
      torch::full({dump + 1}, n, index_options)
          .scatter_(0, destination, torch::arange(k * n, index_options).remainder(n))
          .narrow(0, 0, dump);  // [E*C]: the token each buffer row holds; n = none (a zero row)
  const torch::Tensor buffer =
      torch::cat({tokens, zero_row}).index_select(0, token_of_row).view({num_experts, rows, d_model});

  // The experts as batched GEMMs over [E, C, D].
  auto linear = [&](const torch::Tensor& in, const torch::Tensor& weight, const torch::Tensor& bias) {
    const torch::Tensor out = torch::bmm(in, weight.to(in.scalar_type()).transpose(1, 2));  // [E, C, out]
    return bias.defined() ? out + bias.unsqueeze(1).to(out.scalar_type()) : out;
  };
  const torch::Tensor h1 = linear(buffer, w.w1, w.b1);
  const torch::Tensor h3 = w.w3.defined() ? linear(buffer, w.w3, torch::Tensor()) : torch::Tensor();
  const torch::Tensor expert_out = linear(apply_activation(options_.activation, h1, h3), w.w2, w.b2);  // [E, C, D]

  // Back to the tokens: each assignment reads its row (a dropped one or
  // padding reads the zero row past the buffer), weighted and summed over k.
  const torch::Tensor out_rows =
      torch::cat({expert_out.reshape({dump, d_model}), zero_row.to(expert_out.scalar_type())});  // [E*C + 1, D]
  const torch::Tensor gathered = out_rows.index_select(0, destination);                          // [k*N, D]
  const torch::Tensor combined = (gathered * weight.to(gathered.scalar_type())).view({k, n, d_model}).sum(0);
  publish(std::move(stats), aux, std::move(device));
  return combined.view(input.sizes());
}

void MoELayerImpl::publish(RouterStats stats, torch::Tensor aux, DeviceStats device) {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  stats_ = std::move(stats);
  aux_loss_ = std::move(aux);
  device_stats_ = std::move(device);
}

RouterStats MoELayerImpl::last_stats() const {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  RouterStats stats = stats_;
  if (device_stats_.tokens_per_expert.defined()) {  // copied out now, the only wait for the device
    const torch::Tensor counts = device_stats_.tokens_per_expert.to(torch::kCPU).contiguous();
    stats.tokens_per_expert.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
    stats.routed_tokens = device_stats_.routed_tokens.item<int64_t>();
    stats.capacity = device_stats_.capacity.item<int64_t>();
    stats.dropped_assignments = device_stats_.dropped_assignments.item<int64_t>();
    stats.dropped_tokens = device_stats_.dropped_tokens.item<int64_t>();
  }
  return stats;
}

torch::Tensor MoELayerImpl::aux_loss() const {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  return aux_loss_;
}

torch::Tensor MoELayerImpl::run_experts(const torch::Tensor& rows, const std::vector<int64_t>& tokens_per_expert) {
  if (ep_group_) return run_experts_parallel(rows, tokens_per_expert);
  return grouped_ffn(rows, tokens_per_expert, experts->weights_for(rows, tokens_per_expert, kernel_),
                     {options_.activation, kernel_});
}

void MoELayerImpl::shard_experts(std::shared_ptr<const dist::Group> group) {
  MOEKIT_CHECK_ARG(group != nullptr, "shard_experts: no group");
  MOEKIT_CHECK_ARG(!ep_group_, "shard_experts: the experts are sharded already");
  const int64_t members = group->size(), num_experts = options_.num_experts;
  MOEKIT_CHECK_ARG(num_experts % members == 0, "expert parallelism: ep_size ", members, " does not divide the ",
                   num_experts, " experts");
  if (members == 1) return;
  const int64_t local = num_experts / members;
  first_local_expert_ = group->rank() * local;
  experts->keep_experts(first_local_expert_, local);
  ep_group_ = std::move(group);
}

torch::Tensor MoELayerImpl::run_experts_parallel(const torch::Tensor& rows,
                                                 const std::vector<int64_t>& tokens_per_expert) {
  const dist::Group& group = *ep_group_;
  const int members = group.size();
  const int64_t local = experts->num_local_experts();
  // Rows are grouped by expert and a member's experts are consecutive, so
  // member q's rows are one block.
  std::vector<int64_t> send(members, 0);
  for (int q = 0; q < members; ++q)
    for (int64_t e = 0; e < local; ++e) send[q] += tokens_per_expert[q * local + e];
  // counts[q][e]: the rows member q sends to this member's expert e.
  const torch::Tensor my_counts = torch::tensor(tokens_per_expert, torch::kInt64);
  const std::vector<int64_t> per_member(members, local);
  const torch::Tensor counts_t = group.all_to_all(my_counts, per_member, per_member).contiguous();
  const int64_t* counts = counts_t.data_ptr<int64_t>();
  std::vector<int64_t> recv(members, 0), local_tokens(local, 0);
  for (int q = 0; q < members; ++q)
    for (int64_t e = 0; e < local; ++e) {
      recv[q] += counts[q * local + e];
      local_tokens[e] += counts[q * local + e];
    }
  const torch::Tensor received = dist::all_to_all_rows(group, rows.contiguous(), send, recv);  // member-major
  // Member-major -> expert-major (and back for the results).
  int64_t total = 0;
  for (int64_t c : recv) total += c;
  std::vector<int64_t> member_start(members, 0), expert_start(local, 0);
  for (int q = 1; q < members; ++q) member_start[q] = member_start[q - 1] + recv[q - 1];
  for (int64_t e = 1; e < local; ++e) expert_start[e] = expert_start[e - 1] + local_tokens[e - 1];
  std::vector<int64_t> order(static_cast<size_t>(total));  // expert-major row -> member-major row
  {
    std::vector<int64_t> fill(expert_start);
    for (int q = 0; q < members; ++q) {
      int64_t at = member_start[q];
      for (int64_t e = 0; e < local; ++e)
        for (int64_t i = 0; i < counts[q * local + e]; ++i) order[static_cast<size_t>(fill[e]++)] = at++;
    }
  }
  std::vector<int64_t> inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i) inverse[static_cast<size_t>(order[i])] = static_cast<int64_t>(i);
  const auto index_options = torch::TensorOptions().dtype(torch::kInt64);
  const torch::Tensor by_expert =
      received.index_select(0, torch::tensor(order, index_options).to(received.device()));
  const torch::Tensor out = grouped_ffn(by_expert, local_tokens,
                                        experts->weights_for(by_expert, local_tokens, kernel_),
                                        {options_.activation, kernel_});
  const torch::Tensor by_member = out.index_select(0, torch::tensor(inverse, index_options).to(out.device()));
  return dist::all_to_all_rows(group, by_member, recv, send);
}

std::vector<MoELayerImpl*> moe_layers(torch::nn::Module& root) {
  std::vector<MoELayerImpl*> layers;
  if (auto* moe = dynamic_cast<MoELayerImpl*>(&root)) layers.push_back(moe);
  for (const auto& m : root.modules(/*include_self=*/false)) {
    if (auto* moe = dynamic_cast<MoELayerImpl*>(m.get())) layers.push_back(moe);
  }
  return layers;
}

std::vector<const MoELayerImpl*> moe_layers(const torch::nn::Module& root) {
  const std::vector<MoELayerImpl*> layers = moe_layers(const_cast<torch::nn::Module&>(root));
  return {layers.begin(), layers.end()};
}

int64_t shard_experts(torch::nn::Module& root, const std::shared_ptr<const dist::Group>& group) {
  const std::vector<MoELayerImpl*> layers = moe_layers(root);
  for (MoELayerImpl* moe : layers) moe->shard_experts(group);
  return static_cast<int64_t>(layers.size());
}

std::vector<torch::Tensor> sharded_expert_parameters(const torch::nn::Module& root) {
  std::vector<torch::Tensor> params;
  for (const MoELayerImpl* moe : moe_layers(root)) {
    if (!moe->expert_group()) continue;
    for (const auto& p : moe->experts->parameters()) params.push_back(p);
  }
  return params;
}

int64_t experts_to_int8(torch::nn::Module& root, bool quantize) {
  const std::vector<MoELayerImpl*> layers = moe_layers(root);
  for (MoELayerImpl* moe : layers) moe->experts->to_int8(quantize);
  return static_cast<int64_t>(layers.size());
}

int64_t experts_to_bf16(torch::nn::Module& root) {
  const std::vector<MoELayerImpl*> layers = moe_layers(root);
  for (MoELayerImpl* moe : layers) moe->experts->to_bf16();
  return static_cast<int64_t>(layers.size());
}

bool has_int8_experts(const torch::nn::Module& root) {
  for (const MoELayerImpl* moe : moe_layers(root)) {
    if (moe->experts->int8()) return true;
  }
  return false;
}

torch::Tensor collect_moe_aux_loss(const torch::nn::Module& root) {
  torch::Tensor total;
  for (const MoELayerImpl* moe : moe_layers(root)) {
    if (moe->aux_loss().defined()) total = total.defined() ? total + moe->aux_loss() : moe->aux_loss();
  }
  return total;
}

}  // namespace moekit
