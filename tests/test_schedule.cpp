// Learning-rate schedules against hand-computed values.
#include <cmath>
#include <numbers>

#include "core/error.h"
#include "testing.h"
#include "train/schedule.h"

namespace halo {
namespace {

Schedule make(ScheduleKind kind, double lr, int64_t total, int64_t warmup, double ratio) {
  Schedule s;
  s.kind = kind;
  s.lr = lr;
  s.total_steps = total;
  s.warmup_steps = warmup;
  s.min_lr_ratio = ratio;
  return s;
}

TEST(Schedule, WarmupThenLinearDecayEndsAtTheFloor) {
  const Schedule s = make(ScheduleKind::linear, 1.0, 10, 4, 0.1);
  const double expected[10] = {0.25, 0.5, 0.75, 1.0, 1.0, 0.82, 0.64, 0.46, 0.28, 0.1};
  for (int step = 0; step < 10; ++step) EXPECT_DOUBLE_EQ(s.lr_at(step), expected[step]) << "step " << step;
  EXPECT_DOUBLE_EQ(s.lr_at(20), 0.1);  // past the end: the floor
}

TEST(Schedule, Cosine) {
  const Schedule s = make(ScheduleKind::cosine, 2e-4, 9, 0, 0.1);  // p = step / 8
  EXPECT_DOUBLE_EQ(s.lr_at(0), 2e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(2), 2e-5 + 1.8e-4 * 0.5 * (1.0 + std::cos(std::numbers::pi / 4)));
  EXPECT_DOUBLE_EQ(s.lr_at(4), 2e-5 + 0.9e-4);  // half way
  EXPECT_DOUBLE_EQ(s.lr_at(6), 2e-5 + 1.8e-4 * 0.5 * (1.0 + std::cos(3 * std::numbers::pi / 4)));
  EXPECT_DOUBLE_EQ(s.lr_at(8), 2e-5);
  for (int step = 1; step < 9; ++step) EXPECT_LT(s.lr_at(step), s.lr_at(step - 1));
}

TEST(Schedule, CosineWithWarmupAndAbsoluteFloor) {
  Schedule s = make(ScheduleKind::cosine, 1.0, 7, 2, 0.5);
  s.min_lr = 0.0;  // the absolute floor wins over the ratio
  EXPECT_DOUBLE_EQ(s.floor_lr(), 0.0);
  EXPECT_DOUBLE_EQ(s.lr_at(0), 0.5);
  EXPECT_DOUBLE_EQ(s.lr_at(1), 1.0);
  EXPECT_DOUBLE_EQ(s.lr_at(2), 1.0);   // p = 0
  EXPECT_DOUBLE_EQ(s.lr_at(4), 0.5);   // p = 1/2
  EXPECT_NEAR(s.lr_at(6), 0.0, 1e-16);  // p = 1
}

TEST(Schedule, ConstantKeepsThePeakAfterWarmup) {
  const Schedule s = make(ScheduleKind::constant, 3e-4, 100, 3, 0.1);
  EXPECT_DOUBLE_EQ(s.lr_at(0), 1e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(1), 2e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(2), 3e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(3), 3e-4);
  EXPECT_DOUBLE_EQ(s.lr_at(99), 3e-4);
}

TEST(Schedule, EdgeCases) {
  // One step: the peak. Warmup as long as the run: never decays.
  EXPECT_DOUBLE_EQ(make(ScheduleKind::cosine, 1.0, 1, 0, 0.0).lr_at(0), 1.0);
  const Schedule w = make(ScheduleKind::linear, 1.0, 4, 4, 0.0);
  EXPECT_DOUBLE_EQ(w.lr_at(0), 0.25);
  EXPECT_DOUBLE_EQ(w.lr_at(3), 1.0);
  // Warmup ending on the last step: the decay has no span, the peak stays.
  const Schedule last = make(ScheduleKind::linear, 1.0, 4, 3, 0.0);
  EXPECT_DOUBLE_EQ(last.lr_at(3), 1.0);
  EXPECT_THROW(make(ScheduleKind::linear, 1.0, 4, 0, 0.0).lr_at(-1), Error);
  Schedule bad = make(ScheduleKind::linear, 1.0, 4, 0, 0.0);
  bad.min_lr = 2.0;  // floor above the peak
  EXPECT_THROW(bad.lr_at(0), Error);
}

TEST(Schedule, Names) {
  for (const char* name : {"constant", "linear", "cosine"})
    EXPECT_EQ(schedule_kind_name(parse_schedule_kind(name)), name);
  try {
    parse_schedule_kind("exp");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cosine"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace halo
