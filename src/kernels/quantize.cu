// CUDA quantizers. The semantics are those of quantize.h; the CPU twin in
// quantize.cpp is the reference (quantize_check.cpp compares the two).
//
// Launches on current_stream(), no host synchronisation. Per scaling mode:
//   tensor     pass 1: absmax_s_kernel (rotated d = 2048, 4096, 8192) or absmax_tensor_kernel,
//              persistent grids, rows in ascending order; every block writes the
//              absmax of what it saw to its own slot (no atomics, no memset, no
//              finalize launch).
//              pass 2: quad_quantize_kernel or quantize_kernel; every block reduces
//              the slots to the multiplier (block 0 writes the scale), then codes
//              the rows in DEscending order, so that the rows pass 1 read last are
//              the first ones read again, while still in L2. Rotated bf16 rows of
//              d = 6144, 14336: absmax_p_kernel, p_quantize_kernel (the P rotation).
//              With QuantSpec::absmax_parts there is no pass 1: the given maxima
//              are pass 2's partial maxima.
//   row, out only   one pass: per row, absmax then codes from the same registers /
//              shared memory; the scales are written by the same kernel.
//   other scaled    memset (absmax accumulators) -> absmax_kernel (atomicMax on the
//              float bits per group) -> finalize_kernel (scales, multipliers) -> pass 2.
//   unscaled        finalize_kernel (scales 1) -> pass 2.
//   out_t      after pass 2, transpose_u8_kernel moves the row-major codes to the
//              [C, R] copy (out's codes where the transposed copy's groups coincide
//              with out's: tensor, 128x128, unscaled; else a second row-major code
//              array made by pass 2 with the column-side multipliers). Writing it
//              from pass 2 in strips of 32 rows (32-byte column pieces) was measured
//              2-5x slower than this separate transpose: scattered column pieces
//              defeat DRAM write locality. Unrotated rows in whole 64 x 64 tiles,
//              rounded to nearest, take quantize_t_kernel instead: pass 2 by the
//              transpose's own tiles, x read once, each copy coded with its own
//              groups' multipliers.
// Non-negative floats order like their bits and NaN bits exceed those of
// infinity, so maxima on the bits propagate a NaN into its scale.
//
// Row kernels:
//   quad_quantize_kernel  several rows per block. Unrotated rows with 8-vectors
//              (64 threads per row, each thread 8 x 16-byte loads in flight), and
//              rows of d = 2048, 4096, 8192 rotated by the "S rotation" (d = 64 T,
//              T threads per row: two register passes of up to radix 64 with one
//              bank-conflict-free exchange through shared memory, no per-element
//              index arithmetic; the next bf16 rows are prefetched with cp.async
//              while the current ones are rotated; each row's threads synchronise
//              alone, s_row_sync).
//   quantize_kernel / absmax_kernel / absmax_tensor_kernel  one row at a time per
//              block, for the other rotated widths and the scalar fallbacks, with
//              the rotation fused three ways (RowMode):
//     fast     d % 16 == 0, 16 <= 2^n, d <= 64 * kThreads, x 16-byte aligned: the
//              first 4 butterfly stages in registers on the global loads (as
//              hadamard.cu's row kernel), the rest in shared memory with the pieces
//              of hadamard.cuh (swizzled layout), the next row's loads issued before
//              the current row is rotated; K == 1 and 2^n >= 256: the last radix-16
//              pass stays in registers ("regs").
//     generic  any other row that fits shared memory: staged as f32 and rotated by
//              hadamard_rotate_smem.
//     none     rows too long for shared memory are rotated into an f32 temporary by
//              hadamard_rows first, then quantized as an unrotated input.
// The first rotation of a length d uploads H_K once (hadamard_device_plan: a
// blocking copy, once per d and process).
//
// 256 threads per block everywhere; persistent grids sized with the occupancy API.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/stream.h"
#include "kernels/hadamard.cuh"
#include "kernels/hadamard.h"
#include "kernels/launch.cuh"
#include "kernels/quantize.h"

namespace halo::detail {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// ---- loads: V consecutive inputs as float (V = 4, 8: aligned vectors) ----
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
  } else if constexpr (V == 4) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
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
  } else if constexpr (V == 4) {
    const uint2 a = __ldg(reinterpret_cast<const uint2*>(p));
    unpack_bf16x2(a.x, v[0], v[1]);
    unpack_bf16x2(a.y, v[2], v[3]);
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
// The largest |v| of an array, as bits.
template <int M>
__device__ __forceinline__ uint32_t max_abs_bits(const float (&v)[M]) {
  uint32_t a = 0;
#pragma unroll
  for (int i = 0; i < M; ++i) a = max(a, abs_bits(v[i]));
  return a;
}

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

// Writes the V codes of y in format d (a runtime value, uniform across the grid).
template <int V>
__device__ __forceinline__ void store_codes_rt(DType d, uint8_t* dst, const float (&y)[V], const float (&u)[V],
                                               bool stochastic) {
  switch (d) {
    case DType::i8: store_codes<DType::i8, V>(dst, y, u, stochastic); break;
    case DType::e4m3: store_codes<DType::e4m3, V>(dst, y, u, stochastic); break;
    default: store_codes<DType::e5m2, V>(dst, y, u, stochastic); break;
  }
}

// ---- the fast row rotation ---------------------------------------------------------
using Swz = SwizzledLayout;

// 16 consecutive inputs as raw registers (loaded before they are converted, so
// that all of a thread's loads are in flight together).
template <class In>
struct Raw16 {
  uint4 q[sizeof(In)];  // bf16: 2 x 16 bytes, f32: 4 x 16 bytes
};

template <class In>
__device__ __forceinline__ void load_raw16(const In* p, Raw16<In>& r) {
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(In)); ++i) r.q[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
}

__device__ __forceinline__ void unpack16(const Raw16<uint16_t>& r, float (&v)[16]) {
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    unpack_bf16x2(r.q[q].x, v[8 * q], v[8 * q + 1]);
    unpack_bf16x2(r.q[q].y, v[8 * q + 2], v[8 * q + 3]);
    unpack_bf16x2(r.q[q].z, v[8 * q + 4], v[8 * q + 5]);
    unpack_bf16x2(r.q[q].w, v[8 * q + 6], v[8 * q + 7]);
  }
}

__device__ __forceinline__ void unpack16(const Raw16<float>& r, float (&v)[16]) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    v[4 * q] = __uint_as_float(r.q[q].x), v[4 * q + 1] = __uint_as_float(r.q[q].y);
    v[4 * q + 2] = __uint_as_float(r.q[q].z), v[4 * q + 3] = __uint_as_float(r.q[q].w);
  }
}

// A thread's groups of 16 consecutive elements of a row: g = threadIdx.x + k * kThreads.
template <class In, int G>
struct FastRow {
  Raw16<In> raw[G];
  // Issues the loads of row xr (d = 16 * groups elements). Threads past the end
  // load a valid (clamped) address: no conditional loads.
  __device__ __forceinline__ void load(const In* xr, int groups) {
#pragma unroll
    for (int k = 0; k < G; ++k) {
      const int g = static_cast<int>(threadIdx.x) + k * kThreads;
      load_raw16(xr + 16 * (g < groups ? g : groups - 1), raw[k]);
    }
  }
};

// Rotates the row held (as raw loads) in fr, then issues the loads of `next`
// (if not null) into fr. The caller makes sure that nobody reads s any more
// (a barrier after its last use of the previous row).
//   pass A: bits 0..3 of the index in registers, to s (swizzled layout);
//   passes over s for the next bits, radix <= 32, as hadamard_rows;
//   kRegs (K == 1, n >= 8): the last 4 bits in registers: v[k][j] is element
//     base_k + j * 2^(n-4) (see regs_base), already scaled; s may still be read
//     by other threads on return.
//   else: the K-mix (K > 1) in place; s holds the rotated row on return (after
//     a barrier).
template <class In, int G, bool kRegs>
__device__ __forceinline__ void fast_rotate(FastRow<In, G>& fr, float* s, const HadamardDevicePlan& p,
                                            float (&v)[G][16], const In* next) {
  using namespace hadamard_detail;
  const int d = p.dim, n = p.log2_pow2, groups = d >> 4;
  const float scale_a = (n == 4 && p.k == 1) ? p.scale : 1.0f;  // pass A is the whole transform
#pragma unroll
  for (int k = 0; k < G; ++k) {
    const int g = static_cast<int>(threadIdx.x) + k * kThreads;
    if (g < groups) {
      float w[16];
      unpack16(fr.raw[k], w);
      wht_regs<16>(w, 4);
#pragma unroll
      for (int q = 0; q < 4; ++q)
        *reinterpret_cast<float4*>(s + Swz::at(16 * g + 4 * q)) =
            make_float4(w[4 * q] * scale_a, w[4 * q + 1] * scale_a, w[4 * q + 2] * scale_a, w[4 * q + 3] * scale_a);
    }
  }
  if (next) fr.load(next, groups);
  __syncthreads();
  const int rem = (kRegs ? n - 4 : n) - 4, npass = (rem + 4) / 5;
  int b0 = 4;
  for (int ip = 0; ip < npass; ++ip) {
    const int nb = rem / npass + (ip < rem % npass ? 1 : 0);
    const bool last = !kRegs && ip == npass - 1 && p.k == 1;
    wht_pass_n<Swz>(nb, s, d, b0, last ? p.scale : 1.0f, SmemStore<Swz>{s});
    __syncthreads();
    b0 += nb;
  }
  if constexpr (kRegs) {
    const int st = 1 << b0;  // b0 == n - 4
#pragma unroll
    for (int k = 0; k < G; ++k) {
      const int g = static_cast<int>(threadIdx.x) + k * kThreads;
      if (g < groups) {
        const int base = ((g >> b0) << n) | (g & (st - 1));
#pragma unroll
        for (int j = 0; j < 16; ++j) v[k][j] = s[Swz::at(base + j * st)];
        wht_regs<16>(v[k], 4);
#pragma unroll
        for (int j = 0; j < 16; ++j) v[k][j] *= p.scale;
      }
    }
  } else if (p.k > 1) {
    kmix<1, Swz>(s, p, false, SmemStore<Swz>{s});
    __syncthreads();
  }
}

// kRegs: the first element of group g's values (the others follow at stride 2^(n-4)).
__device__ __forceinline__ int regs_base(int g, int n) {
  const int b0 = n - 4;
  return ((g >> b0) << n) | (g & ((1 << b0) - 1));
}

// How a kernel gets the (rotated) values of a row.
enum RowMode : int { kDirect = 0, kGeneric = 1, kFast = 2 };

// Row r rotated into buf (kGeneric, kFast) or nothing to do (kDirect). kFast:
// fr holds row r's loads and gets `next`'s.
template <class In, int V, int kMode, int G, bool kRegs>
__device__ __forceinline__ void prepare_row(const In* xr, float* buf, const HadamardDevicePlan& plan, int64_t C,
                                            FastRow<In, G>& fr, float (&v)[G][16], const In* next) {
  if constexpr (kMode == kGeneric) {
    stage_row<In, V>(xr, buf, C);
    hadamard_rotate_smem<1>(buf, plan, false);  // begins and ends with __syncthreads
  } else if constexpr (kMode == kFast) {
    fast_rotate<In, G, kRegs>(fr, buf, plan, v, next);
  }
}

// V consecutive values of the prepared row starting at column c0.
template <class In, int V, int kMode>
__device__ __forceinline__ void row_values(const In* xr, const float* buf, int64_t c0, float (&v)[V]) {
  if constexpr (kMode == kDirect) {
    load_global<V>(xr + c0, v);
  } else if constexpr (kMode == kGeneric) {
    load_smem<V>(buf + c0, v);
  } else {
    static_assert(V == 8, "the fast rotation reads 8-vectors");
    const float4 a = *reinterpret_cast<const float4*>(buf + Swz::at(static_cast<int>(c0)));
    const float4 b = *reinterpret_cast<const float4*>(buf + Swz::at(static_cast<int>(c0) + 4));
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
}

// Threads of the block: the row's V-vectors in batches of kB (all loads of a
// batch issued before any is used: direct global reads need that).
template <int kMode>
constexpr int batch() {
  return kMode == kDirect ? 4 : 1;
}

// The largest |x| (as bits) of this thread's values of a prepared row.
template <class In, int V, int kMode, int G, bool kRegs>
__device__ __forceinline__ uint32_t row_absmax(const In* xr, const float* buf, int64_t C, const float (&v)[G][16]) {
  uint32_t a = 0;
  if constexpr (kRegs) {
    const int groups = static_cast<int>(C >> 4);
#pragma unroll
    for (int k = 0; k < G; ++k)
      if (static_cast<int>(threadIdx.x) + k * kThreads < groups)
#pragma unroll
        for (int j = 0; j < 16; ++j) a = max(a, abs_bits(v[k][j]));
  } else {
    constexpr int kB = batch<kMode>();
    const int64_t step = static_cast<int64_t>(kThreads) * V;
    for (int64_t cb = static_cast<int64_t>(threadIdx.x) * V; cb < C; cb += kB * step) {
      float w[kB][V];
#pragma unroll
      for (int b = 0; b < kB; ++b) {
        const int64_t c0 = cb + b * step;
        if (c0 < C) row_values<In, V, kMode>(xr, buf, c0, w[b]);
      }
#pragma unroll
      for (int b = 0; b < kB; ++b)
        if (cb + b * step < C)
#pragma unroll
          for (int j = 0; j < V; ++j) a = max(a, abs_bits(w[b][j]));
    }
  }
  return a;
}

// ---- kernels -----------------------------------------------------------------------
struct Params {
  const void* x;  // [R, C], f32 or bf16 bits
  int64_t R, C;
  Granularity g;
  DType dtype;
  float qmax;
  HadamardDevicePlan plan;  // kGeneric, kFast: the rotation of every row
  // absmax_kernel: zero-initialised accumulators of absmax bits.
  uint32_t* acc_o;  // row-side groups, laid out like out's scales (also serve the transposed
                    // copy where its groups coincide: 128x128), or null
  uint32_t* acc_t;  // column-side groups of the transposed copy (row, 1x128), laid out like
                    // its scales, or null
  int rows_per_block;  // absmax_kernel: a power of two <= 128 (blocks never straddle a 128-row tile)
  bool col_smem;       // absmax_kernel: column maxima gathered in shared memory first
  // Per-tensor scale: pass 1 writes one absmax per block to partial[blockIdx.x];
  // pass 2 reduces the n_partial entries.
  uint32_t* partial;
  int n_partial;
  // pass 2
  const float* mul_o;  // multipliers of acc_o's groups (null: per-tensor, per-row or unscaled)
  const float* mul_t;  // multipliers of acc_t's groups
  uint8_t* q_o;        // [R, C] codes for out (or the transposed copy's source), or null
  uint8_t* q_t;        // [R, C] codes with mul_t (the transposed copy's source), or null
  uint8_t* q_tr;       // quantize_t_kernel: [C, R] the transposed copy itself
  float* scale_o;      // per-tensor: out's scale [1] (or null); per-row one pass: out's scales [R]
  float* scale_t;      // per-tensor: out_t's scale [1], or null
  bool row_max;        // per-row scales, computed from the row itself (one pass)
  bool stochastic;
  uint64_t seed, stream;
};

// Launch bounds: 64 registers (4 blocks of 256 per SM) where a thread has one
// group of 16 per row, 128 with more.
template <int G>
constexpr int min_blocks() {
  return G == 1 ? 4 : 2;
}

// Per-tensor scale in pass 2: every block reduces pass 1's partial maxima to the
// multiplier; block 0 also writes the scale. Called by all threads of the block.
__device__ float tensor_multiplier(const Params& p, uint32_t* red) {
  uint32_t a = 0;
  for (int i = threadIdx.x; i < p.n_partial; i += kThreads) a = max(a, p.partial[i]);
  a = block_max(a, red);
  const float amax = __uint_as_float(a);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    if (p.scale_o) p.scale_o[0] = quant_scale(amax, p.qmax);
    if (p.scale_t) p.scale_t[0] = quant_scale(amax, p.qmax);
  }
  return quant_multiplier(amax, p.qmax);
}

// Pass 1 of per-tensor scaling: the absmax of the whole (rotated) tensor, one
// partial result per block. Persistent grid; rows (or, unrotated, 8-vectors of
// the flat tensor) in ascending order over time.
template <class In, int V, int kMode, int G, bool kRegs>
__global__ void __launch_bounds__(kThreads, min_blocks<G>()) absmax_tensor_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  __shared__ uint32_t red[kWarps];
  float* buf = reinterpret_cast<float*>(dyn_smem);
  const int t = static_cast<int>(threadIdx.x);
  const In* x = static_cast<const In*>(p.x);
  const int64_t R = p.R, C = p.C;
  uint32_t a = 0;
  if constexpr (kMode == kDirect) {
    const int64_t nv = R * C / V;  // V = 8: C % 8 == 0
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
    for (int64_t i0 = static_cast<int64_t>(blockIdx.x) * kThreads + t; i0 < nv; i0 += 4 * stride) {
      float w[4][V];
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int64_t i = i0 + b * stride;
        load_global<V>(x + V * (i < nv ? i : nv - 1), w[b]);  // a repeated vector changes no maximum
      }
#pragma unroll
      for (int b = 0; b < 4; ++b)
#pragma unroll
        for (int j = 0; j < V; ++j) a = max(a, abs_bits(w[b][j]));
    }
  } else {
    FastRow<In, G> fr;
    float v[G][16];
    const int groups = static_cast<int>(C >> 4);
    if (kMode == kFast && blockIdx.x < R) fr.load(x + blockIdx.x * C, groups);
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
      __syncthreads();  // buf is free
      const int64_t rn = r + gridDim.x;
      prepare_row<In, V, kMode, G, kRegs>(x + r * C, buf, p.plan, C, fr, v, rn < R ? x + rn * C : nullptr);
      a = max(a, row_absmax<In, V, kMode, G, kRegs>(x + r * C, buf, C, v));
    }
  }
  a = block_max(a, red);
  if (t == 0) p.partial[blockIdx.x] = a;
}

// Pass 1 of row (with the transposed copy), 1x128 and 128x128 scaling: the
// absmax of every group. One block per rows_per_block consecutive rows; thread t
// handles the V-vectors starting at columns k * kThreads * V + t * V, the same
// ones in every row, so that it can keep running column maxima of its own
// columns without atomics.
//
// Dynamic shared memory: [rotated row (kGeneric, kFast)] [column maxima, with
// col_smem] [128x128 tile maxima of the block's rows].
template <class In, int V, int kMode, int G>
__global__ void __launch_bounds__(kThreads, 4) absmax_kernel(Params p, int64_t row_floats) {
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  __shared__ uint32_t red[kWarps];
  const int t = static_cast<int>(threadIdx.x), lane = t & 31;
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
  uint32_t* colmax = reinterpret_cast<uint32_t*>(dyn_smem) + row_floats;
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
  FastRow<In, G> fr;
  float vr[G][16];
  if (kMode == kFast && r0 < r1) fr.load(x + r0 * C, static_cast<int>(C >> 4));
  uint32_t tmax = 0;
  for (int64_t r = r0; r < r1; ++r) {
    if constexpr (kMode != kDirect) __syncthreads();  // buf is read before the next row overwrites it
    prepare_row<In, V, kMode, G, false>(x + r * C, buf, p.plan, C, fr, vr, r + 1 < r1 ? x + (r + 1) * C : nullptr);
    uint32_t rmax = 0;
    for (int k = 0; k < iters; ++k) {  // the same trip count in every thread: shuffles below
      const int64_t c0 = k * step + static_cast<int64_t>(t) * V;
      const bool valid = c0 < C;
      uint32_t m = 0;
      if (valid) {
        float v[V];
        row_values<In, V, kMode>(x + r * C, buf, c0, v);
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
  // Segment C: n_c entries of the transposed copy's scales taken from acc_o (128x128
  // groups, which coincide with out's, or 1 when unscaled).
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
    if (p.acc_o) {  // 128x128: entry (tile row tc of C, tile column tr of R) of the [C, R] copy
      const int64_t nrb = (p.R + 127) / 128, width = pad4(nrb);
      const int64_t tc = i / width, tr = i % width;
      if (tr < nrb) a = __uint_as_float(p.acc_o[scale_index(p.g, tr * 128, tc * 128, p.R, p.C)]);
    }
    p.scale_tr[i] = quant_scale(a, p.qmax);
  }
}

// kRegs: codes of one group's 16 values (element i0 + j * st of the tensor, at
// dst + j * st), multiplied by m.
template <DType D>
__device__ __forceinline__ void regs_codes(const float (&v)[16], float m, uint8_t* dst, int st, bool stochastic,
                                           uint64_t seed, uint64_t stream, uint64_t i0) {
  float y[16];
#pragma unroll
  for (int j = 0; j < 16; ++j) y[j] = __fmul_rn(v[j], m);
  if (stochastic) {
#pragma unroll
    for (int j = 0; j < 16; ++j)
      dst[j * st] = encode_sr<D>(y[j], uniform01(seed, stream, i0 + static_cast<uint64_t>(j) * st));
  } else {
#pragma unroll
    for (int j = 0; j < 16; j += 2) {
      const uint32_t w = encode2<D>(y[j], y[j + 1]);
      dst[j * st] = static_cast<uint8_t>(w);
      dst[(j + 1) * st] = static_cast<uint8_t>(w >> 8);
    }
  }
}

// Pass 2 (and the whole of per-row scaling without the transposed copy) for the
// rows quad_quantize_kernel does not take: the codes of every row, in descending
// row order (row R - 1 - blockIdx.x - k * gridDim.x).
// The products use __fmul_rn so that they are never fused into an FMA with a
// later add (the stochastic INT8 rounding adds u): the CPU rounds the product first.
template <class In, int V, int kMode, int G, bool kRegs>
__global__ void __launch_bounds__(kThreads, min_blocks<G>()) quantize_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  __shared__ uint32_t red[kWarps];
  float* buf = reinterpret_cast<float*>(dyn_smem);
  const int t = static_cast<int>(threadIdx.x);
  const In* x = static_cast<const In*>(p.x);
  const int64_t R = p.R, C = p.C;
  const Granularity g = p.g;
  const int groups = static_cast<int>(C >> 4);
  const int64_t grid = gridDim.x;

  FastRow<In, G> fr;
  int64_t item = blockIdx.x, next = item + grid;
  if (kMode == kFast && item < R) fr.load(x + (R - 1 - item) * C, groups);

  const float m_all = p.partial ? tensor_multiplier(p, red) : 1.0f;  // 1: unscaled
  const bool uniform = p.mul_o == nullptr;  // one multiplier for the row: m

  while (item < R) {
    const int64_t r = R - 1 - item;
    const In* xr = x + r * C;
    __syncthreads();  // buf is free
    float v[G][16];
    prepare_row<In, V, kMode, G, kRegs>(xr, buf, p.plan, C, fr, v, next < R ? x + (R - 1 - next) * C : nullptr);
    float m = m_all;
    if (p.row_max) {
      const uint32_t a = block_max(row_absmax<In, V, kMode, G, kRegs>(xr, buf, C, v), red);
      const float amax = __uint_as_float(a);
      m = quant_multiplier(amax, p.qmax);
      if (t == 0) p.scale_o[r] = quant_scale(amax, p.qmax);
    }
    if constexpr (kRegs) {  // out's codes only (the host makes sure), one multiplier
      uint8_t* qr = p.q_o + r * C;
      const int n = p.plan.log2_pow2, st = 1 << (n - 4);
#pragma unroll
      for (int k = 0; k < G; ++k) {
        const int gi = t + k * kThreads;
        if (gi < groups) {
          const int base = regs_base(gi, n);
          const uint64_t i0 = static_cast<uint64_t>(r * C + base);
          switch (p.dtype) {
            case DType::i8: regs_codes<DType::i8>(v[k], m, qr + base, st, p.stochastic, p.seed, p.stream, i0); break;
            case DType::e4m3:
              regs_codes<DType::e4m3>(v[k], m, qr + base, st, p.stochastic, p.seed, p.stream, i0);
              break;
            default: regs_codes<DType::e5m2>(v[k], m, qr + base, st, p.stochastic, p.seed, p.stream, i0); break;
          }
        }
      }
    } else {
      constexpr int kB = batch<kMode>();
      const int64_t step = static_cast<int64_t>(kThreads) * V;
      for (int64_t cb = static_cast<int64_t>(t) * V; cb < C; cb += kB * step) {
        float w[kB][V];
#pragma unroll
        for (int b = 0; b < kB; ++b)
          if (cb + b * step < C) row_values<In, V, kMode>(xr, buf, cb + b * step, w[b]);
#pragma unroll
        for (int b = 0; b < kB; ++b) {
          const int64_t c0 = cb + b * step;
          if (c0 >= C) break;
          const int64_t i = r * C + c0;
          float u[V], y[V];
#pragma unroll
          for (int j = 0; j < V; ++j)
            u[j] = p.stochastic ? uniform01(p.seed, p.stream, static_cast<uint64_t>(i + j)) : 0.0f;
          if (p.q_o) {
            const float mo = uniform ? m : p.mul_o[scale_index(g, r, c0, R, C)];
#pragma unroll
            for (int j = 0; j < V; ++j) y[j] = __fmul_rn(w[b][j], mo);
            store_codes_rt<V>(p.dtype, p.q_o + i, y, u, p.stochastic);
          }
          if (p.q_t) {
#pragma unroll
            for (int j = 0; j < V; ++j) y[j] = __fmul_rn(w[b][j], p.mul_t[scale_index(g, c0 + j, r, C, R)]);
            store_codes_rt<V>(p.dtype, p.q_t + i, y, u, p.stochastic);
          }
        }
      }
    }
    item = next;
    next += grid;
  }
}

// ---- rows by groups of threads: the S rotation and the unrotated pass 2 ------------
// Unrotated row-major pass 2 with 8-vectors: 64 threads per row, four rows per block.
// Rotated rows of d = 2048, 4096, 8192: the S rotation of hadamard.cuh, T = d / 64
// threads per row, kThreads / T rows per block.
using hadamard_detail::s_group_pass_a;
using hadamard_detail::s_pass_b;
using hadamard_detail::s_prefetch;
using hadamard_detail::SRot;
static_assert(hadamard_detail::kSThreads == kThreads, "the S rotation runs on blocks of kThreads");
constexpr int kRowThreads = 64;
constexpr int kQuad = kThreads / kRowThreads;  // rows per block, unrotated
constexpr size_t kSRot = hadamard_detail::kSRotBytes;
template <class In>
constexpr size_t s_smem() {
  return hadamard_detail::s_smem_bytes(sizeof(In));
}

// Maximum over the T threads of each row (T = 32, 64, 128: rows of whole warps);
// all threads call it, each row's threads wait for each other only.
template <int T>
__device__ __forceinline__ uint32_t quad_row_max(uint32_t a, uint32_t* red) {
  a = warp_max(a);
  if constexpr (T == 32) return a;
  const int row = static_cast<int>(threadIdx.x) / T;
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = a;
  hadamard_detail::s_row_sync<T>(row);
  constexpr int kW = T / 32;
  a = red[row * kW];
#pragma unroll
  for (int i = 1; i < kW; ++i) a = max(a, red[row * kW + i]);
  hadamard_detail::s_row_sync<T>(row);  // red is reused
  return a;
}

// Pass 1 of per-tensor scaling with the S rotation: persistent grid, groups of
// Q rows in ascending order, the next group's rows prefetched (bf16). The
// maximum of |unscaled| values times the scale is the maximum of the scaled ones
// (rounding is monotonic).
template <class In, int D>
__global__ void __launch_bounds__(kThreads, 2) absmax_s_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  __shared__ uint32_t red[kWarps];
  using S = SRot<D>;
  constexpr bool kPre = sizeof(In) == 2;
  const int t = static_cast<int>(threadIdx.x), w = t / S::T, lt = t % S::T;
  const In* x = static_cast<const In*>(p.x);
  const int64_t R = p.R, nq = (R + S::Q - 1) / S::Q;
  float* s = reinterpret_cast<float*>(dyn_smem) + w * D;
  uint16_t* raw = reinterpret_cast<uint16_t*>(dyn_smem + kSRot);
  if constexpr (kPre)
    if (blockIdx.x < nq) s_prefetch<D>(reinterpret_cast<const uint16_t*>(x), R, blockIdx.x, raw, w, lt);
  uint32_t a = 0;
  for (int64_t quad = blockIdx.x; quad < nq; quad += gridDim.x) {
    const int64_t r = quad * S::Q + w;
    s_group_pass_a<D>(x, R, quad, quad + gridDim.x < nq ? quad + gridDim.x : -1, s, raw, w, lt);
    if (r < R) {
      float v[64];
      s_pass_b<D>(s, lt, v);
      a = max(a, max_abs_bits(v));
    }
  }
  a = block_max(a, red);
  if (t == 0) p.partial[blockIdx.x] = abs_bits(__uint_as_float(a) * p.plan.scale);
}

// Eight codes of y (already multiplied; element index i0..) in format D, y[0] in the
// lowest byte. Stochastic: one random number at a time (few registers live).
template <DType D>
__device__ __forceinline__ uint2 encode8(const float (&y)[8], bool stochastic, uint64_t seed, uint64_t stream,
                                         uint64_t i0) {
  uint32_t w[2];
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    if (stochastic) {
      w[k] = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        w[k] |= static_cast<uint32_t>(encode_sr<D>(y[4 * k + j], uniform01(seed, stream, i0 + 4 * k + j))) << (8 * j);
    } else {
      w[k] = encode2<D>(y[4 * k], y[4 * k + 1]) | (encode2<D>(y[4 * k + 2], y[4 * k + 3]) << 16);
    }
  }
  return make_uint2(w[0], w[1]);
}

// 8 consecutive inputs as raw registers.
template <class In>
struct Raw8 {
  uint4 q[sizeof(In) / 2];
};
template <class In>
__device__ __forceinline__ void load_raw8(const In* p, Raw8<In>& r) {
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(In)) / 2; ++i) r.q[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
}
__device__ __forceinline__ void unpack8(const Raw8<uint16_t>& r, float (&v)[8]) {
  unpack_bf16x2(r.q[0].x, v[0], v[1]);
  unpack_bf16x2(r.q[0].y, v[2], v[3]);
  unpack_bf16x2(r.q[0].z, v[4], v[5]);
  unpack_bf16x2(r.q[0].w, v[6], v[7]);
}
__device__ __forceinline__ void unpack8(const Raw8<float>& r, float (&v)[8]) {
  v[0] = __uint_as_float(r.q[0].x), v[1] = __uint_as_float(r.q[0].y), v[2] = __uint_as_float(r.q[0].z);
  v[3] = __uint_as_float(r.q[0].w), v[4] = __uint_as_float(r.q[1].x), v[5] = __uint_as_float(r.q[1].y);
  v[6] = __uint_as_float(r.q[1].z), v[7] = __uint_as_float(r.q[1].w);
}

// Unrotated rows: a thread's 8-vectors of a chunk of the row are c0 = cb + 8 (lt + 64 k),
// k < kNV, all loaded before any is used (128 bytes in flight per thread).
template <class In>
constexpr int quad_nv() {
  return sizeof(In) == 2 ? 8 : 4;
}

// Codes of one 8-vector v at (r, c0) for out (multiplier mo) and for the transposed
// copy's own groups (mul_t), as quantize_kernel.
template <DType D, bool kSR>
__device__ __forceinline__ void vec_codes(const Params& p, int64_t r, int64_t c0, const float (&v)[8], float mo) {
  const int64_t i = r * p.C + c0;
  float y[8];
  if (p.q_o) {
#pragma unroll
    for (int j = 0; j < 8; ++j) y[j] = __fmul_rn(v[j], mo);
    *reinterpret_cast<uint2*>(p.q_o + i) = encode8<D>(y, kSR, p.seed, p.stream, i);
  }
  if (p.q_t) {
#pragma unroll
    for (int j = 0; j < 8; ++j) y[j] = __fmul_rn(v[j], p.mul_t[scale_index(p.g, c0 + j, r, p.C, p.R)]);
    *reinterpret_cast<uint2*>(p.q_t + i) = encode8<D>(y, kSR, p.seed, p.stream, i);
  }
}

template <bool kSR>
__device__ __forceinline__ void vec_codes_any(const Params& p, int64_t r, int64_t c0, const float (&v)[8], float mo) {
  switch (p.dtype) {
    case DType::i8: vec_codes<DType::i8, kSR>(p, r, c0, v, mo); break;
    case DType::e4m3: vec_codes<DType::e4m3, kSR>(p, r, c0, v, mo); break;
    default: vec_codes<DType::e5m2, kSR>(p, r, c0, v, mo); break;
  }
}

// The S rotation's codes (out's only: the host sends the transposed copy's own
// groups to quantize_kernel): v holds elements c0 = 64 lt.. of row r, scaled
// (s_pass_b's order), multiplier mo. The thread's 64 codes are staged in the
// start of its own part of s and the warp stores its 2048 contiguous bytes in
// 256-byte rows (each thread storing its own codes left 8 of every 32-byte sector
// per store instruction); only the warp syncs.
template <DType D, bool kSR>
__device__ __forceinline__ void rot_codes(const Params& p, int64_t r, int64_t c0, const float (&v)[64], float* s,
                                          int lt, float mo) {
  const int64_t i = r * p.C + c0;
  uint4* own = reinterpret_cast<uint4*>(s + 64 * lt);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    float y0[8], y1[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) y0[j] = __fmul_rn(v[16 * k + j], mo), y1[j] = __fmul_rn(v[16 * k + 8 + j], mo);
    const uint2 c0 = encode8<D>(y0, kSR, p.seed, p.stream, i + 16 * k);
    const uint2 c1 = encode8<D>(y1, kSR, p.seed, p.stream, i + 16 * k + 8);
    own[k] = make_uint4(c0.x, c0.y, c1.x, c1.y);
  }
  __syncwarp();
  const int lane = lt & 31, w0 = lt - lane;  // the warp's first thread of the row
  uint8_t* dst = p.q_o + r * p.C + 64 * w0 + 8 * lane;
#pragma unroll
  for (int k = 0; k < 8; ++k) {  // bytes 256 k + 8 lane of the warp's 2048: thread w0 + 4 k + lane / 8's codes
    const int src = w0 + 4 * k + lane / 8;
    *reinterpret_cast<uint2*>(dst + 256 * k) = reinterpret_cast<const uint2*>(s + 64 * src)[lane % 8];
  }
}

// The multiplier that codes the rotated row's unscaled values v as the reference
// codes fl(fl(v * scale) * m): m * scale, one rounding, where that is the same (scale
// a power of two, as for d = 4096, and m * scale normal, so that fl(v * scale) is
// exact unless subnormal; m <= 2^108, so that such values code to zero either way;
// round to nearest); else v is scaled in place and m returned.
template <bool kSR>
__device__ __forceinline__ float scaled_multiplier(float (&v)[64], float scale, float m) {
  const float ms = m * scale;
  if (!kSR && (__float_as_uint(scale) & 0x7fffffu) == 0 && ms >= 0x1p-126f && m <= 0x1p108f) return ms;
#pragma unroll
  for (int j = 0; j < 64; ++j) v[j] *= scale;
  return m;
}

// Pass 2 by groups of rows (kRotD > 0: the S rotation of d = kRotD; else unrotated,
// C % 8 == 0, 16-byte aligned rows, four rows per block), and the per-row one-pass
// scaling: codes in descending row order (group nq - 1 - blockIdx.x - k * gridDim.x);
// rotated bf16: the next group's rows prefetched while the current ones are rotated.
template <class In, int kRotD, bool kSR>
__global__ void __launch_bounds__(kThreads, kRotD ? 2 : 3) quad_quantize_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  __shared__ uint32_t red[kWarps];
  constexpr bool kRot = kRotD > 0;
  constexpr int kT = kRot ? kRotD / 64 : kRowThreads, kQ = kThreads / kT;  // threads per row, rows per block
  const int t = static_cast<int>(threadIdx.x), w = t / kT, lt = t % kT;
  const In* x = static_cast<const In*>(p.x);
  const int64_t R = p.R, C = p.C, nq = (R + kQ - 1) / kQ;
  const Granularity g = p.g;
  const int64_t grid = gridDim.x;

  const float m_all = p.partial ? tensor_multiplier(p, red) : 1.0f;  // 1: unscaled
  const bool uniform = p.mul_o == nullptr;

  constexpr bool kPre = kRot && sizeof(In) == 2;
  uint16_t* raw = reinterpret_cast<uint16_t*>(dyn_smem + kSRot);
  int64_t item = blockIdx.x, next = item + grid;
  if constexpr (kPre)
    if (item < nq) s_prefetch<kRotD>(reinterpret_cast<const uint16_t*>(x), R, nq - 1 - item, raw, w, lt);
  while (item < nq) {
    const int64_t quad = nq - 1 - item, r = quad * kQ + w;
    const bool valid = r < R;
    if constexpr (kRot) {
      float* s = reinterpret_cast<float*>(dyn_smem) + w * kRotD;
      s_group_pass_a<kRotD>(x, R, quad, next < nq ? nq - 1 - next : -1, s, raw, w, lt);
      // Pass B; the thread's 64 values stay in registers across the row maximum
      // and are coded from there (put back to s and read again, they cost a
      // third of the kernel's shared-memory traffic). Rows past the end (r >= R)
      // rotate stale values of s, counted nowhere: a branch around pass B made
      // ptxas spill v. The values are not yet scaled: the maximum of the scaled
      // ones is the scaled maximum (rounding is monotonic).
      float v[64];
      s_pass_b<kRotD>(s, lt, v);
      if constexpr (kT == 128) __syncwarp();  // the neighbour (same warp) has read this thread's part
      float m = m_all;
      if (p.row_max) {
        const uint32_t a = valid ? max_abs_bits(v) : 0u;
        const float amax = __uint_as_float(quad_row_max<kT>(a, red)) * p.plan.scale;
        m = quant_multiplier(amax, p.qmax);
        if (valid && lt == 0) p.scale_o[r] = quant_scale(amax, p.qmax);
      }
      if (valid && p.q_o) {
        const int64_t c0 = 64 * lt;
        const float mo = scaled_multiplier<kSR>(v, p.plan.scale,  // 64 columns: one group
                                                uniform ? m : p.mul_o[scale_index(g, r, c0, R, C)]);
        switch (p.dtype) {
          case DType::i8: rot_codes<DType::i8, kSR>(p, r, c0, v, s, lt, mo); break;
          case DType::e4m3: rot_codes<DType::e4m3, kSR>(p, r, c0, v, s, lt, mo); break;
          default: rot_codes<DType::e5m2, kSR>(p, r, c0, v, s, lt, mo); break;
        }
      }
    } else {
      __syncthreads();  // shared memory is free
      const In* xr = x + r * C;
      constexpr int kNV = quad_nv<In>();
      const int64_t chunk = 8 * kRowThreads * kNV;
      const bool one_chunk = C <= chunk;
      Raw8<In> raw[kNV];
      auto load_chunk = [&](int64_t cb) {
#pragma unroll
        for (int k = 0; k < kNV; ++k) {
          const int64_t c0 = cb + 8 * (lt + kRowThreads * k);
          if (valid && c0 < C) load_raw8(xr + c0, raw[k]);
        }
      };
      float m = m_all;
      if (p.row_max) {
        uint32_t a = 0;
        for (int64_t cb = 0; cb < C; cb += chunk) {
          load_chunk(cb);
#pragma unroll
          for (int k = 0; k < kNV; ++k) {
            if (valid && cb + 8 * (lt + kRowThreads * k) < C) {
              float v[8];
              unpack8(raw[k], v);
#pragma unroll
              for (int j = 0; j < 8; ++j) a = max(a, abs_bits(v[j]));
            }
          }
        }
        const float amax = __uint_as_float(quad_row_max<kRowThreads>(a, red));
        m = quant_multiplier(amax, p.qmax);
        if (valid && lt == 0) p.scale_o[r] = quant_scale(amax, p.qmax);
      }
      for (int64_t cb = 0; cb < C; cb += chunk) {
        if (!(p.row_max && one_chunk)) load_chunk(cb);  // one chunk: still in registers
#pragma unroll
        for (int k = 0; k < kNV; ++k) {
          const int64_t c0 = cb + 8 * (lt + kRowThreads * k);
          if (valid && c0 < C) {
            float v[8];
            unpack8(raw[k], v);
            vec_codes_any<kSR>(p, r, c0, v, uniform ? m : p.mul_o[scale_index(g, r, c0, R, C)]);
          }
        }
      }
    }
    item = next;
    next += grid;
  }
}

// ---- rows of d = 2N x 512: the P rotation of hadamard.cuh, one row per block and turn ----
using hadamard_detail::dispatch_p_order;
using hadamard_detail::p_rotate_row;
using hadamard_detail::p_smem_bytes;
static_assert(hadamard_detail::kPThreads == kThreads, "the P rotation runs on blocks of kThreads");

// Pass 1 of per-tensor scaling with the P rotation (bf16 rows): persistent grid,
// rows in ascending order.
template <int N>
__global__ void __launch_bounds__(kThreads, 2) absmax_p_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  __shared__ uint32_t red[kWarps];
  float* s = reinterpret_cast<float*>(dyn_smem);
  const int t = static_cast<int>(threadIdx.x);
  const uint16_t* x = static_cast<const uint16_t*>(p.x);
  uint32_t a = 0;
  for (int64_t r = blockIdx.x; r < p.R; r += gridDim.x) {
    p_rotate_row<N>(x + r * p.C, s, t);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float z[2 * N];
      hadamard_detail::p_mix_column<N>(s, t + kThreads * h, p.plan.scale, z);
      a = max(a, max_abs_bits(z));
    }
  }
  a = block_max(a, red);
  if (t == 0) p.partial[blockIdx.x] = a;
}

// Codes of column c of every segment of row r (round to nearest even).
template <DType D, int N>
__device__ __forceinline__ void p_codes(const Params& p, int64_t r, int c, const float (&z)[2 * N], float m) {
#pragma unroll
  for (int a = 0; a < 2 * N; ++a) {
    const int64_t c0 = 512 * a + c;
    const float mo = p.mul_o ? p.mul_o[scale_index(p.g, r, c0, p.R, p.C)] : m;
    p.q_o[r * p.C + c0] = encode1<D>(__fmul_rn(z[a], mo));
  }
}

// Pass 2 with the P rotation (bf16 rows, out's codes only, no stochastic
// rounding), and the per-row one-pass scaling: rows in descending order.
template <int N>
__global__ void __launch_bounds__(kThreads, 2) p_quantize_kernel(Params p) {
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  __shared__ uint32_t red[kWarps];
  float* s = reinterpret_cast<float*>(dyn_smem);
  const int t = static_cast<int>(threadIdx.x);
  const uint16_t* x = static_cast<const uint16_t*>(p.x);
  const float m_all = p.partial ? tensor_multiplier(p, red) : 1.0f;  // 1: unscaled
  for (int64_t item = blockIdx.x; item < p.R; item += gridDim.x) {
    const int64_t r = p.R - 1 - item;
    p_rotate_row<N>(x + r * p.C, s, t);
    float z0[2 * N], z1[2 * N];
    hadamard_detail::p_mix_column<N>(s, t, p.plan.scale, z0);
    hadamard_detail::p_mix_column<N>(s, t + kThreads, p.plan.scale, z1);
    float m = m_all;
    if (p.row_max) {
      const float amax = __uint_as_float(block_max(max(max_abs_bits(z0), max_abs_bits(z1)), red));
      m = quant_multiplier(amax, p.qmax);
      if (t == 0) p.scale_o[r] = quant_scale(amax, p.qmax);
    }
    switch (p.dtype) {
      case DType::i8: p_codes<DType::i8, N>(p, r, t, z0, m), p_codes<DType::i8, N>(p, r, t + kThreads, z1, m); break;
      case DType::e4m3:
        p_codes<DType::e4m3, N>(p, r, t, z0, m), p_codes<DType::e4m3, N>(p, r, t + kThreads, z1, m);
        break;
      default: p_codes<DType::e5m2, N>(p, r, t, z0, m), p_codes<DType::e5m2, N>(p, r, t + kThreads, z1, m); break;
    }
  }
}

// ---- byte tiles transposed: 64 x 64, 256 threads -----------------------------------
// Thread (ty, tx) = (threadIdx.x / 16, threadIdx.x % 16) holds a 4 x 4 byte block of
// the tile (rows 4 ty.., word column tx), transposes it in registers and puts it in
// shared memory; then every thread writes words of the tile's output rows. Global
// reads and writes are 64 contiguous bytes per half-warp.
using ByteTile = uint32_t[64][17];  // [tile column = output row][word of 4 input rows]; padded

// w[i]: the thread's word of input row 4 ty + i.
__device__ __forceinline__ void put_transposed(ByteTile& tile, const uint32_t (&w)[4], int tx, int ty) {
  // Word k of the result holds byte k of w[0..3] (input rows 4ty..4ty+3 of column 4 tx + k).
  const uint32_t a = __byte_perm(w[0], w[1], 0x5140), b = __byte_perm(w[0], w[1], 0x7362);
  const uint32_t d = __byte_perm(w[2], w[3], 0x5140), e = __byte_perm(w[2], w[3], 0x7362);
  tile[4 * tx + 0][ty] = __byte_perm(a, d, 0x5410);
  tile[4 * tx + 1][ty] = __byte_perm(a, d, 0x7632);
  tile[4 * tx + 2][ty] = __byte_perm(b, e, 0x5410);
  tile[4 * tx + 3][ty] = __byte_perm(b, e, 0x7632);
}

// The tile at input (r0, c0) of [R, C] to out [C, R], after a barrier.
__device__ __forceinline__ void store_transposed(const ByteTile& tile, uint8_t* out, int64_t R, int64_t C,
                                                 int64_t r0, int64_t c0, int tx, int ty) {
  const int64_t r = r0 + 4 * tx;  // output column (input row) of this thread's word
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int j = ty + 16 * i;  // output row c0 + j
    if (c0 + j < C && r < R) *reinterpret_cast<uint32_t*>(out + (c0 + j) * R + r) = tile[j][tx];
  }
}

// [R, C] bytes -> [C, R] bytes, R % 4 == 0, C % 4 == 0, 4-byte aligned; a block per tile.
__global__ void __launch_bounds__(256) transpose_u8_kernel(const uint8_t* in, uint8_t* out, int64_t R,
                                                          int64_t C) {
  __shared__ ByteTile tile;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 64, c0 = static_cast<int64_t>(blockIdx.y) * 64;
  const int64_t c = c0 + 4 * tx;
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = r0 + 4 * ty + i;
    w[i] = (r < R && c < C) ? *reinterpret_cast<const uint32_t*>(in + r * C + c) : 0u;
  }
  put_transposed(tile, w, tx, ty);
  __syncthreads();
  store_transposed(tile, out, R, C, r0, c0, tx, ty);
}

// Pass 2 of unrotated rows that writes the transposed copy itself (q_tr), and
// out's codes too when q_o is set: the byte tiles above, coded from the input
// on the way in (x read once; the row-major codes are not written and read again
// for the transpose). One multiplier (per tensor, or unscaled), or out's groups
// (mul_o) and the transposed copy's own (mul_t, where its codes differ; else
// out's codes serve both). Persistent grid, tiles down the rows first (as
// transpose_u8_kernel's grid, whose output rows then fill in order); R % 64 == 0,
// C % 64 == 0, 16-byte aligned rows. kGroups: multipliers of groups (mul_o, mul_t).
template <class In, DType D, bool kGroups>
__global__ void __launch_bounds__(kThreads) quantize_t_kernel(Params p) {
  __shared__ ByteTile tile;
  __shared__ uint32_t red[kWarps];
  const int t = static_cast<int>(threadIdx.x), tx = t & 15, ty = t >> 4;
  const In* x = static_cast<const In*>(p.x);
  const int64_t R = p.R, C = p.C, tiles_r = R / 64, tiles = tiles_r * (C / 64);
  const Granularity g = p.g;
  const auto row0 = [&](int64_t k) { return k % tiles_r * 64; };  // tile k's first row and column
  const auto col0 = [&](int64_t k) { return k / tiles_r * 64; };
  // The thread's 4 x 4 inputs of tile k (the next tile's are loaded before this one is coded).
  const auto load_tile = [&](int64_t k, float (&v)[4][4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) load_global<4>(x + (row0(k) + 4 * ty + i) * C + col0(k) + 4 * tx, v[i]);
  };
  float v[4][4];
  if (blockIdx.x < tiles) load_tile(blockIdx.x, v);
  const float m = p.partial ? tensor_multiplier(p, red) : 1.0f;  // 1: one multiplier (unscaled: 1)
  for (int64_t k = blockIdx.x; k < tiles; k += gridDim.x) {
    const int64_t r0 = row0(k), c0 = col0(k), r = r0 + 4 * ty, c = c0 + 4 * tx;
    float next[4][4];
    if (k + gridDim.x < tiles) load_tile(k + gridDim.x, next);
    // Groups never split the thread's 4 x 4 block (they span 1, 128 or all rows and columns).
    float mo[4] = {m, m, m, m}, mt[4] = {};
    if constexpr (kGroups) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (p.mul_o) mo[i] = p.mul_o[scale_index(g, r + i, c, R, C)];
        if (p.mul_t) mt[i] = p.mul_t[scale_index(g, c + i, r, C, R)];
      }
    }
    // w[i]: row r + i's codes of columns c..c+3, element (i, j) times mult(i, j).
    uint32_t w[4];
    const auto code_words = [&](auto mult) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float y[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) y[j] = __fmul_rn(v[i][j], mult(i, j));
        w[i] = encode2<D>(y[0], y[1]) | (encode2<D>(y[2], y[3]) << 16);
      }
    };
    code_words([&](int i, int) { return mo[i]; });
    if (p.q_o) {
#pragma unroll
      for (int i = 0; i < 4; ++i) *reinterpret_cast<uint32_t*>(p.q_o + (r + i) * C + c) = w[i];
    }
    if (kGroups && p.mul_t) code_words([&](int, int j) { return mt[j]; });  // the transposed copy's own codes
    __syncthreads();  // the previous tile's words are out
    put_transposed(tile, w, tx, ty);
    __syncthreads();
    store_transposed(tile, p.q_tr, R, C, r0, c0, tx, ty);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) v[i][j] = next[i][j];
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
int max_optin_smem() {
  int dev = 0, n = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return n;
}

unsigned row_grid(int64_t R) { return static_cast<unsigned>(std::min<int64_t>(R, INT_MAX)); }

template <class Kernel, class... Args>
void launch(Kernel kernel, int64_t grid, size_t smem, Args... args) {
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<static_cast<unsigned>(std::max<int64_t>(grid, 1)), kThreads, smem, current_stream()>>>(args...);
  CUDA_CHECK_LAUNCH();
}

// The kernel variant: input type, vector width, how rows are read, groups of 16
// per thread (kFast) and whether the last rotation pass stays in registers.
struct Config {
  bool f32 = false;
  int V = 1;
  int mode = kDirect;
  int G = 1;
  bool regs = false;
  int s = 0;  // the S rotation's d (2048, 4096, 8192; K = 1), or 0
  int p = 0;  // the P rotation's N (d = 2N x 512, Paley II H_2N), or 0
};

template <class In_, int V_, int kMode_, int G_, bool kRegs_>
struct Variant {
  using In = In_;
  static constexpr int V = V_, kMode = kMode_, G = G_;
  static constexpr bool kRegs = kRegs_;
};

template <class In, class F>
void dispatch_in(const Config& c, F&& f) {
  if (c.mode == kDirect) {
    c.V == 8 ? f(Variant<In, 8, kDirect, 1, false>{}) : f(Variant<In, 1, kDirect, 1, false>{});
  } else if (c.mode == kGeneric) {
    c.V == 8 ? f(Variant<In, 8, kGeneric, 1, false>{}) : f(Variant<In, 1, kGeneric, 1, false>{});
  } else if (c.G == 1) {
    c.regs ? f(Variant<In, 8, kFast, 1, true>{}) : f(Variant<In, 8, kFast, 1, false>{});
  } else if (c.G == 2) {
    c.regs ? f(Variant<In, 8, kFast, 2, true>{}) : f(Variant<In, 8, kFast, 2, false>{});
  } else {
    f(Variant<In, 8, kFast, 4, false>{});
  }
}

template <class F>
void dispatch(const Config& c, F&& f) {
  c.f32 ? dispatch_in<float>(c, f) : dispatch_in<uint16_t>(c, f);
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

int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
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
  const bool tensor = spec.scaled && g == Granularity::tensor;
  const bool row_onepass = spec.scaled && g == Granularity::row && out && !out_t;
  const bool same_codes = !spec.scaled || g == Granularity::tensor || g == Granularity::block128x128;
  const bool need_o = spec.scaled && !tensor && !row_onepass && (out || same_codes);
  const bool need_t = spec.scaled && out_t && !same_codes;

  // How rows are read (rotation fused or not) and the shared memory of a row.
  const size_t limit = static_cast<size_t>(max_optin_smem()) - 1024;  // leave room for static shared memory
  const size_t tile_bytes = g == Granularity::block128x128 ? static_cast<size_t>((C + 127) / 128) * 4 : 0;
  Config cfg;
  int64_t row_floats = 0;
  Tensor rotated;
  const Tensor* src = &x2;
  Params p{};
  if (rotate_rows) {
    const HadamardPlan& hp = hadamard_plan(C);
    // hadamard_rotate_smem<1> and the fast rotation's K-mix handle K up to 4 * kThreads.
    const bool kmix_ok = hp.k <= 4 * kThreads;
    const bool aligned = reinterpret_cast<uintptr_t>(x2.data()) % 16 == 0;
    const int64_t pow2 = hp.pow2;  // the length of the Walsh-Hadamard segments
    const bool seg16 = pow2 >= 16, seg256 = pow2 >= 256;
    const size_t fast_bytes = static_cast<size_t>(hadamard_smem_floats(static_cast<int>(std::min<int64_t>(C, INT_MAX - 32)))) * 4;
    if (kmix_ok && C % 16 == 0 && seg16 && aligned && C <= 64 * kThreads && fast_bytes + tile_bytes <= limit) {
      cfg.mode = kFast;
      cfg.G = C <= 16 * kThreads ? 1 : (C <= 32 * kThreads ? 2 : 4);
      cfg.regs = hp.k == 1 && seg256 && cfg.G <= 2 && !need_t && (tensor || row_onepass || !spec.scaled);
      row_floats = static_cast<int64_t>(fast_bytes / 4);
    } else if (kmix_ok && static_cast<size_t>(pad4(C)) * 4 + tile_bytes <= limit) {
      cfg.mode = kGeneric;
      row_floats = pad4(C);
    } else {  // rows too long for shared memory: an f32 temporary rotated by hadamard_rows
      rotated = Tensor::empty({R, C}, DType::f32, Device::cuda);
      hadamard_rows(x2, rotated);
      src = &rotated;
    }
    if (cfg.mode != kDirect) p.plan = hadamard_device_plan(hp);
    if (cfg.mode == kFast) cfg.s = hadamard_detail::s_width_of(p.plan);
    if (cfg.mode == kFast && x2.dtype() == DType::bf16 && !spec.stochastic) cfg.p = hadamard_detail::p_order_of(p.plan);
  }
  cfg.f32 = src->dtype() == DType::f32;
  cfg.V = C % 8 == 0 && reinterpret_cast<uintptr_t>(src->data()) % 16 == 0 ? 8 : 1;
  const size_t row_bytes = static_cast<size_t>(row_floats) * 4;

  p.x = src->data();
  p.R = R, p.C = C, p.g = g, p.dtype = spec.dtype, p.qmax = f.qmax;
  p.stochastic = spec.stochastic, p.seed = spec.seed, p.stream = spec.stream;

  // Pass 1 of per-tensor scaling: its grid sets the number of partial maxima
  // (none when they were given).
  const bool parts_given = tensor && spec.absmax_parts;
  int64_t grid1 = 0;
  const int64_t n_quads = (R + kQuad - 1) / kQuad;
  const int64_t n_s_groups = cfg.s ? (R + kThreads / (cfg.s / 64) - 1) / (kThreads / (cfg.s / 64)) : 0;
  const auto absmax_s = [&](auto d) {
    return cfg.f32 ? absmax_s_kernel<float, decltype(d)::value> : absmax_s_kernel<uint16_t, decltype(d)::value>;
  };
  const auto absmax_p = [](auto n) { return absmax_p_kernel<decltype(n)::value>; };
  if (parts_given) {
    // the given maxima serve as pass 1's
  } else if (tensor && cfg.p) {
    dispatch_p_order(cfg.p, [&](auto n) {
      grid1 = std::min(R, resident_blocks(absmax_p(n), kThreads, p_smem_bytes(cfg.p)));
    });
  } else if (tensor && cfg.s) {
    hadamard_detail::dispatch_s_width(cfg.s, [&](auto d) {
      grid1 = std::min(n_s_groups,
                       resident_blocks(absmax_s(d), kThreads, cfg.f32 ? s_smem<float>() : s_smem<uint16_t>()));
    });
  } else if (tensor) {
    dispatch(cfg, [&](auto var) {
      using Var = decltype(var);
      const int64_t cap = Var::kMode == kDirect ? (R * C / Var::V + 4 * kThreads - 1) / (4 * kThreads) : R;
      grid1 = std::min(cap, resident_blocks(absmax_tensor_kernel<typename Var::In, Var::V, Var::kMode, Var::G, Var::kRegs>,
                                            kThreads, row_bytes));
    });
  }

  // Work space (32-bit words): [partial maxima | accumulators acc_o, acc_t (zeroed) |
  // multipliers mul_o, mul_t].
  const int64_t n_o = need_o ? numel_of(scale_shape(g, R, C)) : 0;
  const int64_t n_t = need_t ? out_t->scale.numel() : 0;
  const int64_t words = grid1 + 2 * (n_o + n_t);
  Tensor work;
  uint32_t *acc_o = nullptr, *acc_t = nullptr;
  float *mul_o = nullptr, *mul_t = nullptr;
  if (words > 0) {
    work = Tensor::empty({words}, DType::f32, Device::cuda);
    uint32_t* w = work.data_as<uint32_t>();
    p.partial = tensor ? w : nullptr;
    p.n_partial = static_cast<int>(grid1);
    acc_o = need_o ? w + grid1 : nullptr;
    acc_t = need_t ? w + grid1 + n_o : nullptr;
    mul_o = need_o ? reinterpret_cast<float*>(w + grid1 + n_o + n_t) : nullptr;
    mul_t = need_t ? reinterpret_cast<float*>(w + grid1 + 2 * n_o + n_t) : nullptr;
    if (n_o + n_t > 0) CUDA_CHECK(cudaMemsetAsync(w + grid1, 0, static_cast<size_t>(n_o + n_t) * 4, stream));
  }
  p.acc_o = acc_o, p.acc_t = acc_t;
  if (parts_given) {  // f32 maxima of |x|: their bits order as the values
    HALO_CHECK(spec.absmax_parts->numel() <= INT_MAX, "quantize: too many absmax_parts");
    p.partial = const_cast<uint32_t*>(spec.absmax_parts->data_as<uint32_t>());
    p.n_partial = static_cast<int>(spec.absmax_parts->numel());
  }

  // Pass 1.
  if (parts_given) {
    // done where x was made
  } else if (tensor && cfg.p) {
    dispatch_p_order(cfg.p, [&](auto n) { launch(absmax_p(n), grid1, p_smem_bytes(cfg.p), p); });
  } else if (tensor && cfg.s) {
    hadamard_detail::dispatch_s_width(
        cfg.s, [&](auto d) { launch(absmax_s(d), grid1, cfg.f32 ? s_smem<float>() : s_smem<uint16_t>(), p); });
  } else if (tensor) {
    dispatch(cfg, [&](auto var) {
      using Var = decltype(var);
      launch(absmax_tensor_kernel<typename Var::In, Var::V, Var::kMode, Var::G, Var::kRegs>, grid1, row_bytes, p);
    });
  } else if (need_o || need_t) {
    const bool cross_rows = need_t || g == Granularity::block128x128;
    int tr = cross_rows ? 32 : 8;  // more rows per block: fewer atomics, but fewer blocks
    const int64_t want_blocks = 2 * static_cast<int64_t>(sm_count());
    while (tr > 1 && (R + tr - 1) / tr < want_blocks) tr /= 2;
    p.rows_per_block = tr;
    const int64_t step = static_cast<int64_t>(kThreads) * cfg.V;
    const size_t col_bytes = need_t ? static_cast<size_t>((C + step - 1) / step * step) * 4 : 0;
    p.col_smem = row_bytes + col_bytes + tile_bytes <= limit;  // else: global atomics per element
    const size_t smem = row_bytes + (p.col_smem ? col_bytes : 0) + tile_bytes;
    HALO_CHECK(smem <= limit, "quantize: ", C, " columns need too much shared memory for 128x128 scales");
    dispatch(cfg, [&](auto var) {
      using Var = decltype(var);
      launch(absmax_kernel<typename Var::In, Var::V, Var::kMode, Var::G>, (R + tr - 1) / tr, smem, p, row_floats);
    });
  }

  // Scales and multipliers (per-tensor and per-row one pass: by the quantize kernel).
  if (!tensor && !row_onepass) {
    if (out) f.scale_o = out->scale.data_as<float>(), f.n_a = out->scale.numel();
    if (need_o) f.acc_o = acc_o, f.mul_o = mul_o, f.n_a = n_o;
    if (need_t) {
      f.acc_t = acc_t, f.mul_t = mul_t, f.scale_t = out_t->scale.data_as<float>(), f.n_b = n_t;
    } else if (out_t) {
      f.scale_tr = out_t->scale.data_as<float>(), f.n_c = out_t->scale.numel();
    }
    finalize(f);
  }

  // Pass 2: codes, then the transposed copy; or both by byte tiles (quantize_t_kernel)
  // for unrotated rows, whole tiles and round to nearest.
  const bool by_tiles = out_t && cfg.mode == kDirect && cfg.V == 8 && !spec.stochastic && R % 64 == 0 && C % 64 == 0;
  Tensor tmp;  // row-major codes for the transposed copy when out's cannot serve
  if (out_t && !(same_codes && out) && !by_tiles) tmp = Tensor::empty({R, C}, spec.dtype, Device::cuda);
  p.q_o = out ? out->data.data_as<uint8_t>() : (tmp.defined() && same_codes ? tmp.data_as<uint8_t>() : nullptr);
  p.q_t = need_t && !by_tiles ? tmp.data_as<uint8_t>() : nullptr;
  p.q_tr = by_tiles ? out_t->data.data_as<uint8_t>() : nullptr;
  p.mul_o = mul_o, p.mul_t = mul_t;
  p.row_max = row_onepass;
  if (tensor) {
    p.scale_o = out ? out->scale.data_as<float>() : nullptr;
    p.scale_t = out_t ? out_t->scale.data_as<float>() : nullptr;
  } else if (row_onepass) {
    p.scale_o = out->scale.data_as<float>();
  }
  if (by_tiles) {
    const auto run = [&](auto kernel) {
      launch(kernel, std::min(R * C / 4096, resident_blocks(kernel, kThreads)), 0, p);  // 4096: a tile's bytes
    };
    const auto run_in = [&](auto in) {
      using In = decltype(in);
      const bool groups = mul_o || mul_t;
      const auto run_d = [&](auto i8, auto e4m3, auto e5m2) {  // kGroups instances per format
        switch (spec.dtype) {
          case DType::i8: run(i8); break;
          case DType::e4m3: run(e4m3); break;
          default: run(e5m2); break;
        }
      };
      if (groups)
        run_d(quantize_t_kernel<In, DType::i8, true>, quantize_t_kernel<In, DType::e4m3, true>,
              quantize_t_kernel<In, DType::e5m2, true>);
      else
        run_d(quantize_t_kernel<In, DType::i8, false>, quantize_t_kernel<In, DType::e4m3, false>,
              quantize_t_kernel<In, DType::e5m2, false>);
    };
    cfg.f32 ? run_in(float{}) : run_in(uint16_t{});
    return;
  }
  dispatch(cfg, [&](auto var) {
    using Var = decltype(var);
    using In = typename Var::In;
    if constexpr (Var::kMode == kDirect && Var::V == 8) {  // four rows per block
      auto kernel = spec.stochastic ? quad_quantize_kernel<In, 0, true> : quad_quantize_kernel<In, 0, false>;
      launch(kernel, std::min(n_quads, resident_blocks(kernel, kThreads, 0)), 0, p);
    } else {
      if (Var::kMode == kFast && cfg.s && !need_t) {  // the S rotation, out's groups only
        hadamard_detail::dispatch_s_width(cfg.s, [&](auto d) {
          constexpr int D = decltype(d)::value;
          auto kernel = spec.stochastic ? quad_quantize_kernel<In, D, true> : quad_quantize_kernel<In, D, false>;
          launch(kernel, std::min(n_s_groups, resident_blocks(kernel, kThreads, s_smem<In>())), s_smem<In>(), p);
        });
        return;
      }
      if (Var::kMode == kFast && cfg.p && !need_t) {  // the P rotation, out's groups only
        dispatch_p_order(cfg.p, [&](auto n) {
          auto kernel = p_quantize_kernel<decltype(n)::value>;
          launch(kernel, std::min(R, resident_blocks(kernel, kThreads, p_smem_bytes(cfg.p))), p_smem_bytes(cfg.p), p);
        });
        return;
      }
      auto kernel = quantize_kernel<In, Var::V, Var::kMode, Var::G, Var::kRegs>;
      launch(kernel, std::min(R, resident_blocks(kernel, kThreads, row_bytes)), row_bytes, p);
    }
  });
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
