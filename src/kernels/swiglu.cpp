// SwiGLU: argument checks, the CPU implementation (the reference) and the
// device dispatch (swiglu.cu).
#include "kernels/swiglu.h"

#include "core/error.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace detail {
void swiglu_forward_cuda(const Tensor& g, const Tensor& u, Tensor& h);
void swiglu_backward_cuda(const Tensor& dh, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du);
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

}  // namespace halo
