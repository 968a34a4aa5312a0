// CUDA RoPE (semantics in rope.h; the CPU twin in rope.cpp is the reference,
// rowops_check.cpp compares the two).
//
// One thread per (token, group of 4 heads, chunk of 8 pairs): it computes the
// 8 (cos, sin) of its chunk once (sincosf on position * inv_freq), loads the 8
// chunks (both halves of 4 heads: 16-byte loads for bf16) before touching any,
// rotates and stores them (in place, or to another tensor's columns: rows of
// src and dst have their own strides). Consecutive threads take consecutive
// chunks of a half-row, so a warp reads whole 128-byte lines. The sincosf work
// is shared by the 4 heads; at q's size (8192 x 32 x 128) it is ~4 M sincosf,
// well under the memory time. ~72 registers (bf16): 3 blocks of 256 per SM,
// each thread with 8 x 16 bytes in flight (~100 KB per SM).
#include "core/cuda_check.h"
#include "core/stream.h"
#include "kernels/rope.h"
#include "kernels/vec.cuh"

namespace halo::detail {

namespace {

constexpr int kThreads = 256;
constexpr int kHeads = 4;  // heads per thread

template <class T, int V>
__global__ void __launch_bounds__(kThreads)
    rope_kernel(const T* src, int64_t ls, T* dst, int64_t ld, const int32_t* pos, const float* inv_freq, int64_t tokens,
                int heads, int half, float sign) {
  const int chunks = half / V, groups = (heads + kHeads - 1) / kHeads;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= tokens * groups * chunks) return;
  const int c = static_cast<int>(i % chunks) * V;
  const int64_t rest = i / chunks;
  const int h0 = static_cast<int>(rest % groups) * kHeads;
  const int64_t t = rest / groups;
  const int64_t off = h0 * (2 * static_cast<int64_t>(half)) + c;
  const T* in = src + t * ls + off;
  T* out = dst + t * ld + off;

  vec::Chunk<T, V> lo[kHeads], hi[kHeads];
#pragma unroll
  for (int h = 0; h < kHeads; ++h)
    if (h0 + h < heads) {
      lo[h] = vec::load_chunk<V>(in + h * 2 * half);
      hi[h] = vec::load_chunk<V>(in + h * 2 * half + half);
    }
  const float p = static_cast<float>(pos[t]);
  float f[V], cs[V], sn[V];
  vec::load(inv_freq + c, f);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    sincosf(p * f[j], &sn[j], &cs[j]);
    sn[j] *= sign;  // +1 forward, -1 backward: an exact negation
  }
#pragma unroll
  for (int h = 0; h < kHeads; ++h)
    if (h0 + h < heads) {
      float a[V], b[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float x1 = lo[h][j], x2 = hi[h][j];
        a[j] = x1 * cs[j] - x2 * sn[j];
        b[j] = x2 * cs[j] + x1 * sn[j];
      }
      vec::store(out + h * 2 * half, a);
      vec::store(out + h * 2 * half + half, b);
    }
}

}  // namespace

void rope_cuda(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col, int64_t heads,
               const Tensor& positions, const Tensor& inv_freq, bool backward) {
  const int half = static_cast<int>(inv_freq.numel());
  const int64_t tokens = src.size(0), ls = src.size(1), ld = dst.size(1);
  const size_t es = dtype_size(src.dtype());
  const void* in = static_cast<const char*>(src.data()) + src_col * es;
  void* out = static_cast<char*>(dst.data()) + dst_col * es;
  const bool v8 = half % 8 == 0 && vec::aligned16(in) && vec::aligned16(out) && (ls * es) % 16 == 0 &&
                  (ld * es) % 16 == 0 && vec::aligned16(inv_freq.data());
  const int64_t threads = tokens * ((heads + kHeads - 1) / kHeads) * (v8 ? half / 8 : half);
  const unsigned grid = static_cast<unsigned>((threads + kThreads - 1) / kThreads);
  const float sign = backward ? -1.0f : 1.0f;
  vec::with_type(src.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto kernel = v8 ? rope_kernel<T, 8> : rope_kernel<T, 1>;
    kernel<<<grid, kThreads, 0, current_stream()>>>(static_cast<const T*>(in), ls, static_cast<T*>(out), ld,
                                                    positions.data_as<int32_t>(), inv_freq.data_as<float>(), tokens,
                                                    static_cast<int>(heads), half, sign);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace halo::detail
