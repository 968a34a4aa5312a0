// Matrix products, all in the "NT" form that cuBLASLt runs fastest for 8-bit
// operands (both operands K-major):
//
//   D[M, N] = alpha * (A[M, K] . B[N, K]^T) (scaled)  (+ beta * D)  (+ bias[N])
//
// Row-major, contiguous. Supported operand pairs:
//   f32  x f32  -> f32          (CPU: BLAS sgemm; CUDA: cuBLASLt, fp32 compute, no TF32)
//   bf16 x bf16 -> bf16 or f32  (fp32 accumulation)
//   fp8  x fp8  -> bf16 or f32  (e4m3/e5m2 in any pair but e5m2 x e5m2; fp32 accumulation)
//   i8   x i8   -> i32          (exact int32 accumulation; no scales, no bias, alpha 1)
//   i8   x i8   -> bf16 or f32  (scaled, QTensor form: exact int32, then scale_i32)
// With 8-bit operands the product of each (i, j) is multiplied by the scales of
// A and B (QTensor scales: per tensor, per row, or per block; see quantize.h).
// Block scales are applied inside the sum over K (per 128-chunk of K).
//
// CUDA requirements (checked, with errors naming the op and the shapes):
//   8-bit operands: K % 16 == 0 and 16-byte aligned data and scale pointers
//     (cuBLASLt's FP8/IMMA kernels read 16-byte rows; there is no fallback: pad K).
//   block scales (fp8 only): M % 8 == 0 and N % 8 == 0.
//   i8 with block scales: CPU only (an int32 product cannot be scaled inside K).
// Any mix of granularities works: where cuBLASLt has no kernel for a mix
// (tensor x row, block x tensor/row, 128x128 x 128x128) one operand's scales are
// first expanded on the device into a layout that has one (see gemm.cu).
#pragma once
#include <string>

#include "core/tensor.h"
#include "kernels/quantize.h"

namespace halo {

struct GemmOptions {
  float alpha = 1.0f;
  bool accumulate = false;       // D += result instead of D = result
  const Tensor* bias = nullptr;  // [N], f32 or bf16, added to every row (not for i32 output)
  bool fast_accum = false;       // FP8 on CUDA: no periodic promotion of the tensor-core
                                 // accumulator (faster, less accurate); ignored elsewhere
};

// Unscaled operands (f32 / bf16; or 8-bit with implicit scale 1).
void gemm_nt(const Tensor& a, const Tensor& b, Tensor& d, const GemmOptions& opt = {});

// Scaled 8-bit operands (fp8 or i8 data with their scales). For i8 the
// result is computed exactly in int32 and then scaled into d (f32 or bf16).
void gemm_nt(const QTensor& a, const QTensor& b, Tensor& d, const GemmOptions& opt = {});

// General form for unscaled operands: D[M, N] = alpha * op(A) op(B) (+ D) (+ bias),
// op(A) = ta ? A^T : A is [M, K], op(B) = tb ? B^T : B is [K, N] (BLAS convention;
// gemm_nt(a, b, d) == gemm(a, false, b, true, d)). f32 and bf16 in any form; 8-bit
// operands on CUDA only in the NT form (ta = false, tb = true), the one Hopper runs.
void gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& d,
          const GemmOptions& opt = {});

// d[M, N] (f32 or bf16) = alpha * scale_a[i] * scale_b[j] * acc[i, j] for an i32
// product acc (the INT8 epilogue): per-tensor or per-row scales of A and B.
void scale_i32(const Tensor& acc, const QTensor& a, const QTensor& b, Tensor& d, float alpha = 1.0f);
// The same with opt.alpha, opt.accumulate (d += ...) and opt.bias (+ bias[j]), in one pass.
void scale_i32(const Tensor& acc, const QTensor& a, const QTensor& b, Tensor& d,
               const GemmOptions& opt);

namespace detail {
// Internal: gemm.cpp validates the arguments, gemm.cu runs them on the GPU.
// scale == nullptr means an unscaled operand (scale 1).
// trans: the operand enters as its transpose (op(X) = X^T); gemm_nt has A plain, B transposed.
struct GemmOperand {
  const Tensor* data = nullptr;
  const Tensor* scale = nullptr;
  Granularity granularity = Granularity::tensor;
  bool trans = false;
};
std::string describe(const GemmOperand& a, const GemmOperand& b, const Tensor& d,
                     const GemmOptions& opt);  // "gemm_nt(A e4m3[8, 64] cuda (row scales), ...)"
struct GemmDims {
  int64_t M = 0, N = 0, K = 0;
};
GemmDims gemm_dims(const GemmOperand& a, const GemmOperand& b);  // from op(A) [M, K], op(B) [K, N]
void gemm_cuda(const GemmOperand& a, const GemmOperand& b, Tensor& d, const GemmOptions& opt);
void scale_i32_cuda(const Tensor& acc, const QTensor& a, const QTensor& b, Tensor& d,
                    const GemmOptions& opt);
}  // namespace detail

}  // namespace halo
