#include "testing.h"

#include "core/rng.h"

namespace halo::testing {

Tensor random_normal(const Shape& shape, uint64_t seed, float stddev, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) store_float(t.data(), dtype, i, stddev * normal01(seed, 0, i));
  return t;
}

Tensor with_outlier_columns(const Tensor& x, int count, uint64_t seed) {
  Tensor y = x.to(DType::f32);
  if (y.data() == x.data()) {
    y = Tensor::empty(x.shape(), DType::f32);
    y.copy_from(x);
  }
  const int64_t cols = y.size(-1), rows = y.numel() / cols;
  float* p = y.data_as<float>();
  for (int j = 0; j < count; ++j) {
    const int64_t col = static_cast<int64_t>(uniform01(seed, 1, j) * cols);
    const float factor = 50.0f + 50.0f * uniform01(seed, 2, j);
    for (int64_t r = 0; r < rows; ++r) p[r * cols + col] *= factor;
  }
  return y.to(x.dtype());
}

}  // namespace halo::testing
