// CUDA AdamW, gradient norm and clip coefficient (semantics in adamw.h; the
// CPU twin in adamw.cpp is the reference, optim_check.cpp compares the two).
//
// adamw_rotated_kernel (AdamWParam::grad_rotated, rows of 2048, 4096, 8192): the
// gradient's rows are turned back by the S rotation of hadamard.cuh in shared
// memory, then updated as below; for a HALO linear this saves writing and
// reading a rotated copy of its f32 gradient. (Updating each thread's 64
// contiguous elements straight from registers, uncoalesced, was slower than the
// separate rotation.)
//
// adamw_kernel: one launch per tensor, a grid-stride loop over 8 elements per
// thread and iteration, every access 16 bytes wide (f32: two float4 per array;
// bf16: one uint4), then a scalar loop over the tail (or over everything when a
// pointer is not 16-byte aligned). The per-element math is detail::adamw_update,
// the same function the CPU runs. The gradient scale is read from device memory
// by every thread (one broadcast load); a non-finite scale returns at once.
// Bytes per element: FP32 master 4+4 (p) + 4 (g) + 8 + 8 (m, v) + 2 (bf16 copy)
// = 30; BF16 16 (14 with a bf16 gradient). Launch: 256 threads, at most 4
// blocks per SM (64 registers per thread; 1024 threads x 5 to 8 loads of 16
// bytes in flight per SM is several times what it takes to cover HBM
// latency). Stochastic rounding costs one
// Philox4x32-10 call per element (~100 integer instructions): with ~50 more for
// the update, BF16+SR sits near the balance of issue rate and HBM bandwidth on
// an H100; the other modes are memory-bound with room to spare.
//
// Why one launch per tensor and not a multi-tensor launch over a device table of
// pointers: Llama-8B has 291 tensors, and 291 launches cost ~1-2 ms against
// ~80 ms of memory traffic (8e9 x 30 B at 3 TB/s); a table would have to be
// rebuilt whenever a tensor is reallocated and complicate the checks. For LoRA
// (hundreds of tiny tensors) the launches dominate but stay ~1 ms per step;
// capturing the optimizer step in a CUDA graph removes them without a new kernel.
//
// Row flags (AdamWParam::grad_rows): adamw_kernel and sum_squares_kernel take the
// gradient's 8-vectors of a row whose flag is 0 as zeros without loading them
// (rows of a multiple of 8 elements; else the flags are not used): the same
// values the CPU reads there, so the results do not change.
//
// global_norm_squared: per tensor, up to kNormBlocks blocks (a function of the
// size and alignment only: small tensors get few) write one f64 partial sum each
// to a slot of their own, unused slots are zeroed (no atomics, no memset); one
// block then sums all slots in a fixed order: the same bits on every run and
// every GPU. The slots live in the same allocation as the result (the returned
// tensor is a view of it), so they cannot be freed and reused by another
// allocation while the kernels are still queued.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/cuda_check.h"
#include "core/stream.h"
#include "kernels/adamw.h"
#include "kernels/hadamard.cuh"
#include "kernels/launch.cuh"
#include "kernels/vec.cuh"

namespace halo {

namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 4;
constexpr int kNormBlocks = 512;
constexpr int kSumThreads = 1024;

using detail::AdamWScalars;

// Which rows of a gradient may be skipped: flags null (read everything), or one
// i8 per row of row_len elements (a multiple of 8), 0 for an all-zero row.
struct RowFlags {
  const int8_t* flags = nullptr;
  int64_t row_len = 0;
  __device__ __forceinline__ bool zero(int64_t i) const { return flags && !flags[i / row_len]; }
};

RowFlags row_flags(const Tensor& grad_rows, const Tensor& g) {
  if (!grad_rows.defined() || g.size(-1) % 8 != 0) return {};
  return {grad_rows.data_as<int8_t>(), g.size(-1)};
}

__device__ __forceinline__ void load8(const float* p, float (&v)[8]) { vec::load<8>(p, v); }
__device__ __forceinline__ void load8(const uint16_t* p, float (&v)[8]) {
  const uint4 a = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    v[2 * k] = __uint_as_float(w[k] << 16);  // little endian: the first element is the low half
    v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
  }
}
__device__ __forceinline__ void store8(float* p, const float (&v)[8]) { vec::store<8>(p, v); }
__device__ __forceinline__ void store8(uint16_t* p, const uint16_t (&b)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) w[k] = static_cast<uint32_t>(b[2 * k]) | (static_cast<uint32_t>(b[2 * k + 1]) << 16);
  vec::store_global(p, make_uint4(w[0], w[1], w[2], w[3]));
}

// Rounds one updated element of BF16 storage: stochastically or to nearest even.
template <bool kSR>
__device__ __forceinline__ void round_bf16(float p, float m, float v, uint64_t seed, uint64_t stream, int64_t i,
                                           uint16_t& pb, uint16_t& mb, uint16_t& vb) {
  if constexpr (kSR) {
    float up, um, uv;
    detail::adamw_uniforms(seed, stream, static_cast<uint64_t>(i), up, um, uv);
    pb = detail::float_to_bf16_stochastic(p, up);
    mb = detail::float_to_bf16_stochastic(m, um);
    vb = detail::float_to_bf16_stochastic(v, uv);
  } else {
    pb = float_to_bf16_bits(p);
    mb = float_to_bf16_bits(m);
    vb = float_to_bf16_bits(v);
  }
}

// Loads p, m, v at elements i..i+7 (16-byte aligned), applies the update with
// the scaled gradients g, stores them (and the bf16 copy pb, FP32 master only).
template <class T, bool kSR>
__device__ __forceinline__ void update8(T* p, T* m, T* v, uint16_t* pb, int64_t i, const float (&g)[8],
                                        const AdamWScalars& k, uint64_t seed, uint64_t stream) {
  float pv[8], mv[8], vv[8];
  load8(p + i, pv);
  load8(m + i, mv);
  load8(v + i, vv);
#pragma unroll
  for (int j = 0; j < 8; ++j) detail::adamw_update(pv[j], mv[j], vv[j], g[j], k);
  if constexpr (sizeof(T) == 4) {
    store8(p + i, pv);
    store8(m + i, mv);
    store8(v + i, vv);
    if (pb) {
      uint16_t b[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) b[j] = float_to_bf16_bits(pv[j]);
      store8(pb + i, b);
    }
  } else {
    uint16_t pb8[8], mb8[8], vb8[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) round_bf16<kSR>(pv[j], mv[j], vv[j], seed, stream, i + j, pb8[j], mb8[j], vb8[j]);
    store8(p + i, pb8);
    store8(m + i, mb8);
    store8(v + i, vb8);
  }
}

__device__ __forceinline__ float load1(const float* p) { return *p; }
__device__ __forceinline__ float load1(const uint16_t* p) { return bf16_bits_to_float(*p); }

// T: float (FP32 master; pb optional bf16 copy) or uint16_t (BF16 storage).
// G: the gradient's, float or uint16_t (bf16).
// Elements [0, nv) in vectors of 8 (nv % 8 == 0, pointers 16-byte aligned), [nv, n) one by one.
template <class T, class G, bool kSR>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    adamw_kernel(T* __restrict__ p, const G* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                 uint16_t* __restrict__ pb, const float* __restrict__ grad_scale, int64_t n, int64_t nv,
                 RowFlags rows, AdamWScalars k, uint64_t seed, uint64_t stream) {
  const float gs = grad_scale ? *grad_scale : 1.0f;
  if (!detail::finite_f32(gs)) return;  // skipped step
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = tid * 8; i < nv; i += stride * 8) {
    float gv[8] = {};
    if (!rows.zero(i)) load8(g + i, gv);
#pragma unroll
    for (int j = 0; j < 8; ++j) gv[j] = detail::mul_rn(gv[j], gs);
    update8<T, kSR>(p, m, v, pb, i, gv, k, seed, stream);
  }
  for (int64_t i = nv + tid; i < n; i += stride) {
    if constexpr (sizeof(T) == 4) {
      float pi = p[i], mi = m[i], vi = v[i];
      detail::adamw_update(pi, mi, vi, detail::mul_rn(load1(g + i), gs), k);
      p[i] = pi;
      m[i] = mi;
      v[i] = vi;
      if (pb) pb[i] = float_to_bf16_bits(pi);
    } else {
      float pi = bf16_bits_to_float(p[i]), mi = bf16_bits_to_float(m[i]), vi = bf16_bits_to_float(v[i]);
      detail::adamw_update(pi, mi, vi, detail::mul_rn(load1(g + i), gs), k);
      round_bf16<kSR>(pi, mi, vi, seed, stream, i, p[i], m[i], v[i]);
    }
  }
}

// AdamW with the gradient's rows in the rotated basis (AdamWParam::grad_rotated),
// rows of D = 2048, 4096, 8192. Persistent grid over groups of SRot<D>::Q
// consecutive rows (kThreads * 64 contiguous elements): the S rotation of
// hadamard.cuh turns each row of g back (K = 1: R^T = R) and every thread puts
// its 64 values, scaled, back into shared memory; then the group is updated as
// a flat range, thread t taking the 8-vectors t + kThreads k, so that the loads
// and stores of p, m, v are coalesced as in adamw_kernel.
template <class T, class G, bool kSR, int D>
__global__ void __launch_bounds__(kThreads, 2)
    adamw_rotated_kernel(T* __restrict__ p, const G* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                         uint16_t* __restrict__ pb, const float* __restrict__ grad_scale, int64_t rows,
                         float rot_scale, AdamWScalars k, uint64_t seed, uint64_t stream) {
  using namespace hadamard_detail;
  using S = SRot<D>;
  extern __shared__ float4 adamw_smem[];
  const float gs = grad_scale ? *grad_scale : 1.0f;
  if (!detail::finite_f32(gs)) return;  // skipped step
  const int t = static_cast<int>(threadIdx.x), w = t / S::T, lt = t % S::T;
  float* all = reinterpret_cast<float*>(adamw_smem);
  float* s = all + w * D;
  const int64_t groups = (rows + S::Q - 1) / S::Q;
  for (int64_t q = blockIdx.x; q < groups; q += gridDim.x) {
    const int64_t r = q * S::Q + w;
    __syncthreads();  // shared memory is free
    if (r < rows) s_pass_a<D>(g + r * D, nullptr, s, lt);
    __syncthreads();
    if (r < rows) {
      float gr[64];
      s_pass_b<D>(s, lt, gr);
      if constexpr (S::T == 128) __syncwarp();  // the neighbour has read this thread's part
#pragma unroll
      for (int c = 0; c < 16; ++c)
        *reinterpret_cast<float4*>(s + 64 * lt + 4 * (c ^ (lt & 7))) =
            make_float4(__fmul_rn(gr[4 * c], rot_scale), __fmul_rn(gr[4 * c + 1], rot_scale),
                        __fmul_rn(gr[4 * c + 2], rot_scale), __fmul_rn(gr[4 * c + 3], rot_scale));
    }
    __syncthreads();
    const int64_t base = q * S::Q * D, end = rows * D;
#pragma unroll 2
    for (int j = 0; j < kSElems / 8 / kThreads; ++j) {
      const int e = 8 * (t + j * kThreads);  // element of the group; its 8 share one 64-float part
      if (base + e >= end) break;
      const int a = e >> 6, c = (e & 63) >> 2;
      const float4 lo = *reinterpret_cast<const float4*>(all + 64 * a + 4 * (c ^ (a & 7)));
      const float4 hi = *reinterpret_cast<const float4*>(all + 64 * a + 4 * ((c + 1) ^ (a & 7)));
      const float g8[8] = {detail::mul_rn(lo.x, gs), detail::mul_rn(lo.y, gs), detail::mul_rn(lo.z, gs),
                           detail::mul_rn(lo.w, gs), detail::mul_rn(hi.x, gs), detail::mul_rn(hi.y, gs),
                           detail::mul_rn(hi.z, gs), detail::mul_rn(hi.w, gs)};
      update8<T, kSR>(p, m, v, pb, base + e, g8, k, seed, stream);
    }
  }
}

// The block's sum, in a fixed order, valid in thread 0. Called by all kBlock threads.
template <int kBlock>
__device__ double block_sum(double s) {
  __shared__ double part[kBlock / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
  __syncthreads();
  double t = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kBlock / 32; ++w) t += part[w];
  return t;
}

// Sum of squares of x[0, n) in f64, one partial per block in partial[0, gridDim.x);
// block 0 zeroes the slots [gridDim.x, kNormBlocks) that no block uses.
template <class G>
__global__ void __launch_bounds__(kThreads) sum_squares_kernel(const G* __restrict__ x, int64_t n, int64_t nv,
                                                               RowFlags rows, double* __restrict__ partial) {
  if (blockIdx.x == 0)
    for (int i = gridDim.x + threadIdx.x; i < kNormBlocks; i += kThreads) partial[i] = 0.0;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  double s = 0.0;
  constexpr int U = 4;  // vectors loaded before any is used: 128 bytes in flight per thread
  for (int64_t i0 = tid * 8; i0 < nv; i0 += U * stride * 8) {
    float e[U][8] = {};
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (i0 + u * stride * 8 < nv && !rows.zero(i0 + u * stride * 8)) load8(x + i0 + u * stride * 8, e[u]);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (i0 + u * stride * 8 >= nv) break;
#pragma unroll
      for (int j = 0; j < 8; ++j) s += static_cast<double>(e[u][j]) * e[u][j];  // exact squares
    }
  }
  for (int64_t i = nv + tid; i < n; i += stride) {
    const double e = load1(x + i);
    s += e * e;
  }
  s = block_sum<kThreads>(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// out = sum of partial[0, count), in a fixed order, by one block.
__global__ void __launch_bounds__(kSumThreads) sum_partials_kernel(const double* __restrict__ partial,
                                                                   int64_t count, float* __restrict__ out) {
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kSumThreads) s += partial[i];
  s = block_sum<kSumThreads>(s);
  if (threadIdx.x == 0) *out = static_cast<float>(s);
}

__global__ void clip_coefficient_kernel(const float* norm_sq, float max_norm, float* out) {
  *out = detail::clip_coefficient_of(*norm_sq, max_norm);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Blocks for `items` units of work of one thread each, at most kBlocksPerSm per SM.
unsigned grid_for(int64_t items) {
  const int64_t want = std::max<int64_t>(1, (items + kThreads - 1) / kThreads);
  return static_cast<unsigned>(std::min<int64_t>(want, static_cast<int64_t>(sm_count()) * kBlocksPerSm));
}

}  // namespace

// adamw_rotated_kernel for rows of an S width d.
template <class T, class G, bool kSR>
void launch_rotated(int64_t d, T* p, const G* g, T* m, T* v, uint16_t* pb, const float* gs, int64_t rows,
                    const AdamWScalars& k, uint64_t seed, uint64_t stream) {
  hadamard_detail::dispatch_s_width(d, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    const auto kernel = adamw_rotated_kernel<T, G, kSR, D>;
    const size_t smem = hadamard_detail::kSRotBytes;
    const int64_t groups = (rows + hadamard_detail::SRot<D>::Q - 1) / hadamard_detail::SRot<D>::Q;
    const int64_t grid = std::min(groups, resident_blocks(kernel, kThreads, smem));
    const float rot_scale = hadamard_device_plan(hadamard_plan(D)).scale;
    kernel<<<static_cast<unsigned>(std::max<int64_t>(grid, 1)), kThreads, smem, current_stream()>>>(
        p, g, m, v, pb, gs, rows, rot_scale, k, seed, stream);
  });
}

// One tensor's update with gradient type G: the rotated kernel for rotated rows
// (of an S width, aligned: adamw_step sends no other), else adamw_kernel.
template <class G>
void launch_adamw(const AdamWParam& t, const G* g, const AdamWScalars& k, const float* gs, bool sr, uint64_t seed,
                  uint64_t stream) {
  const int64_t n = t.param.numel();
  uint16_t* pb = t.param_bf16.defined() ? t.param_bf16.data_as<uint16_t>() : nullptr;
  const auto run = [&](auto* p, auto* m, auto* v, auto sr_c) {
    using T = std::remove_pointer_t<decltype(p)>;
    constexpr bool kSR = decltype(sr_c)::value;
    if (t.grad_rotated) {
      const int64_t d = t.param.size(-1);
      launch_rotated<T, G, kSR>(d, p, g, m, v, pb, gs, n / d, k, seed, stream);
      return;
    }
    const bool vec = aligned16(p) && aligned16(g) && aligned16(m) && aligned16(v) && (!pb || aligned16(pb));
    const int64_t nv = vec ? n / 8 * 8 : 0;
    const unsigned blocks = grid_for(std::max(nv / 8, n - nv));
    adamw_kernel<T, G, kSR><<<blocks, kThreads, 0, current_stream()>>>(p, g, m, v, pb, gs, n, nv,
                                                                       row_flags(t.grad_rows, t.grad), k, seed,
                                                                       stream);
  };
  if (t.param.dtype() == DType::f32) {
    run(t.param.data_as<float>(), t.m.data_as<float>(), t.v.data_as<float>(), std::false_type{});
  } else {  // no bf16 copy (check_adamw)
    uint16_t* p = t.param.data_as<uint16_t>();
    uint16_t* m = t.m.data_as<uint16_t>();
    uint16_t* v = t.v.data_as<uint16_t>();
    if (sr)
      run(p, m, v, std::true_type{});
    else
      run(p, m, v, std::false_type{});
  }
  CUDA_CHECK_LAUNCH();
}

void adamw_step_cuda(const AdamWParam& t, const AdamWScalars& k, const Tensor& grad_scale, bool sr, uint64_t seed,
                     uint64_t stream) {
  const float* gs = grad_scale.defined() ? grad_scale.data_as<float>() : nullptr;
  if (t.grad.dtype() == DType::f32)
    launch_adamw(t, t.grad.data_as<float>(), k, gs, sr, seed, stream);
  else
    launch_adamw(t, t.grad.data_as<uint16_t>(), k, gs, sr, seed, stream);
}

void global_norm_squared_cuda(const std::vector<Tensor>& grads, const std::vector<Tensor>& grad_rows, Tensor& out) {
  // One allocation: f64 partials first (8-byte aligned), the f32 result after them.
  const int64_t slots = static_cast<int64_t>(grads.size()) * kNormBlocks;
  Tensor buf = Tensor::empty({2 * slots + 1}, DType::f32, Device::cuda);
  double* partial = reinterpret_cast<double*>(buf.data());
  const cudaStream_t s = current_stream();
  for (size_t i = 0; i < grads.size(); ++i) {
    const Tensor& g = grads[i];
    const int64_t n = g.numel(), nv = aligned16(g.data()) ? n / 8 * 8 : 0;
    // Blocks: as many as the tensor fills (8 elements per thread), at most
    // kNormBlocks; they depend on n and nv only, and so does the summation order.
    const int64_t items = std::max(nv / 8, n - nv);
    const unsigned blocks =
        static_cast<unsigned>(std::clamp<int64_t>((items + kThreads - 1) / kThreads, 1, kNormBlocks));
    const RowFlags rows = grad_rows.empty() ? RowFlags{} : row_flags(grad_rows[i], g);
    double* slots_i = partial + static_cast<int64_t>(i) * kNormBlocks;
    if (g.dtype() == DType::f32)
      sum_squares_kernel<<<blocks, kThreads, 0, s>>>(g.data_as<float>(), n, nv, rows, slots_i);
    else
      sum_squares_kernel<<<blocks, kThreads, 0, s>>>(g.data_as<uint16_t>(), n, nv, rows, slots_i);
    CUDA_CHECK_LAUNCH();
  }
  out = buf.rows(2 * slots, 1);
  sum_partials_kernel<<<1, kSumThreads, 0, s>>>(partial, slots, out.data_as<float>());
  CUDA_CHECK_LAUNCH();
}

void clip_coefficient_cuda(const Tensor& norm_sq, float max_norm, Tensor& out) {
  clip_coefficient_kernel<<<1, 1, 0, current_stream()>>>(norm_sq.data_as<float>(), max_norm, out.data_as<float>());
  CUDA_CHECK_LAUNCH();
}

}  // namespace halo
