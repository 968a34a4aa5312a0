// CUDA cross-entropy (semantics in cross_entropy.h; the CPU twin in
// cross_entropy.cpp is the reference, optim_check.cpp compares the two).
//
// One block of 1024 threads per row, a persistent grid of one block per SM that
// walks the rows (row = blockIdx.x, += gridDim.x). Per row:
//   pass 1  online max/sum: each thread keeps (m, s) with s = sum exp(x - m),
//           rescaling s when its max grows; 16-byte loads, U of them issued
//           before any is used (64 bytes in flight per thread); the (m, s) pairs
//           are merged across the block (shuffles, then one warp).
//   pass 2  (training only) re-reads the row and writes
//           scale * (exp(x - m) / s - onehot) over it with streaming stores.
// Why one block per SM: pass 2 should find the row in L2. With one row per SM in
// flight, 132 rows of 128256 bf16 (250 KB) are 33 MB, inside the H100's 50 MB
// L2; two blocks per SM would be 66 MB and pass 2 would mostly go to HBM. Pass 2
// loads are "evict first" (__ldcs: last use) and the gradient stores streaming
// (__stcs) so that they do not push out rows still to be re-read.
// Traffic per element: bf16 2 B read from HBM + 2 B re-read from L2 + 2 B written.
//
// Exponentials are exp2f((x - m) * log2 e) (the MUFU ex2 unit; a few ulps, far
// below bf16 output rounding); logf and the one division per row are accurate.
// Rows with t < 0 are zero-filled (grad) and get loss 0; t >= V gives a NaN loss.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "core/cuda_check.h"
#include "core/stream.h"
#include "kernels/cross_entropy.h"
#include "kernels/launch.cuh"

namespace halo {

namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void from_float(float v, float* p) { *p = v; }
__device__ __forceinline__ void from_float(float v, __nv_bfloat16* p) { *p = __float2bfloat16_rn(v); }

__device__ __forceinline__ void unpack_bf16x2(uint32_t w, float& lo, float& hi) {
  lo = __uint_as_float(w << 16);  // little endian: the first element is the low half
  hi = __uint_as_float(w & 0xffff0000u);
}
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 b = __floats2bfloat162_rn(lo, hi);  // .x = lo (low half), RNE
  return *reinterpret_cast<const uint32_t*>(&b);
}

// 8 consecutive elements (16-byte aligned) kept raw in 16-byte words (two for
// f32, one for bf16) so that several vectors can be in flight in few registers;
// kLast: last use of the data (evict-first loads), else ordinary cached loads.
template <class T>
constexpr int kWords = sizeof(T) / 2;  // 16-byte words per 8 elements
template <bool kLast, class T>
__device__ __forceinline__ void load8(const T* p, uint4* w) {
  const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int i = 0; i < kWords<T>; ++i) w[i] = kLast ? __ldcs(q + i) : q[i];
}
__device__ __forceinline__ void unpack8(const uint4* w, float (&v)[8], float*) {
  const uint32_t u[8] = {w[0].x, w[0].y, w[0].z, w[0].w, w[1].x, w[1].y, w[1].z, w[1].w};
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = __uint_as_float(u[k]);
}
__device__ __forceinline__ void unpack8(const uint4* w, float (&v)[8], __nv_bfloat16*) {
  unpack_bf16x2(w[0].x, v[0], v[1]);
  unpack_bf16x2(w[0].y, v[2], v[3]);
  unpack_bf16x2(w[0].z, v[4], v[5]);
  unpack_bf16x2(w[0].w, v[6], v[7]);
}
__device__ __forceinline__ void store8(float* p, const float (&v)[8]) {
  float4* q = reinterpret_cast<float4*>(p);
  __stcs(q, make_float4(v[0], v[1], v[2], v[3]));
  __stcs(q + 1, make_float4(v[4], v[5], v[6], v[7]));
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float (&v)[8]) {
  __stcs(reinterpret_cast<uint4*>(p), make_uint4(pack_bf16x2(v[0], v[1]), pack_bf16x2(v[2], v[3]),
                                                 pack_bf16x2(v[4], v[5]), pack_bf16x2(v[6], v[7])));
}

// (m, s) <- the pair describing both sets: max M, s * e^(m - M) + s2 * e^(m2 - M).
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float M = fmaxf(m, m2);
  s = s * exp2f((m - M) * kLog2e) + s2 * exp2f((m2 - M) * kLog2e);
  m = M;
}

// Adds one value to a thread's running (m, s).
__device__ __forceinline__ void add_one(float& m, float& s, float x) {
  if (x > m) {
    s *= exp2f((m - x) * kLog2e);
    m = x;
  }
  s += exp2f((x - m) * kLog2e);
}

// Merges every thread's (m, s) into all threads' (m, s). Two barriers: the next
// call's writes to `part` come after every read of this one.
__device__ __forceinline__ void block_merge(float& m, float& s, float2* part, float2* result) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) part[warp] = make_float2(m, s);
  __syncthreads();
  if (warp == 0) {
    float2 p = part[lane];  // kWarps == 32
    m = p.x;
    s = p.y;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) *result = make_float2(m, s);
  }
  __syncthreads();
  const float2 r = *result;
  m = r.x;
  s = r.y;
}

// U: vectors of 8 elements per thread loaded before use (64 bytes in flight per thread).
template <class T, bool kGrad>
__global__ void __launch_bounds__(kThreads, 1)
    cross_entropy_kernel(T* logits, const int32_t* targets, float* losses, int64_t n, int64_t V, int64_t Vv,
                         float loss_scale) {
  constexpr int U = sizeof(T) == 2 ? 4 : 2;
  constexpr int64_t kStep = static_cast<int64_t>(kThreads) * 8;  // elements per vector sweep of the block
  __shared__ float2 part[kWarps];
  __shared__ float2 result;
  static_assert(kWarps == 32, "block_merge reduces one partial per lane");
  const int tid = threadIdx.x;
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    T* x = logits + row * V;
    const int64_t t = targets[row];
    if (t < 0) {  // ignored token (uniform across the block)
      if (tid == 0) losses[row] = 0.0f;
      if constexpr (kGrad) {
        const float zero[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t j = static_cast<int64_t>(tid) * 8; j < Vv; j += kStep) store8(x + j, zero);
        for (int64_t j = Vv + tid; j < V; j += kThreads) from_float(0.0f, x + j);
      }
      continue;
    }
    // Read before any thread of the block writes the row (pass 2 comes after block_merge's barriers).
    const float xt = (tid == 0 && t < V) ? to_float(x[t]) : 0.0f;

    // Pass 1: online max and sum of exponentials.
    float m = -FLT_MAX, s = 0.0f;
    for (int64_t j0 = static_cast<int64_t>(tid) * 8; j0 < Vv; j0 += U * kStep) {
      uint4 w[U * kWords<T>];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (j0 + u * kStep < Vv) load8<false>(x + j0 + u * kStep, w + u * kWords<T>);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (j0 + u * kStep >= Vv) break;
        float v[8];
        unpack8(w + u * kWords<T>, v, x);
        float lm = v[0];
#pragma unroll
        for (int k = 1; k < 8; ++k) lm = fmaxf(lm, v[k]);
        if (lm > m) {
          s *= exp2f((m - lm) * kLog2e);
          m = lm;
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) s += exp2f((v[k] - m) * kLog2e);
      }
    }
    for (int64_t j = Vv + tid; j < V; j += kThreads) add_one(m, s, to_float(x[j]));
    block_merge(m, s, part, &result);
    if (tid == 0) losses[row] = t < V ? m + logf(s) - xt : __int_as_float(0x7fc00000);

    // Pass 2: the gradient over the row.
    if constexpr (kGrad) {
      const float inv_s = 1.0f / s;
      for (int64_t j0 = static_cast<int64_t>(tid) * 8; j0 < Vv; j0 += U * kStep) {
        uint4 w[U * kWords<T>];
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (j0 + u * kStep < Vv) load8<true>(x + j0 + u * kStep, w + u * kWords<T>);
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t j = j0 + u * kStep;
          if (j >= Vv) break;
          float v[8];
          unpack8(w + u * kWords<T>, v, x);
#pragma unroll
          for (int k = 0; k < 8; ++k) {
            const float p = exp2f((v[k] - m) * kLog2e) * inv_s;
            v[k] = (j + k == t ? p - 1.0f : p) * loss_scale;
          }
          store8(x + j, v);
        }
      }
      for (int64_t j = Vv + tid; j < V; j += kThreads) {
        const float p = exp2f((to_float(x[j]) - m) * kLog2e) * inv_s;
        from_float((j == t ? p - 1.0f : p) * loss_scale, x + j);
      }
    }
  }
}

template <class T>
void launch_cross_entropy(Tensor& logits, const Tensor& targets, Tensor& losses, float loss_scale, bool grad) {
  const int64_t n = logits.size(0), V = logits.size(1);
  T* x = logits.data_as<T>();
  const bool vec = V % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
  const int64_t Vv = vec ? V : 0;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(n, sm_count()));
  if (grad)
    cross_entropy_kernel<T, true><<<blocks, kThreads, 0, current_stream()>>>(
        x, targets.data_as<int32_t>(), losses.data_as<float>(), n, V, Vv, loss_scale);
  else
    cross_entropy_kernel<T, false><<<blocks, kThreads, 0, current_stream()>>>(
        x, targets.data_as<int32_t>(), losses.data_as<float>(), n, V, Vv, loss_scale);
  CUDA_CHECK_LAUNCH();
}

// One block: each thread sums a strided subset in f64, then a fixed tree.
__global__ void __launch_bounds__(kThreads) sum_losses_kernel(const float* losses, int64_t n, float* total,
                                                               bool accumulate) {
  __shared__ double part[kWarps];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += losses[i];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) part[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = part[lane];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) *total = static_cast<float>(accumulate ? *total + s : s);
  }
}

}  // namespace

void cross_entropy_cuda(Tensor& logits, const Tensor& targets, Tensor& losses, float loss_scale, bool grad) {
  if (logits.size(0) == 0) return;
  if (logits.dtype() == DType::bf16)
    launch_cross_entropy<__nv_bfloat16>(logits, targets, losses, loss_scale, grad);
  else
    launch_cross_entropy<float>(logits, targets, losses, loss_scale, grad);
}

void sum_losses_cuda(const Tensor& losses, Tensor& total, bool accumulate) {
  sum_losses_kernel<<<1, kThreads, 0, current_stream()>>>(losses.data_as<float>(), losses.numel(),
                                                          total.data_as<float>(), accumulate);
  CUDA_CHECK_LAUNCH();
}

}  // namespace halo
