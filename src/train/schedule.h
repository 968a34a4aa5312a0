// Learning-rate schedules: a linear warmup, then constant, linear decay or
// cosine decay from the peak down to a minimum.
//
// For step s in [0, total_steps) (s counts optimizer steps from 0), with
// w = warmup_steps, peak = lr and floor = min_lr (absolute, when >= 0) or
// min_lr_ratio * lr:
//   s <  w:  peak * (s + 1) / w           (the first step already moves; the
//                                          last warmup step reaches the peak)
//   s >= w:  p = (s - w) / (total_steps - 1 - w), in [0, 1] (0 when w is the last step)
//            constant  peak
//            linear    floor + (peak - floor) * (1 - p)
//            cosine    floor + (peak - floor) * (1 + cos(pi * p)) / 2
// so decay starts at the peak on the first step after warmup and ends exactly
// at the floor on the last step. Steps past the end keep the floor (constant:
// the peak).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace halo {

enum class ScheduleKind : uint8_t { constant, linear, cosine };

ScheduleKind parse_schedule_kind(std::string_view name);  // throws naming the accepted ones
std::string_view schedule_kind_name(ScheduleKind kind);

struct Schedule {
  ScheduleKind kind = ScheduleKind::cosine;
  double lr = 1e-4;            // the peak
  int64_t total_steps = 1;     // optimizer steps in the run
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;   // floor = min_lr_ratio * lr ...
  double min_lr = -1.0;        // ... unless this absolute floor is >= 0

  double floor_lr() const { return min_lr >= 0.0 ? min_lr : min_lr_ratio * lr; }
  double lr_at(int64_t step) const;  // throws on step < 0 or a bad schedule
};

}  // namespace halo
