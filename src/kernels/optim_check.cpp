// The CUDA cross-entropy and AdamW against their CPU twins on the same inputs.
//
// Cross-entropy: the GPU takes the logits as bf16 (or f32), the CPU the same
// values as f32 (f64 sums). Losses agree within 2e-5 relative (f32 sums and the
// ex2 unit's few-ulp exponentials against f64); the f32 gradient likewise; the
// bf16 gradient is rounded to bf16 on the GPU only, hence 4e-3 (relative
// rounding of bf16 is at most 2^-9 per element).
// AdamW: the same IEEE f32 operations on both sides (adamw.h), stochastic
// rounding included, so p, m, v and the bf16 copy must be bitwise equal (error:
// the largest distance in units in the last place of the stored format).
// Gradient norm: f64 partial sums in different orders, 1e-6 relative. The
// gradient is f32 or bf16 (read exactly on both sides: the same tolerances).
// AdamW with a gradient in the rotated basis: see adamw_rotated_checks.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "kernels/adamw.h"
#include "kernels/cross_entropy.h"
#include "kernels/selfcheck.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace {

// n host values of `scale` * normal (never exactly zero), plus `offset`, stored as dtype.
Tensor host_normal(const Shape& shape, DType dtype, uint64_t seed, float scale, float offset = 0.0f) {
  Tensor t = Tensor::empty(shape, dtype);
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float x = normal01(seed, 0, static_cast<uint64_t>(i));
    if (x == 0.0f) x = 1.0f;
    store_float(t.data(), dtype, i, scale * x + offset);
  }
  return t;
}

// Largest distance in ulps of `dtype` between two tensors of equal size (0 if bitwise equal).
double max_ulps(const Tensor& a, const Tensor& b, DType dtype) {
  const std::vector<float> x = a.to_floats(), y = b.to_floats();
  if (x.size() != y.size()) return 1e30;
  const int shift = dtype == DType::bf16 ? 16 : 0;
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const uint32_t bx = float_bits(x[i]), by = float_bits(y[i]);
    if (bx == by) continue;
    if ((bx ^ by) >> 31) {
      worst = std::max(worst, 1e30);  // different signs
      continue;
    }
    const int64_t d = static_cast<int64_t>(bx >> shift) - static_cast<int64_t>(by >> shift);
    worst = std::max(worst, static_cast<double>(d < 0 ? -d : d));
  }
  return worst;
}

// A copy of x on `device` (always a new buffer, even on the same device).
Tensor copy_to(const Tensor& x, Device device) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), device);
  y.copy_from(x);
  return y;
}

std::string size_name(int64_t n, int64_t V) { return std::to_string(n) + "x" + std::to_string(V); }

// Targets uniform over the vocabulary, every 7th token ignored (-100).
Tensor make_targets(int64_t n, int64_t V, uint64_t seed) {
  Tensor t = Tensor::empty({n}, DType::i32);
  for (int64_t i = 0; i < n; ++i)
    t.data_as<int32_t>()[i] =
        i % 7 == 3 ? -100 : static_cast<int32_t>(std::min<int64_t>(V - 1, uniform01(seed, 9, i) * V));
  return t;
}

void cross_entropy_checks(int64_t n, int64_t V, DType dtype, std::vector<CheckResult>& out) {
  const std::string tag = std::string(dtype_name(dtype)) + " " + size_name(n, V);
  const Tensor logits = host_normal({n, V}, dtype, 11 + V, 3.0f);  // values as the GPU sees them
  const Tensor targets = make_targets(n, V, 5);
  const float scale = 1.0f / static_cast<float>(n);

  CheckResult loss_res, grad_res, eval_res, sum_res;
  loss_res.name = "cross_entropy loss " + tag;
  grad_res.name = "cross_entropy gradient " + tag;
  eval_res.name = "cross_entropy_loss (eval) " + tag;
  sum_res.name = "sum_losses " + tag;
  loss_res.tolerance = eval_res.tolerance = 2e-5;
  grad_res.tolerance = dtype == DType::bf16 ? 4e-3 : 2e-5;
  sum_res.tolerance = 1e-6;
  try {
    // CPU reference on the same values in f32.
    Tensor cpu_x = copy_to(logits, Device::cpu).to(DType::f32);
    Tensor cpu_loss = Tensor::empty({n}, DType::f32);
    cross_entropy_forward_backward(cpu_x, targets, cpu_loss, scale);
    const std::vector<float> ref_loss = cpu_loss.to_floats(), ref_grad = cpu_x.to_floats();

    const Tensor gpu_targets = copy_to(targets, Device::cuda);
    Tensor gpu_x = copy_to(logits, Device::cuda);
    Tensor gpu_loss = Tensor::empty({n}, DType::f32, Device::cuda);
    cross_entropy_forward_backward(gpu_x, gpu_targets, gpu_loss, scale);
    loss_res.error = relative_error(gpu_loss.to_floats(), ref_loss);
    grad_res.error = relative_error(gpu_x.to_floats(), ref_grad);

    // Evaluation: the same losses, and the logits stay as they were.
    Tensor gpu_x2 = copy_to(logits, Device::cuda);
    Tensor gpu_loss2 = Tensor::empty({n}, DType::f32, Device::cuda);
    cross_entropy_loss(gpu_x2, gpu_targets, gpu_loss2);
    eval_res.error = relative_error(gpu_loss2.to_floats(), ref_loss);
    const double changed = max_ulps(gpu_x2, logits, dtype);
    if (changed != 0.0) {
      eval_res.error = 1e30;
      eval_res.detail = "the logits were modified";
    }

    // Sum on the device (twice, the second accumulating) against f64 on the host.
    Tensor total = Tensor::empty({1}, DType::f32, Device::cuda);
    sum_losses(gpu_loss, total, false);
    sum_losses(gpu_loss, total, true);
    double ref_sum = 0.0;
    for (float l : gpu_loss.to_floats()) ref_sum += l;
    sum_res.error = relative_error(total.to_floats(), {static_cast<float>(2.0 * ref_sum)});
  } catch (const std::exception& e) {
    loss_res.error = grad_res.error = eval_res.error = sum_res.error = NAN;
    loss_res.detail = grad_res.detail = eval_res.detail = sum_res.detail = e.what();
  }
  for (CheckResult* r : {&loss_res, &grad_res, &eval_res, &sum_res}) {
    r->ok = r->error <= r->tolerance;
    out.push_back(*r);
  }
}

// Parameters and state of `n` elements in the given storage, on the host; `offset`
// elements are skipped at the start of every buffer (an unaligned view).
AdamWParam make_param(int64_t n, DType dtype, bool bf16_copy, int64_t offset, uint64_t seed,
                      DType grad_dtype = DType::f32) {
  auto view = [&](const Tensor& full) { return full.rows(offset, n); };
  AdamWParam t;
  t.param = view(host_normal({n + offset}, dtype, seed, 0.02f));
  const Tensor m = host_normal({n + offset}, dtype, seed + 1, 1e-3f);
  t.m = view(m);
  Tensor v = host_normal({n + offset}, DType::f32, seed + 2, 1e-3f);
  for (int64_t i = 0; i < v.numel(); ++i) {
    const float x = v.data_as<float>()[i];
    v.data_as<float>()[i] = x * x + 1e-12f;
  }
  t.v = view(v.to(dtype));
  t.grad = view(Tensor::zeros({n + offset}, grad_dtype));
  if (bf16_copy) t.param_bf16 = view(Tensor::zeros({n + offset}, DType::bf16));
  return t;
}

// The same buffers (same offset) on `device`.
AdamWParam copy_param(const AdamWParam& h, Device device, int64_t offset) {
  auto move = [&](const Tensor& x) {
    if (!x.defined()) return Tensor();
    Tensor full = Tensor::empty({x.numel() + offset}, x.dtype(), device);
    full.fill_zero();
    Tensor v = full.rows(offset, x.numel());
    v.copy_from(x);
    return v;
  };
  AdamWParam d = h;
  d.param = move(h.param);
  d.grad = move(h.grad);
  d.m = move(h.m);
  d.v = move(h.v);
  d.param_bf16 = move(h.param_bf16);
  return d;
}

// The AdamW settings of the checks: weight decay on, stochastic rounding as asked.
AdamWConfig check_config(bool sr, uint64_t seed) {
  AdamWConfig cfg;
  cfg.lr = 1e-3f;
  cfg.weight_decay = 0.1f;
  cfg.stochastic_rounding = sr;
  cfg.seed = seed;
  return cfg;
}

// " bf16 gradient" for a bf16 gradient, "" for f32.
std::string grad_tag(DType grad_dtype) { return grad_dtype == DType::bf16 ? " bf16 gradient" : ""; }

// Three steps of AdamW (gradients clipped through the device norm) on the GPU and the CPU.
void adamw_checks(int64_t n, DType dtype, bool sr, int64_t offset, DType grad_dtype, std::vector<CheckResult>& out) {
  const char* mode = dtype == DType::f32 ? "fp32-master" : (sr ? "bf16+sr" : "bf16");
  const std::string tag =
      std::string(mode) + " " + std::to_string(n) + (offset ? " unaligned" : "") + grad_tag(grad_dtype);
  CheckResult res, norm_res;
  res.name = "adamw " + tag;
  res.tolerance = 0.0;
  res.detail = "max ulps of p, m, v, bf16 copy over 3 steps";
  norm_res.name = "global_norm_squared " + tag;
  norm_res.tolerance = 1e-6;
  try {
    AdamWParam cpu = make_param(n, dtype, dtype == DType::f32, offset, 100 + n, grad_dtype);
    cpu.decay = !(dtype == DType::bf16 && !sr);  // one mode without weight decay
    cpu.id = 7;
    AdamWParam gpu = copy_param(cpu, Device::cuda, offset);
    const Tensor extra = host_normal({1001}, DType::f32, 3, 1e-2f);  // a second tensor in the norm
    const Tensor extra_gpu = copy_to(extra, Device::cuda);
    AdamWConfig cfg = check_config(sr, 1234);
    for (int64_t step = 1; step <= 3; ++step) {
      cfg.step = step;
      const Tensor g = host_normal({n}, grad_dtype, 200 + step, 1e-3f);
      cpu.grad.copy_from(g);
      gpu.grad.copy_from(g);
      // Norm about sqrt(n) * 1e-3: clipping to half of it is active.
      const float max_norm = 0.5f * 1e-3f * std::sqrt(static_cast<float>(n));
      const Tensor gpu_norm = global_norm_squared({gpu.grad, extra_gpu});
      const Tensor cpu_norm = global_norm_squared({cpu.grad, extra});
      norm_res.error = std::max(norm_res.error, relative_error(gpu_norm.to_floats(), cpu_norm.to_floats()));
      const Tensor gpu_scale = clip_coefficient(gpu_norm, max_norm);
      // The CPU takes the GPU's scale (the norms differ in the last bits).
      const Tensor cpu_scale = copy_to(gpu_scale, Device::cpu);
      const float ref_scale = detail::clip_coefficient_of(cpu_norm.to_floats()[0], max_norm);
      if (!(std::fabs(cpu_scale.to_floats()[0] - ref_scale) <= 1e-6 * ref_scale))
        norm_res.error = std::max(norm_res.error, 1e30);
      adamw_step(gpu, cfg, gpu_scale);
      adamw_step(cpu, cfg, cpu_scale);
    }
    const double e = std::max({max_ulps(gpu.param, cpu.param, dtype), max_ulps(gpu.m, cpu.m, dtype),
                               max_ulps(gpu.v, cpu.v, dtype)});
    res.error = e;
    if (dtype == DType::f32) res.error = std::max(e, max_ulps(gpu.param_bf16, cpu.param_bf16, DType::bf16));
  } catch (const std::exception& ex) {
    res.error = norm_res.error = NAN;
    res.detail = norm_res.detail = ex.what();
  }
  for (CheckResult* r : {&res, &norm_res}) {
    r->ok = r->error <= r->tolerance;
    out.push_back(*r);
  }
}

// Three steps with the gradient in the rotated basis (AdamWParam::grad_rotated),
// [rows, d]: the GPU turns it back inside the update (d = 2048, 4096, 8192) or
// by hadamard_rows first (other d), the CPU always by hadamard_rows. The two
// rotations round differently (f32 sums in other orders, relative ~1e-7), so
// this compares by relative error: 1e-5 for f32 storage; bf16 storage rounds a
// few elements to the neighbouring bf16 value (2^-8 relative each), 1e-3.
void adamw_rotated_checks(int64_t rows, int64_t d, DType dtype, bool sr, DType grad_dtype,
                          std::vector<CheckResult>& out) {
  const char* mode = dtype == DType::f32 ? "fp32-master" : (sr ? "bf16+sr" : "bf16");
  CheckResult res;
  res.name = std::string("adamw rotated gradient ") + mode + " " + std::to_string(rows) + "x" + std::to_string(d) +
             grad_tag(grad_dtype);
  res.tolerance = dtype == DType::f32 ? 1e-5 : 1e-3;
  res.detail = "relative error of p, m, v, bf16 copy over 3 steps";
  try {
    const int64_t n = rows * d;
    const auto as_rows = [&](AdamWParam t) {
      for (Tensor* x : {&t.param, &t.grad, &t.m, &t.v, &t.param_bf16})
        if (x->defined()) *x = x->view({rows, d});
      t.grad_rotated = true;
      return t;
    };
    AdamWParam cpu = as_rows(make_param(n, dtype, dtype == DType::f32, 0, 300 + d, grad_dtype));
    cpu.id = 3;
    AdamWParam gpu = as_rows(copy_param(cpu, Device::cuda, 0));
    Tensor scale = Tensor::empty({1}, DType::f32);
    scale.data_as<float>()[0] = 0.7f;
    const Tensor scale_gpu = copy_to(scale, Device::cuda);
    AdamWConfig cfg = check_config(sr, 99);
    for (int64_t step = 1; step <= 3; ++step) {
      cfg.step = step;
      const Tensor g = host_normal({rows, d}, grad_dtype, 400 + step, 1e-3f);
      cpu.grad.copy_from(g);
      gpu.grad.copy_from(g);
      adamw_step(gpu, cfg, scale_gpu);
      adamw_step(cpu, cfg, scale);
    }
    const std::pair<const Tensor*, const Tensor*> pairs[] = {
        {&gpu.param, &cpu.param}, {&gpu.m, &cpu.m}, {&gpu.v, &cpu.v}, {&gpu.param_bf16, &cpu.param_bf16}};
    for (const auto& [a, b] : pairs)
      if (a->defined()) res.error = std::max(res.error, relative_error(a->to_floats(), b->to_floats()));
  } catch (const std::exception& ex) {
    res.error = NAN;
    res.detail = ex.what();
  }
  res.ok = res.error <= res.tolerance;
  out.push_back(res);
}

// A NaN in the gradient: the norm and the clip coefficient are NaN and the step
// writes nothing.
void adamw_nan_check(DType dtype, std::vector<CheckResult>& out) {
  CheckResult res;
  res.name = std::string("adamw skips a non-finite gradient ") + (dtype == DType::f32 ? "fp32-master" : "bf16");
  res.tolerance = 0.0;
  try {
    const int64_t n = 4099;
    AdamWParam host = make_param(n, dtype, dtype == DType::f32, 0, 77);
    Tensor g = host_normal({n}, DType::f32, 78, 1e-3f);
    g.data_as<float>()[1234] = NAN;
    host.grad.copy_from(g);
    AdamWParam gpu = copy_param(host, Device::cuda, 0);
    const Tensor norm = global_norm_squared({gpu.grad});
    const Tensor scale = clip_coefficient(norm, 1.0f);
    const AdamWConfig cfg = check_config(true, 0);
    adamw_step(gpu, cfg, scale);
    res.error = std::max({max_ulps(gpu.param, host.param, dtype), max_ulps(gpu.m, host.m, dtype),
                          max_ulps(gpu.v, host.v, dtype)});
    if (dtype == DType::f32) res.error = std::max(res.error, max_ulps(gpu.param_bf16, host.param_bf16, DType::bf16));
    if (!std::isnan(norm.to_floats()[0]) || !std::isnan(scale.to_floats()[0])) {
      res.error = 1e30;
      res.detail = "norm or clip coefficient not NaN";
    }
  } catch (const std::exception& ex) {
    res.error = NAN;
    res.detail = ex.what();
  }
  res.ok = res.error <= res.tolerance;
  out.push_back(res);
}

// A gradient whose rows are flagged (AdamWParam::grad_rows): the GPU, given the
// flags and garbage in the unflagged rows, must give the CPU's result for the
// same gradient with zeros there (bitwise; the norm to f64 rounding).
void adamw_grad_rows_check(int64_t rows, int64_t d, DType dtype, std::vector<CheckResult>& out) {
  CheckResult res;
  res.name = std::string("adamw and norm skip zero rows ") + (dtype == DType::f32 ? "fp32-master " : "bf16 ") +
             std::to_string(rows) + "x" + std::to_string(d);
  res.tolerance = 0.0;
  res.detail = "max ulps of p, m, v, bf16 copy; the norm's relative error counted as 1e30 above 1e-6";
  try {
    AdamWParam cpu = make_param(rows * d, dtype, dtype == DType::f32, 0, 500 + d);
    AdamWParam gpu = copy_param(cpu, Device::cuda, 0);
    Tensor flags = Tensor::empty({rows}, DType::i8);
    for (int64_t r = 0; r < rows; ++r) flags.data_as<int8_t>()[r] = uniform01(501, 0, r) < 0.3f ? 1 : 0;
    Tensor g = host_normal({rows, d}, DType::f32, 502, 1e-3f), g_gpu = host_normal({rows, d}, DType::f32, 503, 1.0f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < d; ++j)
        if (flags.data_as<int8_t>()[r])
          g_gpu.data_as<float>()[r * d + j] = g.data_as<float>()[r * d + j];
        else
          g.data_as<float>()[r * d + j] = 0.0f;
    cpu.grad = g.view({rows, d});
    gpu.grad = copy_to(g_gpu, Device::cuda).view({rows, d});
    gpu.grad_rows = copy_to(flags, Device::cuda);
    const Tensor norm_gpu = global_norm_squared({gpu.grad}, {gpu.grad_rows});
    const Tensor norm_cpu = global_norm_squared({cpu.grad});
    const bool norm_ok = relative_error(norm_gpu.to_floats(), norm_cpu.to_floats()) <= 1e-6;
    const AdamWConfig cfg = check_config(false, 0);
    adamw_step(gpu, cfg, Tensor());
    adamw_step(cpu, cfg, Tensor());
    res.error = std::max({max_ulps(gpu.param, cpu.param, dtype), max_ulps(gpu.m, cpu.m, dtype),
                          max_ulps(gpu.v, cpu.v, dtype), norm_ok ? 0.0 : 1e30});
    if (dtype == DType::f32) res.error = std::max(res.error, max_ulps(gpu.param_bf16, cpu.param_bf16, DType::bf16));
  } catch (const std::exception& ex) {
    res.error = NAN;
    res.detail = ex.what();
  }
  res.ok = res.error <= res.tolerance;
  out.push_back(res);
}

}  // namespace

std::vector<CheckResult> loss_optim_cuda_checks(bool full) {
  std::vector<CheckResult> out;
  cross_entropy_checks(37, 1000, DType::bf16, out);  // vector path
  cross_entropy_checks(37, 1001, DType::bf16, out);  // scalar path (V % 8 != 0)
  cross_entropy_checks(300, 4096, DType::f32, out);  // more rows than SMs
  if (full) {
    cross_entropy_checks(1024, 128256, DType::bf16, out);
    cross_entropy_checks(4096, 128256, DType::bf16, out);
    cross_entropy_checks(1024, 128256, DType::f32, out);
  }
  for (DType dtype : {DType::f32, DType::bf16})
    for (bool sr : {false, true}) {
      if (dtype == DType::f32 && sr) continue;  // stochastic rounding is for bf16 storage
      for (DType g : {DType::f32, DType::bf16}) {
        adamw_checks(1000003, dtype, sr, 0, g, out);  // vector path and a tail of 3
        adamw_checks(4101, dtype, sr, 1, g, out);     // unaligned: every element one by one
      }
      if (full) adamw_checks(int64_t{1} << 26, dtype, sr, 0, DType::f32, out);
    }
  if (full) adamw_checks(int64_t{1} << 26, DType::bf16, false, 0, DType::bf16, out);
  adamw_nan_check(DType::f32, out);
  adamw_nan_check(DType::bf16, out);
  adamw_grad_rows_check(301, 64, DType::f32, out);
  adamw_grad_rows_check(301, 64, DType::bf16, out);
  if (full) adamw_grad_rows_check(128256, 4096, DType::f32, out);
  // Rotated gradients: 11 rows end with a partial group of rows (8, 4, 2 per block);
  // 1536 is rotated back before the plain update.
  for (int64_t d : {2048, 4096, 8192, 1536}) {
    adamw_rotated_checks(11, d, DType::f32, false, DType::f32, out);
    adamw_rotated_checks(11, d, DType::bf16, false, DType::f32, out);
    adamw_rotated_checks(11, d, DType::bf16, true, DType::f32, out);
    adamw_rotated_checks(11, d, DType::bf16, false, DType::bf16, out);
  }
  adamw_rotated_checks(11, 4096, DType::f32, false, DType::bf16, out);
  if (full) {
    adamw_rotated_checks(4096, 4096, DType::f32, false, DType::f32, out);
    adamw_rotated_checks(4096, 4096, DType::bf16, false, DType::bf16, out);
  }
  return out;
}
#else
std::vector<CheckResult> loss_optim_cuda_checks(bool) { return {}; }
#endif

}  // namespace halo
