#pragma once
// Learning-rate schedules of the trainer.
#include <cstdint>

#include "moekit/train/trainer.h"

namespace moekit {

// The learning rate of optimizer step `step` (1-based) under o.scheduler:
// - warmuplr (WeNet's WarmupLR): lr * w^0.5 * min(s^-0.5, s * w^-1.5), the
//   peak lr at s = w (constant lr when w = 0);
// - cosine: linear warmup to lr over warmup_steps, then a half cosine down
//   to min_lr at `horizon` (the run's total steps), min_lr after it.
double scheduled_lr(const TrainerOptions& o, int64_t step, int64_t horizon);

}  // namespace moekit
