// Matrix products, all in the "NT" form that cuBLASLt runs fastest for 8-bit
// operands (both operands K-major):
//
//   D[M, N] = alpha * (A[M, K] . B[N, K]^T) (scaled)  (+ beta * D)  (+ bias[N])
//
// Row-major, contiguous. Supported operand pairs:
//   f32  x f32  -> f32          (CPU: BLAS sgemm)
//   bf16 x bf16 -> bf16 or f32  (fp32 accumulation)
//   fp8  x fp8  -> bf16 or f32  (e4m3/e5m2 in any pair but e5m2 x e5m2; fp32 accumulation)
//   i8   x i8   -> i32          (exact int32 accumulation; no scales, no bias)
// With 8-bit operands the product of each (i, j) is multiplied by the scales of
// A and B (QTensor scales: per tensor, per row, or per block; see quantize.h).
#pragma once
#include "core/tensor.h"
#include "kernels/quantize.h"

namespace halo {

struct GemmOptions {
  float alpha = 1.0f;
  bool accumulate = false;       // D += result instead of D = result
  const Tensor* bias = nullptr;  // [N], f32 or bf16, added to every row (not for i8)
};

// Unscaled operands (f32 / bf16; or 8-bit with implicit scale 1).
void gemm_nt(const Tensor& a, const Tensor& b, Tensor& d, const GemmOptions& opt = {});

// Scaled 8-bit operands (fp8 or i8 data with their scales). For i8 the
// result is computed exactly in int32 and then scaled into d (f32 or bf16).
void gemm_nt(const QTensor& a, const QTensor& b, Tensor& d, const GemmOptions& opt = {});

// d[M, N] (f32 or bf16) = alpha * scale_a[i] * scale_b[j] * acc[i, j] for an i32
// product acc (the INT8 epilogue): per-tensor or per-row scales of A and B.
void scale_i32(const Tensor& acc, const QTensor& a, const QTensor& b, Tensor& d, float alpha = 1.0f);

}  // namespace halo
