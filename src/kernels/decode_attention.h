// Kernels of text generation with a key/value cache (model/generate.cpp), on
// the CPU (f32, the reference) and the GPU (bf16 caches and activations):
//
//   kv_cache_append   writes new keys or values (after RoPE) into a cache
//   decode_attention  attention of new queries over their sequence's cache (GQA)
//   argmax_rows       the greedy choice of each row of logits
//
// The cache of one layer is [S, Tmax, Hkv, D]: S sequences (slots) of up to
// Tmax tokens, token-major as the k/v projections produce them. The queries
// of one call may come from any sequences, several from one sequence (a
// prompt appended to a non-empty cache); query i belongs to sequence seq[i]
// and sees that sequence's first len[i] cached tokens (itself included, its
// key and value appended before: len[i] = its position + 1), so causality is
// expressed by len alone.
//
// Index tensors (seq, pos, len) are int32 [n] on the device of the data. The
// CPU checks their ranges and throws naming the entry; the GPU trusts them
// (they are built on the host by the caller, who knows them to be in range).
// CUDA: asynchronous on current_stream(), no host synchronisation.
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace halo {

// cache[seq[i], pos[i]] = x[i] for every i: x [n, Hkv, D], cache [S, Tmax, Hkv,
// D] of x's dtype (f32 or bf16), both on one device; positions of one call
// distinct per sequence.
void kv_cache_append(const Tensor& x, const Tensor& seq, const Tensor& pos, Tensor& cache);

// out[i, h] = softmax_j(scale * q[i, h] . k[seq[i], j, h / G]) v[seq[i], j, h / G]
// over j < len[i], for q and out [n, Hq, D], caches [S, Tmax, Hkv, D],
// G = Hq / Hkv (GQA), D a multiple of 8 in [8, 256], 1 <= len[i] <= Tmax.
// max_len: an upper bound of every len[i], known on the host (the GPU splits
// each sequence's keys into chunks from it; the CPU checks it). scale 0:
// 1 / sqrt(D). Dtypes as attention.h: f32 on the CPU (per query and head: f32
// dots, the max, exp in f32, the sum in f64, as attention_forward's CPU path
// does), bf16 on the GPU (f32 math: flash-decoding, the keys split into
// chunks whose partial softmaxes are combined exactly; out rounded to bf16).
void decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seq,
                      const Tensor& len, int64_t max_len, Tensor& out, float scale = 0.0f);

// out[r] = the index of the largest x[r, j] (ties: the lowest index; NaN
// counts as -inf, so a row of only NaN and -inf gives 0) for x [rows, V] f32
// or bf16; out int32 [rows] on x's device.
void argmax_rows(const Tensor& x, Tensor& out);

}  // namespace halo
