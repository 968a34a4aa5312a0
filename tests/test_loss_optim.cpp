// Cross-entropy and AdamW (CPU) against float64 re-statements of their math;
// the CUDA versions against the CPU ones where a GPU is present.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <vector>

#include "core/error.h"
#include "core/numerics.h"
#include "core/rng.h"
#include "kernels/adamw.h"
#include "kernels/cross_entropy.h"
#include "kernels/hadamard.h"
#include "testing.h"

namespace halo {

std::vector<CheckResult> loss_optim_cuda_checks(bool full);  // optim_check.cpp

namespace {

using testing::random_normal;

// ---- cross-entropy ------------------------------------------------------------------

struct CeReference {
  std::vector<double> loss, grad;
};

// loss = logsumexp(x) - x[t]; grad = scale * (softmax(x) - onehot(t)); zero where t < 0.
CeReference ce_reference(const std::vector<float>& x, const std::vector<int32_t>& target, int64_t V,
                         double scale) {
  const int64_t n = static_cast<int64_t>(target.size());
  CeReference r{std::vector<double>(n, 0.0), std::vector<double>(n * V, 0.0)};
  for (int64_t i = 0; i < n; ++i) {
    if (target[i] < 0) continue;
    const float* row = x.data() + i * V;
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < V; ++j) m = std::max(m, static_cast<double>(row[j]));
    double s = 0.0;
    for (int64_t j = 0; j < V; ++j) s += std::exp(row[j] - m);
    const double lse = m + std::log(s);
    r.loss[i] = lse - row[target[i]];
    for (int64_t j = 0; j < V; ++j) r.grad[i * V + j] = scale * (std::exp(row[j] - lse) - (j == target[i] ? 1.0 : 0.0));
  }
  return r;
}

Tensor targets_tensor(const std::vector<int32_t>& t) {
  Tensor out = Tensor::empty({static_cast<int64_t>(t.size())}, DType::i32);
  std::copy(t.begin(), t.end(), out.data_as<int32_t>());
  return out;
}

// Targets spread over [0, V), with every 5th token ignored.
std::vector<int32_t> some_targets(int64_t n, int64_t V, uint64_t seed) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i)
    t[i] = i % 5 == 2 ? -100 : static_cast<int32_t>(std::min<int64_t>(V - 1, uniform01(seed, 3, i) * V));
  return t;
}

Tensor copy_of(const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  y.copy_from(x);
  return y;
}

void expect_matches_reference(const Tensor& logits_in, const std::vector<int32_t>& t, float scale) {
  const int64_t n = logits_in.size(0), V = logits_in.size(1);
  const CeReference ref = ce_reference(logits_in.to_floats(), t, V, scale);
  Tensor x = copy_of(logits_in);
  Tensor loss = Tensor::empty({n}, DType::f32);
  cross_entropy_forward_backward(x, targets_tensor(t), loss, scale);
  const std::vector<float> l = loss.to_floats(), g = x.to_floats();
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(l[i], ref.loss[i], 1e-6 * std::fabs(ref.loss[i]) + 1e-6) << "row " << i;
  for (int64_t k = 0; k < n * V; ++k)
    ASSERT_NEAR(g[k], ref.grad[k], 2e-7 * std::fabs(ref.grad[k]) + 1e-30) << "element " << k;
}

TEST(CrossEntropy, MatchesFloat64Reference) {
  const int64_t n = 13, V = 517;
  const std::vector<int32_t> t = some_targets(n, V, 1);
  int counted = 0;
  for (int32_t x : t) counted += x >= 0;
  expect_matches_reference(random_normal({n, V}, 1, 2.0f), t, 1.0f / counted);
}

TEST(CrossEntropy, FiniteDifferences) {
  const int64_t n = 3, V = 7;
  const float scale = 0.37f;
  const Tensor x0 = random_normal({n, V}, 2, 1.5f);
  const std::vector<int32_t> t{4, 0, 6};
  const Tensor targets = targets_tensor(t);
  Tensor grad = copy_of(x0);
  Tensor loss = Tensor::empty({n}, DType::f32);
  cross_entropy_forward_backward(grad, targets, loss, scale);
  // f(x) = scale * sum of losses, from the loss-only variant.
  auto f = [&](const Tensor& x) {
    Tensor l = Tensor::empty({n}, DType::f32);
    cross_entropy_loss(x, targets, l);
    double s = 0.0;
    for (float v : l.to_floats()) s += v;
    return scale * s;
  };
  const float h = 1e-2f;
  for (int64_t k = 0; k < n * V; ++k) {
    Tensor xp = copy_of(x0), xm = copy_of(x0);
    const float base = x0.data_as<float>()[k];
    xp.data_as<float>()[k] = base + h;
    xm.data_as<float>()[k] = base - h;
    const double step = static_cast<double>(xp.data_as<float>()[k]) - xm.data_as<float>()[k];
    const double fd = (f(xp) - f(xm)) / step;
    EXPECT_NEAR(grad.data_as<float>()[k], fd, 5e-5) << "element " << k;
  }
}

TEST(CrossEntropy, IgnoredTokensGiveZeroLossAndGradient) {
  const int64_t n = 4, V = 33;
  Tensor x = random_normal({n, V}, 3, 1.0f);
  x.data_as<float>()[1 * V + 5] = NAN;  // never read: row 1 is ignored
  const std::vector<int32_t> t{3, -100, -1, 32};
  Tensor loss = Tensor::empty({n}, DType::f32);
  cross_entropy_forward_backward(x, targets_tensor(t), loss, 0.5f);
  const std::vector<float> l = loss.to_floats(), g = x.to_floats();
  for (int64_t i : {1, 2}) {
    EXPECT_EQ(l[i], 0.0f);
    for (int64_t j = 0; j < V; ++j) EXPECT_EQ(g[i * V + j], 0.0f);
  }
  for (int64_t i : {0, 3}) {
    EXPECT_GT(l[i], 0.0f);
    double row_sum = 0.0;  // softmax sums to 1, minus the one-hot: the row sums to 0
    for (int64_t j = 0; j < V; ++j) row_sum += g[i * V + j];
    EXPECT_NEAR(row_sum, 0.0, 1e-6);
  }
  // Every token ignored.
  Tensor y = random_normal({2, V}, 4);
  Tensor loss2 = random_normal({2}, 5);
  cross_entropy_forward_backward(y, targets_tensor({-100, -100}), loss2, 1.0f);
  for (float v : y.to_floats()) EXPECT_EQ(v, 0.0f);
  for (float v : loss2.to_floats()) EXPECT_EQ(v, 0.0f);
}

TEST(CrossEntropy, HugeLogitsAreStable) {
  const int64_t n = 4, V = 64;
  Tensor x = random_normal({n, V}, 5, 3.0f);
  float* p = x.data_as<float>();
  for (int64_t j = 0; j < V; ++j) {
    p[0 * V + j] += 1e4f;                        // all around 1e4
    p[1 * V + j] = 1e4f;                         // all equal and huge
    p[2 * V + j] = j % 2 ? 1e4f : -1e4f;         // both signs
    p[3 * V + j] = j == 7 ? 1e4f : p[3 * V + j]; // one dominant logit
  }
  const std::vector<int32_t> t{1, 2, 4, 7};
  expect_matches_reference(x, t, 0.25f);
  Tensor g = copy_of(x);
  Tensor loss = Tensor::empty({n}, DType::f32);
  cross_entropy_forward_backward(g, targets_tensor(t), loss, 0.25f);
  for (float v : loss.to_floats()) EXPECT_TRUE(std::isfinite(v));
  EXPECT_NEAR(loss.to_floats()[1], std::log(static_cast<double>(V)), 1e-5);
  EXPECT_NEAR(loss.to_floats()[3], 0.0, 1e-6);
  for (float v : g.to_floats()) EXPECT_TRUE(std::isfinite(v));
}

TEST(CrossEntropy, LossOnlyLeavesLogitsAndAgrees) {
  const int64_t n = 9, V = 100;
  const Tensor x = random_normal({n, V}, 6, 2.0f);
  const Tensor before = copy_of(x);
  const Tensor targets = targets_tensor(some_targets(n, V, 6));
  Tensor l1 = Tensor::empty({n}, DType::f32), l2 = Tensor::empty({n}, DType::f32);
  cross_entropy_loss(x, targets, l1);
  EXPECT_EQ(x.to_floats(), before.to_floats());
  Tensor g = copy_of(x);
  cross_entropy_forward_backward(g, targets, l2, 1.0f);
  EXPECT_EQ(l1.to_floats(), l2.to_floats());
}

TEST(CrossEntropy, Bf16LogitsRoundTheGradient) {
  const int64_t n = 5, V = 40;
  const Tensor xb = random_normal({n, V}, 7, 2.0f, DType::bf16);
  const Tensor xf = xb.to(DType::f32);
  const Tensor targets = targets_tensor(some_targets(n, V, 7));
  Tensor gb = copy_of(xb), gf = copy_of(xf);
  Tensor lb = Tensor::empty({n}, DType::f32), lf = Tensor::empty({n}, DType::f32);
  cross_entropy_forward_backward(gb, targets, lb, 0.1f);
  cross_entropy_forward_backward(gf, targets, lf, 0.1f);
  EXPECT_EQ(lb.to_floats(), lf.to_floats());
  const std::vector<float> b = gb.to_floats(), f = gf.to_floats();
  for (size_t k = 0; k < b.size(); ++k) EXPECT_EQ(b[k], bf16_bits_to_float(float_to_bf16_bits(f[k])));
}

TEST(CrossEntropy, SumLosses) {
  const Tensor l = random_normal({1000}, 8, 3.0f);
  double ref = 0.0;
  for (float v : l.to_floats()) ref += v;
  Tensor total = Tensor::empty({1}, DType::f32);
  sum_losses(l, total, false);
  EXPECT_NEAR(total.to_floats()[0], ref, 1e-6 * std::fabs(ref) + 1e-6);
  sum_losses(l, total, true);
  EXPECT_NEAR(total.to_floats()[0], 2 * ref, 1e-6 * std::fabs(ref) + 1e-6);
}

TEST(CrossEntropy, Errors) {
  const int64_t n = 3, V = 10;
  Tensor x = random_normal({n, V}, 9);
  const Tensor t = targets_tensor({1, 2, 3});
  Tensor loss = Tensor::empty({n}, DType::f32);
  Tensor flat = x.view({n * V});
  EXPECT_THROW(cross_entropy_forward_backward(flat, t, loss, 1.0f), Error);
  Tensor xi = Tensor::zeros({n, V}, DType::i32);
  EXPECT_THROW(cross_entropy_forward_backward(xi, t, loss, 1.0f), Error);
  EXPECT_THROW(cross_entropy_forward_backward(x, targets_tensor({1, 2}), loss, 1.0f), Error);
  EXPECT_THROW(cross_entropy_forward_backward(x, Tensor::zeros({n}, DType::f32), loss, 1.0f), Error);
  Tensor loss_bf16 = Tensor::empty({n}, DType::bf16);
  EXPECT_THROW(cross_entropy_forward_backward(x, t, loss_bf16, 1.0f), Error);
  Tensor loss_short = Tensor::empty({n - 1}, DType::f32);
  EXPECT_THROW(cross_entropy_loss(x, t, loss_short), Error);
  EXPECT_THROW(cross_entropy_forward_backward(x, targets_tensor({1, V, 3}), loss, 1.0f), Error);
  EXPECT_THROW(cross_entropy_loss(x, targets_tensor({1, 2, V + 5}), loss), Error);
  Tensor total2 = Tensor::empty({2}, DType::f32);
  EXPECT_THROW(sum_losses(loss, total2, false), Error);
  Tensor total_bf16 = Tensor::empty({1}, DType::bf16);
  EXPECT_THROW(sum_losses(loss, total_bf16, false), Error);
}

// ---- AdamW ------------------------------------------------------------------------

struct RefState {
  std::vector<double> p, m, v;
};

// One AdamW step in float64 (PyTorch's AdamW: decoupled decay on the old weight).
void ref_step(RefState& s, const std::vector<float>& g, double gscale, const AdamWConfig& c, bool decay) {
  const double b1 = c.beta1, b2 = c.beta2, t = static_cast<double>(c.step);
  const double bc1 = 1.0 - std::pow(b1, t), bc2 = 1.0 - std::pow(b2, t);
  for (size_t i = 0; i < s.p.size(); ++i) {
    const double gi = g[i] * gscale;
    s.m[i] = b1 * s.m[i] + (1.0 - b1) * gi;
    s.v[i] = b2 * s.v[i] + (1.0 - b2) * gi * gi;
    const double update = (c.lr / bc1) * s.m[i] / (std::sqrt(s.v[i] / bc2) + c.eps);
    s.p[i] = s.p[i] - (decay ? c.lr * static_cast<double>(c.weight_decay) * s.p[i] : 0.0) - update;
  }
}

std::vector<double> as_doubles(const Tensor& t) {
  const std::vector<float> f = t.to_floats();
  return {f.begin(), f.end()};
}

Tensor positive_v(int64_t n, uint64_t seed, DType dtype) {
  Tensor v = random_normal({n}, seed, 1e-3f);
  for (int64_t i = 0; i < n; ++i) v.data_as<float>()[i] = v.data_as<float>()[i] * v.data_as<float>()[i] + 1e-9f;
  return v.to(dtype);
}

AdamWParam make_state(int64_t n, DType dtype, uint64_t seed) {
  AdamWParam a;
  a.param = random_normal({n}, seed, 0.02f, dtype);
  a.grad = Tensor::zeros({n}, DType::f32);
  a.m = random_normal({n}, seed + 1, 1e-3f, dtype);
  a.v = positive_v(n, seed + 2, dtype);
  return a;
}

TEST(AdamW, Fp32MasterMatchesFloat64OverSteps) {
  const int64_t n = 1000;
  for (bool decay : {true, false}) {
    AdamWParam a = make_state(n, DType::f32, 10);
    a.param_bf16 = Tensor::zeros({n}, DType::bf16);
    a.decay = decay;
    RefState ref{as_doubles(a.param), as_doubles(a.m), as_doubles(a.v)};
    AdamWConfig c;
    c.lr = 1e-3f;
    c.beta1 = 0.9f;
    c.beta2 = 0.95f;
    c.eps = 1e-8f;
    c.weight_decay = 0.1f;
    Tensor scale = Tensor::from_floats({1}, {0.7f});
    for (int64_t step = 1; step <= 5; ++step) {
      c.step = step;
      const Tensor g = random_normal({n}, 20 + step, 2e-3f);
      a.grad.copy_from(g);
      adamw_step(a, c, scale);
      ref_step(ref, g.to_floats(), 0.7f, c, decay);
    }
    const std::vector<float> p = a.param.to_floats(), m = a.m.to_floats(), v = a.v.to_floats();
    const std::vector<float> pb = a.param_bf16.to_floats();
    for (int64_t i = 0; i < n; ++i) {
      // f32 rounding of each step (|p| < 0.125: half an ulp is 3.7e-9), five steps.
      ASSERT_NEAR(p[i], ref.p[i], 1e-6 * std::fabs(ref.p[i]) + 5e-8) << i;
      ASSERT_NEAR(m[i], ref.m[i], 1e-6 * std::fabs(ref.m[i]) + 1e-9) << i;
      ASSERT_NEAR(v[i], ref.v[i], 1e-6 * std::fabs(ref.v[i]) + 1e-20) << i;
      ASSERT_EQ(pb[i], bf16_bits_to_float(float_to_bf16_bits(p[i]))) << i;
    }
  }
}

TEST(AdamW, FirstStepMovesByLrThanksToBiasCorrection) {
  // m = v = 0: after bias correction m_hat / sqrt(v_hat) = g / |g|, so every weight moves by lr.
  const int64_t n = 256;
  AdamWParam a;
  a.param = Tensor::zeros({n}, DType::f32);
  a.grad = random_normal({n}, 30, 1e-2f);
  a.m = Tensor::zeros({n}, DType::f32);
  a.v = Tensor::zeros({n}, DType::f32);
  AdamWConfig c;
  c.lr = 1e-3f;
  c.eps = 1e-12f;
  c.weight_decay = 0.5f;  // p = 0: decay has nothing to act on
  adamw_step(a, c);
  const std::vector<float> p = a.param.to_floats(), g = a.grad.to_floats();
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(p[i], g[i] > 0 ? -1e-3 : 1e-3, 1e-8) << i;
}

TEST(AdamW, WeightDecayIsDecoupledAndSkippable) {
  // g = 0 and m = 0: only the decay moves p, by lr * wd * p.
  const int64_t n = 64;
  for (bool decay : {true, false}) {
    AdamWParam a;
    a.param = random_normal({n}, 31, 1.0f);
    const std::vector<float> p0 = a.param.to_floats();
    a.grad = Tensor::zeros({n}, DType::f32);
    a.m = Tensor::zeros({n}, DType::f32);
    a.v = Tensor::zeros({n}, DType::f32);
    a.decay = decay;
    AdamWConfig c;
    c.lr = 1e-2f;
    c.weight_decay = 0.1f;
    adamw_step(a, c);
    const std::vector<float> p = a.param.to_floats();
    for (int64_t i = 0; i < n; ++i)
      EXPECT_NEAR(p[i], decay ? p0[i] * (1.0 - 1e-3) : p0[i], 2e-7 * std::fabs(p0[i]) + 1e-9) << i;
  }
}

TEST(AdamW, Bf16NearestMatchesRoundedFloat64) {
  const int64_t n = 4096;
  AdamWParam a = make_state(n, DType::bf16, 40);
  AdamWConfig c;
  c.lr = 1e-3f;  // updates of a few bf16 ulps of p
  c.weight_decay = 0.1f;
  auto round = [](double x) {
    return static_cast<double>(bf16_bits_to_float(float_to_bf16_bits(static_cast<float>(x))));
  };
  int64_t exact = 0, total = 0;
  for (int64_t step = 1; step <= 3; ++step) {
    c.step = step;
    RefState ref{as_doubles(a.param), as_doubles(a.m), as_doubles(a.v)};  // from the stored bf16 values
    const Tensor g = random_normal({n}, 50 + step, 1e-3f);
    a.grad.copy_from(g);
    adamw_step(a, c);
    ref_step(ref, g.to_floats(), 1.0, c, true);
    const std::vector<float> p = a.param.to_floats(), m = a.m.to_floats(), v = a.v.to_floats();
    for (int64_t i = 0; i < n; ++i) {
      const double got[3] = {p[i], m[i], v[i]}, want[3] = {round(ref.p[i]), round(ref.m[i]), round(ref.v[i])};
      for (int k = 0; k < 3; ++k) {
        ++total;
        if (got[k] == want[k]) {
          ++exact;
          continue;
        }
        // f32 and f64 may land on different sides of a rounding boundary: one bf16 ulp at most.
        const uint16_t bg = float_to_bf16_bits(static_cast<float>(got[k]));
        const uint16_t bw = float_to_bf16_bits(static_cast<float>(want[k]));
        ASSERT_EQ(std::abs(static_cast<int>(bg) - static_cast<int>(bw)), 1) << "element " << i << " " << k;
      }
    }
  }
  EXPECT_GE(exact, total - total / 1000) << exact << " of " << total << " exact";
}

TEST(AdamW, Bf16StochasticRoundingLandsOnNeighboursAndIsReproducible) {
  const int64_t n = 4096;
  AdamWConfig c;
  c.lr = 1e-3f;
  c.stochastic_rounding = true;
  c.seed = 99;
  c.step = 3;
  const AdamWParam start = make_state(n, DType::bf16, 60);
  auto run = [&](uint64_t seed, uint32_t id) {
    AdamWParam a{copy_of(start.param), random_normal({n}, 61, 1e-3f), copy_of(start.m), copy_of(start.v), Tensor(),
                 true, id};
    AdamWConfig cc = c;
    cc.seed = seed;
    adamw_step(a, cc);
    return a;
  };
  const AdamWParam a = run(99, 0), b = run(99, 0), other_seed = run(100, 0), other_id = run(99, 1);
  EXPECT_EQ(a.param.to_floats(), b.param.to_floats());
  EXPECT_EQ(a.v.to_floats(), b.v.to_floats());
  EXPECT_NE(a.param.to_floats(), other_seed.param.to_floats());
  EXPECT_NE(a.param.to_floats(), other_id.param.to_floats());
  // Each stored value is one of the two bf16 neighbours of the float64 result.
  RefState ref{as_doubles(start.param), as_doubles(start.m), as_doubles(start.v)};
  ref_step(ref, random_normal({n}, 61, 1e-3f).to_floats(), 1.0, c, true);
  const std::vector<float> p = a.param.to_floats(), m = a.m.to_floats(), v = a.v.to_floats();
  for (int64_t i = 0; i < n; ++i) {
    const double got[3] = {p[i], m[i], v[i]}, want[3] = {ref.p[i], ref.m[i], ref.v[i]};
    for (int k = 0; k < 3; ++k) {
      const double ulp = std::ldexp(1.0, std::ilogb(want[k]) - 7);
      ASSERT_LT(std::fabs(got[k] - want[k]), ulp * 1.001) << "element " << i << " " << k;
    }
  }
  // The first element's rounding follows from uniform01(seed, stream, 0), as documented.
  const float up = uniform01(99, detail::adamw_stream(3, 0), 0);
  float pi = bf16_bits_to_float(float_to_bf16_bits(start.param.to_floats()[0]));
  float mi = start.m.to_floats()[0], vi = start.v.to_floats()[0];
  detail::adamw_update(pi, mi, vi, random_normal({1}, 61, 1e-3f).to_floats()[0], detail::adamw_scalars(c, true));
  EXPECT_EQ(p[0], bf16_bits_to_float(detail::float_to_bf16_stochastic(pi, up)));
}

TEST(AdamW, Bf16StochasticRoundingIsUnbiasedWhereNearestStalls) {
  // Constant gradient, p = 1: every step moves p by lr = 1e-4, a fortieth of the
  // bf16 spacing below 1 (2^-8). Round to nearest never moves; stochastic
  // rounding moves on average by the right amount.
  const int64_t n = 1 << 17, steps = 10;
  for (bool sr : {false, true}) {
    AdamWParam a;
    a.param = Tensor::from_floats({n}, std::vector<float>(n, 1.0f), DType::bf16);
    a.grad = Tensor::from_floats({n}, std::vector<float>(n, 3e-3f));
    a.m = Tensor::zeros({n}, DType::bf16);
    a.v = Tensor::zeros({n}, DType::bf16);
    AdamWConfig c;
    c.lr = 1e-4f;
    c.eps = 1e-12f;
    c.stochastic_rounding = sr;
    c.seed = 5;
    for (int64_t step = 1; step <= steps; ++step) {
      c.step = step;
      adamw_step(a, c);
    }
    double mean_p = 0.0, mean_m = 0.0, mean_v = 0.0;
    for (float x : a.param.to_floats()) mean_p += x / n;
    for (float x : a.m.to_floats()) mean_m += x / n;
    for (float x : a.v.to_floats()) mean_v += x / n;
    const double want_m = (1.0 - std::pow(0.9, steps)) * 3e-3, want_v = (1.0 - std::pow(0.999, steps)) * 9e-6;
    if (!sr) {
      EXPECT_EQ(mean_p, 1.0);  // stalled
    } else {
      EXPECT_NEAR(mean_p, 1.0 - steps * 1e-4, 3e-5);  // 5.5 standard deviations of the mean
      EXPECT_NEAR(mean_m / want_m, 1.0, 1e-4);
      EXPECT_NEAR(mean_v / want_v, 1.0, 1e-4);
    }
  }
}

TEST(AdamW, GlobalNormAndClipCoefficient) {
  const Tensor a = random_normal({100003}, 70, 0.5f), b = random_normal({17}, 71, 2.0f);
  double ref = 0.0;
  for (const Tensor* t : {&a, &b})
    for (float x : t->to_floats()) ref += static_cast<double>(x) * x;
  const Tensor ns = global_norm_squared({a, b});
  EXPECT_EQ(ns.shape(), Shape({1}));
  EXPECT_NEAR(ns.to_floats()[0], ref, 1e-6 * ref);
  EXPECT_EQ(global_norm_squared({a, b}).to_floats()[0], ns.to_floats()[0]);  // deterministic

  const Tensor sixteen = Tensor::from_floats({1}, {16.0f});
  EXPECT_FLOAT_EQ(clip_coefficient(sixteen, 1.0f).to_floats()[0], 1.0f / (4.0f + 1e-6f));
  EXPECT_EQ(clip_coefficient(sixteen, 10.0f).to_floats()[0], 1.0f);
  EXPECT_EQ(clip_coefficient(sixteen, 0.0f).to_floats()[0], 1.0f);  // no clipping
  for (float bad : {NAN, INFINITY})
    EXPECT_TRUE(std::isnan(clip_coefficient(Tensor::from_floats({1}, {bad}), 1.0f).to_floats()[0]));

  // A gradient with a NaN: the norm is NaN, so is the coefficient, and the step writes nothing.
  for (DType dtype : {DType::f32, DType::bf16}) {
    AdamWParam s = make_state(100, dtype, 72);
    s.grad = random_normal({100}, 73, 1e-3f);
    s.grad.data_as<float>()[42] = NAN;
    if (dtype == DType::f32) s.param_bf16 = Tensor::zeros({100}, DType::bf16);
    const std::vector<float> p0 = s.param.to_floats(), m0 = s.m.to_floats(), v0 = s.v.to_floats();
    const Tensor norm = global_norm_squared({s.grad});
    EXPECT_TRUE(std::isnan(norm.to_floats()[0]));
    AdamWConfig c;
    c.weight_decay = 0.1f;
    adamw_step(s, c, clip_coefficient(norm, 1.0f));
    EXPECT_EQ(s.param.to_floats(), p0);
    EXPECT_EQ(s.m.to_floats(), m0);
    EXPECT_EQ(s.v.to_floats(), v0);
    if (dtype == DType::f32) {
      for (float x : s.param_bf16.to_floats()) EXPECT_EQ(x, 0.0f);
    }
  }
}

TEST(AdamW, ClipFactorScalesTheGradient) {
  // With a scale c, the step equals the step on c * g.
  const int64_t n = 500;
  AdamWParam a = make_state(n, DType::f32, 80), b = make_state(n, DType::f32, 80);
  const Tensor g = random_normal({n}, 81, 1e-2f);
  a.grad.copy_from(g);
  for (int64_t i = 0; i < n; ++i) b.grad.data_as<float>()[i] = g.data_as<float>()[i] * 0.25f;
  AdamWConfig c;
  c.step = 4;
  adamw_step(a, c, Tensor::from_floats({1}, {0.25f}));
  adamw_step(b, c);
  EXPECT_EQ(a.param.to_floats(), b.param.to_floats());
  EXPECT_EQ(a.m.to_floats(), b.m.to_floats());
  EXPECT_EQ(a.v.to_floats(), b.v.to_floats());
}

TEST(AdamW, Bf16GradientStepsAsItsF32Values) {
  // A bf16 gradient gives the step and the norm of the f32 gradient holding the
  // same values, in both storage modes, plain and rotated.
  for (DType dtype : {DType::f32, DType::bf16})
    for (bool rotated : {false, true}) {
      const int64_t rows = 3, d = 2048, n = rows * d;
      AdamWParam a = make_state(n, dtype, 95), b = make_state(n, dtype, 95);
      for (AdamWParam* t : {&a, &b})
        for (Tensor* x : {&t->param, &t->m, &t->v}) *x = x->view({rows, d});
      b.grad = random_normal({rows, d}, 96, 1e-2f, DType::bf16);
      a.grad = b.grad.to(DType::f32);
      a.grad_rotated = b.grad_rotated = rotated;
      const Tensor norm_a = global_norm_squared({a.grad}), norm_b = global_norm_squared({b.grad});
      EXPECT_EQ(norm_a.to_floats(), norm_b.to_floats());
      AdamWConfig c;
      c.step = 3;
      c.weight_decay = 0.1f;
      adamw_step(a, c, clip_coefficient(norm_a, 0.5f));
      adamw_step(b, c, clip_coefficient(norm_b, 0.5f));
      EXPECT_EQ(a.param.to_floats(), b.param.to_floats()) << dtype_name(dtype) << rotated;
      EXPECT_EQ(a.m.to_floats(), b.m.to_floats());
      EXPECT_EQ(a.v.to_floats(), b.v.to_floats());
      EXPECT_NE(a.param.to_floats(), make_state(n, dtype, 95).param.to_floats()) << "the step moved nothing";
    }
}

TEST(AdamW, RotatedGradientIsTurnedBackFirst) {
  // grad_rotated: the step on G R equals the step on (G R) R^T, for a width of
  // the GPU's fused kernel (2048) and one it rotates back first (12 x 64).
  for (int64_t d : {2048, 768}) {
    const int64_t rows = 3, n = rows * d;
    AdamWParam a = make_state(n, DType::f32, 90), b = make_state(n, DType::f32, 90);
    for (AdamWParam* t : {&a, &b})
      for (Tensor* x : {&t->param, &t->grad, &t->m, &t->v}) *x = x->view({rows, d});
    a.grad.copy_from(random_normal({rows, d}, 91, 1e-2f));
    hadamard_rows(a.grad, b.grad, /*transpose=*/true);
    a.grad_rotated = true;
    AdamWConfig c;
    c.step = 2;
    adamw_step(a, c);
    adamw_step(b, c);
    EXPECT_EQ(a.param.to_floats(), b.param.to_floats()) << d;
    EXPECT_EQ(a.m.to_floats(), b.m.to_floats()) << d;
    EXPECT_EQ(a.v.to_floats(), b.v.to_floats()) << d;
    EXPECT_NE(a.param.to_floats(), make_state(n, DType::f32, 90).param.to_floats()) << "the step moved nothing";
  }
  AdamWParam bad = make_state(64, DType::f32, 92);
  bad.grad = Tensor::zeros({8, 8}, DType::f32);
  bad.grad_rotated = true;
  EXPECT_THROW(adamw_step(bad, AdamWConfig{}), Error);  // the shapes differ
}

TEST(AdamW, Errors) {
  const int64_t n = 16;
  const AdamWConfig c;
  auto good = [&] { return make_state(n, DType::f32, 90); };
  EXPECT_NO_THROW(adamw_step(good(), c));
  {
    AdamWParam a = good();
    a.m = Tensor::zeros({n + 1}, DType::f32);
    EXPECT_THROW(adamw_step(a, c), Error);
  }
  {
    AdamWParam a = good();
    a.grad = Tensor::zeros({n}, DType::f16);  // f32 or bf16 only
    EXPECT_THROW(adamw_step(a, c), Error);
  }
  {
    AdamWParam a = good();
    a.v = Tensor::zeros({n}, DType::bf16);  // not the param's dtype
    EXPECT_THROW(adamw_step(a, c), Error);
  }
  {
    AdamWParam a = good();
    a.param = Tensor::zeros({n}, DType::e4m3);
    EXPECT_THROW(adamw_step(a, c), Error);
  }
  {
    AdamWParam a = make_state(n, DType::bf16, 91);
    a.param_bf16 = Tensor::zeros({n}, DType::bf16);  // only with f32 master weights
    EXPECT_THROW(adamw_step(a, c), Error);
  }
  {
    AdamWParam a = good();
    a.param_bf16 = Tensor::zeros({n}, DType::f32);
    EXPECT_THROW(adamw_step(a, c), Error);
    a.param_bf16 = Tensor::zeros({n - 1}, DType::bf16);
    EXPECT_THROW(adamw_step(a, c), Error);
  }
  {
    AdamWParam a = good();
    a.m = Tensor();
    EXPECT_THROW(adamw_step(a, c), Error);
  }
  {
    AdamWParam a = good();  // grad_rows: one i8 flag per row of the gradient
    a.grad = Tensor::zeros({4, 4}, DType::f32);
    a.grad_rows = Tensor::zeros({4}, DType::i8);
    EXPECT_NO_THROW(adamw_step(a, c));
    a.grad_rows = Tensor::zeros({3}, DType::i8);
    EXPECT_THROW(adamw_step(a, c), Error);
    a.grad_rows = Tensor::zeros({4}, DType::f32);
    EXPECT_THROW(adamw_step(a, c), Error);
    EXPECT_THROW(global_norm_squared({a.grad}, {Tensor::zeros({3}, DType::i8)}), Error);
    EXPECT_THROW(global_norm_squared({a.grad, a.grad}, {Tensor()}), Error);  // one per gradient
  }
  EXPECT_THROW(adamw_step(good(), c, Tensor::zeros({2}, DType::f32)), Error);
  EXPECT_THROW(adamw_step(good(), c, Tensor::zeros({1}, DType::bf16)), Error);
  AdamWConfig bad = c;
  bad.step = 0;
  EXPECT_THROW(adamw_step(good(), bad), Error);
  bad = c;
  bad.beta2 = 1.0f;
  EXPECT_THROW(adamw_step(good(), bad), Error);
  EXPECT_THROW(global_norm_squared({}), Error);
  EXPECT_THROW(global_norm_squared(std::vector<Tensor>{Tensor::zeros({4}, DType::f16)}), Error);
  EXPECT_THROW(clip_coefficient(Tensor::zeros({2}, DType::f32), 1.0f), Error);
}

// ---- CUDA against CPU ---------------------------------------------------------------

TEST(LossOptimCuda, MatchesCpu) {
  HALO_REQUIRE_CUDA();
  const auto results = loss_optim_cuda_checks(false);
  ASSERT_FALSE(results.empty());
  int failed = 0;
  for (const CheckResult& r : results) {
    if (!r.ok) ++failed;
    EXPECT_TRUE(r.ok) << r.name << ": error " << r.error << " (tolerance " << r.tolerance << "): " << r.detail;
  }
  std::printf("%zu CUDA loss/optimizer checks, %d failed\n", results.size(), failed);
}

}  // namespace
}  // namespace halo
