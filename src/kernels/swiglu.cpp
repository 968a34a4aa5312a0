// SwiGLU: argument checks, the CPU implementation (the reference) and the
// device dispatch (swiglu.cu).
#include "kernels/swiglu.h"

#include <string>

#include "core/error.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace detail {
void swiglu_forward_cuda(const Tensor& g, const Tensor& u, Tensor& h);
void swiglu_backward_cuda(const Tensor& dh, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du);
void swiglu_forward_fused_cuda(const Tensor& gu, Tensor& h);
void swiglu_backward_fused_cuda(const Tensor& dh, const Tensor& gu, Tensor& dgu);
}  // namespace detail
#endif

namespace {

void check_operand(const Tensor& t, const Tensor& g, const char* what) {
  HALO_CHECK(t.defined(), what, ": undefined tensor");
  check_shape(t, g.shape(), what);
  check_same_device(t, g, what);
  HALO_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, what, ": f32 or bf16 expected, got ",
             t.describe());
  HALO_CHECK(!g.is_cuda() || t.dtype() == g.dtype(), what, ": on the GPU all tensors share one dtype: ",
             t.describe(), " vs ", g.describe());
}

inline float ld(const Tensor& t, int64_t i) { return load_float(t.data(), t.dtype(), i); }

// gu [rows, 2F] -> F; checks `t` is [rows, shape_f] in gu's rows (leading dims flattened).
int64_t fused_width(const Tensor& gu, const char* op) {
  HALO_CHECK(gu.defined() && gu.ndim() >= 1 && gu.size(-1) % 2 == 0, op, ": gate|up must be [rows, 2F], got ",
             gu.defined() ? gu.describe() : std::string("undefined"));
  HALO_CHECK(gu.dtype() == DType::f32 || gu.dtype() == DType::bf16, op, ": f32 or bf16 expected, got ", gu.describe());
  return gu.size(-1) / 2;
}

void check_fused(const Tensor& t, const Tensor& gu, int64_t cols, const char* what) {
  HALO_CHECK(t.defined() && t.ndim() >= 1 && t.size(-1) == cols && t.numel() / cols * gu.size(-1) == gu.numel(), what,
             ": expected [", gu.size(-1) ? gu.numel() / gu.size(-1) : 0, ", ", cols, "], got ",
             t.defined() ? t.describe() : std::string("undefined"));
  check_same_device(t, gu, what);
  HALO_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, what, ": f32 or bf16 expected, got ", t.describe());
  HALO_CHECK(!gu.is_cuda() || t.dtype() == gu.dtype(), what, ": on the GPU all tensors share one dtype: ",
             t.describe(), " vs ", gu.describe());
}

}  // namespace

void swiglu_forward(const Tensor& g, const Tensor& u, Tensor& h) {
  HALO_CHECK(g.defined(), "swiglu_forward: undefined gate");
  check_operand(g, g, "swiglu_forward gate");
  check_operand(u, g, "swiglu_forward up");
  check_operand(h, g, "swiglu_forward h");
  if (g.numel() == 0) return;
  if (g.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::swiglu_forward_cuda(g, u, h);
    return;
#endif
  }
  const int64_t n = g.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) store_float(h.data(), h.dtype(), i, silu(ld(g, i)) * ld(u, i));
}

void swiglu_backward(const Tensor& dh, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du) {
  HALO_CHECK(g.defined(), "swiglu_backward: undefined gate");
  check_operand(g, g, "swiglu_backward gate");
  check_operand(u, g, "swiglu_backward up");
  check_operand(dh, g, "swiglu_backward dh");
  check_operand(dg, g, "swiglu_backward dg");
  check_operand(du, g, "swiglu_backward du");
  HALO_CHECK(dg.data() != du.data(), "swiglu_backward: dg and du must differ");
  if (g.numel() == 0) return;
  if (g.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::swiglu_backward_cuda(dh, g, u, dg, du);
    return;
#endif
  }
  const int64_t n = g.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gv = ld(g, i), uv = ld(u, i), d = ld(dh, i);
    store_float(dg.data(), dg.dtype(), i, d * uv * silu_grad(gv));
    store_float(du.data(), du.dtype(), i, d * silu(gv));
  }
}

void swiglu_forward_fused(const Tensor& gu, Tensor& h) {
  const int64_t F = fused_width(gu, "swiglu_forward_fused");
  if (F == 0 || gu.numel() == 0) return;
  check_fused(h, gu, F, "swiglu_forward_fused h");
  if (gu.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::swiglu_forward_fused_cuda(gu, h);
    return;
#endif
  }
  const int64_t n = h.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / F, j = i % F;
    store_float(h.data(), h.dtype(), i, silu(ld(gu, r * 2 * F + j)) * ld(gu, r * 2 * F + F + j));
  }
}

void swiglu_backward_fused(const Tensor& dh, const Tensor& gu, Tensor& dgu) {
  const int64_t F = fused_width(gu, "swiglu_backward_fused");
  if (F == 0 || gu.numel() == 0) return;
  check_fused(dh, gu, F, "swiglu_backward_fused dh");
  check_fused(dgu, gu, 2 * F, "swiglu_backward_fused dgu");
  if (gu.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::swiglu_backward_fused_cuda(dh, gu, dgu);
    return;
#endif
  }
  const int64_t n = dh.numel();
  // Each (gate, up) pair is read before either of its gradients is written: in place is safe.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / F, j = i % F, ig = r * 2 * F + j, iu = ig + F;
    const float gv = ld(gu, ig), uv = ld(gu, iu), d = ld(dh, i);
    store_float(dgu.data(), dgu.dtype(), ig, d * uv * silu_grad(gv));
    store_float(dgu.data(), dgu.dtype(), iu, d * silu(gv));
  }
}

}  // namespace halo
