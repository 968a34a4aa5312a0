// CUDA SwiGLU (semantics in swiglu.h; the CPU twin in swiglu.cpp is the
// reference, rowops_check.cpp compares the two).
//
// Elementwise, one pass: each thread moves 8 consecutive elements with 16-byte
// accesses (bf16; f32: two per tensor), the last thread of a tensor whose size
// is not a multiple of 8 finishes it element by element. 256 threads per block,
// one chunk per thread (the grid covers the tensor); the compute (one expf per
// element) is far below the memory time.
// The fused form walks h [rows, F]: chunk i of a row reads gate element j and
// up element F + j of the same gu row (8-wide when F % 8 == 0 and every row
// start is 16-byte aligned); one thread reads a (gate, up) pair before it
// writes its gradients, so dgu may alias gu.
#include "core/cuda_check.h"
#include "core/stream.h"
#include "kernels/swiglu.h"
#include "kernels/vec.cuh"

namespace halo::detail {

namespace {

constexpr int kThreads = 256;

template <class T, int V>
__device__ __forceinline__ void forward_chunk(const T* g, const T* u, T* h) {
  float gv[V], uv[V];
  vec::load(g, gv);
  vec::load(u, uv);
#pragma unroll
  for (int j = 0; j < V; ++j) gv[j] = silu(gv[j]) * uv[j];
  vec::store(h, gv);
}

template <class T, int V>
__device__ __forceinline__ void backward_chunk(const T* dh, const T* g, const T* u, T* dg, T* du) {
  float dv[V], gv[V], uv[V], a[V], b[V];
  vec::load(dh, dv);
  vec::load(g, gv);
  vec::load(u, uv);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    a[j] = dv[j] * uv[j] * silu_grad(gv[j]);
    b[j] = dv[j] * silu(gv[j]);
  }
  vec::store(dg, a);
  vec::store(du, b);
}

template <class T, int V>
__global__ void __launch_bounds__(kThreads) swiglu_forward_kernel(const T* g, const T* u, T* h, int64_t n) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * V;
  if (i + V <= n)
    forward_chunk<T, V>(g + i, u + i, h + i);
  else
    for (int64_t k = i; k < n; ++k) forward_chunk<T, 1>(g + k, u + k, h + k);
}

template <class T, int V>
__global__ void __launch_bounds__(kThreads)
    swiglu_backward_kernel(const T* dh, const T* g, const T* u, T* dg, T* du, int64_t n) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * V;
  if (i + V <= n)
    backward_chunk<T, V>(dh + i, g + i, u + i, dg + i, du + i);
  else
    for (int64_t k = i; k < n; ++k) backward_chunk<T, 1>(dh + k, g + k, u + k, dg + k, du + k);
}

// Fused gate|up: element i of h [rows, F] reads gu[r, j] and gu[r, F + j].
template <class T, int V>
__global__ void __launch_bounds__(kThreads) swiglu_forward_fused_kernel(const T* gu, T* h, int64_t n, int64_t F) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * V;
  if (i + V <= n) {
    const int64_t r = i / F, j = i % F;  // V divides F: the chunk stays in row r
    forward_chunk<T, V>(gu + r * 2 * F + j, gu + r * 2 * F + F + j, h + i);
  } else {
    for (int64_t k = i; k < n; ++k) {
      const int64_t r = k / F, j = k % F;
      forward_chunk<T, 1>(gu + r * 2 * F + j, gu + r * 2 * F + F + j, h + k);
    }
  }
}

template <class T, int V>
__global__ void __launch_bounds__(kThreads)
    swiglu_backward_fused_kernel(const T* dh, const T* gu, T* dgu, int64_t n, int64_t F) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * V;
  if (i + V <= n) {
    const int64_t g = i / F * 2 * F + i % F;
    backward_chunk<T, V>(dh + i, gu + g, gu + g + F, dgu + g, dgu + g + F);
  } else {
    for (int64_t k = i; k < n; ++k) {
      const int64_t g = k / F * 2 * F + k % F;
      backward_chunk<T, 1>(dh + k, gu + g, gu + g + F, dgu + g, dgu + g + F);
    }
  }
}

unsigned grid_for(int64_t n, int v) { return static_cast<unsigned>((n + int64_t{kThreads} * v - 1) / (int64_t{kThreads} * v)); }

}  // namespace

void swiglu_forward_cuda(const Tensor& g, const Tensor& u, Tensor& h) {
  const int64_t n = g.numel();
  const bool v8 = vec::aligned16(g.data()) && vec::aligned16(u.data()) && vec::aligned16(h.data());
  vec::with_type(g.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (v8)
      swiglu_forward_kernel<T, 8><<<grid_for(n, 8), kThreads, 0, current_stream()>>>(g.data_as<T>(), u.data_as<T>(),
                                                                                   h.data_as<T>(), n);
    else
      swiglu_forward_kernel<T, 1><<<grid_for(n, 1), kThreads, 0, current_stream()>>>(g.data_as<T>(), u.data_as<T>(),
                                                                                   h.data_as<T>(), n);
  });
  CUDA_CHECK_LAUNCH();
}

void swiglu_backward_cuda(const Tensor& dh, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du) {
  const int64_t n = g.numel();
  const bool v8 = vec::aligned16(dh.data()) && vec::aligned16(g.data()) && vec::aligned16(u.data()) &&
                  vec::aligned16(dg.data()) && vec::aligned16(du.data());
  vec::with_type(g.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto kernel = v8 ? swiglu_backward_kernel<T, 8> : swiglu_backward_kernel<T, 1>;
    kernel<<<grid_for(n, v8 ? 8 : 1), kThreads, 0, current_stream()>>>(dh.data_as<T>(), g.data_as<T>(), u.data_as<T>(),
                                                                      dg.data_as<T>(), du.data_as<T>(), n);
  });
  CUDA_CHECK_LAUNCH();
}

void swiglu_forward_fused_cuda(const Tensor& gu, Tensor& h) {
  const int64_t n = h.numel(), F = h.size(-1);
  const bool v8 = F % 8 == 0 && vec::aligned16(gu.data()) && vec::aligned16(h.data());
  vec::with_type(gu.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto kernel = v8 ? swiglu_forward_fused_kernel<T, 8> : swiglu_forward_fused_kernel<T, 1>;
    kernel<<<grid_for(n, v8 ? 8 : 1), kThreads, 0, current_stream()>>>(gu.data_as<T>(), h.data_as<T>(), n, F);
  });
  CUDA_CHECK_LAUNCH();
}

void swiglu_backward_fused_cuda(const Tensor& dh, const Tensor& gu, Tensor& dgu) {
  const int64_t n = dh.numel(), F = dh.size(-1);
  const bool v8 =
      F % 8 == 0 && vec::aligned16(dh.data()) && vec::aligned16(gu.data()) && vec::aligned16(dgu.data());
  vec::with_type(gu.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto kernel = v8 ? swiglu_backward_fused_kernel<T, 8> : swiglu_backward_fused_kernel<T, 1>;
    kernel<<<grid_for(n, v8 ? 8 : 1), kThreads, 0, current_stream()>>>(dh.data_as<T>(), gu.data_as<T>(),
                                                                      dgu.data_as<T>(), n, F);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace halo::detail
