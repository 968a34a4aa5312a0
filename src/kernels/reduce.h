// Reductions.
#pragma once
#include "core/tensor.h"

namespace halo {

// out[j] (+)= sum_i x[i, j] for x [R, C] (f32 or bf16); out is f32 [C] on x's device.
void column_sum(const Tensor& x, Tensor& out, bool accumulate);

}  // namespace halo
