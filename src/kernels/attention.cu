// Causal grouped-query attention on the GPU: flash-attention-2 style kernels on
// bf16 tensor cores (mma.sync m16n8k16, f32 accumulation), for sm_80 and later.
//
// Shared-memory tiles hold rows of DP bf16 (the head dim padded up to 64, 128 or
// 256; padding columns are zeros) plus 16 bytes, so that ldmatrix reads of 8
// rows hit 8 different bank groups. Global -> shared copies are cp.async
// (zero-filled past the last token or dim). Fragments come from ldmatrix (.trans
// for operands stored k-major) and feed mma.sync; the accumulators of one
// product are re-packed to bf16 as the A operand of the next (P for P V, P^T and
// dS^T for dV and dK), as in FlashAttention-2.
//
// Forward (attn_fwd_kernel): one block of 4 warps per (query tile of BR rows,
// query head, batch row); each warp owns 16 * MT query rows. The block walks
// the key tiles of BC keys that its rows can see (causal, and from the start of
// the first row's document), from the diagonal down: S = Q K^T (f32), mask,
// online softmax in base 2, O += P V with P rounded to bf16. K of the next
// tile loads while P V runs and V loads while Q K^T runs (FA2's pipeline).
// Writes O (bf16) and lse = ln(sum exp(scale * s)) per row (f32).
//
// Backward: (1) attn_dvec_kernel: Dvec_i = sum_d dout * out per (token, head);
// dq_acc (f32) is zeroed. (2) attn_bwd_kernel: one block of NW warps per
// (key tile of BC = 16 * NW keys, kv head, batch row [, head-dim half]); each
// warp owns 16 keys and keeps dK and dV for them in registers. The block loops
// over the query heads of the GQA group and the query tiles (BR rows) that can
// see its keys; Q, dO, lse, Dvec of the next tile load while the current one
// computes (double-buffered where shared memory allows). Per tile: S^T = K Q^T,
// P^T = exp(S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - Dvec), dV += P^T dO,
// dK += dS^T Q; dS^T goes to shared memory and dQ += dS K is added to dq_acc
// with f32 atomics (float2 on sm_90) -- FA2's choice: no second pass over K/V.
// (3) attn_dq_kernel: dq = bf16(scale * dq_acc). For head dims above 128 each
// block accumulates half of the dims of dK/dV/dQ (S and dP use all of them),
// so the accumulators stay within the register file.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/stream.h"
#include "kernels/attention.h"

namespace halo {

namespace {

using bf16 = __nv_bfloat16;

// ==== device primitives ===========================================================
// Shared memory is addressed by 32-bit shared-window byte addresses.

__device__ __forceinline__ uint32_t smem_base() {
  extern __shared__ __align__(128) unsigned char attn_smem_bytes[];
  return static_cast<uint32_t>(__cvta_generic_to_shared(attn_smem_bytes));
}

// 16 bytes global -> shared, asynchronously; with valid == false, 16 zero bytes.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
// 4 bytes global -> shared, asynchronously; with valid == false, zero.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits for all of this thread's copies (a __syncthreads must follow before
// other threads read them).
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ float ld_shared_f32(uint32_t addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(addr) : "memory");
  return v;
}

// d += a (16x16, row) * b (16x8, col), bf16 in, f32 accumulate.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as bf16 (RNE), lo in the low half (the lower column index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ float shfl_xor(float v, int mask) { return __shfl_xor_sync(0xffffffffu, v, mask); }

// 2^x (ex2.approx: relative error about 2^-22; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ void st_global_bf16x2(bf16* p, float lo, float hi) {
  *reinterpret_cast<uint32_t*>(p) = pack_bf16(lo, hi);
}

// p[0] += a, p[1] += b (p 8-byte aligned).
__device__ __forceinline__ void atomic_add_f32x2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// sum of a[i] * b[i] over 8 bf16 (16-byte aligned).
__device__ __forceinline__ float dot8_bf16(const bf16* a, const bf16* b) {
  const uint4 x = *reinterpret_cast<const uint4*>(a), y = *reinterpret_cast<const uint4*>(b);
  const uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 fx = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&xs[i]));
    const float2 fy = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&ys[i]));
    s += fx.x * fy.x + fx.y * fy.y;
  }
  return s;
}

// ==== kernels =====================================================================
// Shared tiles have rows of DP + 8 bf16 (16 bytes of padding): 8 consecutive rows
// start in 8 different 16-byte bank groups, so ldmatrix is conflict-free, and
// every fragment address is a per-lane base plus a compile-time offset.

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct FwdArgs {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  bf16* out;
  float* lse;
  const int32_t* doc;  // null: one document per row
  int T, Hq, Hkv, D;
  float scale_log2;  // softmax scale * log2(e)
};

struct BwdArgs {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const bf16* dout;
  const float* lse;
  const float* dvec;  // sum_d dout * out per (token, head)
  float* dq_acc;      // f32 [B*T, Hq, D], zeroed; unscaled
  bf16* dk;
  bf16* dv;
  const int32_t* doc;
  int T, Hq, Hkv, D;
  float scale, scale_log2;
};

// Bytes per shared row of a tile of head dim DP.
template <int DP>
constexpr int kRowBytes = (DP + 8) * 2;

// Rows [r0, r0 + R) of a head slice into an R x DP tile at `tile` (cp.async; zeros
// for rows >= T and dims >= D). `src` is token 0 of the head; `stride` elements per
// token. Thread x copies chunk x % C of rows x / C, x / C + NT / C, ...
template <int R, int DP, int NT>
__device__ __forceinline__ void load_tile(uint32_t tile, const bf16* src, int64_t stride, int r0, int T, int D) {
  constexpr int C = DP / 8, kRows = NT / C;
  static_assert(NT % C == 0 && R % kRows == 0, "load_tile shape");
  const int ch = static_cast<int>(threadIdx.x) % C, r = r0 + static_cast<int>(threadIdx.x) / C;
  const bool dim_ok = ch * 8 < D;
  const bf16* p = src + static_cast<int64_t>(r) * stride + ch * 8;
  const uint32_t dst = tile + (r - r0) * kRowBytes<DP> + ch * 16;
#pragma unroll
  for (int step = 0; step < R / kRows; ++step) {
    const bool ok = dim_ok && r + step * kRows < T;
    cp_async16(dst + step * kRows * kRowBytes<DP>, ok ? p : src, ok);
    p += kRows * stride;
  }
}

// With document ids non-decreasing along a row: the first token of i's
// document, and one past its last token (row of T tokens).
__device__ __forceinline__ int doc_start(const int32_t* doc, int i) {
  const int32_t d = doc[i];
  int lo = 0, hi = i;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (doc[mid] < d) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
__device__ __forceinline__ int doc_end(const int32_t* doc, int i, int T) {
  const int32_t d = doc[i];
  int lo = i + 1, hi = T;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (doc[mid] <= d) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Forward. DP: padded head dim; MT: m16 tiles per warp (BR = 64 * MT rows);
// BC: keys per tile. Shared memory: Q [BR], K [BC], V [BC] rows.
template <int DP, int MT, int BC>
__global__ void __launch_bounds__(128) attn_fwd_kernel(const FwdArgs a) {
  constexpr int NT = 128, BR = 64 * MT, NB = BC / 8, ND = DP / 8, RS = kRowBytes<DP>;
  const uint32_t q_s = smem_base(), k_s = q_s + BR * RS, v_s = k_s + BC * RS;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int T = a.T, nq = (T + BR - 1) / BR;
  // The grid runs z slowest: the query tiles with the most keys start first,
  // for every head and batch row, so the short ones fill the tail.
  const int q0 = (nq - 1 - static_cast<int>(blockIdx.z)) * BR;
  const int h = blockIdx.x, hk = h / (a.Hq / a.Hkv);
  const int64_t row = static_cast<int64_t>(blockIdx.y) * T;  // first token of the batch row
  const int64_t qstride = static_cast<int64_t>(a.Hq) * a.D, kstride = static_cast<int64_t>(a.Hkv) * a.D;
  const bf16* qg = a.q + row * qstride + static_cast<int64_t>(h) * a.D;
  const bf16* kg = a.k + row * kstride + static_cast<int64_t>(hk) * a.D;
  const bf16* vg = a.v + row * kstride + static_cast<int64_t>(hk) * a.D;
  const int32_t* doc = a.doc ? a.doc + row : nullptr;
  const int wrow = warp * 16 * MT;  // this warp's first row in the tile

  // ldmatrix row addresses of this lane (see the fragment layouts at the mma calls):
  // Q as A (rows wrow + 16 mt + 0..15, dims 16 kk + 0..15): + 16 mt rows + 32 kk bytes;
  // K as B of S = Q K^T (keys 16 nn + 0..15, dims 16 kk..): + 16 nn rows + 32 kk bytes;
  // V as B of O = P V, transposed (keys 16 kk + 0..15, dims 16 dd..): + 16 kk rows + 32 dd bytes.
  const uint32_t q_lane = q_s + (wrow + (lane & 15)) * RS + (lane >> 4) * 16;
  const uint32_t k_lane = k_s + ((lane & 7) + ((lane >> 4) << 3)) * RS + ((lane >> 3) & 1) * 16;
  const uint32_t v_lane = v_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * RS + (lane >> 4) * 16;

  // Row (mt, hf) of this thread is q0 + wrow + 16 mt + g + 8 hf; it sees keys [start, row].
  int start[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
      start[mt][hf] = doc ? doc_start(doc, min(q0 + wrow + 16 * mt + g + 8 * hf, T - 1)) : 0;
  const int kv_begin = doc ? doc_start(doc, q0) : 0;
  const int n_first = kv_begin / BC, n_last = (min(T, q0 + BR) - 1) / BC;
  // This warp's rows see no key of a tile that starts after its last row or ends
  // before its first row's document starts; rows past T are not needed.
  const int w_last = q0 + wrow + 16 * MT - 1;
  const int w_start = doc ? doc_start(doc, min(q0 + wrow, T - 1)) : 0;
  const bool w_out = q0 + wrow >= T;

  load_tile<BR, DP, NT>(q_s, qg, qstride, q0, T, a.D);
  load_tile<BC, DP, NT>(k_s, kg, kstride, n_last * BC, T, a.D);
  cp_async_commit();

  float o[MT][ND][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < ND; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }

  for (int n = n_last; n >= n_first; --n) {
    const int k0 = n * BC;
    cp_async_wait_all();
    __syncthreads();  // K[n] (and Q) arrived; every warp is done with V[n+1]
    load_tile<BC, DP, NT>(v_s, vg, kstride, k0, T, a.D);
    cp_async_commit();
    const bool idle = w_out || k0 > w_last || k0 + BC <= w_start;  // the same for the whole warp

    // S = Q K^T for this warp's rows: s[mt][j] is the m16n8 tile of keys 8j..8j+7
    // (c0, c1: row g, keys 2t, 2t+1; c2, c3: row g + 8).
    float s[MT][NB][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NB; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
    if (!idle) {
#pragma unroll
      for (int kk = 0; kk < DP / 16; ++kk) {
        uint32_t qa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) ldmatrix_x4(qa[mt], q_lane + 16 * mt * RS + 32 * kk);
#pragma unroll
        for (int nn = 0; nn < BC / 16; ++nn) {
          uint32_t kb[4];  // b0, b1 of keys 16nn..+7, then of keys 16nn+8..+15
          ldmatrix_x4(kb, k_lane + 16 * nn * RS + 32 * kk);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_bf16(s[mt][2 * nn], qa[mt], kb[0], kb[1]);
            mma_bf16(s[mt][2 * nn + 1], qa[mt], kb[2], kb[3]);
          }
        }
      }

      // Mask, then the online softmax (base 2) of each of this thread's rows.
      const bool masked = doc != nullptr || k0 + BC - 1 > q0 || k0 + BC > T;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = q0 + wrow + 16 * mt + g + 8 * hf;
          float mx = -INFINITY;
#pragma unroll
          for (int j = 0; j < NB; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              float x = s[mt][j][2 * hf + e] * a.scale_log2;
              if (masked) {
                const int kj = k0 + 8 * j + 2 * t + e;
                if (kj > i || kj < start[mt][hf] || kj >= T) x = -INFINITY;
              }
              s[mt][j][2 * hf + e] = x;
              mx = fmaxf(mx, x);
            }
          mx = fmaxf(mx, shfl_xor(mx, 1));
          mx = fmaxf(mx, shfl_xor(mx, 2));
          const float m_new = fmaxf(m[mt][hf], mx);
          const float ref = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet stays at zero
          const float alpha = fast_exp2(m[mt][hf] - ref);
          m[mt][hf] = m_new;
          float sum = 0.0f;
#pragma unroll
          for (int j = 0; j < NB; ++j)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float p = fast_exp2(s[mt][j][2 * hf + e] - ref);
              s[mt][j][2 * hf + e] = p;
              sum += p;
            }
          l[mt][hf] = l[mt][hf] * alpha + sum;  // per-lane partial sum, reduced at the end
#pragma unroll
          for (int j = 0; j < ND; ++j) {
            o[mt][j][2 * hf] *= alpha;
            o[mt][j][2 * hf + 1] *= alpha;
          }
        }
    }

    cp_async_wait_all();
    __syncthreads();  // V[n] arrived; every warp is done with K[n]
    if (n > n_first) load_tile<BC, DP, NT>(k_s, kg, kstride, k0 - BC, T, a.D);
    cp_async_commit();

    // O += P V: the S accumulators of keys 16kk..16kk+15 are the A fragment
    // (a0: row g, keys 2t..; a1: row g+8; a2: row g, keys 8+2t..; a3: row g+8).
    if (!idle) {
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dd = 0; dd < DP / 16; ++dd) {
          uint32_t vb[4];  // b0, b1 of dims 16dd..+7, then of dims 16dd+8..+15
          ldmatrix_x4_trans(vb, v_lane + 16 * kk * RS + 32 * dd);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma_bf16(o[mt][2 * dd], pa[mt], vb[0], vb[1]);
            mma_bf16(o[mt][2 * dd + 1], pa[mt], vb[2], vb[3]);
          }
        }
      }
    }
  }

  // O / l and lse; the 4 lanes of a row (t = 0..3) hold partial sums of l.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      float sum = l[mt][hf];
      sum += shfl_xor(sum, 1);
      sum += shfl_xor(sum, 2);
      const int i = q0 + wrow + 16 * mt + g + 8 * hf;
      if (i < T) {
        const float inv = 1.0f / sum;
        bf16* og = a.out + (row + i) * qstride + static_cast<int64_t>(h) * a.D;
#pragma unroll
        for (int j = 0; j < ND; ++j)
          if (8 * j < a.D) st_global_bf16x2(og + 8 * j + 2 * t, o[mt][j][2 * hf] * inv, o[mt][j][2 * hf + 1] * inv);
        if (t == 0) a.lse[(row + i) * a.Hq + h] = (m[mt][hf] + log2f(sum)) * kLn2;
      }
    }
}

// Backward. DP: padded head dim; DA: dims of dK/dV/dQ per block (DP or DP / 2);
// NW warps of 16 keys (BC = 16 NW); BR queries per tile; ST: buffers for the
// query side (2: the next tile loads during this one). Shared memory: K, V [BC]
// rows; Q, dO [ST][BR] rows; dS^T [BC][BR + 8] bf16; lse, Dvec [ST][BR] f32.
template <int DP, int DA, int NW, int BR, int ST>
constexpr size_t bwd_smem_bytes() {
  return static_cast<size_t>(2 * 16 * NW + 2 * ST * BR) * kRowBytes<DP> + 16 * NW * (BR + 8) * 2 + 2 * ST * BR * 4;
}

template <int DP, int DA, int NW, int BR, int ST>
__global__ void __launch_bounds__(NW * 32) attn_bwd_kernel(const BwdArgs a) {
  constexpr int NT = NW * 32, BC = 16 * NW, NQ = BR / 8, RS = kRowBytes<DP>, RSD = (BR + 8) * 2;
  constexpr int MQ = BR / 16, NG = NW / MQ, DQW = DA / NG, DQC = DQW < 64 ? DQW : 64;
  static_assert(NW % MQ == 0 && DQW % 16 == 0 && DQW % DQC == 0 && DP % DA == 0, "attention backward tiling");
  constexpr uint32_t kDoOff = ST * BR * RS;  // dO tiles follow the Q tiles
  const uint32_t k_s = smem_base(), v_s = k_s + BC * RS, q_s = v_s + BC * RS, ds_s = q_s + 2 * kDoOff;
  const uint32_t lse_s = ds_s + BC * RSD, dvec_s = lse_s + ST * BR * 4;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int T = a.T, G = a.Hq / a.Hkv, nsplit = DP / DA;
  // z slowest: key tile 0 (the most queries) first for every head and row.
  const int k0 = static_cast<int>(blockIdx.z) * BC;
  const int hk = static_cast<int>(blockIdx.x) / nsplit, d0 = (static_cast<int>(blockIdx.x) % nsplit) * DA;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * T;
  const int64_t qstride = static_cast<int64_t>(a.Hq) * a.D, kstride = static_cast<int64_t>(a.Hkv) * a.D;
  const int32_t* doc = a.doc ? a.doc + row : nullptr;
  const int wkey = 16 * warp;                  // this warp's first key in the tile
  const int mq = warp % MQ, dg = warp / MQ;    // dQ: query rows 16 mq.., dims d0 + DQW dg..

  // ldmatrix row addresses of this lane:
  // K (V: + BC rows) as A (keys wkey + 0..15, dims 16 kk..): + 32 kk bytes;
  // Q (dO: + kDoOff) as B of S^T = K Q^T (queries 16 nn + 0..15, dims 16 kk..): + 16 nn rows + 32 kk;
  // Q (dO) as B of dK = dS^T Q, transposed (queries 16 kk + 0..15, dims d0 + 16 dd..): + 16 kk rows + 32 dd;
  // dS^T as A of dQ = dS K, transposed (keys 16 kk + 0..15, queries 16 mq..): + 16 kk rows;
  // K as B of dQ, transposed (keys 16 kk + 0..15, dims d0 + DQW dg + 16 dd..): + 16 kk rows + 32 dd.
  const uint32_t kv_a = k_s + (wkey + (lane & 15)) * RS + (lane >> 4) * 16;
  const uint32_t qn_lane = q_s + ((lane & 7) + ((lane >> 4) << 3)) * RS + ((lane >> 3) & 1) * 16;
  const uint32_t qt_lane = q_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * RS + (d0 / 8 + (lane >> 4)) * 16;
  const uint32_t ds_a = ds_s + ((lane & 7) + ((lane >> 4) << 3)) * RSD + (2 * mq + ((lane >> 3) & 1)) * 16;
  const uint32_t kq_b = k_s + ((lane & 7) + ((lane >> 3) & 1) * 8) * RS + ((d0 + DQW * dg) / 8 + (lane >> 4)) * 16;
  const uint32_t ds_st = ds_s + (wkey + g) * RSD + 4 * t;  // this thread's dS^T values: + 8 hf rows + 16 j

  // Key (hf) of this thread, k0 + wkey + g + 8 hf, is seen by queries [key, kend).
  int kend[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int j = k0 + wkey + g + 8 * hf;
    kend[hf] = j >= T ? 0 : (doc ? doc_end(doc, j, T) : T);
  }
  // This warp's keys see no query of a tile that ends before its first key or
  // starts at or after the end of its last key's document (or its keys are past T).
  const int w_kend = k0 + wkey >= T ? 0 : (doc ? doc_end(doc, min(k0 + wkey + 15, T - 1), T) : T);
  const int q_stop = doc ? doc_end(doc, min(k0 + BC, T) - 1, T) : T;
  const int qt_first = k0 / BR, nqt = (q_stop + BR - 1) / BR - qt_first;
  const int total = G * nqt;  // (query head, query tile) steps

  auto load_queries = [&](int it, int buf) {
    const int hq = hk * G + it / nqt, q0 = (qt_first + it % nqt) * BR;
    const int64_t head = row * qstride + static_cast<int64_t>(hq) * a.D;
    load_tile<BR, DP, NT>(q_s + buf * BR * RS, a.q + head, qstride, q0, T, a.D);
    load_tile<BR, DP, NT>(q_s + kDoOff + buf * BR * RS, a.dout + head, qstride, q0, T, a.D);
    for (int r = threadIdx.x; r < BR; r += NT) {
      const bool ok = q0 + r < T;
      const int64_t at = (row + q0 + r) * a.Hq + hq;
      cp_async4(lse_s + (buf * BR + r) * 4, ok ? a.lse + at : a.lse, ok);
      cp_async4(dvec_s + (buf * BR + r) * 4, ok ? a.dvec + at : a.dvec, ok);
    }
  };

  load_tile<BC, DP, NT>(k_s, a.k + row * kstride + static_cast<int64_t>(hk) * a.D, kstride, k0, T, a.D);
  load_tile<BC, DP, NT>(v_s, a.v + row * kstride + static_cast<int64_t>(hk) * a.D, kstride, k0, T, a.D);
  load_queries(0, 0);
  cp_async_commit();

  float dk[DA / 8][4], dv[DA / 8][4];
#pragma unroll
  for (int j = 0; j < DA / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[j][e] = dv[j][e] = 0.0f;

  for (int it = 0; it < total; ++it) {
    const int hq = hk * G + it / nqt, q0 = (qt_first + it % nqt) * BR, buf = ST == 2 ? (it & 1) : 0;
    const uint32_t qbuf = buf * BR * RS;  // this step's Q (and dO) tile
    cp_async_wait_all();
    __syncthreads();  // this step's queries arrived; every warp is done with the last step
    if (ST == 2 && it + 1 < total) load_queries(it + 1, buf ^ 1);
    cp_async_commit();

    // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys: st[j] is the m16n8
    // tile of queries 8j..8j+7 (c0, c1: key g, queries 2t, 2t+1; c2, c3: key g + 8).
    float st[NQ][4], dpt[NQ][4];
#pragma unroll
    for (int j = 0; j < NQ; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.0f;
    const bool idle = k0 + wkey > q0 + BR - 1 || w_kend <= q0;  // then dS^T stays zero
    if (!idle) {
#pragma unroll
      for (int kk = 0; kk < DP / 16; ++kk) {
        uint32_t ka[4], va[4];
        ldmatrix_x4(ka, kv_a + 32 * kk);
        ldmatrix_x4(va, kv_a + BC * RS + 32 * kk);
#pragma unroll
        for (int nn = 0; nn < BR / 16; ++nn) {
          uint32_t b[4];
          ldmatrix_x4(b, qn_lane + qbuf + 16 * nn * RS + 32 * kk);
          mma_bf16(st[2 * nn], ka, b[0], b[1]);
          mma_bf16(st[2 * nn + 1], ka, b[2], b[3]);
          ldmatrix_x4(b, qn_lane + qbuf + kDoOff + 16 * nn * RS + 32 * kk);
          mma_bf16(dpt[2 * nn], va, b[0], b[1]);
          mma_bf16(dpt[2 * nn + 1], va, b[2], b[3]);
        }
      }

      // P^T = exp(scale S^T - lse) (0 where masked); dS^T = P^T (dP^T - Dvec).
      const bool masked = doc != nullptr || q0 < k0 + BC - 1 || q0 + BR > T || k0 + BC > T;
#pragma unroll
      for (int j = 0; j < NQ; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = 8 * j + 2 * t + e, i = q0 + col;
          const float l2 = ld_shared_f32(lse_s + (buf * BR + col) * 4) * kLog2e;
          const float dvi = ld_shared_f32(dvec_s + (buf * BR + col) * 4);
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int kj = k0 + wkey + g + 8 * hf;
            const bool ok = !masked || (kj <= i && i < kend[hf]);
            const float p = ok ? fast_exp2(st[j][2 * hf + e] * a.scale_log2 - l2) : 0.0f;
            st[j][2 * hf + e] = p;
            dpt[j][2 * hf + e] = p * (dpt[j][2 * hf + e] - dvi);
          }
        }

      // dV += P^T dO and dK += dS^T Q over this tile's queries (the k dimension);
      // the accumulators of queries 16kk..16kk+15 are the A fragments.
#pragma unroll
      for (int kk = 0; kk < BR / 16; ++kk) {
        uint32_t pa[4], sa[4];
        pa[0] = pack_bf16(st[2 * kk][0], st[2 * kk][1]);
        pa[1] = pack_bf16(st[2 * kk][2], st[2 * kk][3]);
        pa[2] = pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]);
        pa[3] = pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3]);
        sa[0] = pack_bf16(dpt[2 * kk][0], dpt[2 * kk][1]);
        sa[1] = pack_bf16(dpt[2 * kk][2], dpt[2 * kk][3]);
        sa[2] = pack_bf16(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]);
        sa[3] = pack_bf16(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3]);
#pragma unroll
        for (int dd = 0; dd < DA / 16; ++dd) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, qt_lane + qbuf + kDoOff + 16 * kk * RS + 32 * dd);
          mma_bf16(dv[2 * dd], pa, b[0], b[1]);
          mma_bf16(dv[2 * dd + 1], pa, b[2], b[3]);
          ldmatrix_x4_trans(b, qt_lane + qbuf + 16 * kk * RS + 32 * dd);
          mma_bf16(dk[2 * dd], sa, b[0], b[1]);
          mma_bf16(dk[2 * dd + 1], sa, b[2], b[3]);
        }
      }
    }

    // dS^T (bf16) to shared memory, [key][query].
#pragma unroll
    for (int j = 0; j < NQ; ++j)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
        st_shared_u32(ds_st + 8 * hf * RSD + 16 * j, pack_bf16(dpt[j][2 * hf], dpt[j][2 * hf + 1]));
    __syncthreads();  // dS^T complete; every warp is done with Q, dO, lse, Dvec of this step
    if (ST == 1 && it + 1 < total) load_queries(it + 1, 0);
    cp_async_commit();

    // dQ += dS K for query rows q0 + 16 mq.. and dims d0 + DQW dg.., DQC at a time.
    float* dqg = a.dq_acc + row * qstride + static_cast<int64_t>(hq) * a.D;
#pragma unroll
    for (int c = 0; c < DQW / DQC; ++c) {
      float acc[DQC / 8][4];
#pragma unroll
      for (int j = 0; j < DQC / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BC / 16; ++kk) {
        uint32_t sa[4];
        ldmatrix_x4_trans(sa, ds_a + 16 * kk * RSD);
#pragma unroll
        for (int dd = 0; dd < DQC / 16; ++dd) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, kq_b + 16 * kk * RS + 2 * DQC * c + 32 * dd);
          mma_bf16(acc[2 * dd], sa, b[0], b[1]);
          mma_bf16(acc[2 * dd + 1], sa, b[2], b[3]);
        }
      }
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = q0 + 16 * mq + g + 8 * hf;
        if (i >= T) continue;
#pragma unroll
        for (int j = 0; j < DQC / 8; ++j) {
          const int dim = d0 + DQW * dg + DQC * c + 8 * j + 2 * t;
          if (dim < a.D) atomic_add_f32x2(dqg + i * qstride + dim, acc[j][2 * hf], acc[j][2 * hf + 1]);
        }
      }
    }
  }

  // dK (times the softmax scale) and dV of this warp's keys.
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int j = k0 + wkey + g + 8 * hf;
    if (j >= T) continue;
    bf16* dkg = a.dk + (row + j) * kstride + static_cast<int64_t>(hk) * a.D;
    bf16* dvg = a.dv + (row + j) * kstride + static_cast<int64_t>(hk) * a.D;
#pragma unroll
    for (int jd = 0; jd < DA / 8; ++jd) {
      const int dim = d0 + 8 * jd + 2 * t;
      if (dim >= a.D) continue;
      st_global_bf16x2(dkg + dim, dk[jd][2 * hf] * a.scale, dk[jd][2 * hf + 1] * a.scale);
      st_global_bf16x2(dvg + dim, dv[jd][2 * hf], dv[jd][2 * hf + 1]);
    }
  }
}

// dvec[r] = sum_d dout[r, d] * out[r, d] for rows r of D values; one warp per row.
__global__ void attn_dvec_kernel(const bf16* out, const bf16* dout, float* dvec, int64_t rows, int D) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;  // whole warps
  float s = 0.0f;
  for (int c = 8 * lane; c < D; c += 256) s += dot8_bf16(out + r * D + c, dout + r * D + c);
#pragma unroll
  for (int m = 16; m >= 1; m /= 2) s += shfl_xor(s, m);
  if (lane == 0) dvec[r] = s;
}

// dq = bf16(scale * dq_acc), two values per thread.
__global__ void attn_dq_kernel(const float* acc, bf16* dq, int64_t pairs, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    st_global_bf16x2(dq + 2 * i, acc[2 * i] * scale, acc[2 * i + 1] * scale);
}

// ==== host ========================================================================

int max_smem_optin() {
  int dev = 0, bytes = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes;
}

template <class Kernel, class Args>
void launch(Kernel kernel, dim3 grid, int threads, size_t smem, const Args& args, const char* what) {
  HALO_CHECK(static_cast<int64_t>(smem) <= max_smem_optin(), what, " needs ", smem,
             " bytes of shared memory per block; this GPU has ", max_smem_optin());
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, threads, smem, current_stream()>>>(args);
  CUDA_CHECK_LAUNCH();
}

template <int DP, int MT, int BC>
void forward_with(const FwdArgs& a, int B) {
  constexpr int BR = 64 * MT;
  const size_t smem = static_cast<size_t>(BR + 2 * BC) * kRowBytes<DP>;
  // Longest-first over the whole grid (blocks start in x, y, z order).
  launch(attn_fwd_kernel<DP, MT, BC>, dim3(a.Hq, B, (a.T + BR - 1) / BR), 128, smem, a, "attention forward");
}

template <int DP, int DA, int NW, int BR, int ST>
void backward_with(const BwdArgs& a, int B) {
  constexpr int BC = 16 * NW;
  launch(attn_bwd_kernel<DP, DA, NW, BR, ST>, dim3(a.Hkv * (DP / DA), B, (a.T + BC - 1) / BC), NW * 32,
         bwd_smem_bytes<DP, DA, NW, BR, ST>(), a, "attention backward");
}

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data()) % 16 == 0; }

}  // namespace

void attention_forward_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt,
                            float scale, Tensor& out, Tensor& lse) {
  const int B = static_cast<int>(opt.batch);
  FwdArgs a;
  a.q = q.data_as<bf16>();
  a.k = k.data_as<bf16>();
  a.v = v.data_as<bf16>();
  a.out = out.data_as<bf16>();
  a.lse = lse.data_as<float>();
  a.doc = opt.doc_ids.defined() ? opt.doc_ids.data_as<int32_t>() : nullptr;
  a.T = static_cast<int>(q.size(0) / opt.batch);
  a.Hq = static_cast<int>(q.size(1));
  a.Hkv = static_cast<int>(k.size(1));
  a.D = static_cast<int>(q.size(2));
  a.scale_log2 = scale * kLog2e;
  HALO_CHECK(aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out),
             "attention_forward: q, k, v and out must be 16-byte aligned on the GPU");
  HALO_CHECK(B <= 65535 && a.Hq <= 65535, "attention_forward: at most 65535 rows and heads, got ", B, " and ", a.Hq);
  if (a.D <= 64) forward_with<64, 2, 64>(a, B);
  else if (a.D <= 128) forward_with<128, 2, 64>(a, B);
  else forward_with<256, 1, 64>(a, B);
}

void attention_backward_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, const Tensor& dout, const AttentionOptions& opt, float scale,
                             Tensor& dq, Tensor& dk, Tensor& dv) {
  const int B = static_cast<int>(opt.batch);
  const int64_t N = q.size(0), Hq = q.size(1), D = q.size(2);
  HALO_CHECK(aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out) && aligned16(dout) && aligned16(dq) &&
                 aligned16(dk) && aligned16(dv),
             "attention_backward: q, k, v, out, dout, dq, dk and dv must be 16-byte aligned on the GPU");
  HALO_CHECK(B <= 65535 && k.size(1) * 2 <= 65535, "attention_backward: at most 65535 rows, got ", B);
  Tensor dvec = Tensor::empty({N, Hq}, DType::f32, Device::cuda);
  Tensor acc = Tensor::zeros({N, Hq, D}, DType::f32, Device::cuda);
  const int64_t rows = N * Hq;
  attn_dvec_kernel<<<static_cast<unsigned>((rows + 7) / 8), 256, 0, current_stream()>>>(
      out.data_as<bf16>(), dout.data_as<bf16>(), dvec.data_as<float>(), rows, static_cast<int>(D));
  CUDA_CHECK_LAUNCH();

  BwdArgs a;
  a.q = q.data_as<bf16>();
  a.k = k.data_as<bf16>();
  a.v = v.data_as<bf16>();
  a.dout = dout.data_as<bf16>();
  a.lse = lse.data_as<float>();
  a.dvec = dvec.data_as<float>();
  a.dq_acc = acc.data_as<float>();
  a.dk = dk.data_as<bf16>();
  a.dv = dv.data_as<bf16>();
  a.doc = opt.doc_ids.defined() ? opt.doc_ids.data_as<int32_t>() : nullptr;
  a.T = static_cast<int>(N / opt.batch);
  a.Hq = static_cast<int>(Hq);
  a.Hkv = static_cast<int>(k.size(1));
  a.D = static_cast<int>(D);
  a.scale = scale;
  a.scale_log2 = scale * kLog2e;
  const int64_t smem = max_smem_optin();
  if (D <= 64) backward_with<64, 64, 8, 64, 2>(a, B);
  else if (D <= 128 && smem >= static_cast<int64_t>(bwd_smem_bytes<128, 128, 8, 64, 2>())) backward_with<128, 128, 8, 64, 2>(a, B);
  else if (D <= 128) backward_with<128, 128, 4, 64, 1>(a, B);
  else if (smem >= static_cast<int64_t>(bwd_smem_bytes<256, 128, 4, 64, 1>())) backward_with<256, 128, 4, 64, 1>(a, B);
  else backward_with<256, 128, 2, 32, 1>(a, B);

  const int64_t pairs = N * Hq * D / 2;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((pairs + 255) / 256, 65536));
  attn_dq_kernel<<<blocks, 256, 0, current_stream()>>>(acc.data_as<float>(), dq.data_as<bf16>(), pairs, scale);
  CUDA_CHECK_LAUNCH();
}

}  // namespace halo
