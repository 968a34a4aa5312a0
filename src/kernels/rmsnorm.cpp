// RMSNorm: argument checks, the CPU implementation (the reference) and the
// device dispatch (rmsnorm.cu).
#include "kernels/rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "core/error.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace detail {
void rmsnorm_forward_cuda(const Tensor& x, const Tensor* branch, Tensor* residual_out, const Tensor& w, float eps,
                          Tensor& y, Tensor& rstd);
void rmsnorm_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                           const Tensor* dresidual, Tensor& dx, Tensor& dw);
}  // namespace detail
#endif

namespace {

bool is_activation(DType t) { return t == DType::f32 || t == DType::bf16; }

// Checks an activation operand against x ([rows, d] after flattening).
void check_like(const Tensor& t, const Tensor& x, const char* what) {
  HALO_CHECK(t.defined(), what, ": undefined tensor");
  check_same_device(t, x, what);
  HALO_CHECK(t.ndim() >= 1 && t.size(-1) == x.size(-1) && t.numel() == x.numel(), what, ": expected the shape of ",
             x.describe(), ", got ", t.describe());
  HALO_CHECK(is_activation(t.dtype()), what, ": f32 or bf16 expected, got ", t.describe());
  HALO_CHECK(!x.is_cuda() || t.dtype() == x.dtype(), what, ": on the GPU all activations share one dtype: ",
             t.describe(), " vs ", x.describe());
}

// Checks x, w and rstd; returns {rows, d}.
std::pair<int64_t, int64_t> check_common(const Tensor& x, const Tensor& w, const Tensor& rstd, const char* op) {
  HALO_CHECK(x.defined() && x.ndim() >= 1, op, ": x must have at least one dimension");
  HALO_CHECK(is_activation(x.dtype()), op, ": x must be f32 or bf16, got ", x.describe());
  const int64_t d = x.size(-1);
  HALO_CHECK(d > 0, op, ": empty rows in ", x.describe());
  const int64_t rows = x.numel() / d;
  check_shape(w, {d}, op);
  HALO_CHECK(is_activation(w.dtype()), op, ": w must be f32 or bf16, got ", w.describe());
  check_same_device(x, w, op);
  check_dtype(rstd, DType::f32, op);
  HALO_CHECK(rstd.numel() == rows, op, ": rstd must hold one value per row (", rows, "), got ", rstd.describe());
  check_same_device(x, rstd, op);
  HALO_CHECK(!x.is_cuda() || d <= 16384, op, ": the CUDA kernels take rows of up to 16384 elements, got ", d);
  return {rows, d};
}

inline float ld(const Tensor& t, int64_t i) { return load_float(t.data(), t.dtype(), i); }
inline void st(Tensor& t, int64_t i, float v) { store_float(t.data(), t.dtype(), i, v); }

// CPU forward over rows; with branch, x := round(x + branch) is stored to residual_out first.
void forward_cpu(const Tensor& x, const Tensor* branch, Tensor* residual_out, const Tensor& w, float eps, Tensor& y,
                 Tensor& rstd, int64_t rows, int64_t d) {
  const Tensor& src = branch ? *residual_out : x;  // what the norm reads
  float* r = rstd.data_as<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t o = i * d;
    if (branch)
      for (int64_t c = 0; c < d; ++c) st(*residual_out, o + c, ld(x, o + c) + ld(*branch, o + c));
    double ss = 0.0;
    for (int64_t c = 0; c < d; ++c) {
      const double v = ld(src, o + c);
      ss += v * v;
    }
    const float rs = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(d)) + eps);
    r[i] = rs;
    for (int64_t c = 0; c < d; ++c) st(y, o + c, ld(src, o + c) * rs * ld(w, c));
  }
}

}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  const auto [rows, d] = check_common(x, w, rstd, "rmsnorm_forward");
  check_like(y, x, "rmsnorm_forward y");
  if (rows == 0) return;
  if (x.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::rmsnorm_forward_cuda(x, nullptr, nullptr, w, eps, y, rstd);
    return;
#endif
  }
  forward_cpu(x, nullptr, nullptr, w, eps, y, rstd, rows, d);
}

void residual_rmsnorm_forward(const Tensor& residual, const Tensor& branch, const Tensor& w, float eps,
                              Tensor& residual_out, Tensor& y, Tensor& rstd) {
  const auto [rows, d] = check_common(residual, w, rstd, "residual_rmsnorm_forward");
  check_like(branch, residual, "residual_rmsnorm_forward branch");
  check_like(residual_out, residual, "residual_rmsnorm_forward residual_out");
  check_like(y, residual, "residual_rmsnorm_forward y");
  HALO_CHECK(y.data() != residual_out.data(), "residual_rmsnorm_forward: y and residual_out must differ");
  if (rows == 0) return;
  if (residual.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::rmsnorm_forward_cuda(residual, &branch, &residual_out, w, eps, y, rstd);
    return;
#endif
  }
  forward_cpu(residual, &branch, &residual_out, w, eps, y, rstd, rows, d);
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      const Tensor* dresidual, Tensor& dx, Tensor& dw) {
  const auto [rows, d] = check_common(x, w, rstd, "rmsnorm_backward");
  check_like(dy, x, "rmsnorm_backward dy");
  check_like(dx, x, "rmsnorm_backward dx");
  if (dresidual) check_like(*dresidual, x, "rmsnorm_backward dresidual");
  check_shape(dw, {d}, "rmsnorm_backward dw");
  check_dtype(dw, DType::f32, "rmsnorm_backward dw");
  check_same_device(x, dw, "rmsnorm_backward dw");
  if (rows == 0) return;
  if (x.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::rmsnorm_backward_cuda(dy, x, w, rstd, dresidual, dx, dw);
    return;
#endif
  }
  const float* r = rstd.data_as<float>();
  // dw first: dx may alias dy or x. Column blocks of 64, rows in order, f64 sums.
  float* g = dw.data_as<float>();
  const int64_t blocks = (d + 63) / 64;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * 64, c1 = std::min(d, c0 + 64);
    double acc[64] = {};
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += static_cast<double>(ld(dy, i * d + c)) * (ld(x, i * d + c) * r[i]);
    for (int64_t c = c0; c < c1; ++c) g[c] = static_cast<float>(g[c] + acc[c - c0]);
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t o = i * d;
    double dot = 0.0;
    for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(ld(dy, o + c) * ld(w, c)) * (ld(x, o + c) * r[i]);
    const float s = r[i] * static_cast<float>(dot / static_cast<double>(d));  // rstd * mean
    for (int64_t c = 0; c < d; ++c) {
      const float xhat = ld(x, o + c) * r[i], gw = ld(dy, o + c) * ld(w, c);
      float v = r[i] * gw;
      if (dresidual) v += ld(*dresidual, o + c);
      v -= s * xhat;
      st(dx, o + c, v);
    }
  }
}

}  // namespace halo
