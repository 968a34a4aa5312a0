// Device-side building block: rotate ONE row held in shared memory, in place,
// cooperatively by a whole thread block (for fused kernels such as the quantizer).
//
//   #include "kernels/hadamard.cuh"
//   // host:  const HadamardDevicePlan p = hadamard_device_plan(hadamard_plan(d));
//   //        (pass p to the kernel by value; smem: hadamard_smem_floats(d) floats)
//   // device, every thread of the block:
//   halo::hadamard_rotate_smem(row, p, transpose);   // row := row R   (transpose = false)
//                                                    // row := row R^T (transpose = true)
//   Template arguments: hadamard_rotate_smem<kMaxItems = 2, Layout = PlainLayout>.
//
// Contract:
// - Every thread of the block must call it, with the same arguments (it
//   contains __syncthreads(); a thread that skips it deadlocks the block).
// - 1-D block (threadIdx.y == threadIdx.z == 0), blockDim.x a multiple of 32,
//   at most 1024; 256..1024 threads is the efficient range. It needs
//   blockDim.x * kMaxItems >= p.k / 4 (true for every order we build, K <= 256,
//   with >= 32 threads and the default kMaxItems = 2).
// - row: shared memory, 16-byte aligned; p.dim floats with PlainLayout,
//   hadamard_smem_floats(p.dim) (d rounded up to 32) with SwizzledLayout.
//   Layout (template argument): PlainLayout (default): element i at row[i].
//   SwizzledLayout: element i at row[SwizzledLayout::at(i)], a permutation
//   inside each aligned group of 32 floats that keeps groups of 4 together
//   (so float4 accesses of elements 4m..4m+3 stay valid); it makes every shared
//   memory access of the rotation free of bank conflicts (plain: the first two
//   passes have 4- and 2-way conflicts). Read and write the row through the
//   same layout.
// - No other shared memory and no scratch. Registers: up to ~40 floats per
//   thread (kMaxItems = 2).
// - It starts with __syncthreads() (the caller's writes to row are visible)
//   and ends with __syncthreads() (the caller may read any element right after).
// - The result is orthonormal (scaled by 1/sqrt(p.block)). Any plan works:
//   pure power of two, K * 2^k, and the block-diagonal fallback.
//
// Cost per row of d floats: ceil(log2(2^k) / 4) radix-16 passes over shared
// memory, then (K > 1) the K-mix: for the Paley II orders K in {12, 20, 28, 36}
// (H_K = C kron A + I kron B) d*K/2 multiply-adds with each element read once;
// otherwise d*K multiply-adds, H_K read through the read-only cache (uniform
// across a warp). hadamard.cu's row kernel uses the same pieces with its first
// and last pass fused into the global loads and stores.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/hadamard.h"
#include "kernels/vec.cuh"

namespace halo {

// Shared-memory layouts of a row (see the contract above).
struct PlainLayout {
  static __device__ __forceinline__ int at(int i) { return i; }
};
struct SwizzledLayout {
  // Bits 2..4 of the index are XORed with bits 5..6 and with the parity of
  // bits 5 and up: (a) 8 threads storing 16 contiguous floats each as float4
  // hit distinct bank groups, (b) two half-warps whose indices differ in one
  // bit >= 5 land in opposite halves of the banks, (c) 32 lanes reading 32
  // consecutive elements of an aligned group stay a permutation of the banks.
  static __device__ __forceinline__ int at(int i) {
    return i ^ (((i >> 5) & 3) << 2) ^ ((__popc(i >> 5) & 1) << 4);
  }
};

// Shared memory floats to reserve for one row of length d (either layout).
__host__ __device__ constexpr int hadamard_smem_floats(int d) { return (d + 31) / 32 * 32; }

namespace hadamard_detail {

// In-register Walsh-Hadamard butterflies on v[0..N): stages h = 1, 2, 4, ... < N,
// only the first `stages` of them (for segments shorter than N).
template <int N>
__device__ __forceinline__ void wht_regs(float (&v)[N], int stages) {
  int s = 0;
#pragma unroll
  for (int h = 1; h < N; h <<= 1, ++s) {
    if (s < stages) {
#pragma unroll
      for (int i = 0; i < N; ++i) {
        if ((i & h) == 0) {
          const float a = v[i], b = v[i + h];
          v[i] = a + b;
          v[i + h] = a - b;
        }
      }
    }
  }
}

// Where results go: back to the shared row (in place) or elsewhere (the row
// kernel writes straight to global memory). i is the logical element index.
template <class Layout>
struct SmemStore {
  float* x;
  __device__ __forceinline__ void operator()(int i, float v) const { x[Layout::at(i)] = v; }
  __device__ __forceinline__ void store4(int i, float4 v) const {  // elements i..i+3, i % 4 == 0
    *reinterpret_cast<float4*>(x + Layout::at(i)) = v;
  }
};

// One radix-2^NB pass of the fast Walsh-Hadamard transform over the row:
// butterflies of bits [b0, b0 + NB) of the element index (stride 2^b0). Each
// group of 2^NB elements is one thread's, in registers; lanes of a warp take
// consecutive groups (consecutive addresses for b0 >= 5). `st` may write in
// place: a thread writes only the elements it has read.
template <int NB, class Layout, class Store>
__device__ __forceinline__ void wht_pass(const float* x, int d, int b0, float scale, const Store& st) {
  constexpr int R = 1 << NB;
  const int groups = d >> NB;
  const int s = 1 << b0;
  for (int g = threadIdx.x; g < groups; g += blockDim.x) {
    const int base = ((g >> b0) << (b0 + NB)) | (g & (s - 1));
    float v[R];
#pragma unroll
    for (int r = 0; r < R; ++r) v[r] = x[Layout::at(base + r * s)];
    wht_regs<R>(v, NB);
#pragma unroll
    for (int r = 0; r < R; ++r) st(base + r * s, v[r] * scale);
  }
}

template <class Layout, class Store>
__device__ __forceinline__ void wht_pass_n(int nb, const float* x, int d, int b0, float scale,
                                           const Store& st) {
  switch (nb) {
    case 1: wht_pass<1, Layout>(x, d, b0, scale, st); break;
    case 2: wht_pass<2, Layout>(x, d, b0, scale, st); break;
    case 3: wht_pass<3, Layout>(x, d, b0, scale, st); break;
    case 4: wht_pass<4, Layout>(x, d, b0, scale, st); break;
    default: wht_pass<5, Layout>(x, d, b0, scale, st); break;
  }
}

// Bits [0, stages) (stages <= 4) on groups of 16 contiguous floats, in place,
// with float4 accesses (d % 16 == 0).
template <class Layout>
__device__ __forceinline__ void wht_pass16_smem(float* x, int d, int stages, float scale) {
  for (int g = threadIdx.x; g < (d >> 4); g += blockDim.x) {
    float v[16];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float4 t = *reinterpret_cast<const float4*>(x + Layout::at(16 * g + 4 * q));
      v[4 * q] = t.x, v[4 * q + 1] = t.y, v[4 * q + 2] = t.z, v[4 * q + 3] = t.w;
    }
    wht_regs<16>(v, stages);
#pragma unroll
    for (int q = 0; q < 4; ++q)
      *reinterpret_cast<float4*>(x + Layout::at(16 * g + 4 * q)) =
          make_float4(v[4 * q] * scale, v[4 * q + 1] * scale, v[4 * q + 2] * scale, v[4 * q + 3] * scale);
  }
}

// ---- the K-mix -------------------------------------------------------------------------
// With X the K x P view of the row (element a * P + c), Y = M^T X * scale where
// M = H_K (x R) or H_K^T (x R^T): y[j][c] = sum_a M[a][j] z[a][c].

// Any K (K % 4 == 0). One work item = 4 outputs j x CW adjacent columns; lanes
// of a warp take adjacent column groups with the same j block, so the M loads
// are warp-uniform. Columns go in rounds; a round keeps its results in
// registers until every thread has read its inputs (one barrier), and rounds
// touch disjoint columns, so `st` may write in place.
template <int CW, int kMaxItems, class Layout, class Store>
__device__ __forceinline__ void kmix_generic(const float* x, const HadamardDevicePlan& p, bool transpose,
                                             const Store& st, int base) {
  const int K = p.k, P = p.pow2, KB = K / 4;
  const int nthreads = blockDim.x;
  const int ncg = P / CW;  // column groups
  int per_round = (nthreads * kMaxItems) / KB;
  per_round = per_round < 1 ? 1 : (per_round > ncg ? ncg : per_round);
  const float* M = transpose ? p.h_kt : p.h_k;
  for (int cg0 = 0; cg0 < ncg; cg0 += per_round) {
    const int ncgr = (ncg - cg0) < per_round ? (ncg - cg0) : per_round;
    const int nitems = ncgr * KB;
    float acc[kMaxItems][4][CW];
#pragma unroll
    for (int it = 0; it < kMaxItems; ++it) {
      const int item = threadIdx.x + it * nthreads;
#pragma unroll
      for (int jj = 0; jj < 4; ++jj)
#pragma unroll
        for (int e = 0; e < CW; ++e) acc[it][jj][e] = 0.0f;
      if (item < nitems) {
        const int jb = item / ncgr, c = (cg0 + item % ncgr) * CW;
        const float* mcol = M + jb * 4;
        for (int a = 0; a < K; ++a) {
          float z[CW];
          if constexpr (CW == 4) {
            const float4 t = *reinterpret_cast<const float4*>(x + Layout::at(base + a * P + c));
            z[0] = t.x, z[1] = t.y, z[2] = t.z, z[3] = t.w;
          } else {
#pragma unroll
            for (int e = 0; e < CW; ++e) z[e] = x[Layout::at(base + a * P + c + e)];
          }
          const float4 h = __ldg(reinterpret_cast<const float4*>(mcol + a * K));
#pragma unroll
          for (int e = 0; e < CW; ++e) {
            acc[it][0][e] = fmaf(h.x, z[e], acc[it][0][e]);
            acc[it][1][e] = fmaf(h.y, z[e], acc[it][1][e]);
            acc[it][2][e] = fmaf(h.z, z[e], acc[it][2][e]);
            acc[it][3][e] = fmaf(h.w, z[e], acc[it][3][e]);
          }
        }
      }
    }
    __syncthreads();  // every input of this round's columns has been read
#pragma unroll
    for (int it = 0; it < kMaxItems; ++it) {
      const int item = threadIdx.x + it * nthreads;
      if (item < nitems) {
        const int jb = item / ncgr, c = (cg0 + item % ncgr) * CW;
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int i = (jb * 4 + jj) * P + c;
          if constexpr (CW == 4) {
            st.store4(i, make_float4(acc[it][jj][0] * p.scale, acc[it][jj][1] * p.scale,
                                     acc[it][jj][2] * p.scale, acc[it][jj][3] * p.scale));
          } else {
#pragma unroll
            for (int e = 0; e < CW; ++e) st(i + e, acc[it][jj][e] * p.scale);
          }
        }
      }
    }
    // No barrier: the next round reads other columns only.
  }
}

// Paley II orders, K = 2N: H = C kron [[1,-1],[-1,-1]] + I kron [[1,1],[1,-1]]
// with C the symmetric N x N conference matrix (zero diagonal), so H = H^T and
// with s_j = z_2j + z_2j+1, t_j = z_2j - z_2j+1:
//   y_2i = sum_j C_ij t_j + s_i,    y_2i+1 = -sum_j C_ij s_j + t_i.
// Half the multiply-adds of the dense mix. One thread owns a column c (all K
// elements in registers, read before any is written), so it may write in
// place with no barrier. Fully unrolled: C's entries come from the plan in
// the kernel's parameters as instruction operands (p must be the kernel's
// by-value parameter or part of it, not a copy in local memory).
template <int N, class Layout, class Store>
__device__ __forceinline__ void kmix_paley2(const float* x, const HadamardDevicePlan& p, const Store& st, int base) {
  static_assert(N <= HadamardDevicePlan::kMaxPaleyN, "conference matrix larger than the plan holds");
  const int P = p.pow2;
  for (int c = threadIdx.x; c < P; c += blockDim.x) {
    float s[N], t[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float z0 = x[Layout::at(base + 2 * j * P + c)], z1 = x[Layout::at(base + (2 * j + 1) * P + c)];
      s[j] = z0 + z1;
      t[j] = z0 - z1;
    }
#pragma unroll
    for (int i = 0; i < N; ++i) {
      float ye = 0.0f, yo = 0.0f;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const float cij = p.conf[i * HadamardDevicePlan::kMaxPaleyN + j];
        ye = fmaf(cij, t[j], ye);
        yo = fmaf(cij, s[j], yo);
      }
      st(2 * i * P + c, (ye + s[i]) * p.scale);
      st((2 * i + 1) * P + c, (t[i] - yo) * p.scale);
    }
  }
}

// The K-mix for any plan with K > 1. kMaxItems: see kmix_generic. The row's
// element i is read at x[Layout::at(base + i)] (base: the row's place in a
// buffer of several rows); results go to st(i, v) with the row's own i.
template <int kMaxItems, class Layout, class Store>
__device__ __forceinline__ void kmix(const float* x, const HadamardDevicePlan& p, bool transpose, const Store& st,
                                     int base = 0) {
  switch (p.paley_n) {  // H_K symmetric: the transpose flag does not matter
    case 6: kmix_paley2<6, Layout>(x, p, st, base); return;
    case 10: kmix_paley2<10, Layout>(x, p, st, base); return;
    case 14: kmix_paley2<14, Layout>(x, p, st, base); return;
    case 18: kmix_paley2<18, Layout>(x, p, st, base); return;
    default: break;
  }
  if (p.pow2 % 4 == 0) {
    kmix_generic<4, kMaxItems, Layout>(x, p, transpose, st, base);
  } else {
    kmix_generic<1, kMaxItems, Layout>(x, p, transpose, st, base);
  }
}


// ---- pieces of the kernels in hadamard.cu (here so that they can be tested
// on their own) ---------------------------------------------------------------------

// Element I/O of global tensors: f32 here; hadamard.cu adds __nv_bfloat16.
template <class T>
struct ElementIO;
template <>
struct ElementIO<float> {
  static __device__ __forceinline__ float load(const float* p) { return *p; }
  static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
  // 16 contiguous elements, p 16-byte aligned: loaded as raw registers first
  // (so that several loads can be in flight), converted afterwards.
  struct Raw16 {
    float4 q[4];
  };
  static __device__ __forceinline__ void load_raw16(const float* p, Raw16& r) {
#pragma unroll
    for (int q = 0; q < 4; ++q) r.q[q] = reinterpret_cast<const float4*>(p)[q];
  }
  static __device__ __forceinline__ void unpack16(const Raw16& r, float (&v)[16]) {
#pragma unroll
    for (int q = 0; q < 4; ++q) v[4 * q] = r.q[q].x, v[4 * q + 1] = r.q[q].y, v[4 * q + 2] = r.q[q].z, v[4 * q + 3] = r.q[q].w;
  }
  static __device__ __forceinline__ void store4(float* p, float4 v) { vec::store_global(p, v); }  // global p
};

// Results to global memory (the row kernels' last step).
template <class TO>
struct GlobalStore {
  TO* y;
  __device__ __forceinline__ void operator()(int i, float v) const { ElementIO<TO>::store(y + i, v); }
  __device__ __forceinline__ void store4(int i, float4 v) const { ElementIO<TO>::store4(y + i, v); }
};

// The fast row kernel's work on `nrows` consecutive rows (all threads of the
// block): the rows live in shared memory `s` (hadamard_smem_floats(nrows * d)
// floats) as f32 in the swizzled layout, as one array of nrows * d elements,
// so no access has bank conflicts.
//   pass A: bits 0..3 of the index, 16 contiguous elements per thread, straight
//           from global memory (16-byte loads, NG groups' loads in flight per
//           thread) into registers, then to `s`;
//   passes: the remaining bits of 2^n in radix-16/32 passes over `s` (the
//           segments of 2^n never straddle two rows); the last one (K = 1)
//           writes the scaled result straight to global memory;
//   K-mix:  (K > 1) row by row, from `s` straight to global memory.
// Preconditions: 16 <= 2^n (32 when K = 1), d % 16 == 0, xr and yr 16-byte
// aligned. yr may alias xr: all rows are read before any is written. Ends
// with a barrier (s may be reused).
template <class TI, class TO, int NG = (sizeof(TI) == 2 ? 2 : 1)>
__device__ __forceinline__ void rotate_rows_fast(const TI* xr, TO* yr, float* s, const HadamardDevicePlan& p,
                                                 bool transpose, int nrows) {
  using L = SwizzledLayout;
  using IO = ElementIO<TI>;
  const int d = p.dim, n = p.log2_pow2, total = nrows * d;
  const int rem = n - 4, npass = (rem + 4) / 5;  // bits after pass A, passes of <= 5 bits
  const SmemStore<L> sst{s};
  const GlobalStore<TO> gst{yr};
  const int groups = total >> 4, T = blockDim.x;
  // NG groups per thread and trip: their loads are all issued before any is
  // used (64 bytes in flight per thread for bf16 and f32 alike).
  for (int g0 = threadIdx.x; g0 < groups; g0 += NG * T) {
    typename IO::Raw16 raw[NG];
#pragma unroll
    for (int k = 0; k < NG; ++k) {  // a clamped (valid) address beyond the end: no
      const int g = g0 + k * T;     // conditional load, which spilled to local memory
      IO::load_raw16(xr + 16 * (g < groups ? g : groups - 1), raw[k]);
    }
#pragma unroll
    for (int k = 0; k < NG; ++k) {
      const int g = g0 + k * T;
      if (g < groups) {
        float v[16];
        IO::unpack16(raw[k], v);
        wht_regs<16>(v, 4);
#pragma unroll
        for (int q = 0; q < 4; ++q)
          *reinterpret_cast<float4*>(s + L::at(16 * g + 4 * q)) =
              make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
      }
    }
  }
  __syncthreads();
  int b0 = 4;
  for (int ip = 0; ip < npass; ++ip) {
    const int nb = rem / npass + (ip < rem % npass ? 1 : 0);
    if (ip == npass - 1 && p.k == 1) {
      wht_pass_n<L>(nb, s, total, b0, p.scale, gst);
    } else {
      wht_pass_n<L>(nb, s, total, b0, 1.0f, sst);
    }
    __syncthreads();
    b0 += nb;
  }
  if (p.k > 1) {
    for (int r = 0; r < nrows; ++r) kmix<1, L>(s, p, transpose, GlobalStore<TO>{yr + r * d}, r * d);
    __syncthreads();
  }
}

// Column rotation (along the first dim of [d, cols]), one thread block's part
// of a pass; a block is (column tile bx of kColTile columns, row group by).
constexpr int kColTile = 32;    // columns per block (one per lane)
constexpr int kColMaxBits = 8;  // rows per WHT pass: at most 2^8 (32 KB of f32 tile)

// WHT over bits [lo, lo + m) of the row index for the group of 2^m rows
// {base + r 2^lo} (group by). The tile sits in shared memory as
// tile[row][lane] (2^m x 32 floats); a thread transforms 16-row slices of one
// column in registers, so a warp's accesses are 32 consecutive floats. In
// place is fine: the block reads all its elements before writing them.
template <class TI, class TO>
__device__ __forceinline__ void cols_wht_block(const TI* x, TO* y, int64_t cols, int lo, int m, float scale,
                                               float* tile, int64_t bx, int64_t by) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int G = 1 << m;
  const int64_t S = int64_t{1} << lo;
  const int64_t base = ((by >> lo) << (lo + m)) | (by & (S - 1));
  const int64_t c = bx * kColTile + lane;
  const bool in = c < cols;
  for (int r = warp; r < G; r += nwarps)
    tile[r * kColTile + lane] = in ? ElementIO<TI>::load(x + (base + r * S) * cols + c) : 0.0f;
  __syncthreads();
  for (int b = 0; b < m; b += 4) {
    const int nb = (m - b) < 4 ? (m - b) : 4;
    const int R = 1 << nb, step = 1 << b, groups = G >> nb;
    const float sc = (b + nb == m) ? scale : 1.0f;
    for (int q = warp; q < groups; q += nwarps) {
      const int r0 = ((q >> b) << (b + nb)) | (q & (step - 1));
      float v[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) v[i] = i < R ? tile[(r0 + i * step) * kColTile + lane] : 0.0f;
      wht_regs<16>(v, nb);
#pragma unroll
      for (int i = 0; i < 16; ++i)
        if (i < R) tile[(r0 + i * step) * kColTile + lane] = v[i] * sc;
    }
    __syncthreads();
  }
  if (in)
    for (int r = warp; r < G; r += nwarps) ElementIO<TO>::store(y + (base + r * S) * cols + c, tile[r * kColTile + lane]);
}

// K-mix along the first dim for the K rows {a P + b} (b = by) of a column
// tile: y[j P + b] = scale * sum_a M[a][j] x[a P + b], M = H_K (R^T x) or
// H_K^T (R x). tile: K x 32 floats. A thread makes 4 outputs j of one column.
template <class TI, class TO>
__device__ __forceinline__ void cols_kmix_block(const TI* x, TO* y, int64_t cols, const HadamardDevicePlan& p,
                                                bool transpose, float* tile, int64_t bx, int64_t by) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int K = p.k;
  const int64_t P = p.pow2, b = by;
  const int64_t c = bx * kColTile + lane;
  const bool in = c < cols;
  for (int a = warp; a < K; a += nwarps)
    tile[a * kColTile + lane] = in ? ElementIO<TI>::load(x + (a * P + b) * cols + c) : 0.0f;
  __syncthreads();
  const float* M = transpose ? p.h_kt : p.h_k;
  for (int jb = warp; jb < K / 4; jb += nwarps) {
    float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f, acc3 = 0.f;
    for (int a = 0; a < K; ++a) {
      const float z = tile[a * kColTile + lane];
      const float4 h = __ldg(reinterpret_cast<const float4*>(M + a * K + jb * 4));
      acc0 = fmaf(h.x, z, acc0);
      acc1 = fmaf(h.y, z, acc1);
      acc2 = fmaf(h.z, z, acc2);
      acc3 = fmaf(h.w, z, acc3);
    }
    if (in) {
      const int64_t j = jb * 4;
      ElementIO<TO>::store(y + ((j + 0) * P + b) * cols + c, acc0 * p.scale);
      ElementIO<TO>::store(y + ((j + 1) * P + b) * cols + c, acc1 * p.scale);
      ElementIO<TO>::store(y + ((j + 2) * P + b) * cols + c, acc2 * p.scale);
      ElementIO<TO>::store(y + ((j + 3) * P + b) * cols + c, acc3 * p.scale);
    }
  }
}

// ---- the S rotation: rows of d = 2048, 4096, 8192 (K = 1) by blocks of 256 threads ----
// d = 64 T with T = 32, 64 or 128 threads per row, kSThreads / T rows per block:
//   pass A: thread lt (0..T-1) loads the 64 elements lt + T j of its row (each
//           warp load is 64 contiguous bytes), transforms index bits log2(T)..
//           in registers and stores them to shared memory;
//   pass B: thread lt reads elements 64 lt .. 64 lt + 63 (16 float4 loads) and
//           transforms the low bits that pass A left: bits 0..4 (T = 32), 0..5
//           (T = 64), or bit 6 with the neighbour's 64 elements (64 (lt ^ 1)..)
//           and then bits 0..5 (T = 128). The thread holds the rotated row's 64
//           contiguous values (not yet scaled), ready for maxima and wide stores.
// One exchange through shared memory (element e = 64 a + c at 64 a + (c ^ 4 (a & 7)):
// both sides bank-conflict free) and no index arithmetic per element. A block's
// rows hold kSThreads * 64 elements for every d: kSRotBytes of f32, and for bf16
// inputs as much again of raw rows, prefetched (cp.async) while the current
// ones are rotated. Stores must not be the thread's own 64 contiguous values (a
// warp's store instruction then fills 8 or 16 bytes of every 32-byte sector): the
// row kernel (hadamard.cu) puts pass B's values back to the thread's own part of
// s (s_put64) and reads the whole row back in store order (s_chunk8); the
// quantizer (quantize.cu) codes them from registers and stages each warp's codes.
constexpr int kSThreads = 256;
constexpr int kSElems = kSThreads * 64;
constexpr size_t kSRotBytes = static_cast<size_t>(kSElems) * 4;
__host__ __device__ constexpr size_t s_smem_bytes(size_t input_bytes) {
  return kSRotBytes + (input_bytes == 2 ? static_cast<size_t>(kSElems) * 2 : 0);
}

template <int D>
struct SRot {
  static_assert(hadamard_s_width(D), "the S rotation takes d = 2048, 4096, 8192");
  static constexpr int T = D / 64;                  // threads per row
  static constexpr int Q = kSThreads / T;           // rows per block
  static constexpr int kLowBits = T == 32 ? 5 : 6;  // pass B's bits in registers
};

// Where pass A puts element lt + T j (j a compile-time constant once unrolled) of
// the layout above, with no per-element arithmetic but one XOR with a constant:
// T <= 64: chunk a = T j / 64 (a constant), lt < T below the constant offset's bits;
// T = 128: a = 2 j + (lt >> 6), so 4 (a & 7) = 8 (j & 3) + 4 (lt >> 6).
template <int T>
__device__ __forceinline__ int s_addr_a(int lt, int j) {
  if constexpr (T <= 64) {
    const int a = T * j / 64;
    return 64 * a + (T * j) % 64 + (lt ^ (4 * (a & 7)));
  } else {
    const int hi = lt >> 6;
    return 128 * j + 64 * hi + (((lt & 63) ^ (4 * hi)) ^ (8 * (j & 3)));
  }
}

// Host side: d when rows of the plan take the S rotation (K = 1, the whole row, an
// S width), else 0.
inline int s_width_of(const HadamardDevicePlan& p) {
  return p.k == 1 && p.block == p.dim && hadamard_s_width(p.dim) ? p.dim : 0;
}

// Host side: f(std::integral_constant<int, d>) for an S width d (hadamard_s_width).
template <class F>
void dispatch_s_width(int64_t d, F&& f) {
  switch (d) {
    case 2048: f(std::integral_constant<int, 2048>{}); break;
    case 4096: f(std::integral_constant<int, 4096>{}); break;
    default: f(std::integral_constant<int, 8192>{}); break;
  }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t sa = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Barrier of the T threads of one row of a group (named barrier 1 + row; T = 32:
// the row's warp), or with kBlock of the whole block. Rows of a group share no
// data: each row's threads prefetch, rotate and code it alone, so rows need not
// wait for each other. (Measured: the quantizer gains 5-11% at d = 2048-8192 with
// row barriers; the row kernel gains at 2048 and 8192 but loses 7% at 4096, where
// it keeps the block's.)
template <int T, bool kBlock = false>
__device__ __forceinline__ void s_row_sync(int row) {
  if constexpr (kBlock) {
    __syncthreads();
  } else if constexpr (T == 32) {
    __syncwarp();
  } else {
    asm volatile("bar.sync %0, %1;\n" ::"r"(1 + row), "n"(T) : "memory");
  }
}

// Starts copying row w of group `quad` (bf16 bits) to raw + w * D: its T threads,
// 8 chunks of 16 bytes each (a warp's 32 chunks contiguous).
template <int D>
__device__ __forceinline__ void s_prefetch(const uint16_t* x, int64_t R, int64_t quad, uint16_t* raw, int w,
                                           int lt) {
  constexpr int T = SRot<D>::T;
  const int64_t r = quad * SRot<D>::Q + w;
  if (r < R) {
#pragma unroll
    for (int k = 0; k < D / 8 / T; ++k) cp_async16(raw + w * D + 8 * (lt + T * k), x + r * D + 8 * (lt + T * k));
  }
  cp_async_commit();
}

__device__ __forceinline__ float s_load1(const uint16_t* p) {
  return __uint_as_float(static_cast<uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(p))) << 16);
}
__device__ __forceinline__ float s_load1(const float* p) { return __ldg(p); }

// Pass A of row xr (f32 or bf16 bits in global memory, or the prefetched copy raw
// when not null) into s (the row's D floats).
template <int D, class In>
__device__ __forceinline__ void s_pass_a(const In* xr, const uint16_t* raw, float* s, int lt) {
  constexpr int T = SRot<D>::T;
  float v[64];
  if (sizeof(In) == 2 && raw) {
#pragma unroll
    for (int j = 0; j < 64; ++j) v[j] = __uint_as_float(static_cast<uint32_t>(raw[lt + T * j]) << 16);
  } else {
#pragma unroll
    for (int j = 0; j < 64; ++j) v[j] = s_load1(xr + lt + T * j);
  }
  wht_regs<64>(v, 6);
#pragma unroll
  for (int j = 0; j < 64; ++j) s[s_addr_a<T>(lt, j)] = v[j];
}

// Row w of a group through pass A (its T threads): waits for the row's prefetched
// bf16 copy, rotates row w of group `group` (when there is one) into s, then
// starts the prefetch of its row of group `next` (when >= 0). Pass B follows.
// kBlock: the whole block's barriers (s_row_sync).
template <int D, bool kBlock = false, class In>
__device__ __forceinline__ void s_group_pass_a(const In* x, int64_t rows, int64_t group, int64_t next, float* s,
                                               uint16_t* raw, int w, int lt) {
  constexpr bool kPre = sizeof(In) == 2;
  if constexpr (kPre) cp_async_wait_all();
  s_row_sync<SRot<D>::T, kBlock>(w);  // the prefetched row has arrived, s is free
  const int64_t r = group * SRot<D>::Q + w;
  if (r < rows) s_pass_a<D>(x + r * D, kPre ? raw + w * D : nullptr, s, lt);
  s_row_sync<SRot<D>::T, kBlock>(w);  // s written, raw free
  if constexpr (kPre)
    if (next >= 0) s_prefetch<D>(reinterpret_cast<const uint16_t*>(x), rows, next, raw, w, lt);
}

// Pass B: v[j] = element 64 lt + j of the rotated row, not yet scaled. With
// T = 128 it reads the neighbour's part too: a caller that then overwrites its
// own part must __syncwarp() first.
template <int D>
__device__ __forceinline__ void s_pass_b(const float* s, int lt, float (&v)[64]) {
#pragma unroll
  for (int q = 0; q < 16; ++q) {
    const float4 f = *reinterpret_cast<const float4*>(s + 64 * lt + 4 * (q ^ (lt & 7)));
    v[4 * q] = f.x, v[4 * q + 1] = f.y, v[4 * q + 2] = f.z, v[4 * q + 3] = f.w;
  }
  if constexpr (SRot<D>::T == 128) {  // bit 6: a = element with bit 6 clear, b set -> (a + b, a - b)
    const int nb = lt ^ 1;
    const bool upper = lt & 1;
#pragma unroll
    for (int q = 0; q < 16; ++q) {
      const float4 f = *reinterpret_cast<const float4*>(s + 64 * nb + 4 * (q ^ (nb & 7)));
      const float u[4] = {f.x, f.y, f.z, f.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) v[4 * q + i] = upper ? u[i] - v[4 * q + i] : v[4 * q + i] + u[i];
    }
  }
  wht_regs<64>(v, SRot<D>::kLowBits);
}

// The thread's 64 values (pass B's v, scaled) back to its own part of s; with
// T = 128 only after the neighbour has read them (__syncwarp after s_pass_b).
__device__ __forceinline__ void s_put64(float* s, int lt, const float (&v)[64]) {
#pragma unroll
  for (int q = 0; q < 16; ++q)
    *reinterpret_cast<float4*>(s + 64 * lt + 4 * (q ^ (lt & 7))) =
        make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
}

// Elements 8 c .. 8 c + 7 of a row that s_put64 wrote (all its threads: sync first).
// Lanes reading consecutive c are free of bank conflicts.
__device__ __forceinline__ void s_chunk8(const float* s, int c, float4& a, float4& b) {
  const int o = c / 8, q = 2 * (c % 8);
  a = *reinterpret_cast<const float4*>(s + 64 * o + 4 * (q ^ (o & 7)));
  b = *reinterpret_cast<const float4*>(s + 64 * o + 4 * ((q + 1) ^ (o & 7)));
}

// ---- the P rotation: rows of d = 2N x 512 (H_{2N} Paley II over a prime q = N - 1,
// N = 6, 14: d = 6144, 14336), one row per block of 256 threads ----
// The row sits in shared memory as f32: segment a (its 512 elements a * 512 + c)
// at a * kPStride, column c at p_col(c) (bit 2 of c flipped when bit 5 is set).
// With these, every access below is free of bank conflicts:
//   pass A: thread t transforms index bits 0..2 of the 8-element chunks t + 256 i
//           of the row (the caller's 16-byte loads, all in flight together) and
//           stores them (p_store_chunk);
//   pass B: a thread per fiber (segment a, c & 7): its 64 elements at stride 8,
//           bits 3..8 in registers, in place;
//   pass C: thread t reads columns t and t + 256 of all 2N segments, one after
//           the other, and mixes each with H_{2N} (kmix_paley2's formula) in
//           registers, scaled (p_mix_column).
// Compile-time N and C (p_conf, which the host checks against the plan's): the
// mix unrolls to additions with nothing loaded and uses C's quadratic-residue
// structure (p_conf_apply: about half the operations of the plain product), and
// no element needs index arithmetic. (C read from the kernel's parameters was
// hoisted into registers by the compiler and spilled.) The generic row path it
// replaces for these widths (run-time loops over shared memory) was issue-bound;
// see docs/perf.md for the measured gain.
constexpr int kPThreads = 256;
constexpr int kPStride = 520;  // 8 mod 32: four consecutive segments cover the 32 banks
__host__ __device__ constexpr int p_chunks(int n) { return 2 * n * 64 / kPThreads; }  // 8-element chunks per thread
__host__ __device__ constexpr bool hadamard_p_order(int n) { return n == 6 || n == 14; }
__host__ __device__ constexpr size_t p_smem_bytes(int n) { return static_cast<size_t>(2 * n) * kPStride * 4; }

// C = [[0, 1^T], [1, Q]], Q[i][j] = chi(i - j) mod q = N - 1 (a prime), as hadamard_matrix.cpp.
__host__ __device__ constexpr int p_legendre(int a, int q) {
  a = ((a % q) + q) % q;
  if (a == 0) return 0;
  for (int x = 1; x < q; ++x)
    if (x * x % q == a) return 1;
  return -1;
}
__host__ __device__ constexpr int p_conf(int n, int i, int j) {
  return i == 0 ? (j == 0 ? 0 : 1) : (j == 0 ? 1 : p_legendre(i - j, n - 1));
}

// Host side: N when rows of the plan take the P rotation (the whole row, 2N x 512,
// the built-in C), else 0.
inline int p_order_of(const HadamardDevicePlan& p) {
  const int n = p.paley_n;
  if (!hadamard_p_order(n) || p.block != p.dim || p.pow2 != 512 || p.dim != 2 * n * 512) return 0;
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      if (p.conf[i * HadamardDevicePlan::kMaxPaleyN + j] != p_conf(n, i, j)) return 0;
  return n;
}

// Host side: f(std::integral_constant<int, N>) for a P order N.
template <class F>
void dispatch_p_order(int n, F&& f) {
  n == 6 ? f(std::integral_constant<int, 6>{}) : f(std::integral_constant<int, 14>{});
}

__device__ __forceinline__ int p_col(int c) { return c ^ (((c >> 5) & 1) << 2); }

// Pass A for the chunk q = t + 256 i: v holds the row's elements 8 q .. 8 q + 7.
__device__ __forceinline__ void p_store_chunk(float* s, int q, float (&v)[8]) {
  wht_regs<8>(v, 3);
  const int c = 8 * (q & 63), h = (c >> 5) & 1;  // p_col swaps the two halves when bit 5 is set
  float* seg = s + (q >> 6) * kPStride + c;
  *reinterpret_cast<float4*>(seg + 4 * h) = make_float4(v[0], v[1], v[2], v[3]);
  *reinterpret_cast<float4*>(seg + 4 * (h ^ 1)) = make_float4(v[4], v[5], v[6], v[7]);
}

// Pass B (all threads; the caller syncs before and after). Element lo + 8 m of a
// segment has bit 5 = bit 2 of m: two base pointers, constant offsets.
template <int N>
__device__ __forceinline__ void p_pass_b(float* s, int t) {
  constexpr int kFibers = 2 * N * 8;
  static_assert(kFibers <= kPThreads, "one fiber per thread");
  if (t >= kFibers) return;
  const int a = t >> 3, lo = t & 7;
  float* b0 = s + a * kPStride + lo;
  float* b1 = s + a * kPStride + (lo ^ 4);
  float v[64];
#pragma unroll
  for (int m = 0; m < 64; ++m) v[m] = ((m >> 2) & 1 ? b1 : b0)[8 * m];
  wht_regs<64>(v, 6);
#pragma unroll
  for (int m = 0; m < 64; ++m) ((m >> 2) & 1 ? b1 : b0)[8 * m] = v[m];
}

// y = C x, C = [[0, 1^T], [1, Q]] (p_conf): with S = x_1 + ... + x_q,
//   y_0 = S,  y_i = x_0 + sum_j chi(i - j) x_j = x_0 - S + x_i + 2 sum_k (x_{i-k} + x_{i+k})
// over the quadratic residues k <= q / 2 (chi(-1) = 1 for q = 1 mod 4; indices of
// x_1..x_q taken mod q): about 7 operations per output instead of q.
template <int N>
__host__ __device__ __forceinline__ void p_conf_apply(const float (&x)[N], float (&y)[N]) {
  constexpr int q = N - 1;
  float sum = x[1];
#pragma unroll
  for (int j = 2; j <= q; ++j) sum += x[j];
  const float base = x[0] - sum;
  y[0] = sum;
#pragma unroll
  for (int i = 0; i < q; ++i) {  // y[1 + i]
    float pairs = 0.0f;
#pragma unroll
    for (int k = 1; k <= q / 2; ++k)
      if (p_legendre(k, q) == 1) pairs += x[1 + (i - k + q) % q] + x[1 + (i + k) % q];
    y[1 + i] = fmaf(2.0f, pairs, base + x[1 + i]);
  }
}

// Pass C for column c: z[a] = element a * 512 + c of the rotated row (scaled).
// Columns t and t + 256 of a block: a warp's reads are 32 consecutive floats.
template <int N>
__device__ __forceinline__ void p_mix_column(const float* s, int c, float scale, float (&z)[2 * N]) {
  const int pc = p_col(c);
#pragma unroll
  for (int a = 0; a < 2 * N; ++a) z[a] = s[a * kPStride + pc];
  float sum[N], dif[N], ye[N], yo[N];
#pragma unroll
  for (int i = 0; i < N; ++i) sum[i] = z[2 * i] + z[2 * i + 1], dif[i] = z[2 * i] - z[2 * i + 1];
  p_conf_apply<N>(dif, ye);
  p_conf_apply<N>(sum, yo);
#pragma unroll
  for (int i = 0; i < N; ++i) {
    z[2 * i] = (ye[i] + sum[i]) * scale;
    z[2 * i + 1] = (dif[i] - yo[i]) * scale;
  }
}

// Passes A and B of row xr (bf16 bits or f32) into s, all threads. Starts with a
// barrier (s is free once every thread is done with the previous row) after
// issuing the row's loads, ends with one (pass C may read s). Nothing of the row
// is written before all of it is read: the output may alias the input.
template <int N, class In>
__device__ __forceinline__ void p_rotate_row(const In* xr, float* s, int t) {
  static_assert(sizeof(In) == 2 || sizeof(In) == 4, "bf16 bits or f32");
  constexpr int kC = p_chunks(N), kQ = sizeof(In) / 2;  // 16-byte loads per chunk
  uint4 raw[kC][kQ];
#pragma unroll
  for (int i = 0; i < kC; ++i)
#pragma unroll
    for (int k = 0; k < kQ; ++k) raw[i][k] = __ldg(reinterpret_cast<const uint4*>(xr + 8 * (t + kPThreads * i)) + k);
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kC; ++i) {
    float w[8];
#pragma unroll
    for (int k = 0; k < kQ; ++k) {
      const uint32_t u[4] = {raw[i][k].x, raw[i][k].y, raw[i][k].z, raw[i][k].w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (kQ == 1) {
          w[2 * j] = __uint_as_float(u[j] << 16), w[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
        } else {
          w[4 * k + j] = __uint_as_float(u[j]);
        }
      }
    }
    p_store_chunk(s, t + kPThreads * i, w);
  }
  __syncthreads();
  p_pass_b<N>(s, t);
  __syncthreads();
}

}  // namespace hadamard_detail

// row := row R (transpose = false) or row R^T (transpose = true); see the
// contract at the top of this file.
template <int kMaxItems = 2, class Layout = PlainLayout>
__device__ __forceinline__ void hadamard_rotate_smem(float* row, const HadamardDevicePlan& p, bool transpose) {
  using namespace hadamard_detail;
  __syncthreads();
  const int n = p.log2_pow2, d = p.dim;
  const SmemStore<Layout> st{row};
  // Fast Walsh-Hadamard transform of every length-2^n segment (the K
  // segments, or the blocks of the fallback). The scale goes into the last
  // pass unless the K-mix follows.
  int b0 = 0;
  if (n > 0 && d % 16 == 0) {
    const int nb = n < 4 ? n : 4;
    wht_pass16_smem<Layout>(row, d, nb, (nb == n && p.k == 1) ? p.scale : 1.0f);
    b0 = nb;
    __syncthreads();
  }
  for (; b0 < n; b0 += 4) {
    const int nb = (n - b0) < 4 ? (n - b0) : 4;
    wht_pass_n<Layout>(nb, row, d, b0, (b0 + nb == n && p.k == 1) ? p.scale : 1.0f, st);
    __syncthreads();
  }
  if (p.k > 1) {
    kmix<kMaxItems, Layout>(row, p, transpose, st);
    __syncthreads();
  }
}

}  // namespace halo
