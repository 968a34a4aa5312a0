// Helpers shared by the tests.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/allocator.h"
#include "core/tensor.h"
#include "kernels/selfcheck.h"

namespace halo::testing {

// Host tensor of normal(0, stddev) values from the counter-based RNG, stored as dtype.
Tensor random_normal(const Shape& shape, uint64_t seed, float stddev = 1.0f,
                     DType dtype = DType::f32);

// Like a pretrained model's activations: normal values, with `count` columns
// multiplied by factors between 50 and 100.
Tensor with_outlier_columns(const Tensor& x, int count, uint64_t seed);

}  // namespace halo::testing

// Skips a test when there is no usable GPU (CPU machines, CI).
#define HALO_REQUIRE_CUDA() \
  if (!::halo::cuda_available()) GTEST_SKIP() << "no CUDA device"
