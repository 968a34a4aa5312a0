// CUDA kernels of the Hadamard rotations (see hadamard.h for the math).
//
// Rows (x R along the last dim): one thread block per row; the row goes
// through shared memory (f32) and is rotated there by the block. The fast
// kernel (hadamard_detail::rotate_rows_fast) fuses the first pass with the
// global loads and the last step with the global stores; the general kernel
// (odd sizes, misaligned views) uses hadamard_rotate_smem as is. Rows of
// d = 2048, 4096, 8192 (K = 1) and of 6144, 14336 take the S and P rotations of
// hadamard.cuh (compile-time passes; S: several rows per block). Limit: d f32
// values must fit in one block's shared memory (d <= ~56K on H100/A100,
// ~25K on sm_89).
//
// Columns (R^T x along the first dim, the token dimension): for d = 1024 C
// (C <= 16, K = 1) and 16-column strips on sm_90, one pass by clusters of C
// blocks (cols_cluster_kernel). Otherwise by chunks of columns, transpose ->
// row kernel -> transpose back (exact moves, one rounding). For d too long
// for the row kernel, the rotation is split into passes over global memory,
// each applying one factor of
// R = (H_K kron H_2^n) / sqrt(d) along the first dim for a tile of 32 columns:
//   WHT passes: H over up to 8 bits of the row index (2^m rows with stride 2^lo),
//   a K-mix pass (K > 1): H_K over the K rows {a P + b}.
// With a bf16 output and more than one pass the intermediate values live in
// an f32 workspace, so the result is rounded once, as on the CPU.
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>
#include <type_traits>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/numerics.h"
#include "core/stream.h"
#include "kernels/hadamard.cuh"
#include "kernels/hadamard.h"
#include "kernels/launch.cuh"
#include "kernels/vec.cuh"

namespace halo {
namespace {

using vec::from_f32;
using vec::to_f32;

}  // namespace

// bf16 element I/O for the kernel pieces in hadamard.cuh (f32 is there).
template <>
struct hadamard_detail::ElementIO<__nv_bfloat16> {
  static __device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
  struct Raw16 {
    uint4 q[2];
  };
  static __device__ __forceinline__ void load_raw16(const __nv_bfloat16* p, Raw16& r) {
    r.q[0] = reinterpret_cast<const uint4*>(p)[0];
    r.q[1] = reinterpret_cast<const uint4*>(p)[1];
  }
  static __device__ __forceinline__ void unpack16(const Raw16& r, float (&v)[16]) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const uint32_t w[4] = {r.q[q].x, r.q[q].y, r.q[q].z, r.q[q].w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {  // little endian: the low half is the lower element
        v[8 * q + 2 * e] = __uint_as_float(w[e] << 16);
        v[8 * q + 2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
      }
    }
  }
  static __device__ __forceinline__ void store4(__nv_bfloat16* p, float4 v) {  // p 8-byte aligned: one 8-byte store
    vec::store_global(p, make_uint2(vec::pack_bf16(v.x, v.y), vec::pack_bf16(v.z, v.w)));
  }
};

namespace {

// ---- rows ------------------------------------------------------------------------------

// The fast row kernel: `rpb` rows per block (grid-stride over groups of rows);
// see hadamard_detail::rotate_rows_fast for the method and its preconditions.
template <class TI, class TO>
__global__ void __launch_bounds__(512, 2)
    rows_fast_kernel(const TI* x, TO* y, int64_t rows, HadamardDevicePlan p, bool transpose, int rpb) {
  extern __shared__ float4 smem_fast[];
  float* s = reinterpret_cast<float*>(smem_fast);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * rpb; r < rows; r += static_cast<int64_t>(gridDim.x) * rpb) {
    const int nrows = static_cast<int>(rows - r < rpb ? rows - r : rpb);
    hadamard_detail::rotate_rows_fast<TI, TO>(x + r * p.dim, y + r * p.dim, s, p, transpose, nrows);
  }
}

// The general row kernel (any plan, any alignment): row staged in shared
// memory, rotated with the device building block of hadamard.cuh.
template <class TI, class TO>
__global__ void __launch_bounds__(512)
    rows_kernel(const TI* x, TO* y, int64_t rows, HadamardDevicePlan p, bool transpose, int) {
  extern __shared__ float4 smem_rows[];
  float* s = reinterpret_cast<float*>(smem_rows);
  const int d = p.dim;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const TI* xr = x + r * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s[i] = to_f32(xr[i]);
    hadamard_rotate_smem(s, p, transpose);  // barriers at entry and exit
    TO* yr = y + r * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_f32<TO>(s[i]);
    __syncthreads();  // the next row's loads overwrite s
  }
}

// Rows of d = 2N x 512: the P rotation of hadamard.cuh (one row per block and
// turn, persistent grid; TI: bf16 bits or f32). R is symmetric there, so
// transpose changes nothing.
template <int N, class TI, class TO>
__global__ void __launch_bounds__(hadamard_detail::kPThreads, 2)
    rows_p_kernel(const TI* x, TO* y, int64_t rows, float scale) {
  extern __shared__ float4 smem_rows[];
  float* s = reinterpret_cast<float*>(smem_rows);
  constexpr int d = 2 * N * 512, kT = hadamard_detail::kPThreads;
  const int t = static_cast<int>(threadIdx.x);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    hadamard_detail::p_rotate_row<N>(x + r * d, s, t);
    TO* yr = y + r * d;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float z[2 * N];
      hadamard_detail::p_mix_column<N>(s, t + kT * h, scale, z);
#pragma unroll
      for (int a = 0; a < 2 * N; ++a) yr[512 * a + t + kT * h] = from_f32<TO>(z[a]);
    }
  }
}

// Eight values at p (16-byte aligned) in one 16-byte store for bf16 (ElementIO's
// store4 writes 8 bytes).
__device__ __forceinline__ void store8(float* p, float4 a, float4 b) {
  vec::store_global(p, a);
  vec::store_global(p + 4, b);
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, float4 a, float4 b) {
  vec::store_global(p, make_uint4(vec::pack_bf16(a.x, a.y), vec::pack_bf16(a.z, a.w), vec::pack_bf16(b.x, b.y),
                                  vec::pack_bf16(b.z, b.w)));
}

// Rows of d = 2048, 4096, 8192 with K = 1: the S rotation of hadamard.cuh (groups
// of kSThreads / (d / 64) rows, persistent grid, bf16 rows prefetched), stored in
// 8-element chunks in store order. R is symmetric there, so transpose changes
// nothing. In place (x == y) works: a group's rows are read before they are
// written, and only by the block that writes them.
template <int D, class In, class TO>
__global__ void __launch_bounds__(hadamard_detail::kSThreads, 2)
    rows_s_kernel(const In* x, TO* y, int64_t rows, float scale) {
  extern __shared__ float4 smem_s[];
  using S = hadamard_detail::SRot<D>;
  const int t = static_cast<int>(threadIdx.x), w = t / S::T, lt = t % S::T;
  const int64_t groups = (rows + S::Q - 1) / S::Q;
  constexpr bool kBlock = D == 4096;  // the block's barriers (measured faster at this width)
  float* s = reinterpret_cast<float*>(smem_s) + w * D;
  uint16_t* raw = reinterpret_cast<uint16_t*>(reinterpret_cast<unsigned char*>(smem_s) + hadamard_detail::kSRotBytes);
  if constexpr (sizeof(In) == 2)
    if (blockIdx.x < groups)
      hadamard_detail::s_prefetch<D>(reinterpret_cast<const uint16_t*>(x), rows, blockIdx.x, raw, w, lt);
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t r = g * S::Q + w;
    hadamard_detail::s_group_pass_a<D, kBlock>(x, rows, g, g + gridDim.x < groups ? g + gridDim.x : -1, s, raw, w, lt);
    if (r < rows) {
      float v[64];
      hadamard_detail::s_pass_b<D>(s, lt, v);
      if constexpr (S::T == 128) __syncwarp();  // the neighbour has read this thread's part
#pragma unroll
      for (int j = 0; j < 64; ++j) v[j] *= scale;
      hadamard_detail::s_put64(s, lt, v);
    }
    hadamard_detail::s_row_sync<S::T, kBlock>(w);  // the whole row is back in s
    if (r < rows) {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int c = lt + S::T * k;
        float4 a, b;
        hadamard_detail::s_chunk8(s, c, a, b);
        store8(y + r * D + 8 * c, a, b);
      }
    }
  }
}

int max_smem_per_block() {
  int dev = 0, bytes = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes;
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The fast kernel's preconditions (see rotate_rows_fast); else the general one.
bool use_fast_rows(const Tensor& x, const Tensor& y, const HadamardDevicePlan& p) {
  const int min_n = p.k == 1 ? 5 : 4;
  return p.log2_pow2 >= min_n && p.dim % 16 == 0 && aligned16(x.data()) && aligned16(y.data());
}

template <class TI, class TO>
void launch_rows(const Tensor& x, Tensor& y, const HadamardDevicePlan& p, bool transpose) {
  const int64_t rows = x.numel() / p.dim;
  if (const int n = hadamard_detail::p_order_of(p); n && aligned16(x.data()) && rows > 0) {
    using In = std::conditional_t<std::is_same_v<TI, float>, float, uint16_t>;  // bf16 as its bits
    hadamard_detail::dispatch_p_order(n, [&](auto order) {
      auto kernel = rows_p_kernel<decltype(order)::value, In, TO>;
      const size_t smem = hadamard_detail::p_smem_bytes(n);
      const int64_t grid = std::min(rows, resident_blocks(kernel, hadamard_detail::kPThreads, smem));
      kernel<<<static_cast<unsigned>(grid), hadamard_detail::kPThreads, smem, current_stream()>>>(
          reinterpret_cast<const In*>(x.data()), static_cast<TO*>(y.data()), rows, p.scale);
      CUDA_CHECK_LAUNCH();
    });
    return;
  }
  if (const int d = hadamard_detail::s_width_of(p); d && aligned16(x.data()) && aligned16(y.data()) && rows > 0) {
    using In = std::conditional_t<std::is_same_v<TI, float>, float, uint16_t>;  // bf16 as its bits
    hadamard_detail::dispatch_s_width(d, [&](auto width) {
      constexpr int D = decltype(width)::value, Q = hadamard_detail::SRot<D>::Q;
      auto kernel = rows_s_kernel<D, In, TO>;
      const size_t smem = hadamard_detail::s_smem_bytes(sizeof(In));
      const int64_t groups = (rows + Q - 1) / Q;
      const int64_t grid = std::min(groups, resident_blocks(kernel, hadamard_detail::kSThreads, smem));
      kernel<<<static_cast<unsigned>(grid), hadamard_detail::kSThreads, smem, current_stream()>>>(
          reinterpret_cast<const In*>(x.data()), static_cast<TO*>(y.data()), rows, p.scale);
      CUDA_CHECK_LAUNCH();
    });
    return;
  }
  const bool fast = use_fast_rows(x, y, p);
  // The fast kernel takes two rows per block up to d = 8192 (at most 64 KB of
  // shared memory): twice the loads in flight per thread, which a memory-bound
  // kernel needs to approach the copy bandwidth.
  const int rpb = fast && p.dim <= 8192 && rows > 1 ? 2 : 1;
  const size_t smem = static_cast<size_t>(hadamard_smem_floats(rpb * p.dim)) * sizeof(float);
  HALO_CHECK(smem <= static_cast<size_t>(max_smem_per_block()), "hadamard_rows: d = ", p.dim,
             " needs ", smem, " bytes of shared memory per block, more than this GPU offers");
  const int threads = std::clamp((p.dim / 16 + 31) / 32 * 32, 64, 512);
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((rows + rpb - 1) / rpb, 0x7fffffff));
  auto kernel = fast ? rows_fast_kernel<TI, TO> : rows_kernel<TI, TO>;
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)));
  kernel<<<grid, threads, smem, current_stream()>>>(static_cast<const TI*>(x.data()),
                                                   static_cast<TO*>(y.data()), rows, p, transpose, rpb);
  CUDA_CHECK_LAUNCH();
}

// ---- columns ---------------------------------------------------------------------------

using hadamard_detail::kColMaxBits;
using hadamard_detail::kColTile;
constexpr int kColThreads = 256;  // 8 warps

template <class TI, class TO>
__global__ void cols_wht_kernel(const TI* x, TO* y, int64_t cols, int lo, int m, float scale) {
  __shared__ float tile[(1 << kColMaxBits) * kColTile];
  hadamard_detail::cols_wht_block<TI, TO>(x, y, cols, lo, m, scale, tile, blockIdx.y, blockIdx.x);
}

template <class TI, class TO>
__global__ void cols_kmix_kernel(const TI* x, TO* y, int64_t cols, HadamardDevicePlan p, bool transpose) {
  extern __shared__ float4 smem_cols[];
  hadamard_detail::cols_kmix_block<TI, TO>(x, y, cols, p, transpose, reinterpret_cast<float*>(smem_cols),
                                           blockIdx.y, blockIdx.x);
}

// out[c][r] = in[r][c] for in [R, C] (row stride ldi) and out [C, R] (row
// stride ldo), by 64 x 64 tiles through shared memory (exact: values only move).
// 256 threads: lane = column in the tile (two halves of 32), warp = row slice;
// both global sides are 32 consecutive elements per warp instruction and the
// padded tile makes the column reads conflict-free.
template <class T>
__global__ void __launch_bounds__(256) transpose_kernel(const T* in, T* out, int64_t R, int64_t C, int64_t ldi,
                                                        int64_t ldo) {
  using IO = hadamard_detail::ElementIO<T>;
  __shared__ float tile[64][65];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * 64, c0 = static_cast<int64_t>(blockIdx.x) * 64;
  for (int i = ty; i < 64; i += 8) {
    const int64_t r = r0 + i;
    if (r >= R) break;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t c = c0 + tx + 32 * e;
      if (c < C) tile[i][tx + 32 * e] = IO::load(in + r * ldi + c);
    }
  }
  __syncthreads();
  for (int i = ty; i < 64; i += 8) {
    const int64_t c = c0 + i;
    if (c >= C) break;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t r = r0 + tx + 32 * e;
      if (r < R) IO::store(out + c * ldo + r, tile[tx + 32 * e][i]);
    }
  }
}

template <class T>
void launch_transpose(const void* in, void* out, int64_t R, int64_t C, int64_t ldi, int64_t ldo) {
  const int64_t gy = (R + 63) / 64, gx = (C + 63) / 64;
  HALO_CHECK(gy <= 65535, "hadamard_cols: ", R, " rows are too many for the transpose grid");
  transpose_kernel<T><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), 256, 0, current_stream()>>>(
      static_cast<const T*>(in), static_cast<T*>(out), R, C, ldi, ldo);
  CUDA_CHECK_LAUNCH();
}

// One pass of the column rotation from `in` (type TI) to `out` (type TO).
struct ColPass {
  bool kmix;
  int lo, m;  // WHT passes: bits [lo, lo + m) of the row index
};

template <class TI, class TO>
void launch_col_pass(const ColPass& pass, const void* in, void* out, int64_t cols,
                     const HadamardDevicePlan& p, bool transpose, bool last) {
  // grid.x: row groups (up to 2^31 - 1), grid.y: column tiles (up to 65535).
  const int64_t tiles = (cols + kColTile - 1) / kColTile;
  HALO_CHECK(tiles <= 65535, "hadamard_cols: ", cols, " columns, at most ", 65535 * kColTile, " supported");
  if (pass.kmix) {
    const dim3 grid(static_cast<unsigned>(p.pow2), static_cast<unsigned>(tiles));
    const size_t smem = static_cast<size_t>(p.k) * kColTile * sizeof(float);
    cols_kmix_kernel<TI, TO><<<grid, kColThreads, smem, current_stream()>>>(
        static_cast<const TI*>(in), static_cast<TO*>(out), cols, p, transpose);
  } else {
    const int64_t groups = int64_t{p.dim} >> pass.m;
    const dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>(tiles));
    const float scale = (last && p.k == 1) ? p.scale : 1.0f;
    cols_wht_kernel<TI, TO><<<grid, kColThreads, 0, current_stream()>>>(
        static_cast<const TI*>(in), static_cast<TO*>(out), cols, pass.lo, pass.m, scale);
  }
  CUDA_CHECK_LAUNCH();
}

// ---- columns in one pass, by clusters: d = 1024 C, C = 1..16 (K = 1) -----------------
// A cluster of C blocks rotates a strip of 16 columns. Block q holds rows
// [1024 q, 1024 q + 1024) of the strip as f32 in shared memory (64 KB) and
// rotates them along those 1024 rows in registers (pass A: row bits 5..9,
// pass B: bits 0..4). H_C then mixes across the cluster: block q takes its
// share of the row offsets s, reads row s of every block's tile (distributed
// shared memory) and writes the C output rows 1024 q' + s. With R_d = H_C kron
// H_1024 / sqrt(d) (Sylvester, so R = R^T) the input is read once and the
// output written once, in 32-byte rows of 16 bf16; in place is safe (the whole
// strip is read before the cluster barrier, and written after it).
constexpr int kClusterRows = 1024, kClusterCols = 16, kClusterThreads = 256;
constexpr size_t kClusterSmem = size_t{kClusterRows} * kClusterCols * sizeof(float);

// Tile element (s, c) of [1024][16] f32: row parity flipped by bit 5 of s, so
// that rows 32 apart (pass B's lanes) fall on different banks.
__device__ __forceinline__ int ctile_at(int s, int c) { return ((s ^ ((s >> 5) & 1)) << 4) | c; }

// Columns c, c + 1 of 32 tile rows, the j-th at (j even ? even : odd) + 16 step j
// floats: constant offsets from two pointers. Pass A's rows u + 32 j (u < 32)
// flip bit 0 by bit 0 of j; pass B's rows 32 u + i all by bit 0 of u.
struct TileRows {
  float* even;
  float* odd;
  int step;
  __device__ __forceinline__ float* at(int j) const { return (j & 1 ? odd : even) + 16 * step * j; }
};
__device__ __forceinline__ TileRows pass_a_rows(float* tile, int u, int c) {
  return {tile + ctile_at(u, c), tile + ctile_at(u ^ 1, c), 32};
}
__device__ __forceinline__ TileRows pass_b_rows(float* tile, int u, int c) {
  const int f = u & 1;  // row 32 u + i is stored at 32 u + (i ^ f)
  return {tile + ((32 * u + f) << 4) + c, tile + ((32 * u - f) << 4) + c, 1};
}

// a, b (columns c, c + 1 of the 32 rows): rotated along the rows and stored there.
__device__ __forceinline__ void rotate_store32(float (&a)[32], float (&b)[32], const TileRows& rows) {
  hadamard_detail::wht_regs<32>(a, 5);
  hadamard_detail::wht_regs<32>(b, 5);
#pragma unroll
  for (int j = 0; j < 32; ++j) *reinterpret_cast<float2*>(rows.at(j)) = make_float2(a[j], b[j]);
}

// |v| as written to a TO element, as bits, from |v|'s f32 bits (rounding is
// monotonic: the largest |v| rounds to the largest written value).
template <class TO>
__device__ __forceinline__ uint32_t written_abs_bits(uint32_t abs_f32_bits) {
  if constexpr (std::is_same_v<TO, __nv_bfloat16>)
    return abs_bits(__bfloat162float(__float2bfloat16_rn(__uint_as_float(abs_f32_bits))));
  return abs_f32_bits;
}

// The cluster barrier in halves (PTX barrier.cluster) where nothing is to be
// published: arrive relaxed (cluster.sync()'s release fences the global stores
// in flight, MEMBAR.ALL.GPU), then wait.
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }

// amax (or null): the block's max |x| to amax[b] and max |y| as written to
// amax[blocks + b], b = the block's index in the grid (no atomics; the quantizer
// reduces them, QuantSpec::absmax_parts).
template <class TI, class TO, int C>
__global__ void __launch_bounds__(kClusterThreads, 2)
    cols_cluster_kernel(const TI* x, TO* y, int64_t cols, float scale, uint32_t* amax) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  extern __shared__ float4 smem_cluster[];
  float* tile = reinterpret_cast<float*>(smem_cluster);
  cg::cluster_group cluster = cg::this_cluster();
  const int q = static_cast<int>(cluster.block_rank());
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kClusterCols;
  const int t = threadIdx.x, cp = 2 * (t & 7), u = t >> 3;
  uint32_t max_x = 0, max_y = 0;
  {  // pass A: rows u + 32 j, straight from global memory
    float a[32], b[32];
    const int64_t row0 = static_cast<int64_t>(q) * kClusterRows + u;
    const TI* src = x + row0 * cols + c0 + cp;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      float v[2];
      vec::load<2>(src + static_cast<int64_t>(32 * j) * cols, v);
      a[j] = v[0], b[j] = v[1];
    }
    if (amax) {
#pragma unroll
      for (int j = 0; j < 32; ++j) max_x = max(max_x, max(abs_bits(a[j]), abs_bits(b[j])));
    }
    rotate_store32(a, b, pass_a_rows(tile, u, cp));
  }
  __syncthreads();
  {  // pass B: rows 32 u + i, from the tile
    float a[32], b[32];
    const TileRows rows = pass_b_rows(tile, u, cp);
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      const float2 v = *reinterpret_cast<const float2*>(rows.at(i));
      a[i] = v.x, b[i] = v.y;
    }
    rotate_store32(a, b, rows);
  }
  cluster.sync();  // the tiles are published
  const int share = kClusterRows / C;
  for (int task = t; task < share * 4; task += kClusterThreads) {
    const int s = q * share + (task >> 2), c = 4 * (task & 3);
    float4 z[C];
#pragma unroll
    for (int r = 0; r < C; ++r)
      z[r] = *reinterpret_cast<const float4*>(cluster.map_shared_rank(tile, r) + ctile_at(s, c));
#pragma unroll
    for (int h = 1; h < C; h <<= 1) {
#pragma unroll
      for (int i = 0; i < C; ++i) {
        if ((i & h) == 0) {
          const float4 a = z[i], b = z[i + h];
          z[i] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
          z[i + h] = make_float4(a.x - b.x, a.y - b.y, a.z - b.z, a.w - b.w);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < C; ++r) {
      const float4 v = make_float4(z[r].x * scale, z[r].y * scale, z[r].z * scale, z[r].w * scale);
      hadamard_detail::ElementIO<TO>::store4(y + (static_cast<int64_t>(r) * kClusterRows + s) * cols + c0 + c, v);
      if (amax) max_y = max(max_y, max(max(abs_bits(v.x), abs_bits(v.y)), max(abs_bits(v.z), abs_bits(v.w))));
    }
  }
  // Done with the other blocks' tiles (their values feed the stores issued);
  // the wait at the end keeps this block's tile alive until all have arrived.
  cluster_arrive_relaxed();
  if (amax) {  // block maxima: warps, then the 8 warps' results
    __shared__ uint32_t warp_max[2][kClusterThreads / 32];
    max_x = __reduce_max_sync(0xffffffffu, max_x);
    max_y = __reduce_max_sync(0xffffffffu, written_abs_bits<TO>(max_y));
    if (t % 32 == 0) warp_max[0][t / 32] = max_x, warp_max[1][t / 32] = max_y;
    __syncthreads();
    if (t < 2) {
      uint32_t m = 0;
      for (int w = 0; w < kClusterThreads / 32; ++w) m = max(m, warp_max[t][w]);
      const int64_t blocks = static_cast<int64_t>(gridDim.x) * gridDim.y;
      amax[t * blocks + static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x] = m;
    }
  }
  cluster_wait();
#endif
}

// The launch of clusters of `c` blocks, grid (c, strips); non-copyable (cfg
// points at attr).
struct ClusterLaunch {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1] = {};
  ClusterLaunch(int c, unsigned strips) {
    cfg.gridDim = dim3(static_cast<unsigned>(c), strips);
    cfg.blockDim = dim3(kClusterThreads);
    cfg.dynamicSmemBytes = kClusterSmem;
    cfg.stream = current_stream();
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = static_cast<unsigned>(c);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// The kernel's shared memory, and clusters above the portable 8 blocks.
template <class Kernel>
void allow_cluster_kernel(Kernel kernel, int c) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kClusterSmem)));
  if (c > 8) CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
}

template <class TI, class TO, int C>
void launch_cols_cluster(const void* x, void* y, int64_t cols, float scale, uint32_t* amax) {
  auto kernel = cols_cluster_kernel<TI, TO, C>;
  allow_cluster_kernel(kernel, C);
  ClusterLaunch l(C, static_cast<unsigned>(cols / kClusterCols));
  CUDA_CHECK(cudaLaunchKernelEx(&l.cfg, kernel, static_cast<const TI*>(x), static_cast<TO*>(y), cols, scale, amax));
}

// Whether the current GPU runs clusters of `c` blocks (sm_90 and later; 16 needs
// the non-portable size, which not every part offers). Cached per device.
bool clusters_of(int c) {
  static std::mutex mu;
  static std::map<std::pair<int, int>, bool> cache;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(dev, c);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int major = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  bool ok = major >= 9;
  if (ok && c > 8) {
    auto kernel = cols_cluster_kernel<float, float, 16>;
    allow_cluster_kernel(kernel, c);
    ClusterLaunch l(c, 1);
    int n = 0;
    ok = cudaOccupancyMaxActiveClusters(&n, kernel, &l.cfg) == cudaSuccess && n > 0;
    (void)cudaGetLastError();
  }
  cache.emplace(key, ok);
  return ok;
}

// The one-pass column rotation applies: a full power-of-two length 1024 C,
// a multiple of 16 columns, 16-byte aligned data, a GPU with clusters.
// amax (or null): the kernel's per-block maxima, [2, blocks] f32 allocated here.
template <class TI, class TO>
bool run_cols_by_cluster(const Tensor& x, Tensor& y, const HadamardDevicePlan& p, Tensor* amax = nullptr) {
  const int64_t d = p.dim, cols = x.numel() / d;
  const int64_t c = d / kClusterRows;
  if (p.k != 1 || p.block != p.dim || d % kClusterRows != 0 || (c & (c - 1)) != 0 || c > 16) return false;
  if (cols % kClusterCols != 0 || cols / kClusterCols > 65535) return false;
  if (!aligned16(x.data()) || !aligned16(y.data())) return false;
  if (!clusters_of(static_cast<int>(c))) return false;
  uint32_t* m = nullptr;
  if (amax) {
    *amax = Tensor::empty({2, c * (cols / kClusterCols)}, DType::f32, Device::cuda);
    m = amax->data_as<uint32_t>();
  }
  switch (c) {
    case 1: launch_cols_cluster<TI, TO, 1>(x.data(), y.data(), cols, p.scale, m); break;
    case 2: launch_cols_cluster<TI, TO, 2>(x.data(), y.data(), cols, p.scale, m); break;
    case 4: launch_cols_cluster<TI, TO, 4>(x.data(), y.data(), cols, p.scale, m); break;
    case 8: launch_cols_cluster<TI, TO, 8>(x.data(), y.data(), cols, p.scale, m); break;
    default: launch_cols_cluster<TI, TO, 16>(x.data(), y.data(), cols, p.scale, m); break;
  }
  return true;
}

// Column c of y is the row rotation of column c of x: transpose a chunk of
// columns into a [chunk, d] buffer, rotate its rows with the row kernel,
// transpose back. Three memory-bound kernels at nearly copy speed each; the
// chunk bounds the temporary memory (<= 16M elements per buffer).
template <class TI, class TO>
void run_cols_by_transpose(const Tensor& x, Tensor& y, const HadamardDevicePlan& p, bool transpose) {
  const int64_t d = p.dim, cols = x.numel() / d;
  const int64_t want = std::max<int64_t>(64, (int64_t{16} << 20) / d / 64 * 64);
  const int64_t chunk = std::min(cols, want);
  const DType ti = x.dtype(), to = y.dtype();
  Tensor xt = Tensor::empty({chunk, d}, ti, Device::cuda);
  Tensor yt = ti == to ? xt : Tensor::empty({chunk, d}, to, Device::cuda);  // rows: in place when it can
  for (int64_t c0 = 0; c0 < cols; c0 += chunk) {
    const int64_t cc = std::min(chunk, cols - c0);
    Tensor xs = xt.rows(0, cc), ys = yt.rows(0, cc);
    launch_transpose<TI>(x.data_as<TI>() + c0, xs.data(), d, cc, cols, d);
    launch_rows<TI, TO>(xs, ys, p, transpose);
    launch_transpose<TO>(ys.data(), y.data_as<TO>() + c0, cc, d, d, cols);
  }
}

template <class TI, class TO>
void run_cols(const Tensor& x, Tensor& y, const HadamardDevicePlan& p, bool transpose) {
  const int64_t cols = x.numel() / p.dim;
  if (run_cols_by_cluster<TI, TO>(x, y, p)) return;
  if (static_cast<size_t>(hadamard_smem_floats(p.dim)) * sizeof(float) <= static_cast<size_t>(max_smem_per_block())) {
    run_cols_by_transpose<TI, TO>(x, y, p, transpose);
    return;
  }
  // d too long for one block's shared memory: passes over global memory.
  std::vector<ColPass> passes;
  const int n = p.log2_pow2;
  const int npass = (n + kColMaxBits - 1) / kColMaxBits;
  for (int i = 0, lo = 0; i < npass; ++i) {
    const int m = (n - lo) / (npass - i);  // split the bits evenly
    passes.push_back({false, lo, m});
    lo += m;
  }
  if (p.k > 1) passes.push_back({true, 0, 0});
  if (passes.empty()) {  // d = 1 (or a fallback block of 1): R = identity
    passes.push_back({false, 0, 0});
  }
  // Intermediates: y itself when it is f32, else an f32 workspace.
  Tensor work;
  void* mid = y.data();
  if (passes.size() > 1 && y.dtype() != DType::f32) {
    work = Tensor::empty({p.dim, cols}, DType::f32, Device::cuda);
    mid = work.data();
  }
  for (size_t i = 0; i < passes.size(); ++i) {
    const bool first = i == 0, last = i + 1 == passes.size();
    const void* in = first ? x.data() : mid;
    void* out = last ? y.data() : mid;
    // Every intermediate (`mid`) is f32.
    if (first && last) launch_col_pass<TI, TO>(passes[i], in, out, cols, p, transpose, true);
    else if (first) launch_col_pass<TI, float>(passes[i], in, out, cols, p, transpose, false);
    else if (last) launch_col_pass<float, TO>(passes[i], in, out, cols, p, transpose, true);
    else launch_col_pass<float, float>(passes[i], in, out, cols, p, transpose, false);
  }
}

template <template <class, class> class F, class... Args>
auto dispatch2(DType ti, DType to, Args&&... args) {
  if (ti == DType::f32 && to == DType::f32) return F<float, float>::run(args...);
  if (ti == DType::f32) return F<float, __nv_bfloat16>::run(args...);
  if (to == DType::f32) return F<__nv_bfloat16, float>::run(args...);
  return F<__nv_bfloat16, __nv_bfloat16>::run(args...);
}

template <class TI, class TO>
struct RowsOp {
  static void run(const Tensor& x, Tensor& y, const HadamardDevicePlan& p, bool t) { launch_rows<TI, TO>(x, y, p, t); }
};
template <class TI, class TO>
struct ColsOp {
  static void run(const Tensor& x, Tensor& y, const HadamardDevicePlan& p, bool t) { run_cols<TI, TO>(x, y, p, t); }
};
template <class TI, class TO>
struct ColsAbsmaxOp {
  static bool run(const Tensor& x, Tensor& y, const HadamardDevicePlan& p, Tensor& amax) {
    return run_cols_by_cluster<TI, TO>(x, y, p, &amax);
  }
};

}  // namespace

namespace detail {

void hadamard_rows_cuda(const Tensor& x2, Tensor& y2, const HadamardPlan& plan, bool transpose) {
  HALO_CHECK(plan.dim <= (1 << 30), "hadamard_rows: d too large");
  const HadamardDevicePlan p = hadamard_device_plan(plan);
  dispatch2<RowsOp>(x2.dtype(), y2.dtype(), x2, y2, p, transpose);
}

void hadamard_cols_cuda(const Tensor& x2, Tensor& y2, const HadamardPlan& plan, bool transpose) {
  HALO_CHECK(plan.dim <= (1 << 30), "hadamard_cols: d too large");
  const HadamardDevicePlan p = hadamard_device_plan(plan);
  dispatch2<ColsOp>(x2.dtype(), y2.dtype(), x2, y2, p, transpose);
}

bool hadamard_cols_absmax_cuda(const Tensor& x2, Tensor& y2, const HadamardPlan& plan, Tensor& amax) {
  return dispatch2<ColsAbsmaxOp>(x2.dtype(), y2.dtype(), x2, y2, hadamard_device_plan(plan), amax);
}

}  // namespace detail
}  // namespace halo
