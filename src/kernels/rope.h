// Rotary position embedding (Hugging Face Llama convention, "rotate_half"),
// in place or from one tensor's columns to another's, forward beside backward.
//
// x is [tokens, heads, D] (leading dims flattened: [..., heads, D]; q with
// the attention heads, k with the kv heads, one call each). For i < D/2 the
// pair (x[i], x[i + D/2]) of every head of token t is rotated by
//   angle = (float)positions[t] * inv_freq[i]       (one f32 product)
//   forward:  x[i] = x[i] c - x[i+D/2] s,   x[i+D/2] = x[i+D/2] c + x[i] s
//   backward: the same with s negated (rotation by -angle: the transpose)
// c = cosf(angle), s = sinf(angle) in f32 (CPU: the C library; GPU: sincosf,
// not the fast-math intrinsics; they agree to an ulp or two).
// positions: int32 [tokens], on x's device; with packed sequences they restart
// at 0 for every document. inv_freq: f32 [D/2] on x's device, made by the
// model layer from rope_theta and the llama3 scaling (HF's attention_scaling
// is 1 for llama3 and is not applied here).
// Dtypes: x f32 or bf16 (math in f32, bf16 rounded to nearest even).
// CUDA: asynchronous on current_stream(); 16-byte accesses when D/2 is a
// multiple of 8 and x is 16-byte aligned.
#pragma once
#include "core/tensor.h"

namespace halo {

void rope_forward(Tensor& x, const Tensor& positions, const Tensor& inv_freq);
void rope_backward(Tensor& dx, const Tensor& positions, const Tensor& inv_freq);

// The same rotations from one [tokens, C] tensor to another: columns
// [src_col, src_col + width) of src's rows (heads of D = 2 inv_freq.numel()
// values each) are rotated into columns [dst_col, dst_col + width) of dst's
// rows. q and k go straight from a fused q|k|v projection to their own
// tensors, and their gradients back into one, with no copy. src and dst may be
// the same tensor only with the same columns (in place).
void rope_forward(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t width,
                  const Tensor& positions, const Tensor& inv_freq);
void rope_backward(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t width,
                   const Tensor& positions, const Tensor& inv_freq);

}  // namespace halo
