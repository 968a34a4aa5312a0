// RoPE: argument checks, the CPU implementation (the reference) and the
// device dispatch (rope.cu).
#include "kernels/rope.h"

#include <cmath>
#include <vector>

#include "core/error.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace detail {
void rope_cuda(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t heads,
               const Tensor& positions, const Tensor& inv_freq, bool backward);
}  // namespace detail
#endif

namespace {

// src, dst: [tokens, C] views of the operands (2-D), width = heads * D columns.
void rope(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t width, const Tensor& positions,
          const Tensor& inv_freq, bool backward) {
  const char* op = backward ? "rope_backward" : "rope_forward";
  for (const Tensor* t : {&src, static_cast<const Tensor*>(&dst)}) {
    HALO_CHECK(t->defined() && t->ndim() == 2, op, ": expected [tokens, columns], got ",
               t->defined() ? t->describe() : std::string("undefined"));
    HALO_CHECK(t->dtype() == DType::f32 || t->dtype() == DType::bf16, op, ": f32 or bf16 expected, got ",
               t->describe());
  }
  check_dtype(dst, src.dtype(), op);
  check_same_device(src, dst, op);
  HALO_CHECK(src.size(0) == dst.size(0), op, ": ", src.describe(), " and ", dst.describe(), " differ in tokens");
  const int64_t D = 2 * inv_freq.numel();
  HALO_CHECK(D > 0 && width >= 0 && width % D == 0, op, ": ", width, " columns are not whole heads of ",
             inv_freq.numel(), " pairs");
  HALO_CHECK(src_col >= 0 && src_col + width <= src.size(1) && dst_col >= 0 && dst_col + width <= dst.size(1), op,
             ": columns [", src_col, ", ", src_col + width, ") of ", src.describe(), " -> [", dst_col, ", ",
             dst_col + width, ") of ", dst.describe(), " out of range");
  HALO_CHECK(src.data() != dst.data() || src_col == dst_col, op, ": in place only on the same columns");
  const int64_t tokens = src.size(0), heads = width / D;
  check_dtype(positions, DType::i32, op);
  HALO_CHECK(positions.numel() == tokens, op, ": one position per token (", tokens, ") expected, got ",
             positions.describe());
  check_dtype(inv_freq, DType::f32, op);
  check_same_device(src, positions, op);
  check_same_device(src, inv_freq, op);
  if (tokens == 0 || heads == 0) return;
  if (src.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::rope_cuda(src, src_col, dst, dst_col, heads, positions, inv_freq, backward);
    return;
#endif
  }
  const int64_t half = D / 2, ls = src.size(1), ld = dst.size(1);
  const int32_t* pos = positions.data_as<int32_t>();
  const float* f = inv_freq.data_as<float>();
  const DType dt = src.dtype();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<float> cs(half), sn(half);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos[t]) * f[i];
      cs[i] = std::cos(angle);
      sn[i] = backward ? -std::sin(angle) : std::sin(angle);
    }
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t a = t * ls + src_col + h * D, b = t * ld + dst_col + h * D;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = load_float(src.data(), dt, a + i), x2 = load_float(src.data(), dt, a + i + half);
        store_float(dst.data(), dt, b + i, x1 * cs[i] - x2 * sn[i]);
        store_float(dst.data(), dt, b + i + half, x2 * cs[i] + x1 * sn[i]);
      }
    }
  }
}

// x [..., heads, D] in place.
void rope_in_place(Tensor& x, const Tensor& positions, const Tensor& inv_freq, bool backward) {
  const char* op = backward ? "rope_backward" : "rope_forward";
  HALO_CHECK(x.defined() && x.ndim() >= 2, op, ": x must be [tokens, heads, D], got ",
             x.defined() ? x.describe() : std::string("undefined"));
  const int64_t D = x.size(-1), heads = x.size(-2);
  HALO_CHECK(D > 0 && D % 2 == 0, op, ": head_dim must be even, got ", x.describe());
  check_shape(inv_freq, {D / 2}, op);
  const int64_t width = heads * D, tokens = width ? x.numel() / width : 0;
  Tensor x2 = x.view({tokens, width});
  rope(x2, 0, x2, 0, width, positions, inv_freq, backward);
}

}  // namespace

void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  rope_in_place(x, positions, inv_freq, false);
}
void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq) {
  rope_in_place(dx, positions, inv_freq, true);
}
void rope_forward(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t width,
                  const Tensor& positions, const Tensor& inv_freq) {
  rope(src, src_col, dst, dst_col, width, positions, inv_freq, false);
}
void rope_backward(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t width,
                   const Tensor& positions, const Tensor& inv_freq) {
  rope(src, src_col, dst, dst_col, width, positions, inv_freq, true);
}

}  // namespace halo
