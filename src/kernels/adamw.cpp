#include "kernels/adamw.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "kernels/hadamard.h"

namespace halo {

#ifdef HALO_HAS_CUDA
void adamw_step_cuda(const AdamWParam& t, const detail::AdamWScalars& k, const Tensor& grad_scale, bool sr,
                     uint64_t seed, uint64_t stream);
void global_norm_squared_cuda(const std::vector<Tensor>& grads, const std::vector<Tensor>& grad_rows, Tensor& out);
void clip_coefficient_cuda(const Tensor& norm_sq, float max_norm, Tensor& out);
#endif

namespace detail {

AdamWScalars adamw_scalars(const AdamWConfig& cfg, bool decay) {
  const double t = static_cast<double>(cfg.step);
  const double bc1 = 1.0 - std::pow(static_cast<double>(cfg.beta1), t);
  const double bc2 = 1.0 - std::pow(static_cast<double>(cfg.beta2), t);
  AdamWScalars k;
  k.beta1 = cfg.beta1;
  k.one_minus_beta1 = static_cast<float>(1.0 - cfg.beta1);
  k.beta2 = cfg.beta2;
  k.one_minus_beta2 = static_cast<float>(1.0 - cfg.beta2);
  k.step_size = static_cast<float>(cfg.lr / bc1);
  k.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  k.eps = cfg.eps;
  k.decay = decay ? static_cast<float>(static_cast<double>(cfg.lr) * cfg.weight_decay) : 0.0f;
  return k;
}

}  // namespace detail

namespace {

void check_grad_dtype(const Tensor& g, const char* what) {
  HALO_CHECK(g.dtype() == DType::f32 || g.dtype() == DType::bf16, what, " must be f32 or bf16, got ", g.describe());
}

// A bf16 host gradient as f32 (exact), for the CPU loops; others unchanged.
Tensor f32_on_host(const Tensor& g) { return g.dtype() == DType::bf16 && !g.is_cuda() ? g.to(DType::f32) : g; }

// grad_rows (if defined) as AdamWParam::grad_rows says, for gradient g.
void check_grad_rows(const Tensor& grad_rows, const Tensor& g, const char* op) {
  if (!grad_rows.defined()) return;
  const int64_t rows = g.ndim() >= 1 && g.size(-1) > 0 ? g.numel() / g.size(-1) : -1;
  HALO_CHECK(grad_rows.dtype() == DType::i8 && grad_rows.ndim() == 1 && grad_rows.size(0) == rows, op,
             ": grad_rows must be i8 [", rows, "] (one flag per row of the gradient ", g.describe(), "), got ",
             grad_rows.describe());
  check_same_device(grad_rows, g, op);
}

void check_adamw(const AdamWParam& t, const AdamWConfig& cfg, const Tensor& grad_scale) {
  const char* op = "adamw_step";
  HALO_CHECK(cfg.step >= 1, op, ": step must be >= 1, got ", cfg.step);
  HALO_CHECK(cfg.beta1 >= 0.0f && cfg.beta1 < 1.0f && cfg.beta2 >= 0.0f && cfg.beta2 < 1.0f, op,
             ": betas must lie in [0, 1), got ", cfg.beta1, " and ", cfg.beta2);
  HALO_CHECK(std::isfinite(cfg.lr) && cfg.eps >= 0.0f && cfg.weight_decay >= 0.0f, op, ": bad lr ", cfg.lr,
             ", eps ", cfg.eps, " or weight_decay ", cfg.weight_decay);
  HALO_CHECK(t.param.defined() && t.grad.defined() && t.m.defined() && t.v.defined(), op,
             ": param, grad, m and v must all be given");
  const DType dt = t.param.dtype();
  HALO_CHECK(dt == DType::f32 || dt == DType::bf16, op, ": param must be f32 (master) or bf16, got ",
             t.param.describe());
  check_grad_dtype(t.grad, "adamw_step grad");
  check_dtype(t.m, dt, "adamw_step m (the param's dtype)");
  check_dtype(t.v, dt, "adamw_step v (the param's dtype)");
  const int64_t n = t.param.numel();
  for (const Tensor* x : {&t.grad, &t.m, &t.v}) {
    HALO_CHECK(x->numel() == n, op, ": ", x->describe(), " does not match param ", t.param.describe());
    check_same_device(t.param, *x, op);
  }
  if (t.grad_rotated)
    HALO_CHECK(t.param.ndim() >= 1 && t.grad.shape() == t.param.shape(), op,
               ": a rotated gradient needs the param's shape (rows of the rotated length), got ",
               t.grad.describe(), " for ", t.param.describe());
  if (t.param_bf16.defined()) {
    HALO_CHECK(dt == DType::f32, op, ": param_bf16 is for f32 master weights, param is ", t.param.describe());
    check_dtype(t.param_bf16, DType::bf16, "adamw_step param_bf16");
    HALO_CHECK(t.param_bf16.numel() == n, op, ": param_bf16 ", t.param_bf16.describe(), " does not match param ",
               t.param.describe());
    check_same_device(t.param, t.param_bf16, op);
  }
  check_grad_rows(t.grad_rows, t.grad, op);
  if (grad_scale.defined()) {
    check_shape(grad_scale, {1}, "adamw_step grad_scale");
    check_dtype(grad_scale, DType::f32, "adamw_step grad_scale");
    check_same_device(t.param, grad_scale, op);
  }
}

// Whether the GPU kernel rotates t's gradient back itself (rows of an S width,
// every buffer 16-byte aligned).
bool rotation_fuses(const AdamWParam& t) {
  const auto aligned = [](const Tensor& x) { return !x.defined() || reinterpret_cast<uintptr_t>(x.data()) % 16 == 0; };
  return hadamard_s_width(t.param.size(-1)) && aligned(t.param) && aligned(t.grad) && aligned(t.m) &&
         aligned(t.v) && aligned(t.param_bf16);
}

void adamw_cpu(const AdamWParam& t, const detail::AdamWScalars& k, float gs, bool sr, uint64_t seed,
               uint64_t stream) {
  const int64_t n = t.param.numel();
  const Tensor grad = f32_on_host(t.grad);
  const float* g = grad.data_as<float>();
  if (t.param.dtype() == DType::f32) {
    float* p = t.param.data_as<float>();
    float* m = t.m.data_as<float>();
    float* v = t.v.data_as<float>();
    uint16_t* pb = t.param_bf16.defined() ? t.param_bf16.data_as<uint16_t>() : nullptr;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      float pi = p[i], mi = m[i], vi = v[i];
      detail::adamw_update(pi, mi, vi, detail::mul_rn(g[i], gs), k);
      p[i] = pi;
      m[i] = mi;
      v[i] = vi;
      if (pb) pb[i] = float_to_bf16_bits(pi);
    }
    return;
  }
  uint16_t* p = t.param.data_as<uint16_t>();
  uint16_t* m = t.m.data_as<uint16_t>();
  uint16_t* v = t.v.data_as<uint16_t>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float pi = bf16_bits_to_float(p[i]), mi = bf16_bits_to_float(m[i]), vi = bf16_bits_to_float(v[i]);
    detail::adamw_update(pi, mi, vi, detail::mul_rn(g[i], gs), k);
    if (sr) {
      float up, um, uv;
      detail::adamw_uniforms(seed, stream, static_cast<uint64_t>(i), up, um, uv);
      p[i] = detail::float_to_bf16_stochastic(pi, up);
      m[i] = detail::float_to_bf16_stochastic(mi, um);
      v[i] = detail::float_to_bf16_stochastic(vi, uv);
    } else {
      p[i] = float_to_bf16_bits(pi);
      m[i] = float_to_bf16_bits(mi);
      v[i] = float_to_bf16_bits(vi);
    }
  }
}

}  // namespace

void adamw_step(const AdamWParam& t, const AdamWConfig& cfg, const Tensor& grad_scale) {
  check_adamw(t, cfg, grad_scale);
  const detail::AdamWScalars k = detail::adamw_scalars(cfg, t.decay);
  const bool sr = cfg.stochastic_rounding && t.param.dtype() == DType::bf16;
  const uint64_t stream = detail::adamw_stream(cfg.step, t.id);
  if (t.param.numel() == 0) return;
  if (t.grad_rotated && !(t.param.is_cuda() && rotation_fuses(t))) {  // turned back first
    AdamWParam u = t;
    u.grad_rotated = false;
    u.grad = Tensor::empty(t.grad.shape(), DType::f32, t.grad.device());
    hadamard_rows(t.grad, u.grad, /*transpose=*/true);
    adamw_step(u, cfg, grad_scale);
    return;
  }
  if (t.param.is_cuda()) {
#ifdef HALO_HAS_CUDA
    adamw_step_cuda(t, k, grad_scale, sr, cfg.seed, stream);
    return;
#endif
  }
  const float gs = grad_scale.defined() ? grad_scale.data_as<float>()[0] : 1.0f;
  if (!detail::finite_f32(gs)) return;  // skipped step: nothing is written
  adamw_cpu(t, k, gs, sr, cfg.seed, stream);
}

Tensor global_norm_squared(const std::vector<Tensor>& grads, const std::vector<Tensor>& grad_rows) {
  HALO_CHECK(!grads.empty(), "global_norm_squared: no tensors");
  HALO_CHECK(grad_rows.empty() || grad_rows.size() == grads.size(), "global_norm_squared: ", grad_rows.size(),
             " row flags for ", grads.size(), " gradients");
  for (size_t i = 0; i < grads.size(); ++i) {
    check_grad_dtype(grads[i], "global_norm_squared gradient");
    check_same_device(grads[0], grads[i], "global_norm_squared");
    if (!grad_rows.empty()) check_grad_rows(grad_rows[i], grads[i], "global_norm_squared");
  }
  if (grads[0].is_cuda()) {
#ifdef HALO_HAS_CUDA
    Tensor out;
    global_norm_squared_cuda(grads, grad_rows, out);
    return out;
#endif
  }
  // Fixed chunks summed in parallel, then in order: the same sum for any thread count.
  constexpr int64_t kChunk = 1 << 16;
  double total = 0.0;
  for (const Tensor& g32 : grads) {
    const Tensor g = f32_on_host(g32);
    const float* x = g.data_as<float>();
    const int64_t n = g.numel(), chunks = (n + kChunk - 1) / kChunk;
    std::vector<double> part(static_cast<size_t>(chunks));
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      double s = 0.0;
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) s += static_cast<double>(x[i]) * x[i];
      part[static_cast<size_t>(c)] = s;
    }
    for (double s : part) total += s;
  }
  Tensor out = Tensor::empty({1}, DType::f32);
  out.data_as<float>()[0] = static_cast<float>(total);
  return out;
}

Tensor clip_coefficient(const Tensor& norm_sq, float max_norm) {
  check_shape(norm_sq, {1}, "clip_coefficient norm_sq");
  check_dtype(norm_sq, DType::f32, "clip_coefficient norm_sq");
  Tensor out = Tensor::empty({1}, DType::f32, norm_sq.device());
  if (out.is_cuda()) {
#ifdef HALO_HAS_CUDA
    clip_coefficient_cuda(norm_sq, max_norm, out);
    return out;
#endif
  }
  out.data_as<float>()[0] = detail::clip_coefficient_of(norm_sq.data_as<float>()[0], max_norm);
  return out;
}

}  // namespace halo
