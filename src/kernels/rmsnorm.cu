// CUDA RMSNorm (semantics in rmsnorm.h; the CPU twin in rmsnorm.cpp is the
// reference, rowops_check.cpp compares the two).
//
// Layout: a row of d elements is held by T = round_up(d / 16, 32) threads, 16
// elements each in registers: two chunks of 8 consecutive elements (one
// 16-byte access each for bf16, two for f32), or 16 single elements when d is
// not a multiple of 8 or a pointer is not 16-byte aligned. Every input is read
// once and every output written once. Registers (sm_90a, bf16): forward 32,
// backward 64 (inputs kept packed as loaded), no spills.
//   forward   one block of T threads per row: load (and add the branch, storing
//             the new residual), block sum of squares, rstd, scale, store.
//   backward  persistent blocks of (T, R) threads: R rows at a time, one per
//             row group (threadIdx.y), so that a block has ~512 threads; each
//             thread keeps the dw sums of its 16 columns in registers over all
//             the rows it visits. At the end the R groups of a block are added
//             in order through shared memory and the block writes one partial
//             row of dw; column_reduce_kernel then adds the partial rows, in a
//             fixed order, into dw. Deterministic for a given device (the grid
//             is the number of resident blocks), no atomics.
#include <algorithm>

#include "core/cuda_check.h"
#include "core/stream.h"
#include "kernels/launch.cuh"
#include "kernels/rmsnorm.h"
#include "kernels/vec.cuh"

namespace halo::detail {

namespace {

using vec::bf16;

constexpr int kPerThread = 16;        // row elements held per thread
constexpr int kMaxThreads = 1024;     // so rows of up to 16384 elements
constexpr int kGroupThreads = 512;    // backward: T * R, rows handled at once by a block
constexpr int kCombineFloats = 2048;  // backward: shared floats to add row groups (T * V, R > 1)

// Sum over the blockDim.x threads of row group threadIdx.y (blockDim.x a
// multiple of 32); every thread of the group gets it. red: 32 floats, not
// touched by any thread of the block until the next __syncthreads().
__device__ __forceinline__ float group_sum(float v, float* red) {
  v = vec::warp_sum(v);
  const int warps = blockDim.x >> 5;
  float* r = red + threadIdx.y * warps;
  if ((threadIdx.x & 31) == 0) r[threadIdx.x >> 5] = v;
  __syncthreads();
  float s = 0.0f;
  for (int i = 0; i < warps; ++i) s += r[i];
  return s;
}

template <class T, class W, int V>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_forward_kernel(const T* x, const T* branch, T* residual_out, const W* w, T* y, float* rstd, int d,
                           float eps) {
  constexpr int NC = kPerThread / V;
  __shared__ float red[32];
  const int64_t o = static_cast<int64_t>(blockIdx.x) * d;
  float v[NC][V];
  float ss = 0.0f;
#pragma unroll
  for (int k = 0; k < NC; ++k) {
    const int c = (threadIdx.x + k * blockDim.x) * V;
    if (c < d) {
      vec::load(x + o + c, v[k]);
      if (branch) {
        float b[V];
        vec::load(branch + o + c, b);
#pragma unroll
        for (int j = 0; j < V; ++j) v[k][j] = vec::round_to<T>(v[k][j] + b[j]);
        vec::store(residual_out + o + c, v[k]);
      }
#pragma unroll
      for (int j = 0; j < V; ++j) ss += v[k][j] * v[k][j];
    }
  }
  ss = group_sum(ss, red);
  const float rs = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
#pragma unroll
  for (int k = 0; k < NC; ++k) {
    const int c = (threadIdx.x + k * blockDim.x) * V;
    if (c < d) {
      float wv[V];
      vec::load(w + c, wv);
#pragma unroll
      for (int j = 0; j < V; ++j) v[k][j] = v[k][j] * rs * wv[j];
      vec::store(y + o + c, v[k]);
    }
  }
}

template <class T, class W, int V>
__global__ void __launch_bounds__(kMaxThreads)
    rmsnorm_backward_kernel(const T* dy, const T* x, const W* w, const float* rstd, const T* dres, T* dx,
                            float* partial, int64_t rows, int d) {
  constexpr int NC = kPerThread / V;
  __shared__ float red[2][32];  // double-buffered: one __syncthreads() per row
  __shared__ float buf[kCombineFloats];
  float acc[NC][V];
#pragma unroll
  for (int k = 0; k < NC; ++k)
#pragma unroll
    for (int j = 0; j < V; ++j) acc[k][j] = 0.0f;

  const int R = blockDim.y;
  int parity = 0;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * R; base < rows;
       base += static_cast<int64_t>(gridDim.x) * R, parity ^= 1) {
    const int64_t row = base + threadIdx.y;
    const bool active = row < rows;  // the group still takes part in the block's __syncthreads()
    const float rs = active ? rstd[row] : 0.0f;
    const int64_t o = row * d;
    // Inputs stay in registers as loaded (bf16 packed); both passes evaluate
    // xh = x * rs and gw = dy * w the same way. w is re-read (L1 hits).
    vec::Chunk<T, V> cx[NC], cdy[NC], cdr[NC];
#pragma unroll
    for (int k = 0; k < NC; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * V;
      if (active && c < d) {
        cx[k] = vec::load_chunk<V>(x + o + c);
        cdy[k] = vec::load_chunk<V>(dy + o + c);
        if (dres) cdr[k] = vec::load_chunk<V>(dres + o + c);
      }
    }
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < NC; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * V;
      if (active && c < d) {
        float wv[V];
        vec::load(w + c, wv);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float xh = cx[k][j] * rs, g = cdy[k][j];
          dot += (g * wv[j]) * xh;
          acc[k][j] += g * xh;
        }
      }
    }
    dot = group_sum(dot, red[parity]);
    // dx = rs * (dy * w) [+ dres] - (rs * mean) * xh
    const float s = rs * (dot / static_cast<float>(d));
#pragma unroll
    for (int k = 0; k < NC; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * V;
      if (active && c < d) {
        float wv[V], out[V];
        vec::load(w + c, wv);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float xh = cx[k][j] * rs;
          float a = rs * (cdy[k][j] * wv[j]);
          if (dres) a += cdr[k][j];
          out[j] = a - s * xh;
        }
        vec::store(dx + o + c, out);
      }
    }
  }

  // Row groups 1..R-1 handed to group 0 in order; group 0 writes the block's partial row.
  for (int g = 1; g < R; ++g)
#pragma unroll
    for (int k = 0; k < NC; ++k) {
      __syncthreads();
      if (threadIdx.y == g)
#pragma unroll
        for (int j = 0; j < V; ++j) buf[j * blockDim.x + threadIdx.x] = acc[k][j];
      __syncthreads();
      if (threadIdx.y == 0)
#pragma unroll
        for (int j = 0; j < V; ++j) acc[k][j] += buf[j * blockDim.x + threadIdx.x];
    }
  if (threadIdx.y == 0)
#pragma unroll
    for (int k = 0; k < NC; ++k) {
      const int c = (threadIdx.x + k * blockDim.x) * V;
      if (c < d) vec::store(partial + static_cast<int64_t>(blockIdx.x) * d + c, acc[k]);
    }
}

// dw[c] += sum over b of partial[b, c]: block (32, 8), lane = column, threadIdx.y
// sums parts y, y + 8, ... in order, then the 8 sums are added in order.
__global__ void column_reduce_kernel(const float* partial, float* dw, int64_t parts, int d) {
  __shared__ float part[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float s = 0.0f;
  if (c < d)
#pragma unroll 4
    for (int64_t b = threadIdx.y; b < parts; b += 8) s += partial[b * d + c];
  part[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < d) {
    float t = part[0][threadIdx.x];
    for (int i = 1; i < 8; ++i) t += part[i][threadIdx.x];
    dw[c] += t;
  }
}

int row_threads(int64_t d) { return static_cast<int>(std::max<int64_t>(32, ((d + kPerThread - 1) / kPerThread + 31) / 32 * 32)); }

}  // namespace

void rmsnorm_forward_cuda(const Tensor& x, const Tensor* branch, Tensor* residual_out, const Tensor& w, float eps,
                          Tensor& y, Tensor& rstd) {
  const int d = static_cast<int>(x.size(-1));
  const int64_t rows = x.numel() / d;
  HALO_CHECK(rows <= INT32_MAX, "rmsnorm (CUDA): too many rows: ", rows);
  bool v8 = d % 8 == 0 && vec::aligned16(x.data()) && vec::aligned16(w.data()) && vec::aligned16(y.data());
  if (branch) v8 = v8 && vec::aligned16(branch->data()) && vec::aligned16(residual_out->data());
  const int threads = row_threads(d);
  vec::with_type(x.dtype(), [&](auto ta) {
    vec::with_type(w.dtype(), [&](auto tw) {
      using T = typename decltype(ta)::type;
      using W = typename decltype(tw)::type;
      const T* b = branch ? branch->data_as<T>() : nullptr;
      T* ro = residual_out ? residual_out->data_as<T>() : nullptr;
      auto kernel = v8 ? rmsnorm_forward_kernel<T, W, 8> : rmsnorm_forward_kernel<T, W, 1>;
      kernel<<<static_cast<unsigned>(rows), threads, 0, current_stream()>>>(
          x.data_as<T>(), b, ro, w.data_as<W>(), y.data_as<T>(), rstd.data_as<float>(), d, eps);
    });
  });
  CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                           const Tensor* dresidual, Tensor& dx, Tensor& dw) {
  const int d = static_cast<int>(x.size(-1));
  const int64_t rows = x.numel() / d;
  bool v8 = d % 8 == 0 && vec::aligned16(dy.data()) && vec::aligned16(x.data()) && vec::aligned16(w.data()) &&
            vec::aligned16(dx.data());
  if (dresidual) v8 = v8 && vec::aligned16(dresidual->data());
  const int T = row_threads(d);
  const int R = std::max(1, kGroupThreads / T);
  HALO_CHECK(R == 1 || T * (v8 ? 8 : 1) <= kCombineFloats, "rmsnorm (CUDA): internal: combine buffer");
  vec::with_type(x.dtype(), [&](auto ta) {
    vec::with_type(w.dtype(), [&](auto tw) {
      using T_ = typename decltype(ta)::type;
      using W = typename decltype(tw)::type;
      auto kernel = v8 ? rmsnorm_backward_kernel<T_, W, 8> : rmsnorm_backward_kernel<T_, W, 1>;
      const int64_t grid = std::min((rows + R - 1) / R, resident_blocks(kernel, T * R));
      // Partial sums of dw, one row per block (from the caching allocator; stream-ordered reuse).
      Tensor partial = Tensor::empty({grid, d}, DType::f32, Device::cuda);
      kernel<<<static_cast<unsigned>(grid), dim3(T, R), 0, current_stream()>>>(
          dy.data_as<T_>(), x.data_as<T_>(), w.data_as<W>(), rstd.data_as<float>(),
          dresidual ? dresidual->data_as<T_>() : nullptr, dx.data_as<T_>(), partial.data_as<float>(), rows, d);
      CUDA_CHECK_LAUNCH();
      column_reduce_kernel<<<static_cast<unsigned>((d + 31) / 32), dim3(32, 8), 0, current_stream()>>>(
          partial.data_as<float>(), dw.data_as<float>(), grid, d);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace halo::detail
