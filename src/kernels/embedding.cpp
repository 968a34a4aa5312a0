// Token embedding: argument checks, the CPU implementation (the reference)
// and the device dispatch (embedding.cu).
#include "kernels/embedding.h"

#include <algorithm>
#include <cstdint>

#include "core/error.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace detail {
void embedding_forward_cuda(const Tensor& ids, const Tensor& table, Tensor& out);
void embedding_backward_cuda(const Tensor& ids, const Tensor& dout, Tensor& dtable, int8_t* rows_written);
void embedding_grad_clear_cuda(Tensor& dtable, Tensor& rows_written);
}  // namespace detail
#endif

namespace {

// Checks ids and a [vocab, d] table; returns the number of tokens.
int64_t check_ids(const Tensor& ids, const Tensor& table, const char* op) {
  HALO_CHECK(ids.defined() && table.defined(), op, ": undefined tensor");
  check_dtype(ids, DType::i32, op);
  check_same_device(ids, table, op);
  HALO_CHECK(table.ndim() == 2 && table.size(1) > 0, op, ": the table must be [vocab, d], got ",
             table.describe());
  HALO_CHECK(table.size(0) <= INT32_MAX, op, ": vocabulary too large: ", table.describe());
  return ids.numel();
}

void check_rows(const Tensor& t, int64_t tokens, int64_t d, const Tensor& ids, const char* what) {
  HALO_CHECK(t.defined() && t.ndim() >= 1 && t.size(-1) == d && t.numel() == tokens * d, what,
             ": expected [tokens = ", tokens, ", ", d, "], got ", t.describe());
  HALO_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, what, ": f32 or bf16 expected, got ",
             t.describe());
  check_same_device(t, ids, what);
}

void check_row_flags(const Tensor& flags, const Tensor& dtable, const char* op) {
  HALO_CHECK(flags.defined() && flags.dtype() == DType::i8 && flags.ndim() == 1 && flags.size(0) == dtable.size(0),
             op, ": rows_written must be i8 [", dtable.size(0), "], got ", flags.describe());
  check_same_device(flags, dtable, op);
}

int32_t checked_id(const Tensor& ids, int64_t t, int64_t vocab, const char* op) {
  const int32_t id = ids.data_as<int32_t>()[t];
  HALO_CHECK(id >= 0 && id < vocab, op, ": token ", t, " has id ", id, ", outside the vocabulary [0, ", vocab, ")");
  return id;
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  const int64_t tokens = check_ids(ids, table, "embedding_forward");
  const int64_t vocab = table.size(0), d = table.size(1);
  HALO_CHECK(table.dtype() == DType::f32 || table.dtype() == DType::bf16,
             "embedding_forward: table must be f32 or bf16, got ", table.describe());
  check_rows(out, tokens, d, ids, "embedding_forward out");
  if (tokens == 0) return;
  if (ids.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::embedding_forward_cuda(ids, table, out);
    return;
#endif
  }
  for (int64_t t = 0; t < tokens; ++t) checked_id(ids, t, vocab, "embedding_forward");  // before writing anything
  const int32_t* id = ids.data_as<int32_t>();
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < d; ++c)
      store_float(out.data(), out.dtype(), t * d + c, load_float(table.data(), table.dtype(), id[t] * d + c));
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable, Tensor* rows_written) {
  const int64_t tokens = check_ids(ids, dtable, "embedding_backward");
  const int64_t d = dtable.size(1);
  check_dtype(dtable, DType::f32, "embedding_backward dtable");
  check_rows(dout, tokens, d, ids, "embedding_backward dout");
  if (rows_written) check_row_flags(*rows_written, dtable, "embedding_backward");
  if (tokens == 0) return;
  if (ids.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::embedding_backward_cuda(ids, dout, dtable, rows_written ? rows_written->data_as<int8_t>() : nullptr);
    return;
#endif
  }
  for (int64_t t = 0; t < tokens; ++t) checked_id(ids, t, dtable.size(0), "embedding_backward");
  // Tokens in ascending order; columns in parallel (every row sees its tokens in order).
  const int32_t* id = ids.data_as<int32_t>();
  if (rows_written)
    for (int64_t t = 0; t < tokens; ++t) rows_written->data_as<int8_t>()[id[t]] = 1;
  float* g = dtable.data_as<float>();
  const int64_t blocks = (d + 63) / 64;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * 64, c1 = std::min(d, c0 + 64);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t c = c0; c < c1; ++c) g[id[t] * d + c] += load_float(dout.data(), dout.dtype(), t * d + c);
  }
}

void embedding_grad_clear(Tensor& dtable, Tensor& rows_written) {
  HALO_CHECK(dtable.defined() && dtable.ndim() == 2, "embedding_grad_clear: dtable must be [vocab, d], got ",
             dtable.describe());
  check_dtype(dtable, DType::f32, "embedding_grad_clear dtable");
  check_row_flags(rows_written, dtable, "embedding_grad_clear");
  if (dtable.numel() == 0) return;
  if (dtable.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::embedding_grad_clear_cuda(dtable, rows_written);
    return;
#endif
  }
  const int64_t vocab = dtable.size(0), d = dtable.size(1);
  int8_t* flag = rows_written.data_as<int8_t>();
  float* g = dtable.data_as<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < vocab; ++r) {
    if (!flag[r]) continue;
    std::fill(g + r * d, g + (r + 1) * d, 0.0f);
    flag[r] = 0;
  }
}

}  // namespace halo
