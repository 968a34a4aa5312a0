#include "train/schedule.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace halo {

ScheduleKind parse_schedule_kind(std::string_view name) {
  if (name == "constant") return ScheduleKind::constant;
  if (name == "linear") return ScheduleKind::linear;
  if (name == "cosine") return ScheduleKind::cosine;
  HALO_FAIL("unknown schedule '", name, "' (accepted: constant, linear, cosine)");
}

std::string_view schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::constant: return "constant";
    case ScheduleKind::linear: return "linear";
    case ScheduleKind::cosine: return "cosine";
  }
  return "?";
}

double Schedule::lr_at(int64_t step) const {
  HALO_CHECK(step >= 0, "lr schedule: step must be >= 0, got ", step);
  HALO_CHECK(total_steps >= 1 && warmup_steps >= 0, "lr schedule: bad total_steps ", total_steps,
             " or warmup_steps ", warmup_steps);
  const double floor = floor_lr();
  HALO_CHECK(std::isfinite(lr) && lr >= 0.0 && floor >= 0.0 && floor <= lr, "lr schedule: need 0 <= min lr ",
             floor, " <= lr ", lr);
  if (step < warmup_steps) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  if (kind == ScheduleKind::constant) return lr;
  const int64_t span = total_steps - 1 - warmup_steps;  // steps from the peak to the floor
  double p = span > 0 ? static_cast<double>(step - warmup_steps) / static_cast<double>(span) : 0.0;
  if (p > 1.0) p = 1.0;
  if (kind == ScheduleKind::linear) return floor + (lr - floor) * (1.0 - p);
  return floor + (lr - floor) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
}

}  // namespace halo
