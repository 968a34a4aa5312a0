// CUDA decoding kernels (semantics in decode_attention.h; the CPU twins in
// decode_attention.cpp are the reference, decode_attention_check.cpp compares).
//
// kv_cache_append: one thread per 16 bytes of a row (or per element where a
// row is not a whole number of aligned 16-byte units).
//
// decode_attention (flash-decoding): the keys of each query are split into
// `splits` chunks of `chunk` keys, so that even one query with a long cache
// fills the GPU. (1) decode_partial_kernel: one block of 4 warps per (query,
// kv head, pass over up to KG of its group's query heads, chunk); the block's
// queries sit in shared memory (f32), every warp takes every 4th key of the
// chunk: lane l holds elements l, l + 32, ... of the key and value rows, the
// scores of the KG heads are warp sums, and each warp runs an online softmax
// (running max m, sum l, unnormalized accumulator) per head. The 4 warps are
// merged through shared memory into the chunk's (m, l, acc), written as f32.
// K and V rows are read once per KG query heads (the GQA group shares them).
// (2) decode_combine_kernel: one block per (query, head) merges the chunks:
// M = max m_s, out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M), in bf16.
// Chunk 0 always holds a key (len >= 1), so M is finite; empty chunks have
// m = -inf and add nothing.
//
// argmax_rows: one block of 256 threads per row; each thread keeps the best
// (value, index) of its strided elements, then a warp-shuffle and shared
// reduction with the rule "larger value, or equal value and lower index".
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "core/cuda_check.h"
#include "core/error.h"
#include "core/stream.h"
#include "kernels/decode_attention.h"
#include "kernels/launch.cuh"
#include "kernels/vec.cuh"

namespace halo::detail {

namespace {

using bf16 = __nv_bfloat16;

// ---- kv_cache_append -----------------------------------------------------------------

template <class U>
__global__ void kv_append_kernel(const U* x, const int32_t* seq, const int32_t* pos, U* cache, int64_t n,
                                 int64_t units, int64_t Tmax) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n * units) return;
  const int64_t r = i / units, u = i - r * units;
  cache[(static_cast<int64_t>(seq[r]) * Tmax + pos[r]) * units + u] = x[i];
}

// ---- decode_attention ----------------------------------------------------------------

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxD = 256;
constexpr int kR = kMaxD / 32;  // elements of a row per lane

template <int KG>
__global__ void __launch_bounds__(kThreads)
    decode_partial_kernel(const bf16* q, const bf16* kc, const bf16* vc, const int32_t* seq, const int32_t* len,
                          int Hq, int Hkv, int D, int64_t Tmax, int passes, int chunk, int splits, float scale,
                          float* part_acc, float* part_m, float* part_l) {
  __shared__ float sq[KG][kMaxD];
  __shared__ float sm_acc[kWarps][KG][kMaxD];
  __shared__ float sm_m[kWarps][KG], sm_l[kWarps][KG];

  const int64_t i = blockIdx.x;
  const int hk = blockIdx.y / passes, pass = blockIdx.y % passes, split = blockIdx.z;
  const int group = Hq / Hkv, h0 = hk * group + pass * KG, nh = min(KG, group - pass * KG);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int L = len[i], j0 = split * chunk, j1 = min(L, j0 + chunk);

  for (int idx = threadIdx.x; idx < KG * D; idx += kThreads) {
    const int g = idx / D, e = idx - g * D;
    sq[g][e] = g < nh ? vec::to_f32(q[(i * Hq + h0 + g) * D + e]) : 0.0f;
  }
  __syncthreads();

  float m[KG], l[KG], acc[KG][kR];
#pragma unroll
  for (int g = 0; g < KG; ++g) {
    m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
    for (int r = 0; r < kR; ++r) acc[g][r] = 0.0f;
  }
  const int64_t row = static_cast<int64_t>(Hkv) * D;
  const int64_t base = static_cast<int64_t>(seq[i]) * Tmax * row + static_cast<int64_t>(hk) * D;
  for (int j = j0 + warp; j < j1; j += kWarps) {
    const bf16* kj = kc + base + j * row;
    const bf16* vj = vc + base + j * row;
    float kr[kR], vr[kR];
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      const int e = lane + 32 * r;
      kr[r] = e < D ? vec::to_f32(kj[e]) : 0.0f;
      vr[r] = e < D ? vec::to_f32(vj[e]) : 0.0f;
    }
#pragma unroll
    for (int g = 0; g < KG; ++g) {
      if (g >= nh) break;  // uniform across the block
      float part = 0.0f;
#pragma unroll
      for (int r = 0; r < kR; ++r)
        if (lane + 32 * r < D) part += sq[g][lane + 32 * r] * kr[r];
      const float s = scale * vec::warp_sum(part);
      const float m_new = fmaxf(m[g], s);
      const float corr = expf(m[g] - m_new), p = expf(s - m_new);
      l[g] = l[g] * corr + p;
#pragma unroll
      for (int r = 0; r < kR; ++r) acc[g][r] = acc[g][r] * corr + p * vr[r];
      m[g] = m_new;
    }
  }

#pragma unroll
  for (int g = 0; g < KG; ++g) {
#pragma unroll
    for (int r = 0; r < kR; ++r)
      if (lane + 32 * r < D) sm_acc[warp][g][lane + 32 * r] = acc[g][r];
    if (lane == 0) sm_m[warp][g] = m[g], sm_l[warp][g] = l[g];
  }
  __syncthreads();

  for (int idx = threadIdx.x; idx < nh * D; idx += kThreads) {
    const int g = idx / D, e = idx - g * D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w][g]);
    float a = 0.0f, s = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        if (sm_m[w][g] == -INFINITY) continue;  // a warp that saw no key
        const float f = expf(sm_m[w][g] - M);
        a += sm_acc[w][g][e] * f;
        s += sm_l[w][g] * f;
      }
    }
    const int64_t ph = (i * Hq + h0 + g) * splits + split;
    part_acc[ph * D + e] = a;
    if (e == 0) part_m[ph] = M, part_l[ph] = s;
  }
}

__global__ void decode_combine_kernel(const float* part_acc, const float* part_m, const float* part_l, int D,
                                      int splits, bf16* out) {
  const int64_t ih = blockIdx.x;  // query * Hq + head
  const float* m = part_m + ih * splits;
  const float* l = part_l + ih * splits;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, m[s]);
  float sum = 0.0f;
  for (int s = 0; s < splits; ++s)
    if (m[s] != -INFINITY) sum += l[s] * expf(m[s] - M);
  const float inv = 1.0f / sum;
  for (int e = threadIdx.x; e < D; e += blockDim.x) {
    float a = 0.0f;
    for (int s = 0; s < splits; ++s)
      if (m[s] != -INFINITY) a += part_acc[(ih * splits + s) * D + e] * expf(m[s] - M);
    out[ih * D + e] = __float2bfloat16_rn(a * inv);
  }
}

template <int KG>
void launch_partial(dim3 grid, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seq,
                    const Tensor& len, int Hq, int Hkv, int D, int64_t Tmax, int passes, int chunk, int splits,
                    float scale, Tensor& acc, Tensor& m, Tensor& l) {
  decode_partial_kernel<KG><<<grid, kThreads, 0, current_stream()>>>(
      q.data_as<bf16>(), k_cache.data_as<bf16>(), v_cache.data_as<bf16>(), seq.data_as<int32_t>(),
      len.data_as<int32_t>(), Hq, Hkv, D, Tmax, passes, chunk, splits, scale, acc.data_as<float>(),
      m.data_as<float>(), l.data_as<float>());
  CUDA_CHECK_LAUNCH();
}

// ---- argmax_rows ------------------------------------------------------------------------

constexpr int kArgmaxThreads = 256;

__device__ __forceinline__ void take_better(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
}

template <class T>
__global__ void __launch_bounds__(kArgmaxThreads) argmax_kernel(const T* x, int V, int32_t* out) {
  __shared__ float sv[kArgmaxThreads / 32];
  __shared__ int si[kArgmaxThreads / 32];
  const T* row = x + static_cast<int64_t>(blockIdx.x) * V;
  float bv = -INFINITY;
  int bi = V;  // sentinel: nothing above -inf seen
  for (int j = threadIdx.x; j < V; j += kArgmaxThreads) {
    const float v = vec::to_f32(row[j]);
    if (v > bv) bv = v, bi = j;  // ascending j: the first of equals stays; NaN never wins
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    take_better(bv, bi, ov, oi);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sv[warp] = bv, si[warp] = bi;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kArgmaxThreads / 32; ++w) take_better(bv, bi, sv[w], si[w]);
    out[blockIdx.x] = bi == V ? 0 : bi;
  }
}

}  // namespace

void kv_cache_append_cuda(const Tensor& x, const Tensor& seq, const Tensor& pos, Tensor& cache) {
  const int64_t n = x.size(0), Tmax = cache.size(1);
  const int64_t row_bytes = x.size(1) * x.size(2) * static_cast<int64_t>(dtype_size(x.dtype()));
  const bool v16 = row_bytes % 16 == 0 && vec::aligned16(x.data()) && vec::aligned16(cache.data());
  const auto launch = [&](auto unit) {
    using U = decltype(unit);
    const int64_t units = row_bytes / static_cast<int64_t>(sizeof(U)), total = n * units;
    const unsigned grid = static_cast<unsigned>((total + 255) / 256);
    kv_append_kernel<U><<<grid, 256, 0, current_stream()>>>(static_cast<const U*>(x.data()),
                                                            seq.data_as<int32_t>(), pos.data_as<int32_t>(),
                                                            static_cast<U*>(cache.data()), n, units, Tmax);
  };
  if (v16)
    launch(uint4{});
  else if (x.dtype() == DType::f32)
    launch(uint32_t{});
  else
    launch(uint16_t{});
  CUDA_CHECK_LAUNCH();
}

void decode_attention_cuda(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seq,
                           const Tensor& len, int64_t max_len, float scale, Tensor& out) {
  const int64_t n = q.size(0);
  const int Hq = static_cast<int>(q.size(1)), D = static_cast<int>(q.size(2));
  const int Hkv = static_cast<int>(k_cache.size(2));
  const int64_t Tmax = k_cache.size(1);
  HALO_CHECK(n <= std::numeric_limits<int32_t>::max() && max_len <= std::numeric_limits<int32_t>::max(),
             "decode_attention: ", n, " queries over ", max_len, " keys are too many");
  const int group = Hq / Hkv;
  const int kg = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
  const int passes = (group + kg - 1) / kg;
  // Enough blocks for two waves, chunks of at least 32 keys (8 per warp).
  const int64_t blocks = n * Hkv * passes, want = 2 * static_cast<int64_t>(sm_count());
  int64_t splits = std::max<int64_t>(1, std::min((max_len + 31) / 32, (want + blocks - 1) / blocks));
  const int64_t chunk = (max_len + splits - 1) / splits;
  splits = (max_len + chunk - 1) / chunk;
  HALO_CHECK(splits <= 65535, "decode_attention: ", splits, " chunks of keys are too many");

  Tensor acc = Tensor::empty({n, Hq, splits, D}, DType::f32, Device::cuda);
  Tensor m = Tensor::empty({n, Hq, splits}, DType::f32, Device::cuda);
  Tensor l = Tensor::empty({n, Hq, splits}, DType::f32, Device::cuda);
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(Hkv * passes), static_cast<unsigned>(splits));
  switch (kg) {
    case 1: launch_partial<1>(grid, q, k_cache, v_cache, seq, len, Hq, Hkv, D, Tmax, passes, static_cast<int>(chunk),
                              static_cast<int>(splits), scale, acc, m, l); break;
    case 2: launch_partial<2>(grid, q, k_cache, v_cache, seq, len, Hq, Hkv, D, Tmax, passes, static_cast<int>(chunk),
                              static_cast<int>(splits), scale, acc, m, l); break;
    case 4: launch_partial<4>(grid, q, k_cache, v_cache, seq, len, Hq, Hkv, D, Tmax, passes, static_cast<int>(chunk),
                              static_cast<int>(splits), scale, acc, m, l); break;
    default: launch_partial<8>(grid, q, k_cache, v_cache, seq, len, Hq, Hkv, D, Tmax, passes,
                               static_cast<int>(chunk), static_cast<int>(splits), scale, acc, m, l); break;
  }
  decode_combine_kernel<<<static_cast<unsigned>(n * Hq), 128, 0, current_stream()>>>(
      acc.data_as<float>(), m.data_as<float>(), l.data_as<float>(), D, static_cast<int>(splits), out.data_as<bf16>());
  CUDA_CHECK_LAUNCH();
}

void argmax_rows_cuda(const Tensor& x, Tensor& out) {
  const int64_t rows = x.size(0);
  const int V = static_cast<int>(x.size(1));
  HALO_CHECK(rows <= std::numeric_limits<int32_t>::max(), "argmax_rows: ", rows, " rows are too many");
  vec::with_type(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    argmax_kernel<T><<<static_cast<unsigned>(rows), kArgmaxThreads, 0, current_stream()>>>(x.data_as<T>(), V,
                                                                                          out.data_as<int32_t>());
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace halo::detail
