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
//   i8   x i8   -> bf16 or f32  (scaled, QTensor form: exact int32, then scaled as scale_i32
//                                does; on Hopper in the GEMM's own epilogue)
// With 8-bit operands the product of each (i, j) is multiplied by the scales of
// A and B (QTensor scales: per tensor, per row, or per block; see quantize.h).
// Block scales are applied inside the sum over K (per 128-chunk of K).
//
// CUDA requirements (checked, with errors naming the op and the shapes):
//   8-bit operands: the NT form, 16-byte aligned data and scale pointers.
//   i8 with block scales: CPU only (an int32 product cannot be scaled inside K).
// Any shape runs: where cuBLASLt has no 8-bit kernel for a shape (its FP8/IMMA kernels
// read 16-byte rows of A, B and, for FP8, of D; block scales need M, N % 8 == 0), the
// product runs at the padded shape of detail::cuda_padded_dims: the operands copied
// into zeroed buffers (zeros add nothing to the sums; the scales keep their values),
// D through a padded buffer whose valid block is copied back (detail::gemm_padded).
// Aligned shapes take the direct path: no copy, no allocation.
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
  bool fast_accum = false;       // FP8 on CUDA with tensor or row scales: no periodic
                                 // promotion of the tensor-core accumulator (faster, less
                                 // accurate); ignored elsewhere (block scales always promote)
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

// The shape the CUDA 8-bit path runs [M, K] x [N, K] -> D (dtype `out`) at: K rounded up
// to a multiple of 16; for FP8 N rounded up so that a row of D is a multiple of 16 bytes
// (8 bf16, 4 f32); with block scales M and N rounded up to multiples of 8. Equal to g
// where cuBLASLt runs g itself. Rounding K up to 16 never changes ceil(K / 128), nor
// rounding M or N up to 8 ceil(M / 128) or ceil(N / 128): per-tensor scales and the
// 128x128 layout are the same for the padded operand, and 1x128 / row scales only gain
// padding rows.
GemmDims cuda_padded_dims(const GemmDims& g, DType operand, DType out, bool block_scaled);

// Entry e of the scales, in layout `to`, of an operand of rows_to rows (the first
// rows_from real, the rest zero padding) and `cols` columns (K, padded or not), taken
// from the scales of the real [rows_from, cols] operand in layout `from`: the index into
// those, or -1 for an entry that no real element uses (a padding row, or a pad4 slot),
// which is written as 1 (finite: 0 * 1 = 0, where a NaN would spread). `to` must be as
// fine as `from` or finer: tensor from tensor, row from tensor or row, 1x128 from any,
// 128x128 from 128x128 with rows_to <= ceil(rows_from / 128) * 128.
HALO_HD int64_t scale_source(Granularity from, Granularity to, int64_t e, int64_t rows_from,
                             int64_t rows_to, int64_t cols) {
  switch (to) {
    case Granularity::tensor: return 0;
    case Granularity::row: return e < rows_from ? scale_index(from, e, 0, rows_from, cols) : -1;
    case Granularity::block1x128: {
      const int64_t ld = pad4(rows_to), kb = e / ld, r = e - kb * ld;
      return r < rows_from ? scale_index(from, r, kb * 128, rows_from, cols) : -1;
    }
    case Granularity::block128x128: {
      const int64_t tiles = (cols + 127) / 128, ld = pad4(tiles), tr = e / ld, tc = e - tr * ld;
      return tc < tiles && tr * 128 < rows_from ? scale_index(from, tr * 128, tc * 128, rows_from, cols)
                                                : -1;
    }
  }
  return -1;
}

// Scales (f32, on the device of `scale`) in layout `to` for an operand of rows_to rows,
// from those of the real [rows_from, cols] operand in layout `from` (see scale_source).
Tensor relayout_scales(const Tensor& scale, Granularity from, Granularity to, int64_t rows_from,
                       int64_t rows_to, int64_t cols);
void relayout_scales_cuda(const Tensor& scale, Granularity from, Granularity to, int64_t rows_from,
                          int64_t rows_to, int64_t cols, Tensor& out);

// The NT product of a and b run at the shape p (>= the real one in every dimension):
// the operands copied into zeroed [p.M, p.K] and [p.N, p.K] buffers with their scales
// laid out for the padded row counts, a bias zero-padded to [p.N], D through a
// [p.M, p.N] buffer (holding D's values where accumulating) whose valid [M, N] block is
// copied back. Temporaries from the caching allocator. Any device: the CUDA path takes
// it for shapes cuBLASLt has no kernel for; on the CPU it serves the tests.
void gemm_padded(const GemmOperand& a, const GemmOperand& b, Tensor& d, const GemmOptions& opt,
                 const GemmDims& p);
void scale_i32_cuda(const Tensor& acc, const QTensor& a, const QTensor& b, Tensor& d,
                    const GemmOptions& opt);

// The Hopper INT8 GEMM with the scaling fused into it (gemm_sm90.cu): whether it runs
// this product (scaled i8 in the NT form, tensor or row scales, f32 or bf16 D, K % 16
// == 0, 16-byte aligned operands, an sm_90 GPU and a build with sm_90a code), and the
// call (for products it runs only; not checked again). gemm_cuda takes it for every
// such product; HALO_I8_GEMM=cublaslt turns it off (the products then run as
// cuBLASLt's int32 product and scale_i32).
bool gemm_i8_sm90_runs(const GemmOperand& a, const GemmOperand& b, const Tensor& d);
void gemm_i8_sm90(const GemmOperand& a, const GemmOperand& b, Tensor& d, const GemmOptions& opt);
}  // namespace detail

}  // namespace halo
