#include <cuda_bf16.h>

#include "core/cuda_check.h"
#include "core/stream.h"
#include "kernels/reduce.h"

namespace halo {

namespace {

// Each block sums a strip of 32 columns over a slice of rows; partial sums are
// added to the output with atomics (out was zeroed or holds the accumulator).
template <class T>
__global__ void column_sum_kernel(const T* x, float* out, int64_t rows, int64_t cols,
                                  int64_t rows_per_block) {
  const int64_t col = blockIdx.x * 32 + threadIdx.x;
  const int64_t r0 = blockIdx.y * rows_per_block;
  const int64_t r1 = min(rows, r0 + rows_per_block);
  float s = 0.0f;
  if (col < cols)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) s += static_cast<float>(x[r * cols + col]);
  __shared__ float part[8][33];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    for (int i = 1; i < 8; ++i) s += part[i][threadIdx.x];
    atomicAdd(out + col, s);
  }
}

}  // namespace

void column_sum_cuda(const Tensor& x, Tensor& out, bool accumulate) {
  const int64_t rows = x.size(0), cols = x.size(1);
  if (!accumulate) out.fill_zero();
  if (rows == 0 || cols == 0) return;
  const int64_t rows_per_block = 256;
  dim3 grid(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block));
  dim3 block(32, 8);
  if (x.dtype() == DType::f32)
    column_sum_kernel<<<grid, block, 0, current_stream()>>>(x.data_as<float>(), out.data_as<float>(), rows,
                                                            cols, rows_per_block);
  else
    column_sum_kernel<<<grid, block, 0, current_stream()>>>(x.data_as<__nv_bfloat16>(), out.data_as<float>(),
                                                            rows, cols, rows_per_block);
  CUDA_CHECK_LAUNCH();
}

}  // namespace halo
