// Cross-entropy of a chunk of logits against target token ids, with the
// gradient written over the logits (the LM head runs in chunks of tokens, so the
// full [tokens, vocab] logits never sit in memory; the model layer does the GEMMs).
//
// For row i of logits x [n, V] and target t = targets[i]:
//   loss[i]  = logsumexp(x[i, :]) - x[i, t]                      (0 when t < 0)
//   x[i, j] <- loss_scale * (softmax(x[i, :])_j - [j == t])      (0 when t < 0)
// i.e. the gradient of loss_scale * sum_i loss[i] (loss_scale is, say,
// 1 / number of counted tokens). A negative target (-100, Hugging Face's ignore
// index) does not count. The math is in f32 on the GPU (max subtracted first;
// f64 sums on the CPU); bf16 gradients are rounded to nearest even.
//
// Devices and dtypes: logits f32 or bf16 on either device (the CPU twin takes
// both: tests compare it with the GPU on the same bf16 values); targets i32 [n]
// and losses f32 [n] on the logits' device. A target >= V is an error on the
// CPU; the GPU cannot report it without a host sync, so it writes a NaN loss
// there (and the gradient row without the one-hot term).
//
// CUDA: one block streams each row twice at most (online max/sum, then the
// gradient pass re-reads the row from L2), no host synchronisation.
#pragma once
#include "core/tensor.h"

namespace halo {

// Losses and, in place, the scaled gradient with respect to the logits.
void cross_entropy_forward_backward(Tensor& logits, const Tensor& targets, Tensor& losses, float loss_scale);

// Losses only (evaluation): logits are left unchanged; one read of each row.
void cross_entropy_loss(const Tensor& logits, const Tensor& targets, Tensor& losses);

// total[0] = sum_i losses[i] (total[0] += ... with accumulate), for f32 losses
// [n] and an f32 total [1] on the same device. On the GPU: one kernel, a fixed
// summation order (deterministic), no host sync; read the total once per step.
void sum_losses(const Tensor& losses, Tensor& total, bool accumulate);

}  // namespace halo
