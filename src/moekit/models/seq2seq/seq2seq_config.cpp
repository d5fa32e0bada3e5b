#include "moekit/models/seq2seq/seq2seq_config.h"

#include <algorithm>

#include "moekit/core/check.h"
#include "moekit/core/fields.h"

namespace moekit {

int64_t Seq2seqConfig::task_id(const std::string& name) const {
  const auto it = std::find(tasks.begin(), tasks.end(), name);
  return it == tasks.end() ? -1 : static_cast<int64_t>(it - tasks.begin());
}

MoEOptions Seq2seqConfig::moe_options(bool decoder) const {
  MoEOptions o;
  o.d_model = d_model;
  o.d_hidden = expert_hidden();
  o.num_experts = moe.num_experts;
  o.top_k = moe.top_k;
  o.activation = activation;
  o.routing = decoder ? moe.decoder_routing : moe.encoder_routing;
  // GShard: softmax over all experts, the top-k gates renormalised to sum to 1.
  o.gating = Gating::SoftmaxTopK;
  o.renormalize = true;
  o.num_tasks = o.routing == Routing::Task ? static_cast<int64_t>(tasks.size()) : 0;
  o.capacity_factor = moe.capacity_factor;
  o.eval_capacity_factor = moe.eval_capacity_factor;
  o.aux_loss_coef = moe.aux_loss_coef;
  o.expert_bias = true;
  return o;
}

namespace {

const FieldTable<Seq2seqMoeConfig>& seq2seq_moe_fields() {
  using M = Seq2seqMoeConfig;
  static const auto table =
      FieldTable<M>("seq2seq moe")
          .field("num_experts", &M::num_experts, "E (0 = dense model)").required().in_range(0, 4096)
          .field("top_k", &M::top_k, "experts per token (GShard: 2)")
          .field("d_hidden", &M::d_hidden, "hidden width of each expert (0 = ffn_hidden)").in_range(0, 1 << 20)
          .field("every", &M::every, "layers every-1, 2*every-1, ... of each stack are MoE").in_range(1, 1024)
          .field("capacity_factor", &M::capacity_factor, "training capacity; 0 = dropless").non_negative()
          .field("eval_capacity_factor", &M::eval_capacity_factor, "capacity in eval mode; 0 = dropless")
          .non_negative()
          .field("aux_loss_coef", &M::aux_loss_coef, "load-balancing loss coefficient").non_negative()
          .named("encoder_routing", &M::encoder_routing, parse_routing, routing_name,
                 "encoder router input: token | sentence | task")
          .named("decoder_routing", &M::decoder_routing, parse_routing, routing_name,
                 "decoder router input: token | sentence | task")
          .rule([](const M& m) {
            return !m.enabled() || (m.top_k >= 1 && m.top_k <= m.num_experts)
                       ? std::string()
                       : str_cat("top_k must be in [1, num_experts=", m.num_experts, "], got ", m.top_k);
          });
  return table;
}

const FieldTable<Seq2seqConfig>& seq2seq_fields() {
  using C = Seq2seqConfig;
  static const auto table =
      FieldTable<C>("seq2seq")
          .field("vocab_size", &C::vocab_size, "shared source/target pieces").required().in_range(4, 1 << 24)
          .field("d_model", &C::d_model, "residual width").in_range(1, 1 << 16)
          .field("heads", &C::heads, "attention heads").in_range(1, 1024)
          .field("ffn_hidden", &C::ffn_hidden, "hidden width of the dense FFNs").in_range(1, 1 << 20)
          .field("encoder_layers", &C::encoder_layers, "encoder layers").in_range(1, 1024)
          .field("decoder_layers", &C::decoder_layers, "decoder layers").in_range(1, 1024)
          .named("activation", &C::activation, parse_activation, activation_name, "FFN activation")
          .field("dropout", &C::dropout, "residual and embedding dropout").in_range(0, 0.99)
          .field("attention_dropout", &C::attention_dropout, "on attention weights").in_range(0, 0.99)
          .field("pad_id", &C::pad_id, "id that pads batches").non_negative()
          .field("bos_id", &C::bos_id, "first decoder input").non_negative()
          .field("eos_id", &C::eos_id, "ends a target").non_negative()
          .field("tasks", &C::tasks, "task names; the source of task xx starts with <2xx>")
          .write_if([](const C& c) { return !c.tasks.empty(); })
          .section("moe", &C::moe, seq2seq_moe_fields(), "MoE FFNs (absent: dense)")
          .write_if([](const C& c) { return c.moe.enabled(); })
          .field("extracted_task", &C::extracted_task, "the one task of an extracted sub-network")
          .write_if([](const C& c) { return !c.extracted_task.empty(); })
          .rule([](const C& c) {
            return c.d_model % c.heads == 0
                       ? std::string()
                       : str_cat("d_model ", c.d_model, " is not divisible by heads ", c.heads);
          })
          .rule([](const C& c) {
            for (int64_t id : {c.pad_id, c.bos_id, c.eos_id}) {
              if (id >= c.vocab_size) return str_cat("special id ", id, " is outside vocab_size ", c.vocab_size);
            }
            return std::string();
          })
          .rule([](const C& c) {
            for (size_t i = 0; i < c.tasks.size(); ++i) {
              const std::string& t = c.tasks[i];
              if (t.empty() || t.size() > 32 || t.find_first_of(" \t\n<>") != std::string::npos) {
                return str_cat("task name '", t, "' must be 1-32 characters without spaces or <>");
              }
              if (std::find(c.tasks.begin(), c.tasks.begin() + static_cast<std::ptrdiff_t>(i), t) !=
                  c.tasks.begin() + static_cast<std::ptrdiff_t>(i)) {
                return str_cat("task '", t, "' is listed twice");
              }
            }
            return c.uses_task_routing() && c.tasks.empty()
                       ? std::string("task routing needs the task names (tasks: [de, fr, ...])")
                       : std::string();
          })
          .rule([](const C& c) {
            if (c.extracted_task.empty()) return std::string();
            if (c.task_id(c.extracted_task) < 0) {
              return str_cat("extracted_task '", c.extracted_task, "' is not one of tasks");
            }
            return c.uses_task_routing() ? std::string()
                                         : std::string("extracted_task is set but no layer is task-routed");
          });
  return table;
}

Seq2seqConfig resolved(const Seq2seqConfig& c) {
  Seq2seqConfig r = c;
  if (r.moe.enabled()) r.moe.d_hidden = c.expert_hidden();
  return r;
}

}  // namespace

const FieldTable<Seq2seqConfig>& Seq2seqConfig::fields() { return seq2seq_fields(); }
void Seq2seqConfig::validate() const { seq2seq_fields().validate(*this); }
std::string Seq2seqConfig::to_string() const { return seq2seq_fields().to_string(resolved(*this)); }
YAML::Node Seq2seqConfig::to_yaml() const { return seq2seq_fields().write(resolved(*this)); }
Seq2seqConfig Seq2seqConfig::from_yaml(const YAML::Node& n, const std::string& where) {
  MOEKIT_CHECK_ARG(n.IsMap(), where, " must be a mapping");
  return seq2seq_fields().parse(n, where);
}

}  // namespace moekit
