// SwiGLU, the Llama MLP activation, forward beside backward:
//   h = silu(g) * u,   silu(g) = g * sigmoid(g)
//   dg = dh * u * silu'(g),   du = dh * silu(g),
//   silu'(g) = sigmoid(g) * (1 + g * (1 - sigmoid(g)))
//
// The separate form: gate g and up u are two tensors of the same shape (any
// shape; [rows, F] in the MLP). A fused [rows, 2F] gate|up GEMM output is not
// taken as is: Tensor has no strided views, so its halves are not [rows, F]
// tensors; the model layer runs the gate and up GEMMs into separate outputs
// (or would need a strided variant of these kernels).
//
// Dtypes: f32 or bf16 (on the GPU every tensor of one call has the same
// dtype). Math in f32 with the functions below, shared by the CPU and the GPU
// (expf, IEEE division: no fast-math intrinsics); bf16 outputs rounded to
// nearest even. Outputs may alias inputs exactly (in place), e.g. dg into g.
// CUDA: asynchronous on current_stream(); 16-byte accesses when every pointer
// is 16-byte aligned.
#pragma once
#include <cmath>

#include "core/numerics.h"
#include "core/tensor.h"

namespace halo {

HALO_HD float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }
HALO_HD float silu(float g) { return g * sigmoid(g); }
// d silu / dg
HALO_HD float silu_grad(float g) {
  const float s = sigmoid(g);
  return s * (1.0f + g * (1.0f - s));
}

void swiglu_forward(const Tensor& g, const Tensor& u, Tensor& h);
void swiglu_backward(const Tensor& dh, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du);

}  // namespace halo
