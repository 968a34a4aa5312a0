// Orthonormal Hadamard rotations R_d (HALO-METHOD.md, "R_d").
//
// d = K * 2^k: R_d = (H_K kron H_{2^k}) / sqrt(d), H_{2^k} Sylvester, H_K built by
// construction (Paley I/II, Williamson, Sylvester products) for the K values
// Llama-family widths need. When no H_K fits d, the plan falls back to a
// block-diagonal rotation with the largest power-of-two block dividing d.
//
// Index convention: element i of a length-d vector is (a, b) = (i / 2^k, i % 2^k),
// so x R = H_K^T X H_{2^k} / sqrt(d) with X the K x 2^k matrix view of x.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace halo {

// A K x K matrix of +-1 (row-major) with H H^T = K I, or an empty vector if
// this K is not among the orders we can build. K = 1 gives [1].
std::vector<int8_t> hadamard_matrix(int64_t k);
// The K values hadamard_matrix builds (> 1), ascending: the powers of two up to
// 256 and the non-power-of-two orders used by plans (12, 20, 28, ...).
std::vector<int64_t> hadamard_orders();

struct HadamardPlan {
  int64_t dim = 0;    // d, the length rotated
  int64_t block = 0;  // == dim for a full rotation; a power of two for the block fallback
  int64_t k = 1;      // H_K factor of one block: block = k * pow2
  int64_t pow2 = 1;
  std::vector<int8_t> h_k;  // k x k, row-major (empty when k == 1)
  // On the GPU: f32, H_K then H_K^T (row-major k x k each); made on the first
  // hadamard_device_plan() call, undefined until then and when k == 1.
  Tensor h_k_device;
  bool full() const { return block == dim; }
  std::string describe() const;  // e.g. "14336 = 28 x 512" or "block 8 of 11000 (fallback)"
};

// The plan for length d (cached; thread-safe). Never fails for d >= 1.
const HadamardPlan& hadamard_plan(int64_t d);
// Whether length d has a full (not block-diagonal) rotation; builds nothing.
bool hadamard_full(int64_t d);

// The row widths of the S rotation (hadamard.cuh): 2048, 4096, 8192, where the
// GPU fuses the rotation into the quantizer and into AdamW.
constexpr bool hadamard_s_width(int64_t d) { return d == 2048 || d == 4096 || d == 8192; }

// y = x R (transpose = false) or y = x R^T along the last dim of x ([..., d]).
// x and y are f32 or bf16 (may differ), same shape and device; y may alias x
// (exactly, not a partial overlap). Compute is f32; bf16 is written with
// round-to-nearest-even. CUDA: asynchronous on current_stream().
void hadamard_rows(const Tensor& x, Tensor& y, bool transpose = false);

// y = R^T x (transpose = false) or y = R x along the first dim of x ([d, ...]):
// the token-dimension rotation of halo2 (columns of E_Y rotated). Same rules.
// Note: column c of y is what hadamard_rows (same transpose flag) makes of the
// row vector x[:, c].
void hadamard_cols(const Tensor& x, Tensor& y, bool transpose = false);

// hadamard_cols that, where the GPU runs it in one pass, also gives maxima of
// |x| and of |y| (as written) over parts of them, for per-tensor quantizers of
// both (QuantSpec::absmax_parts): then true, with max_x and max_y f32 views of
// one buffer. Elsewhere it rotates only and returns false (the quantizers then
// find the maxima themselves).
bool hadamard_cols_absmax(const Tensor& x, Tensor& y, bool transpose, Tensor& max_x, Tensor& max_y);

// What a CUDA kernel needs to apply a plan: plain values, pass by value.
// Consumed by the device building block in kernels/hadamard.cuh.
struct HadamardDevicePlan {
  int dim = 0;        // d
  int block = 0;      // rotated block length (== dim unless fallback)
  int k = 1;          // H_K order (1: Sylvester only)
  int pow2 = 1;       // block / k
  int log2_pow2 = 0;  // log2(pow2)
  const float* h_k = nullptr;   // device f32 [k, k] H_K row-major (null when k == 1)
  const float* h_kt = nullptr;  // device f32 [k, k] H_K^T row-major
  float scale = 1.0f;           // 1 / sqrt(block)
  // Paley II structure, H_K = C kron [[1,-1],[-1,-1]] + I kron [[1,1],[1,-1]]
  // (then H_K is symmetric): paley_n = k / 2 and conf = C, row i at
  // conf[i * kMaxPaleyN]. paley_n = 0 otherwise. C travels by value with the
  // plan, in the kernel's parameters: the fully unrolled K-mix reads its
  // entries as instruction operands, with no loads.
  static constexpr int kMaxPaleyN = 18;
  int paley_n = 0;
  float conf[kMaxPaleyN * kMaxPaleyN] = {};
};

// n = k / 2 if H (k x k) has the Paley II structure described at
// HadamardDevicePlan::paley_n, else 0.
int64_t paley2_order(const std::vector<int8_t>& h, int64_t k);

// The device view of a plan (one of hadamard_plan's, which live for the
// process), built on the first call for this plan and cached
// (that call uploads H_K: a blocking host-to-device copy, once per d and
// process: call it before CUDA graph capture). Thread-safe. Needs a CUDA
// build; throws otherwise.
HadamardDevicePlan hadamard_device_plan(const HadamardPlan& plan);

namespace detail {
// The one-pass column kernel with its maxima ([2, blocks] f32: |x|, |y|), when it
// applies; false (nothing done) otherwise. For hadamard_cols_absmax.
bool hadamard_cols_absmax_cuda(const Tensor& x2, Tensor& y2, const HadamardPlan& plan, Tensor& amax);
}  // namespace detail

}  // namespace halo
