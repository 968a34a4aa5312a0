// RoPE: argument checks, the CPU implementation (the reference) and the
// device dispatch (rope.cu).
#include "kernels/rope.h"

#include <cmath>
#include <vector>

#include "core/error.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace detail {
void rope_cuda(Tensor& x, const Tensor& positions, const Tensor& inv_freq, bool backward);
}  // namespace detail
#endif

namespace {

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, bool backward) {
  const char* op = backward ? "rope_backward" : "rope_forward";
  HALO_CHECK(x.defined() && x.ndim() >= 2, op, ": x must be [tokens, heads, D], got ",
             x.defined() ? x.describe() : std::string("undefined"));
  HALO_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, op, ": x must be f32 or bf16, got ", x.describe());
  const int64_t D = x.size(-1), heads = x.size(-2);
  HALO_CHECK(D > 0 && D % 2 == 0, op, ": head_dim must be even, got ", x.describe());
  const int64_t tokens = heads ? x.numel() / (heads * D) : 0;
  check_dtype(positions, DType::i32, op);
  HALO_CHECK(positions.numel() == tokens, op, ": one position per token (", tokens, ") expected, got ",
             positions.describe());
  check_shape(inv_freq, {D / 2}, op);
  check_dtype(inv_freq, DType::f32, op);
  check_same_device(x, positions, op);
  check_same_device(x, inv_freq, op);
  if (x.numel() == 0) return;
  if (x.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::rope_cuda(x, positions, inv_freq, backward);
    return;
#endif
  }
  const int64_t half = D / 2;
  const int32_t* pos = positions.data_as<int32_t>();
  const float* f = inv_freq.data_as<float>();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<float> cs(half), sn(half);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos[t]) * f[i];
      cs[i] = std::cos(angle);
      sn[i] = backward ? -std::sin(angle) : std::sin(angle);
    }
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t o = (t * heads + h) * D;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = load_float(x.data(), x.dtype(), o + i), x2 = load_float(x.data(), x.dtype(), o + i + half);
        store_float(x.data(), x.dtype(), o + i, x1 * cs[i] - x2 * sn[i]);
        store_float(x.data(), x.dtype(), o + i + half, x2 * cs[i] + x1 * sn[i]);
      }
    }
  }
}

}  // namespace

void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq) { rope(x, positions, inv_freq, false); }
void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq) { rope(dx, positions, inv_freq, true); }

}  // namespace halo
