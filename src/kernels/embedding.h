// Token embedding, forward beside backward.
//
//   forward:  out[t, :] = table[ids[t], :]
//   backward: dtable[ids[t], :] += dout[t, :]   for every t, in ascending t
//
// Shapes: ids int32 [tokens] (any shape: its elements are the tokens, in
// order), table and dtable [vocab, d], out and dout [tokens, d] (leading dims
// flattened). Dtypes: table and out f32 or bf16 (converted when they differ;
// bf16 rounded to nearest even); dout f32 or bf16; dtable f32 (accumulated:
// zero it before the first micro-batch). All tensors on one device.
//
// Ids out of [0, vocab): the CPU throws, naming the token and the id. The GPU
// does not look at ids on the host (that would synchronise): ids are validated
// when batches are built (data layer). Should one slip through anyway, the
// forward writes a row of NaN (never reads out of bounds) and the backward
// skips that token, so the error shows as a NaN loss, not as a corrupted table.
//
// The backward is deterministic on both devices and bitwise the same on both:
// each row of dtable is updated by one owner, adding the dout rows of its
// tokens in ascending token order, in f32, starting from the row's current
// value (the CPU loop does exactly these additions). On the GPU the owners are
// found by a stable radix sort of (id, token) pairs (CUB), then one block per
// distinct id sums its run of the sorted tokens. Chosen over atomicAdd (the
// same memory traffic, but the sum order would change from run to run) at the
// price of the sort: a few microseconds, and a temporary of ~5 int32 per
// token; a very frequent id makes its one block walk a long run.
// CUDA: asynchronous on current_stream(), no host synchronisation.
//
// Rows written: a batch touches few rows of a large vocabulary. With
// `rows_written` (i8 [vocab], same device), the backward also sets the flag of
// every row it adds to; embedding_grad_clear then zeroes just the flagged rows
// and clears their flags, in place of a memset of the whole table (2 GB for a
// 128k x 4096 f32 gradient). The flags also tell the gradient norm and AdamW
// which rows they need not read (AdamWParam::grad_rows).
#pragma once
#include "core/tensor.h"

namespace halo {

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable, Tensor* rows_written = nullptr);
// dtable's rows whose flag is set become zero; every flag becomes 0.
void embedding_grad_clear(Tensor& dtable, Tensor& rows_written);

}  // namespace halo
