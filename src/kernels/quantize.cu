// CUDA quantizers. The semantics are those of quantize.h; the CPU twin in
// quantize.cpp is the reference (quantize_check.cpp compares the two).
//
// Scaled quantization of x [R, C] is a short chain of launches on
// current_stream(), with no host synchronisation:
//   memset         zero the absmax accumulators (laid out like the scale tensors)
//   absmax_kernel  |x| maxima of every scale group, reduced in registers / shared
//                  memory, then atomicMax on the float bits into the accumulators
//                  (non-negative floats order like their bits; NaN bits exceed
//                  those of infinity, so a NaN propagates into the scale)
//   finalize_kernel  every accumulator -> its scale (written to the QTensor) and
//                  its multiplier q_max / absmax (kept in a temporary)
//   quantize_kernel  codes, row-major: for out, and for the transposed copy when
//                  its groups differ from out's (row and 1x128 scales)
//   transpose_u8_kernel  the [C, R] copy from a row-major code array, through
//                  shared memory so that reads and writes are coalesced
// Where the transposed copy's groups coincide with out's (tensor, 128x128, or
// unscaled), its codes are out's codes, so out's array is simply transposed.
// rotate_rows is fused into both passes: each row is staged in shared memory as
// f32, rotated there by hadamard_rotate_smem (hadamard.cuh), and read back from
// shared memory; the rotated tensor never goes to global memory (pass 2 rotates
// again, which is cheaper than storing it). Rows too long for shared memory fall
// back to hadamard_rows into an f32 temporary. The first rotation of a length d
// uploads H_K once (hadamard_device_plan: a blocking copy, once per d and process).
//
// Launch shapes (256 threads per block everywhere):
//   absmax_kernel    one block per rows_per_block rows (a power of two <= 32, fewer
//                    when that leaves under 2 blocks per SM); dynamic shared memory:
//                    the row (fused rotation), column maxima (transposed row/1x128
//                    scales), tile maxima (128x128)
//   quantize_kernel  one block per row; shared memory: the row (fused rotation)
//   finalize_kernel  one thread per scale entry
//   transpose        64 x 64 byte tiles (4-byte words; R, C multiples of 4), else
//                    32 x 32 byte tiles
// Threads move 8 consecutive elements (16/32-byte loads, 8-byte code stores)
// when C % 8 == 0 and x is 16-byte aligned, else one.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/stream.h"
#include "kernels/hadamard.cuh"
#include "kernels/hadamard.h"
#include "kernels/quantize.h"

namespace halo::detail {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ uint32_t abs_bits(float v) { return __float_as_uint(v) & 0x7fffffffu; }

// ---- loads: V consecutive inputs as float (V = 8 needs 16-byte alignment) ----
// From global memory through the read-only path (x is never written by these
// kernels), so the compiler may issue loads ahead of the code stores.
__device__ __forceinline__ void unpack_bf16x2(uint32_t w, float& lo, float& hi) {
  lo = __uint_as_float(w << 16);  // little endian: the first element is the low half
  hi = __uint_as_float(w & 0xffff0000u);
}

template <int V>
__device__ __forceinline__ void load_global(const float* p, float (&v)[V]) {
  if constexpr (V == 8) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = __ldg(p + j);
  }
}

// bf16 as raw bits: the float is the 16 bits shifted up (exact).
template <int V>
__device__ __forceinline__ void load_global(const uint16_t* p, float (&v)[V]) {
  if constexpr (V == 8) {
    const uint4 a = __ldg(reinterpret_cast<const uint4*>(p));
    unpack_bf16x2(a.x, v[0], v[1]);
    unpack_bf16x2(a.y, v[2], v[3]);
    unpack_bf16x2(a.z, v[4], v[5]);
    unpack_bf16x2(a.w, v[6], v[7]);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = __uint_as_float(static_cast<uint32_t>(__ldg(p + j)) << 16);
  }
}

template <int V>
__device__ __forceinline__ void load_smem(const float* p, float (&v)[V]) {
  if constexpr (V == 8) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = p[j];
  }
}

// ---- encoders: hardware conversions, bit-identical to numerics.h (checked) ----
template <DType D>
__device__ __forceinline__ uint8_t encode1(float y) {
  if constexpr (D == DType::i8) {
    if (y != y) return 0;  // as float_to_i8 (and cvt.rni.sat.s8.f32)
    const int q = min(127, max(-127, __float2int_rn(y)));
    return static_cast<uint8_t>(static_cast<int8_t>(q));
  } else {
    return __nv_cvt_float_to_fp8(y, __NV_SATFINITE, D == DType::e4m3 ? __NV_E4M3 : __NV_E5M2);
  }
}

// Two codes, y0 in the low byte.
template <DType D>
__device__ __forceinline__ uint32_t encode2(float y0, float y1) {
  if constexpr (D == DType::i8) {
    return encode1<D>(y0) | (static_cast<uint32_t>(encode1<D>(y1)) << 8);
  } else {
    return __nv_cvt_float2_to_fp8x2(make_float2(y0, y1), __NV_SATFINITE,
                                    D == DType::e4m3 ? __NV_E4M3 : __NV_E5M2);
  }
}

// Stochastic rounding: the numerics.h functions themselves (pure float math,
// IEEE on both sides), so host and device agree by construction.
template <DType D>
__device__ __forceinline__ uint8_t encode_sr(float y, float u) {
  if constexpr (D == DType::i8) {
    return static_cast<uint8_t>(float_to_i8_stochastic(y, u));
  } else {
    constexpr Fp8Format f = D == DType::e4m3 ? kE4M3 : kE5M2;
    return fp8_encode_stochastic(y, u, f);
  }
}

// Writes the V codes of y (already multiplied) to dst (V = 8: 8-byte aligned).
template <DType D, int V>
__device__ __forceinline__ void store_codes(uint8_t* dst, const float (&y)[V], const float (&u)[V],
                                            bool stochastic) {
  if constexpr (V == 1) {
    dst[0] = stochastic ? encode_sr<D>(y[0], u[0]) : encode1<D>(y[0]);
  } else {
    static_assert(V == 8, "V is 1 or 8");
    uint32_t w[2];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int j = 4 * k;
      if (stochastic)
        w[k] = encode_sr<D>(y[j], u[j]) | (static_cast<uint32_t>(encode_sr<D>(y[j + 1], u[j + 1])) << 8) |
               (static_cast<uint32_t>(encode_sr<D>(y[j + 2], u[j + 2])) << 16) |
               (static_cast<uint32_t>(encode_sr<D>(y[j + 3], u[j + 3])) << 24);
      else
        w[k] = encode2<D>(y[j], y[j + 1]) | (encode2<D>(y[j + 2], y[j + 3]) << 16);
    }
    *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
  }
}

// ---- reductions ----------------------------------------------------------------
__device__ __forceinline__ uint32_t warp_max(uint32_t v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Every thread gets the block's maximum. Called by all threads of the block.
__device__ uint32_t block_max(uint32_t v, uint32_t* red) {
  v = warp_max(v);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  uint32_t m = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) m = max(m, red[w]);
  __syncthreads();  // red is reused by the next call
  return m;
}

// Lanes of a warp whose V-element vectors share one 128-column chunk: the
// warp's columns start on a multiple of 32 * V, so chunks are aligned lane groups.
template <int V>
constexpr int lanes_per_chunk() {
  return 128 / V < 32 ? 128 / V : 32;
}
template <int V>
__device__ __forceinline__ uint32_t chunk_max(uint32_t m) {
#pragma unroll
  for (int o = lanes_per_chunk<V>() / 2; o > 0; o /= 2) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
  return m;
}

// Stages row xr (C elements) in shared memory as f32 (buf 16-byte aligned).
// V = 8 (C % 8 == 0, 16-byte aligned rows): 16-byte chunks, four per thread in
// flight before any is stored, so a row's loads overlap.
template <class In, int V>
__device__ __forceinline__ void stage_row(const In* xr, float* buf, int64_t C) {
  if constexpr (V == 8) {
    constexpr int E = 16 / sizeof(In);  // elements per chunk
    constexpr int kBatch = 4;
    const int64_t n = C / E;
    const uint4* src = reinterpret_cast<const uint4*>(xr);
    for (int64_t i0 = threadIdx.x; i0 < n; i0 += kBatch * kThreads) {
      uint4 w[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b)
        if (i0 + b * kThreads < n) w[b] = __ldg(src + i0 + b * kThreads);
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t i = i0 + b * kThreads;
        if (i >= n) break;
        float4* dst = reinterpret_cast<float4*>(buf + i * E);
        if constexpr (E == 8) {
          float4 lo, hi;
          unpack_bf16x2(w[b].x, lo.x, lo.y);
          unpack_bf16x2(w[b].y, lo.z, lo.w);
          unpack_bf16x2(w[b].z, hi.x, hi.y);
          unpack_bf16x2(w[b].w, hi.z, hi.w);
          dst[0] = lo;
          dst[1] = hi;
        } else {
          dst[0] = make_float4(__uint_as_float(w[b].x), __uint_as_float(w[b].y), __uint_as_float(w[b].z),
                               __uint_as_float(w[b].w));
        }
      }
    }
  } else {
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      float v[1];
      load_global<1>(xr + c, v);
      buf[c] = v[0];
    }
  }
}

struct Params {
  const void* x;  // [R, C], f32 or bf16 bits
  int64_t R, C;
  Granularity g;
  HadamardDevicePlan plan;  // kernels with kRot: the rotation of every row
  // absmax_kernel: zero-initialised accumulators of absmax bits.
  uint32_t* acc_o;  // row-side groups, laid out like out's scales (also serve the transposed
                    // copy where its groups coincide: tensor, 128x128), or null
  uint32_t* acc_t;  // column-side groups of the transposed copy (row, 1x128), laid out like
                    // its scales, or null
  int rows_per_block;  // absmax_kernel: a power of two <= 128 (blocks never straddle a 128-row tile)
  bool col_smem;       // absmax_kernel: column maxima gathered in shared memory first
  // quantize_kernel
  const float* mul_o;  // multipliers of acc_o's groups (null: unscaled, multiplier 1)
  const float* mul_t;  // multipliers of acc_t's groups
  uint8_t* q_o;        // [R, C] codes with mul_o, or null
  uint8_t* q_t;        // [R, C] codes with mul_t (transposed afterwards), or null
  bool stochastic;
  uint64_t seed, stream;
};

// One block per rows_per_block consecutive rows; thread t handles the V-vectors
// starting at columns k * kThreads * V + t * V, the same ones in every row, so
// that it can keep running column maxima of its own columns without atomics.
//
// Dynamic shared memory: [rotated row: pad4(C) floats, with kRot] [column
// maxima, with col_smem] [128x128 tile maxima of the block's rows].
template <class In, int V, bool kRot>
__global__ void __launch_bounds__(kThreads, 4) absmax_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  __shared__ uint32_t red[kWarps];
  const int t = threadIdx.x, lane = t & 31;
  const int64_t R = p.R, C = p.C;
  const Granularity g = p.g;
  const int64_t step = static_cast<int64_t>(kThreads) * V;
  const int iters = static_cast<int>((C + step - 1) / step);
  const bool cols = p.acc_t != nullptr, col_smem = cols && p.col_smem;
  const bool tiles = g == Granularity::block128x128;
  const bool chunks = tiles || (g == Granularity::block1x128 && p.acc_o);
  const int64_t nc = (C + 127) / 128;
  float* buf = reinterpret_cast<float*>(dyn_smem);
  // colmax: entry (k * V + j) * kThreads + t is column k * step + t * V + j (bank-conflict free).
  uint32_t* colmax = reinterpret_cast<uint32_t*>(dyn_smem) + (kRot ? pad4(C) : 0);
  uint32_t* tilemax = colmax + (col_smem ? static_cast<int64_t>(iters) * step : 0);  // [nc]
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * p.rows_per_block;
  const int64_t r1 = min(R, r0 + p.rows_per_block);
  if (col_smem)
    for (int i = 0; i < iters * V; ++i) colmax[i * kThreads + t] = 0;  // own entries only
  if (tiles) {
    for (int64_t i = t; i < nc; i += kThreads) tilemax[i] = 0;
    __syncthreads();  // zeros visible before other threads' atomics
  }
  const In* x = static_cast<const In*>(p.x);
  uint32_t tmax = 0;
  for (int64_t r = r0; r < r1; ++r) {
    if constexpr (kRot) {
      stage_row<In, V>(x + r * C, buf, C);
      hadamard_rotate_smem<1>(buf, p.plan, false);  // begins and ends with __syncthreads
    }
    uint32_t rmax = 0;
    for (int k = 0; k < iters; ++k) {  // the same trip count in every thread: shuffles below
      const int64_t c0 = k * step + static_cast<int64_t>(t) * V;
      const bool valid = c0 < C;
      uint32_t m = 0;
      if (valid) {
        float v[V];
        if constexpr (kRot)
          load_smem<V>(buf + c0, v);
        else
          load_global<V>(x + r * C + c0, v);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const uint32_t b = abs_bits(v[j]);
          m = max(m, b);
          if (col_smem) {
            uint32_t& cm = colmax[(k * V + j) * kThreads + t];
            cm = max(cm, b);
          } else if (cols && b != 0) {
            atomicMax(&p.acc_t[scale_index(g, c0 + j, r, C, R)], b);
          }
        }
      }
      rmax = max(rmax, m);
      if (chunks) {  // per (row, 128-column chunk)
        m = chunk_max<V>(m);
        if (valid && lane % lanes_per_chunk<V>() == 0 && m != 0) {
          if (tiles)
            atomicMax(&tilemax[c0 / 128], m);
          else
            atomicMax(&p.acc_o[scale_index(g, r, c0, R, C)], m);
        }
      }
    }
    if (g == Granularity::row && p.acc_o) {
      rmax = block_max(rmax, red);
      if (t == 0) p.acc_o[r] = rmax;  // the only writer of this row's entry
    }
    tmax = max(tmax, rmax);
    if constexpr (kRot) __syncthreads();  // buf is read before the next row overwrites it
  }
  if (g == Granularity::tensor) {
    tmax = block_max(tmax, red);
    if (t == 0 && tmax != 0) atomicMax(p.acc_o, tmax);
  }
  if (col_smem) {
    for (int k = 0; k < iters; ++k)
      for (int j = 0; j < V; ++j) {
        const int64_t c = k * step + static_cast<int64_t>(t) * V + j;
        const uint32_t b = colmax[(k * V + j) * kThreads + t];
        if (c < C && b != 0) atomicMax(&p.acc_t[scale_index(g, c, r0, C, R)], b);
      }
  }
  if (tiles) {
    __syncthreads();
    for (int64_t i = t; i < nc; i += kThreads)
      if (tilemax[i] != 0) atomicMax(&p.acc_o[scale_index(g, r0, i * 128, R, C)], tilemax[i]);
  }
}

struct FinalizeParams {
  // Segment A: n_a entries of the row-side layout (out's scale layout).
  const uint32_t* acc_o;  // null: unscaled (scale 1)
  float* mul_o;           // null: not needed
  float* scale_o;         // out's scales, or null
  int64_t n_a;
  // Segment B: n_b entries of the column-side layout (the transposed copy's own groups).
  const uint32_t* acc_t;
  float* mul_t;
  float* scale_t;
  int64_t n_b;
  // Segment C: n_c entries of the transposed copy's scales taken from acc_o (groups that
  // coincide with out's, or 1 when unscaled).
  float* scale_tr;
  int64_t n_c;
  Granularity g;
  int64_t R, C;
  float qmax;
};

__global__ void finalize_kernel(FinalizeParams p) {
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < p.n_a) {
    const float a = p.acc_o ? __uint_as_float(p.acc_o[i]) : 0.0f;
    if (p.mul_o) p.mul_o[i] = quant_multiplier(a, p.qmax);
    if (p.scale_o) p.scale_o[i] = quant_scale(a, p.qmax);
    return;
  }
  i -= p.n_a;
  if (i < p.n_b) {
    const float a = __uint_as_float(p.acc_t[i]);
    p.mul_t[i] = quant_multiplier(a, p.qmax);
    p.scale_t[i] = quant_scale(a, p.qmax);
    return;
  }
  i -= p.n_b;
  if (i < p.n_c) {
    float a = 0.0f;  // padding entries and unscaled: scale 1
    if (p.acc_o) {
      if (p.g == Granularity::tensor) {
        a = __uint_as_float(p.acc_o[0]);
      } else {  // 128x128: entry (tile row a of C, tile column b of R) of the [C, R] copy
        const int64_t nrb = (p.R + 127) / 128, width = pad4(nrb);
        const int64_t tc = i / width, tr = i % width;
        if (tr < nrb) a = __uint_as_float(p.acc_o[scale_index(p.g, tr * 128, tc * 128, p.R, p.C)]);
      }
    }
    p.scale_tr[i] = quant_scale(a, p.qmax);
  }
}

// Rows in a grid-stride loop; each thread handles V-vectors of a row. All V
// elements of a vector lie in one row-side group (V divides 128). The products
// use __fmul_rn so that they are never fused into an FMA with a later add (the
// stochastic INT8 rounding adds u): the CPU rounds the product first.
// With kRot, each row is staged and rotated in dynamic shared memory (pad4(C) floats).
template <class In, int V, DType D, bool kRot>
__global__ void __launch_bounds__(kThreads, 4) quantize_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  float* buf = reinterpret_cast<float*>(dyn_smem);
  const In* x = static_cast<const In*>(p.x);
  const int64_t R = p.R, C = p.C;
  const Granularity g = p.g;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {  // the same trip count in every thread
    if constexpr (kRot) {
      stage_row<In, V>(x + r * C, buf, C);
      hadamard_rotate_smem<1>(buf, p.plan, false);
    }
    for (int64_t c0 = static_cast<int64_t>(threadIdx.x) * V; c0 < C; c0 += static_cast<int64_t>(kThreads) * V) {
      const int64_t i = r * C + c0;
      float v[V], u[V], y[V];
      if constexpr (kRot)
        load_smem<V>(buf + c0, v);
      else
        load_global<V>(x + i, v);
#pragma unroll
      for (int j = 0; j < V; ++j)
        u[j] = p.stochastic ? uniform01(p.seed, p.stream, static_cast<uint64_t>(i + j)) : 0.0f;
      if (p.q_o) {
        const float m = p.mul_o ? p.mul_o[scale_index(g, r, c0, R, C)] : 1.0f;
#pragma unroll
        for (int j = 0; j < V; ++j) y[j] = __fmul_rn(v[j], m);
        store_codes<D, V>(p.q_o + i, y, u, p.stochastic);
      }
      if (p.q_t) {
#pragma unroll
        for (int j = 0; j < V; ++j) y[j] = __fmul_rn(v[j], p.mul_t[scale_index(g, c0 + j, r, C, R)]);
        store_codes<D, V>(p.q_t + i, y, u, p.stochastic);
      }
    }
    if constexpr (kRot) __syncthreads();  // buf is read before the next row overwrites it
  }
}

// [R, C] bytes -> [C, R] bytes, R % 4 == 0, C % 4 == 0, 4-byte aligned.
// 64 x 64 tiles, 256 threads: thread (ty, tx) reads a 4 x 4 byte block (rows
// 4ty.., word column tx), transposes it in registers and puts it in shared
// memory; then every thread writes words of the tile's output rows. Global
// reads and writes are 64 contiguous bytes per half-warp.
__global__ void __launch_bounds__(256) transpose_u8_kernel(const uint8_t* in, uint8_t* out, int64_t R,
                                                          int64_t C) {
  __shared__ uint32_t tile[64][17];  // [tile column = output row][word of 4 input rows]; padded
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 64, c0 = static_cast<int64_t>(blockIdx.y) * 64;
  const int64_t c = c0 + 4 * tx;
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = r0 + 4 * ty + i;
    w[i] = (r < R && c < C) ? *reinterpret_cast<const uint32_t*>(in + r * C + c) : 0u;
  }
  // Word k of the result holds byte k of w[0..3] (input rows 4ty..4ty+3 of column c + k).
  const uint32_t a = __byte_perm(w[0], w[1], 0x5140), b = __byte_perm(w[0], w[1], 0x7362);
  const uint32_t d = __byte_perm(w[2], w[3], 0x5140), e = __byte_perm(w[2], w[3], 0x7362);
  tile[4 * tx + 0][ty] = __byte_perm(a, d, 0x5410);
  tile[4 * tx + 1][ty] = __byte_perm(a, d, 0x7632);
  tile[4 * tx + 2][ty] = __byte_perm(b, e, 0x5410);
  tile[4 * tx + 3][ty] = __byte_perm(b, e, 0x7632);
  __syncthreads();
  const int64_t r = r0 + 4 * tx;  // output column (input row) of this thread's word
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int j = ty + 16 * i;  // output row c0 + j
    if (c0 + j < C && r < R) *reinterpret_cast<uint32_t*>(out + (c0 + j) * R + r) = tile[j][tx];
  }
}

// Any shape or alignment: 32 x 32 byte tiles, 32 x 8 threads.
__global__ void __launch_bounds__(256) transpose_u8_any_kernel(const uint8_t* in, uint8_t* out, int64_t R,
                                                              int64_t C) {
  __shared__ uint8_t tile[32][33];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 32, c0 = static_cast<int64_t>(blockIdx.y) * 32;
  for (int i = ty; i < 32; i += 8)
    if (r0 + i < R && c0 + tx < C) tile[i][tx] = in[(r0 + i) * C + c0 + tx];
  __syncthreads();
  for (int i = ty; i < 32; i += 8)
    if (c0 + i < C && r0 + tx < R) out[(c0 + i) * R + r0 + tx] = tile[tx][i];
}

template <DType D>
__device__ __forceinline__ float decode(uint8_t q) {
  if constexpr (D == DType::i8) {
    return static_cast<float>(static_cast<int8_t>(q));
  } else {
    const __half_raw h = __nv_cvt_fp8_to_halfraw(q, D == DType::e4m3 ? __NV_E4M3 : __NV_E5M2);
    return __half2float(__half(h));  // every fp8 value is exact in f16
  }
}

template <class Out, DType D>
__global__ void __launch_bounds__(kThreads) dequantize_kernel(const uint8_t* q, const float* scale, Out* out,
                                                              int64_t R, int64_t C, Granularity g) {
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x)
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      const float v = decode<D>(q[r * C + c]) * scale[scale_index(g, r, c, R, C)];
      if constexpr (sizeof(Out) == 4)
        out[r * C + c] = v;
      else
        out[r * C + c] = float_to_bf16_bits(v);
    }
}

// ---- host side -------------------------------------------------------------------
int sm_count() {
  int dev = 0, n = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

int max_optin_smem() {
  int dev = 0, n = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return n;
}

unsigned row_grid(int64_t R) { return static_cast<unsigned>(std::min<int64_t>(R, INT_MAX)); }

template <class Kernel>
void launch(Kernel kernel, unsigned grid, size_t smem, const Params& p) {
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, kThreads, smem, current_stream()>>>(p);
  CUDA_CHECK_LAUNCH();
}

template <class In, int V>
void launch_absmax(const Params& p, bool rot, size_t smem) {
  const unsigned grid = static_cast<unsigned>((p.R + p.rows_per_block - 1) / p.rows_per_block);
  rot ? launch(absmax_kernel<In, V, true>, grid, smem, p) : launch(absmax_kernel<In, V, false>, grid, smem, p);
}

template <class In, int V, bool kRot>
void launch_quantize(const Params& p, DType d, size_t smem) {
  const unsigned grid = row_grid(p.R);
  switch (d) {
    case DType::i8: launch(quantize_kernel<In, V, DType::i8, kRot>, grid, smem, p); break;
    case DType::e4m3: launch(quantize_kernel<In, V, DType::e4m3, kRot>, grid, smem, p); break;
    default: launch(quantize_kernel<In, V, DType::e5m2, kRot>, grid, smem, p); break;
  }
}

template <class In, int V>
void launch_quantize(const Params& p, DType d, bool rot, size_t smem) {
  rot ? launch_quantize<In, V, true>(p, d, smem) : launch_quantize<In, V, false>(p, d, smem);
}

void transpose_u8(const uint8_t* in, uint8_t* out, int64_t R, int64_t C) {
  cudaStream_t s = current_stream();
  if (R % 4 == 0 && C % 4 == 0) {
    dim3 grid(static_cast<unsigned>((R + 63) / 64), static_cast<unsigned>((C + 63) / 64));
    transpose_u8_kernel<<<grid, 256, 0, s>>>(in, out, R, C);
  } else {
    dim3 grid(static_cast<unsigned>((R + 31) / 32), static_cast<unsigned>((C + 31) / 32));
    transpose_u8_any_kernel<<<grid, 256, 0, s>>>(in, out, R, C);
  }
  CUDA_CHECK_LAUNCH();
}

template <class Out>
void launch_dequantize(const uint8_t* q, const float* s, Out* out, int64_t R, int64_t C, Granularity g, DType t) {
  const unsigned grid = row_grid(R);
  cudaStream_t st = current_stream();
  switch (t) {
    case DType::i8: dequantize_kernel<Out, DType::i8><<<grid, kThreads, 0, st>>>(q, s, out, R, C, g); break;
    case DType::e4m3: dequantize_kernel<Out, DType::e4m3><<<grid, kThreads, 0, st>>>(q, s, out, R, C, g); break;
    default: dequantize_kernel<Out, DType::e5m2><<<grid, kThreads, 0, st>>>(q, s, out, R, C, g); break;
  }
  CUDA_CHECK_LAUNCH();
}

void finalize(const FinalizeParams& f) {
  const int64_t n = f.n_a + f.n_b + f.n_c;
  if (n == 0) return;
  finalize_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, current_stream()>>>(f);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void quantize_cuda(const Tensor& x2, const QuantSpec& spec, bool rotate_rows, QTensor* out, QTensor* out_t) {
  const int64_t R = x2.size(0), C = x2.size(1);
  const Granularity g = spec.granularity;
  cudaStream_t stream = current_stream();

  FinalizeParams f{};
  f.g = g, f.R = R, f.C = C, f.qmax = qmax_of(spec.dtype);
  if (R == 0 || C == 0) {  // nothing to quantize: every scale is 1
    if (out) f.scale_o = out->scale.data_as<float>(), f.n_a = out->scale.numel();
    if (out_t) f.scale_tr = out_t->scale.data_as<float>(), f.n_c = out_t->scale.numel();
    finalize(f);
    return;
  }

  // Which codes and accumulators are needed.
  const bool same_codes = !spec.scaled || g == Granularity::tensor || g == Granularity::block128x128;
  const bool need_o = spec.scaled && (out || same_codes);
  const bool need_t = spec.scaled && out_t && !same_codes;

  // Shared memory: the rotated row (fused rotation), column and tile maxima (pass 1).
  const size_t limit = static_cast<size_t>(max_optin_smem()) - 1024;  // leave room for static shared memory
  const size_t row_bytes = static_cast<size_t>(pad4(C)) * 4;
  const size_t tile_bytes = g == Granularity::block128x128 ? static_cast<size_t>((C + 127) / 128) * 4 : 0;
  // hadamard_rotate_smem<1> handles H_K factors up to K = 4 * kThreads (all shipped orders).
  const bool fused = rotate_rows && row_bytes + tile_bytes <= limit && hadamard_plan(C).k <= 4 * kThreads;

  // The input the kernels read: x itself, or (rows too long to rotate in shared
  // memory) an f32 temporary rotated by hadamard_rows.
  Tensor rotated;
  const Tensor* src = &x2;
  if (rotate_rows && !fused) {
    rotated = Tensor::empty({R, C}, DType::f32, Device::cuda);
    hadamard_rows(x2, rotated);
    src = &rotated;
  }
  const bool in_f32 = src->dtype() == DType::f32;
  const bool vec = C % 8 == 0 && reinterpret_cast<uintptr_t>(src->data()) % 16 == 0;
  const int V = vec ? 8 : 1;

  int64_t n_o = 0;
  if (need_o) {
    n_o = 1;
    for (int64_t d : scale_shape(g, R, C)) n_o *= d;
  }
  const int64_t n_t = need_t ? out_t->scale.numel() : 0;
  Tensor work;  // [acc_o | acc_t | mul_o | mul_t], 32-bit words
  uint32_t *acc_o = nullptr, *acc_t = nullptr;
  float *mul_o = nullptr, *mul_t = nullptr;
  if (n_o + n_t > 0) {
    work = Tensor::empty({2 * (n_o + n_t)}, DType::f32, Device::cuda);
    uint32_t* w = work.data_as<uint32_t>();
    acc_o = need_o ? w : nullptr;
    acc_t = need_t ? w + n_o : nullptr;
    mul_o = need_o ? reinterpret_cast<float*>(w + n_o + n_t) : nullptr;
    mul_t = need_t ? reinterpret_cast<float*>(w + 2 * n_o + n_t) : nullptr;
    CUDA_CHECK(cudaMemsetAsync(w, 0, static_cast<size_t>(n_o + n_t) * 4, stream));
  }

  Params p{};
  p.x = src->data();
  p.R = R, p.C = C, p.g = g;
  if (fused) p.plan = hadamard_device_plan(hadamard_plan(C));
  p.acc_o = acc_o, p.acc_t = acc_t;
  p.mul_o = mul_o, p.mul_t = mul_t;
  p.stochastic = spec.stochastic, p.seed = spec.seed, p.stream = spec.stream;
  const size_t rot_bytes = fused ? row_bytes : 0;

  // Pass 1: absmax of every group.
  if (spec.scaled) {
    const bool cross_rows = need_t || g == Granularity::block128x128;
    int tr = cross_rows ? 32 : 8;  // more rows per block: fewer atomics, but fewer blocks
    const int64_t want_blocks = 2 * static_cast<int64_t>(sm_count());
    while (tr > 1 && (R + tr - 1) / tr < want_blocks) tr /= 2;
    p.rows_per_block = tr;
    const int64_t step = static_cast<int64_t>(kThreads) * V;
    const size_t col_bytes = need_t ? static_cast<size_t>((C + step - 1) / step * step) * 4 : 0;
    p.col_smem = rot_bytes + col_bytes + tile_bytes <= limit;  // else: global atomics per element
    const size_t smem = rot_bytes + (p.col_smem ? col_bytes : 0) + tile_bytes;
    HALO_CHECK(smem <= limit, "quantize: ", C, " columns need too much shared memory for 128x128 scales");
    if (in_f32)
      vec ? launch_absmax<float, 8>(p, fused, smem) : launch_absmax<float, 1>(p, fused, smem);
    else
      vec ? launch_absmax<uint16_t, 8>(p, fused, smem) : launch_absmax<uint16_t, 1>(p, fused, smem);
  }

  // Scales (and multipliers).
  if (out) f.scale_o = out->scale.data_as<float>(), f.n_a = out->scale.numel();
  if (need_o) f.acc_o = acc_o, f.mul_o = mul_o, f.n_a = n_o;
  if (need_t) {
    f.acc_t = acc_t, f.mul_t = mul_t, f.scale_t = out_t->scale.data_as<float>(), f.n_b = n_t;
  } else if (out_t) {
    f.scale_tr = out_t->scale.data_as<float>(), f.n_c = out_t->scale.numel();
  }
  finalize(f);

  // Pass 2: codes, then the transposed copy.
  Tensor tmp;  // row-major codes for the transposed copy when out's cannot serve
  if (out_t && !(same_codes && out)) tmp = Tensor::empty({R, C}, spec.dtype, Device::cuda);
  p.q_o = out ? out->data.data_as<uint8_t>() : (out_t && same_codes ? tmp.data_as<uint8_t>() : nullptr);
  p.q_t = need_t ? tmp.data_as<uint8_t>() : nullptr;
  if (in_f32)
    vec ? launch_quantize<float, 8>(p, spec.dtype, fused, rot_bytes)
        : launch_quantize<float, 1>(p, spec.dtype, fused, rot_bytes);
  else
    vec ? launch_quantize<uint16_t, 8>(p, spec.dtype, fused, rot_bytes)
        : launch_quantize<uint16_t, 1>(p, spec.dtype, fused, rot_bytes);
  if (out_t) transpose_u8(same_codes ? p.q_o : p.q_t, out_t->data.data_as<uint8_t>(), R, C);
}

void dequantize_cuda(const QTensor& q, Tensor& out) {
  const int64_t R = q.rows(), C = q.cols();
  if (R == 0 || C == 0) return;
  const uint8_t* d = q.data.data_as<uint8_t>();
  const float* s = q.scale.data_as<float>();
  const DType t = q.data.dtype();
  if (out.dtype() == DType::f32)
    launch_dequantize(d, s, out.data_as<float>(), R, C, q.granularity, t);
  else
    launch_dequantize(d, s, out.data_as<uint16_t>(), R, C, q.granularity, t);
}

}  // namespace halo::detail
