// The Hopper INT8 GEMM with its scaling fused: D = alpha * sa[i] * sb[j] * (A B^T)[i, j]
// (+ D) (+ bias[j]) for int8 A [M, K], B [N, K] (both K-major), per-tensor or per-row
// scales, D f32 or bf16. cuBLASLt returns INT8 products only as int32, and scaling those
// into bf16 is a second pass that reads 4 bytes and writes 2 per element: at 8192 x 14336
// it costs about a third of the GEMM. Here the int32 sums never leave the registers.
//
// The kernel (sm_90a only; other GPUs keep cuBLASLt + scale_i32):
//   - persistent: one 384-thread block per SM walks output tiles of 128 x 256; tiles are
//     visited in groups of kGroupM tile rows, so the blocks running at once share their
//     A and B tiles in L2;
//   - warp group 0 is the producer: one thread loads 128 x 128-byte tiles of A and
//     256 x 128-byte tiles of B with TMA (128-byte swizzle, zero fill past the edges)
//     into a ring of kStages stages, each guarded by a "full" mbarrier (TMA's byte
//     count) and an "empty" one (the consumer warps' arrivals);
//   - warp groups 1 and 2 each multiply 64 rows of the tile by its 256 columns with
//     wgmma.m64n256k32.s32.s8.s8 straight from shared memory (four per stage, one
//     stage's in flight while the next is issued), into 128 int32 registers per
//     thread, then scale and convert them in place;
//   - the tile leaves through a 64 KB staging buffer in shared memory by TMA stores,
//     which run on while the next tile is multiplied (store_staged); D with
//     accumulate or a bias, or with rows that are not whole 16-byte units, is
//     stored from the registers (store_direct).
// The scaling is the same float arithmetic as scale_i32 (gemm.cu), in the same order,
// so both paths give the same bits. Without the fused epilogue (the int32 product
// scaled by a second pass) the same GEMM took 0.28 ms against 0.20 ms at 8192 x 4096
// x 4096 on an H100 (docs/perf.md).
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string_view>
#include <type_traits>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/numerics.h"
#include "core/stream.h"
#include "kernels/gemm.h"
#include "kernels/launch.cuh"

namespace halo {

namespace {

constexpr int kTileM = 128, kTileN = 256, kTileK = 128;  // K in bytes = int8 elements
constexpr int kStages = 3;
constexpr int kGroupM = 16;
constexpr int kBlockThreads = 384;  // producer warp group + 2 consumer warp groups
constexpr uint32_t kStageBytesA = kTileM * kTileK, kStageBytesB = kTileN * kTileK;
constexpr uint32_t kStagingBytes = 64 * 1024;  // D's tile leaves in 1 (bf16) or 2 (f32) turns
constexpr size_t kSmemBytes = kStages * (kStageBytesA + kStageBytesB) + kStagingBytes + 2 * kStages * 8 + 1024;

// How the tile reaches D: staged in shared memory and written by TMA (D's rows whole
// 16-byte units, no accumulate, no bias), or stored from the registers.
enum class Epi { tma, direct, accumulate };

struct Epilogue {
  const float* sa;
  int sa_step;  // 0: per-tensor scale, 1: per row
  const float* sb;
  int sb_step;
  float alpha;
  void* d;
  const void* bias;
  bool bias_bf16;
  int M, N;
  bool pairs;  // D rows hold whole aligned pairs: two outputs per store
};

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Tile t of the grouped order: kGroupM tile rows at a time, down the rows first.
__device__ __forceinline__ void tile_coords(int t, int tiles_m, int tiles_n, int& tm, int& tn) {
  const int per_group = kGroupM * tiles_n;
  const int g = t / per_group, first = g * kGroupM;
  const int rows = min(kGroupM, tiles_m - first);
  const int r = t - g * per_group;
  tm = first + r % rows;
  tn = r / rows;
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count));
}

__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WAIT_%=;\n"
      "}\n" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}

__device__ __forceinline__ void mbar_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
}

// A box of the 2-D tensor map at (column k, row r) into shared memory; the barrier
// counts its bytes.
__device__ __forceinline__ void tma_load(void* dst, const CUtensorMap* map, int k, int r, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];" ::"r"(smem_addr(dst)),
      "l"(map), "r"(k), "r"(r), "r"(smem_addr(bar))
      : "memory");
}

// The wgmma descriptor of a K-major tile in 128-byte swizzled rows (what TMA's
// SWIZZLE_128B writes): start address / 16, 8-row groups 1024 bytes apart, layout 1.
__device__ __forceinline__ uint64_t smem_desc(const void* p) {
  return (static_cast<uint64_t>(smem_addr(p)) & 0x3FFFF) >> 4 | uint64_t{1} << 16 |
         uint64_t{1024 >> 4} << 32 | uint64_t{1} << 62;
}

// d (+)= A[64 x 32] B[256 x 32]^T in int32, A and B from shared memory.
__device__ __forceinline__ void wgmma_s8(int32_t (&d)[128], uint64_t desc_a, uint64_t desc_b, bool add) {
#define HALO_R8(i) \
  "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), "+r"(d[i + 5]), "+r"(d[i + 6]), "+r"(d[i + 7])
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
      "%128, %129, p;\n"
      "}\n"
      : HALO_R8(0), HALO_R8(8), HALO_R8(16), HALO_R8(24), HALO_R8(32), HALO_R8(40), HALO_R8(48),
        HALO_R8(56), HALO_R8(64), HALO_R8(72), HALO_R8(80), HALO_R8(88), HALO_R8(96), HALO_R8(104),
        HALO_R8(112), HALO_R8(120)
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(add)));
#undef HALO_R8
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
// Marks the accumulators as changed here, so that no read of them is scheduled
// before this point (the wgmma asm statements alone do not order them with the wait).
__device__ __forceinline__ void pin(int32_t (&acc)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+r"(acc[i])::"memory");
}

template <int Pending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(Pending) : "memory");
}

__device__ __forceinline__ float load_f32(const void* p, bool bf16, int64_t i) {
  return bf16 ? bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]) : static_cast<const float*>(p)[i];
}
__device__ __forceinline__ float load_out(const float* d) { return *d; }
__device__ __forceinline__ float load_out(const uint16_t* d) { return bf16_bits_to_float(*d); }

// Two neighbours of a row of D (4- or 8-byte aligned).
__device__ __forceinline__ void store_pair(float* d, float r0, float r1) {
  *reinterpret_cast<float2*>(d) = make_float2(r0, r1);
}
__device__ __forceinline__ void store_pair(uint16_t* d, float r0, float r1) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(r0, r1);
  *reinterpret_cast<__nv_bfloat162*>(d) = v;
}

// The warp group's 64 x 256 part of the tile: acc[4 c + 2 h + x] holds row
// row0 + 8 h, column col0 + 8 c + x. Its sums are scaled in place (float bits in
// acc). The scales are read (read-only loads) before any store, which the compiler
// could not move them past.
__device__ __forceinline__ void scale_tile(const Epilogue& e, int32_t (&acc)[128], int row0, int col0) {
  float si[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int i = min(row0 + 8 * h, e.M - 1);
    si[h] = e.alpha * __ldg(e.sa + static_cast<int64_t>(i) * e.sa_step);
  }
  // Column scales: one for all (per tensor), pairs (whole columns; col0 is even), or
  // one at a time, clamped at the edge.
  const int mode = e.sb_step == 0 ? 0 : col0 - col0 % kTileN + kTileN <= e.N ? 1 : 2;
  const float s_all = __ldg(e.sb);
#pragma unroll
  for (int c = 0; c < 32; ++c) {
    const int j = col0 + 8 * c;
    float2 sj = make_float2(s_all, s_all);
    if (mode == 1) sj = __ldg(reinterpret_cast<const float2*>(e.sb + j));
    if (mode == 2) sj = make_float2(__ldg(e.sb + min(j, e.N - 1)), __ldg(e.sb + min(j + 1, e.N - 1)));
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      acc[4 * c + 2 * h] = __float_as_int(static_cast<float>(acc[4 * c + 2 * h]) * si[h] * sj.x);
      acc[4 * c + 2 * h + 1] = __float_as_int(static_cast<float>(acc[4 * c + 2 * h + 1]) * si[h] * sj.y);
    }
  }
}

// The scaled part stored from the registers. Whole parts without bias take the
// unrolled path; the rest (edges, bias, odd rows) a rolled loop over a local copy,
// which keeps the kernel's code small enough for the instruction cache.
template <class Out, bool Accumulate>
__device__ __forceinline__ void store_direct(const Epilogue& e, const int32_t (&acc)[128], int row0, int col0,
                                             bool inside) {
  Out* const d = static_cast<Out*>(e.d);
  if (inside && e.pairs && !e.bias) {
#pragma unroll
    for (int c = 0; c < 32; ++c)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        Out* p = d + static_cast<int64_t>(row0 + 8 * h) * e.N + col0 + 8 * c;
        float r0 = __int_as_float(acc[4 * c + 2 * h]), r1 = __int_as_float(acc[4 * c + 2 * h + 1]);
        if (Accumulate) {
          r0 += load_out(p);
          r1 += load_out(p + 1);
        }
        store_pair(p, r0, r1);
      }
    return;
  }
  float v[128];
#pragma unroll
  for (int q = 0; q < 128; ++q) v[q] = __int_as_float(acc[q]);
#pragma unroll 1
  for (int q = 0; q < 128; q += 2) {
    const int i = row0 + 8 * ((q / 2) % 2), j = col0 + 8 * (q / 4);
    if (i >= e.M || j >= e.N) continue;
    const bool one = j + 1 >= e.N;
    Out* p = d + static_cast<int64_t>(i) * e.N + j;
    float r0 = v[q], r1 = v[q + 1];
    if (Accumulate) {
      r0 += load_out(p);
      if (!one) r1 += load_out(p + 1);
    }
    if (e.bias) {
      r0 += load_f32(e.bias, e.bias_bf16, j);
      if (!one) r1 += load_f32(e.bias, e.bias_bf16, j + 1);
    }
    if (e.pairs && !one) {
      store_pair(p, r0, r1);
    } else if constexpr (std::is_same_v<Out, float>) {
      p[0] = r0;
      if (!one) p[1] = r1;
    } else {
      p[0] = float_to_bf16_bits(r0);
      if (!one) p[1] = float_to_bf16_bits(r1);
    }
  }
}

__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, 256;" ::: "memory"); }

// Two neighbours of a row of D into shared memory (the last argument picks D's type).
__device__ __forceinline__ void st_shared_pair(uint32_t addr, float r0, float r1, float) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};" ::"r"(addr), "f"(r0), "f"(r1) : "memory");
}
__device__ __forceinline__ void st_shared_pair(uint32_t addr, float r0, float r1, uint16_t) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(r0, r1);
  asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(*reinterpret_cast<const uint32_t*>(&v)) : "memory");
}

// The scaled tile through shared memory to D by TMA, in 128-byte swizzled boxes 128
// bytes wide: bf16 in one turn (both warp groups; 4 boxes of 128 rows), f32 in two
// (one warp group after the other; 8 boxes of 64 rows), as the staging buffer holds
// 64 KB. The consumer thread `leader` issues the stores and, before the buffer is
// written again, waits until they have read it; they run on while the next tile is
// multiplied. (A split of the tile's columns instead made ptxas serialize the wgmmas.)
template <class Out>
__device__ __forceinline__ void store_staged(const CUtensorMap* map_d, uint8_t* staging, const int32_t (&acc)[128],
                                             int tile_row0, int tile_col0, int half, int row, int col, bool leader) {
  constexpr int kBoxCols = 128 / sizeof(Out), kBoxes = kTileN / kBoxCols, kTurns = sizeof(Out) / 2;
  constexpr int kBoxRows = kTileM / kTurns, kBoxBytes = kBoxRows * 128;
  constexpr int kGroupsPerBox = kBoxCols / 8;                // 8-column groups (c) in a box
  constexpr int kChunksPerGroup = 8 * sizeof(Out) / 16;      // 16-byte chunks of such a group
  // Column col + 8 c of row r: box c / kGroupsPerBox, 16-byte chunk (c % kGroupsPerBox) *
  // kChunksPerGroup + col_chunk swizzled with r % 8 = lane / 4, byte col_byte within it.
  const int col_chunk = col * static_cast<int>(sizeof(Out)) / 16, col_byte = col * static_cast<int>(sizeof(Out)) % 16;
  const int swz = (row % 8);
#pragma unroll
  for (int turn = 0; turn < kTurns; ++turn) {
    if (leader) asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
    consumers_sync();
    if (kTurns == 1 || half == turn) {
      const uint32_t base = smem_addr(staging) + (row - turn * kBoxRows) * 128 + col_byte;
#pragma unroll
      for (int c = 0; c < 32; ++c) {
        const int chunk = ((c % kGroupsPerBox) * kChunksPerGroup + col_chunk) ^ swz;
#pragma unroll
        for (int h = 0; h < 2; ++h)
          st_shared_pair(base + (c / kGroupsPerBox) * kBoxBytes + h * 8 * 128 + chunk * 16,
                         __int_as_float(acc[4 * c + 2 * h]), __int_as_float(acc[4 * c + 2 * h + 1]), Out{});
      }
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    consumers_sync();
    if (leader) {
#pragma unroll
      for (int b = 0; b < kBoxes; ++b)
        asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];" ::"l"(map_d),
                     "r"(tile_col0 + b * kBoxCols), "r"(tile_row0 + turn * kBoxRows),
                     "r"(smem_addr(staging + b * kBoxBytes))
                     : "memory");
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    }
  }
}

#endif

template <class Out, Epi Mode>
__global__ void __launch_bounds__(kBlockThreads, 1)
    gemm_i8_sm90_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                        const __grid_constant__ CUtensorMap map_d, int K, Epilogue e) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ uint8_t smem_raw[];
  // 128-byte swizzled tiles must start on 1024-byte boundaries.
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  uint8_t* tiles_a = smem;
  uint8_t* tiles_b = smem + kStages * kStageBytesA;
  uint8_t* staging = tiles_b + kStages * kStageBytesB;
  uint64_t* full = reinterpret_cast<uint64_t*>(staging + kStagingBytes);
  uint64_t* empty = full + kStages;

  const int group = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 8);  // the 8 consumer warps
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  const int tiles_m = (e.M + kTileM - 1) / kTileM, tiles_n = (e.N + kTileN - 1) / kTileN;
  const int tiles = tiles_m * tiles_n, steps = (K + kTileK - 1) / kTileK;

  if (group == 0) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
    if (threadIdx.x != 0) return;
    uint32_t n = 0;  // stage loads issued so far
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      int tm, tn;
      tile_coords(t, tiles_m, tiles_n, tm, tn);
      for (int k = 0; k < steps; ++k, ++n) {
        const uint32_t s = n % kStages, round = n / kStages;
        if (round > 0) mbar_wait(&empty[s], (round - 1) & 1);
        mbar_expect_bytes(&full[s], kStageBytesA + kStageBytesB);
        tma_load(tiles_a + s * kStageBytesA, &map_a, k * kTileK, tm * kTileM, &full[s]);
        tma_load(tiles_b + s * kStageBytesB, &map_b, k * kTileK, tn * kTileN, &full[s]);
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
  const int half = group - 1;  // rows [64 half, 64 half + 64) of the tile
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  uint32_t n = 0;
  int32_t acc[128];  // each tile's first wgmma overwrites them (scale-d 0)
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0;
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int tm, tn;
    tile_coords(t, tiles_m, tiles_n, tm, tn);
    // One stage's multiplies stay in flight while the next stage's are issued; a stage
    // is handed back once the multiplies that read it have finished.
    uint32_t held = 0;
#pragma unroll 1
    for (int k = 0; k < steps; ++k, ++n) {
      const uint32_t s = n % kStages;
      mbar_wait(&full[s], (n / kStages) & 1);
      const uint64_t da = smem_desc(tiles_a + s * kStageBytesA + half * 64 * kTileK);
      const uint64_t db = smem_desc(tiles_b + s * kStageBytesB);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kTileK / 32; ++kk) wgmma_s8(acc, da + 2 * kk, db + 2 * kk, k > 0 || kk > 0);
      wgmma_commit();
      wgmma_wait<1>();
      if (k > 0 && lane == 0) mbar_arrive(&empty[held]);
      held = s;
    }
    wgmma_wait<0>();
    if (lane == 0) mbar_arrive(&empty[held]);
    pin(acc);  // the sums are read only after the wait
    const int row = half * 64 + warp * 16 + lane / 4, col = 2 * (lane % 4);  // within the tile
    scale_tile(e, acc, tm * kTileM + row, tn * kTileN + col);
    if constexpr (Mode == Epi::tma) {
      store_staged<Out>(&map_d, staging, acc, tm * kTileM, tn * kTileN, half, row, col, threadIdx.x == 128);
    } else {
      const bool inside = (tm * kTileM + half * 64 + 64 <= e.M) && (tn + 1) * kTileN <= e.N;
      store_direct<Out, Mode == Epi::accumulate>(e, acc, tm * kTileM + row, tn * kTileN + col, inside);
    }
  }
  if (Mode == Epi::tma && threadIdx.x == 128) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult found{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found));
    HALO_CHECK(found == cudaDriverEntryPointSuccess && p, "gemm_i8_sm90: the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A 2-D row-major [rows, cols] tensor as TMA boxes of box_rows x 128 bytes in
// 128-byte swizzled rows (zero fill past the edges when loading; clipped when storing).
CUtensorMap tensor_map(const void* data, CUtensorMapDataType type, size_t elem_bytes, int64_t rows, int64_t cols,
                       uint32_t box_rows) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols * elem_bytes)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(128 / elem_bytes), box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&map, type, 2, const_cast<void*>(data), dims, strides, box, elem_strides,
                                          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  HALO_CHECK(r == CUDA_SUCCESS, "gemm_i8_sm90: cuTensorMapEncodeTiled failed (", static_cast<int>(r), ") for a [",
             rows, ", ", cols, "] tensor of ", elem_bytes, "-byte elements");
  return map;
}

template <class Out>
constexpr std::array<const void*, 3> kernels_for() {
  return {reinterpret_cast<const void*>(gemm_i8_sm90_kernel<Out, Epi::tma>),
          reinterpret_cast<const void*>(gemm_i8_sm90_kernel<Out, Epi::direct>),
          reinterpret_cast<const void*>(gemm_i8_sm90_kernel<Out, Epi::accumulate>)};
}

// Whether this kernel runs on the current GPU: an sm_90 part and a build with sm_90a
// code for it. Cached per device; sets the kernels' shared memory on first use.
bool device_runs_kernel() {
  static std::mutex mu;
  static std::map<int, bool> known;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  auto it = known.find(dev);
  if (it != known.end()) return it->second;
  cudaDeviceProp p{};
  CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
  cudaFuncAttributes f{};
  CUDA_CHECK(cudaFuncGetAttributes(&f, gemm_i8_sm90_kernel<float, Epi::direct>));
  const bool runs = p.major == 9 && p.minor == 0 && f.binaryVersion == 90;
  if (runs)
    for (const auto& list : {kernels_for<float>(), kernels_for<uint16_t>()})
      for (const void* k : list)
        CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes)));
  known.emplace(dev, runs);
  return runs;
}

}  // namespace

namespace detail {

bool gemm_i8_sm90_runs(const GemmOperand& a, const GemmOperand& b, const Tensor& d) {
  static const bool allowed = [] {  // HALO_I8_GEMM=cublaslt: off, to compare
    const char* v = std::getenv("HALO_I8_GEMM");
    return !(v && std::string_view(v) == "cublaslt");
  }();
  if (!allowed) return false;
  const int64_t K = a.data->size(1);
  const auto aligned = [](const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; };
  return a.data->dtype() == DType::i8 && a.scale && b.scale && !a.trans && b.trans &&
         (a.granularity == Granularity::tensor || a.granularity == Granularity::row) &&
         (b.granularity == Granularity::tensor || b.granularity == Granularity::row) &&
         (d.dtype() == DType::f32 || d.dtype() == DType::bf16) && K > 0 && K % 16 == 0 && aligned(a.data->data(), 16) &&
         aligned(b.data->data(), 16) && aligned(d.data(), d.dtype() == DType::f32 ? 4 : 2) &&
         a.data->size(0) < (int64_t{1} << 31) && b.data->size(0) < (int64_t{1} << 31) && K < (int64_t{1} << 31) &&
         device_runs_kernel();
}

void gemm_i8_sm90(const GemmOperand& a, const GemmOperand& b, Tensor& d, const GemmOptions& opt) {
  const int64_t M = a.data->size(0), N = b.data->size(0), K = a.data->size(1);
  if (M == 0 || N == 0) return;
  Epilogue e;
  e.sa = a.scale->data_as<float>();
  e.sa_step = a.granularity == Granularity::row ? 1 : 0;
  e.sb = b.scale->data_as<float>();
  e.sb_step = b.granularity == Granularity::row ? 1 : 0;
  e.alpha = opt.alpha;
  e.d = d.data();
  e.bias = opt.bias ? opt.bias->data() : nullptr;
  e.bias_bf16 = opt.bias && opt.bias->dtype() == DType::bf16;
  e.M = static_cast<int>(M);
  e.N = static_cast<int>(N);
  e.pairs = N % 2 == 0 && reinterpret_cast<uintptr_t>(d.data()) % (d.dtype() == DType::bf16 ? 4 : 8) == 0;
  const CUtensorMap map_a = tensor_map(a.data->data(), CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, M, K, kTileM);
  const CUtensorMap map_b = tensor_map(b.data->data(), CU_TENSOR_MAP_DATA_TYPE_UINT8, 1, N, K, kTileN);
  const int64_t tiles = ((M + kTileM - 1) / kTileM) * ((N + kTileN - 1) / kTileN);
  HALO_CHECK(tiles < (int64_t{1} << 31), "gemm_i8_sm90: ", describe(a, b, d, opt), " has too many tiles");
  const int grid = static_cast<int>(std::min<int64_t>(tiles, sm_count()));
  const bool bf16 = d.dtype() == DType::bf16;
  const size_t out_bytes = bf16 ? 2 : 4;
  // TMA stores need 16-byte aligned rows of D.
  const bool tma = !opt.accumulate && !opt.bias && (N * out_bytes) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(d.data()) % 16 == 0;
  CUtensorMap map_d{};
  if (tma)
    map_d = tensor_map(d.data(), bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT32, out_bytes,
                       M, N, bf16 ? kTileM : kTileM / 2);
  const int mode = tma ? 0 : opt.accumulate ? 2 : 1;
  const void* kernel = (bf16 ? kernels_for<uint16_t>() : kernels_for<float>())[mode];
  int k32 = static_cast<int>(K);
  void* args[] = {const_cast<CUtensorMap*>(&map_a), const_cast<CUtensorMap*>(&map_b), &map_d, &k32, &e};
  CUDA_CHECK(cudaLaunchKernel(kernel, dim3(grid), dim3(kBlockThreads), args, kSmemBytes, current_stream()));
  CUDA_CHECK_LAUNCH();
}

}  // namespace detail

}  // namespace halo
