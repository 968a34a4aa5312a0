// SwiGLU, the Llama MLP activation, forward beside backward:
//   h = silu(g) * u,   silu(g) = g * sigmoid(g)
//   dg = dh * u * silu'(g),   du = dh * silu(g),
//   silu'(g) = sigmoid(g) * (1 + g * (1 - sigmoid(g)))
//
// The separate form: gate g and up u are two tensors of the same shape (any
// shape; [rows, F] in the MLP).
// The fused form (what the model runs): one GEMM against [Wg; Wu] gives
// gu [rows, 2F], the gate in columns [0, F) and up in [F, 2F) of every row;
// h and dh are [rows, F], dgu [rows, 2F] in the layout of gu (leading dims
// flattened). Same math, element by element, as the separate form.
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

void swiglu_forward_fused(const Tensor& gu, Tensor& h);
// dgu may alias gu (in place: the gate-up output is not needed afterwards).
void swiglu_backward_fused(const Tensor& dh, const Tensor& gu, Tensor& dgu);

}  // namespace halo
