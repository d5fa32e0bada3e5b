// TrainerOptions: its field table and what comes from it (YAML in and out,
// validation), in a unit of its own so that config readers (and their fuzz
// target) need not link the training loop.
#include "moekit/train/trainer.h"

#include "moekit/core/fields.h"

namespace moekit {

namespace {

// WeNet's train_conf names where WeNet has the option.
const FieldTable<TrainerOptions>& trainer_fields() {
  using O = TrainerOptions;
  static const auto table =
      FieldTable<O>("train")
          .field("epochs", &O::epochs, "passes over the training data").at_least(1)
          .field("lr", &O::lr, "peak learning rate").positive()
          .field("warmup_steps", &O::warmup_steps, "optimizer steps of warmup").non_negative()
          .field("weight_decay", &O::weight_decay, "AdamW weight decay (decoupled; matrices and embeddings)")
          .non_negative()
          .field("grad_clip", &O::grad_clip, "max global gradient norm (<= 0: off)")
          .field("accum_grad", &O::accum_grad, "batches per optimizer step").at_least(1)
          .field("log_interval", &O::log_interval, "optimizer steps between progress lines").at_least(1)
          .field("save_interval", &O::save_interval, "optimizer steps between mid-epoch checkpoints (0: epoch ends)")
          .non_negative()
          .field("keep_checkpoints", &O::keep_checkpoints, "newest checkpoints kept").at_least(1)
          .field("average_last", &O::average_last, "final model = mean of the last N checkpoints").at_least(1)
          .field("seed", &O::seed, "random seed")
          .field("max_steps", &O::max_steps, "pause with a checkpoint after this many steps in total (0: none)")
          .non_negative()
          .choice<std::string>("scheduler", &O::scheduler, {{"warmuplr", "warmuplr"}, {"cosine", "cosine"}},
                               "learning-rate schedule")
          .field("min_lr", &O::min_lr, "cosine: the final learning rate")
          .check([](const O& o) { return o.min_lr >= 0 && o.min_lr <= o.lr ? "" : "must be in [0, lr]"; })
          .field("total_steps", &O::total_steps, "the run's length in steps (0: `epochs`); cosine's horizon")
          .non_negative()
          .field("eval_interval", &O::eval_interval, "steps between validations (0: epoch ends only)").non_negative()
          .field("peak_flops", &O::peak_flops, "FLOP/s that MFU is relative to (0: measured at start)")
          .non_negative()
          .field("ep_size", &O::ep_size,
                 "expert parallelism: processes each MoE layer's experts are sharded over (divides the run's "
                 "processes and every layer's experts; 1: none)")
          .at_least(1)
          .write_if([](const O& o) { return o.ep_size != 1; })
          .field("bucket_mb", &O::bucket_mb,
                 "distributed runs: MB of gradients per all-reduce bucket (PyTorch DDP's bucket_cap_mb; the first "
                 "bucket 1 MB at most)")
          .positive()
          .write_if([](const O& o) { return o.bucket_mb != 25.0; })
          .field("overlap_grad_reduce", &O::overlap_grad_reduce,
                 "distributed runs: start each bucket's all-reduce during the backward pass (false: after it)")
          .write_if([](const O& o) { return !o.overlap_grad_reduce; })
          .choice<std::string>("autocast", &O::autocast, {{"none", "none"}, {"bf16", "bf16"}},
                               "the forward pass under bfloat16 autocast (CUDA; fp32 master weights)")
          .write_if([](const O& o) { return o.autocast != "none"; })
          .choice<std::string>("moe_dispatch", &O::moe_dispatch,
                               {{"auto", "auto"}, {"sorted", "sorted"}, {"padded", "padded"}},
                               "how MoE layers find their experts' tokens: auto (padded on a GPU where no host "
                               "sync is then needed, else sorted), sorted (per-expert counts on the host) or "
                               "padded (GShard's [E, C, D] buffer, never waits for the device)")
          .write_if([](const O& o) { return o.moe_dispatch != "auto"; })
          .field("moe_row_margin", &O::moe_row_margin,
                 "padded dispatch, dropless training: each expert's rows are this multiple of its recent "
                 "peak load (a batch that does not fit runs again with more)")
          .at_least(1.0)
          .write_if([](const O& o) { return o.moe_row_margin != 1.5; })
          .field("validate_first", &O::validate_first, "validate once before the first step of a fresh run");
  return table;
}

}  // namespace

const FieldTable<TrainerOptions>& TrainerOptions::fields() { return trainer_fields(); }
void TrainerOptions::validate() const { trainer_fields().validate(*this, "train"); }
YAML::Node TrainerOptions::to_yaml() const { return trainer_fields().write(*this); }
TrainerOptions TrainerOptions::from_yaml(const YAML::Node& n, const std::string& where) {
  return trainer_fields().parse(n, where);
}

}  // namespace moekit
