// RMSNorm (Llama), forward beside backward; the fused residual form used
// between blocks.
//
//   y = x * rstd * w,   rstd = 1 / sqrt(mean(x^2) + eps)   per row
//
// Shapes: x, y and every other activation [rows, d] (leading dims are
// flattened: [..., d]); w [d]; rstd f32 [rows]; dw f32 [d].
// Dtypes: activations f32 or bf16 (on the GPU all activations of one call
// share one dtype); w f32 or bf16; rstd and dw f32. Math in f32 (the CPU sums
// squares and dw in f64), evaluated as (x * rstd) * w; bf16 outputs are
// rounded to nearest even. rstd is computed as 1.0f / sqrtf(mean + eps).
// CUDA: asynchronous on current_stream(), no host synchronisation; rows of up
// to 16384 elements (16 per thread); dw is deterministic (per-block partial
// sums in registers, then a fixed-order column reduction, no atomics).
#pragma once
#include "core/tensor.h"

namespace halo {

// y may alias x (exactly).
void rmsnorm_forward(const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);

// The form between blocks: residual_out = residual + branch (one f32 add,
// rounded to the activation dtype), then y = rmsnorm(residual_out) computed
// from the rounded values, i.e. exactly rmsnorm_forward of what was stored,
// so the backward reads residual_out as its x. One pass over memory.
// residual_out may alias residual (in place); y may alias branch.
void residual_rmsnorm_forward(const Tensor& residual, const Tensor& branch, const Tensor& w, float eps,
                              Tensor& residual_out, Tensor& y, Tensor& rstd);

// xhat = x * rstd (rstd saved by the forward);
//   dx = rstd * (dy * w - xhat * mean(dy * w * xhat))  [+ dresidual]
//      (evaluated on every device as rstd * (dy * w) [+ dresidual] - (rstd * mean) * xhat)
//   dw += sum over rows of dy * xhat  (accumulates: zero dw before the first
//         micro-batch)
// dresidual (may be null): the gradient arriving along the residual stream,
// added into dx so the trainer can chain blocks. dx may alias dy, x or
// dresidual (exactly).
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      const Tensor* dresidual, Tensor& dx, Tensor& dw);

}  // namespace halo
