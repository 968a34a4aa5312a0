// Orthonormal Hadamard rotations R_d (HALO-METHOD.md, "R_d").
//
// d = K * 2^k: R_d = (H_K kron H_{2^k}) / sqrt(d), H_{2^k} Sylvester, H_K built by
// construction (Paley I/II, Williamson, Sylvester products) for the K values
// Llama-family widths need. When no H_K fits d, the plan falls back to a
// block-diagonal rotation with the largest power-of-two block dividing d.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace halo {

// A K x K matrix of +-1 (row-major) with H H^T = K I, or an empty vector if
// this K is not among the orders we can build.
std::vector<int8_t> hadamard_matrix(int64_t k);
std::vector<int64_t> hadamard_orders();  // the K values hadamard_matrix builds (> 1)

struct HadamardPlan {
  int64_t dim = 0;    // d, the length rotated
  int64_t block = 0;  // == dim for a full rotation; a power of two for the block fallback
  int64_t k = 1;      // H_K factor of one block: block = k * pow2
  int64_t pow2 = 1;
  std::vector<int8_t> h_k;  // k x k, row-major (empty when k == 1)
  Tensor h_k_device;        // the same as f32 on the GPU, made on first CUDA use
  bool full() const { return block == dim; }
  std::string describe() const;  // e.g. "14336 = 28 x 512" or "block 256 of 11000 (fallback)"
};

// The plan for length d (cached; thread-safe). Never fails for d >= 1.
const HadamardPlan& hadamard_plan(int64_t d);

// y = x R (transpose = false) or y = x R^T along the last dim of x ([rows, d]).
// x and y are f32 or bf16, same shape and device; y may alias x.
void hadamard_rows(const Tensor& x, Tensor& y, bool transpose = false);

// y = R^T x (transpose = false) or y = R x along the first dim of x ([d, cols]):
// the token-dimension rotation of halo2 (columns of E_Y rotated).
void hadamard_cols(const Tensor& x, Tensor& y, bool transpose = false);

}  // namespace halo
