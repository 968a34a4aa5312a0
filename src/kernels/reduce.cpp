#include "kernels/reduce.h"

#include <vector>

#include "core/error.h"

namespace halo {

#ifdef HALO_HAS_CUDA
void column_sum_cuda(const Tensor& x, Tensor& out, bool accumulate);
#endif

void column_sum(const Tensor& x, Tensor& out, bool accumulate) {
  HALO_CHECK(x.ndim() == 2, "column_sum: expected a 2-D tensor, got ", x.describe());
  check_shape(out, {x.size(1)}, "column_sum output");
  check_dtype(out, DType::f32, "column_sum output");
  check_same_device(x, out, "column_sum");
  HALO_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, "column_sum: f32 or bf16 input, got ",
             x.describe());
  if (x.is_cuda()) {
#ifdef HALO_HAS_CUDA
    column_sum_cuda(x, out, accumulate);
    return;
#endif
  }
  const int64_t rows = x.size(0), cols = x.size(1);
  float* o = out.data_as<float>();
#pragma omp parallel for
  for (int64_t j = 0; j < cols; ++j) {
    double s = 0.0;
    for (int64_t i = 0; i < rows; ++i) s += load_float(x.data(), x.dtype(), i * cols + j);
    o[j] = static_cast<float>(accumulate ? o[j] + s : s);
  }
}

}  // namespace halo
