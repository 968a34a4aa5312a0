// Causal grouped-query attention (the attention of a Llama block, after RoPE),
// forward and backward, on the CPU (f32, the reference) and on the GPU (bf16
// inputs and outputs, f32 accumulation, flash-attention-2 style tiling).
//
// Layout (token-major, as the q/k/v projections produce it):
//   q, out, dout, dq    [B*T, Hq, D]     D = head_dim, a multiple of 8, at most 256
//   k, v, dk, dv        [B*T, Hkv, D]    Hq % Hkv == 0; query head h reads kv head
//                                        h / (Hq / Hkv) (GQA; MQA when Hkv == 1)
//   lse                 [B*T, Hq] f32    log-sum-exp of each softmax row (natural log)
// The B*T tokens are B rows of T tokens; attention is causal within a row.
//
// Documents (packed sequences): doc_ids, when defined, is int32 [B*T] with one
// id per token, non-decreasing within each row (the CPU checks this; the GPU
// trusts it). Token i attends to token j iff they are in the same row, j <= i
// and doc_ids[j] == doc_ids[i]. Without doc_ids each row is one document.
//
// Dtypes: q, k, v, out, dout, dq, dk, dv are f32 on the CPU and bf16 on the GPU;
// lse is f32 on both. All tensors of one call live on one device; outputs are
// allocated by the caller and overwritten (dk and dv are sums over the query
// heads of each group).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace halo {

struct AttentionOptions {
  int64_t batch = 1;   // B: the number of rows; q.size(0) = B * T
  float scale = 0.0f;  // softmax scale; 0 means 1 / sqrt(D)
  Tensor doc_ids;      // optional int32 [B*T] document ids (see above)
};

// out = softmax(scale * q k^T + mask) v per head; lse saved for the backward.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt,
                       Tensor& out, Tensor& lse);

// Gradients of sum(dout * out) given the forward's out and lse. Probabilities are
// recomputed from q, k and lse (no T x T matrix is stored).
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionOptions& opt, Tensor& dq,
                        Tensor& dk, Tensor& dv);

// Multiply-adds of one forward pass with causal (and document) masking skipped,
// times 2: 4 * sum over (row, query head) of the unmasked (query, key) pairs * D.
// The backward does 2.5 times this. Host-side doc_ids only (or none).
double attention_forward_flops(int64_t batch, int64_t T, int64_t Hq, int64_t D, const Tensor& doc_ids = {});

}  // namespace halo
