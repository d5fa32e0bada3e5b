#include "moekit/train/schedule.h"

#include <algorithm>
#include <cmath>

namespace moekit {

double scheduled_lr(const TrainerOptions& o, int64_t step, int64_t horizon) {
  if (o.scheduler == "cosine") {
    if (step <= o.warmup_steps) {
      return o.lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(o.warmup_steps, 1));
    }
    const double span = static_cast<double>(std::max<int64_t>(horizon - o.warmup_steps, 1));
    const double progress = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * progress));
  }
  if (o.warmup_steps == 0) return o.lr;
  const double s = static_cast<double>(std::max<int64_t>(step, 1));
  const double w = static_cast<double>(o.warmup_steps);
  return o.lr * std::sqrt(w) * std::min(1.0 / std::sqrt(s), s * std::pow(w, -1.5));
}

}  // namespace moekit
