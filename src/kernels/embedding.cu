// CUDA token embedding (semantics in embedding.h; the CPU twin in
// embedding.cpp is the reference, rowops_check.cpp compares the two).
//
// forward   one thread per 8 consecutive elements of an output row (16-byte
//           loads and stores for bf16; two each for f32), 256 threads per
//           block, consecutive threads on consecutive chunks of a row.
// backward  1. keys_kernel: (key, token) = (id, t), an id outside [0, vocab)
//              becomes the key `vocab` (skipped later);
//           2. cub::DeviceRadixSort::SortPairs on the low bit_width(vocab) bits:
//              stable, so equal ids keep ascending token order;
//           3. accumulate_kernel: one block per sorted position; the block at
//              the first position of a run of equal ids owns that row of dtable
//              (the others return at once), and for each chunk of 8 columns adds
//              the run's dout rows in order to the row's current value (4 rows
//              loaded ahead). Every row has one writer: no atomics, same sums
//              as the CPU loop, bit for bit. The owner also sets the row's
//              flag in rows_written (if given).
// grad clear one warp per row of a grid-stride loop: a flagged row is zeroed
//           (16-byte stores where d % 4 == 0 and the table is aligned) and its
//           flag cleared; unflagged rows cost one byte read.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <bit>

#include "core/cuda_check.h"
#include "core/stream.h"
#include "kernels/embedding.h"
#include "kernels/launch.cuh"
#include "kernels/vec.cuh"

namespace halo::detail {

namespace {

constexpr int kThreads = 256;
constexpr int kAhead = 4;  // backward: dout rows of a run loaded before they are added

template <class Tab, class Out, int V>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const int32_t* ids, const Tab* table, Out* out, int64_t tokens, int d, int32_t vocab) {
  const int chunks = d / V;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= tokens * chunks) return;
  const int64_t t = i / chunks;
  const int c = static_cast<int>(i - t * chunks) * V;
  const int32_t id = ids[t];
  float v[V];
  if (id >= 0 && id < vocab) {
    vec::load(table + static_cast<int64_t>(id) * d + c, v);
  } else {  // never read out of bounds; a NaN row makes the bad batch visible
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = __uint_as_float(0x7fc00000u);
  }
  vec::store(out + t * d + c, v);
}

__global__ void keys_kernel(const int32_t* ids, uint32_t* keys, int32_t* tok, int64_t tokens, int32_t vocab) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= tokens) return;
  const int32_t id = ids[i];
  keys[i] = id >= 0 && id < vocab ? static_cast<uint32_t>(id) : static_cast<uint32_t>(vocab);
  tok[i] = static_cast<int32_t>(i);
}

template <class T, int V>
__global__ void __launch_bounds__(kThreads) accumulate_kernel(const uint32_t* keys, const int32_t* tok, const T* dout,
                                                              float* dtable, int8_t* rows_written, int64_t tokens,
                                                              int d, uint32_t vocab) {
  const int64_t i = blockIdx.x;
  const uint32_t v = keys[i];
  if (v == vocab || (i > 0 && keys[i - 1] == v)) return;  // invalid ids, or not the first of its run
  if (rows_written && threadIdx.x == 0) rows_written[v] = 1;
  float* row = dtable + static_cast<int64_t>(v) * d;
  for (int c = threadIdx.x * V; c < d; c += blockDim.x * V) {
    float acc[V];
    vec::load(row + c, acc);
    for (int64_t j = i; j < tokens; j += kAhead) {
      bool ok[kAhead];
      float a[kAhead][V];
#pragma unroll
      for (int q = 0; q < kAhead; ++q) {
        ok[q] = j + q < tokens && keys[j + q] == v;
        if (ok[q]) vec::load(dout + static_cast<int64_t>(tok[j + q]) * d + c, a[q]);
      }
#pragma unroll
      for (int q = 0; q < kAhead; ++q)
        if (ok[q])
#pragma unroll
          for (int e = 0; e < V; ++e) acc[e] += a[q][e];
      if (!ok[kAhead - 1]) break;
    }
    vec::store(row + c, acc);
  }
}

template <int V>
__global__ void __launch_bounds__(kThreads) clear_rows_kernel(float* dtable, int8_t* rows_written, int64_t vocab, int d) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32; r < vocab; r += warps) {
    if (!rows_written[r]) continue;  // the same for the whole warp
    float* row = dtable + r * d;
    if constexpr (V == 4) {
      for (int c = 4 * lane; c < d; c += 4 * 32) *reinterpret_cast<float4*>(row + c) = make_float4(0.f, 0.f, 0.f, 0.f);
    } else {
      for (int c = lane; c < d; c += 32) row[c] = 0.0f;
    }
    __syncwarp();  // every lane has read the flag
    if (lane == 0) rows_written[r] = 0;
  }
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

}  // namespace

void embedding_forward_cuda(const Tensor& ids, const Tensor& table, Tensor& out) {
  const int64_t tokens = ids.numel();
  const int d = static_cast<int>(table.size(1));
  const int32_t vocab = static_cast<int32_t>(table.size(0));
  const bool v8 = d % 8 == 0 && vec::aligned16(table.data()) && vec::aligned16(out.data());
  vec::with_type(table.dtype(), [&](auto ttab) {
    vec::with_type(out.dtype(), [&](auto tout) {
      using Tab = typename decltype(ttab)::type;
      using Out = typename decltype(tout)::type;
      auto kernel = v8 ? forward_kernel<Tab, Out, 8> : forward_kernel<Tab, Out, 1>;
      kernel<<<blocks_for(tokens * (v8 ? d / 8 : d)), kThreads, 0, current_stream()>>>(
          ids.data_as<int32_t>(), table.data_as<Tab>(), out.data_as<Out>(), tokens, d, vocab);
    });
  });
  CUDA_CHECK_LAUNCH();
}

void embedding_backward_cuda(const Tensor& ids, const Tensor& dout, Tensor& dtable, int8_t* rows_written) {
  const int64_t tokens = ids.numel();
  HALO_CHECK(tokens <= INT32_MAX, "embedding_backward (CUDA): too many tokens: ", tokens);
  const int d = static_cast<int>(dtable.size(1));
  const uint32_t vocab = static_cast<uint32_t>(dtable.size(0));
  const int end_bit = std::bit_width(vocab);  // keys are <= vocab
  cudaStream_t stream = current_stream();

  // Temporaries from the caching allocator (released here, reused in stream order).
  Tensor keys = Tensor::empty({2, tokens}, DType::i32, Device::cuda);
  Tensor toks = Tensor::empty({2, tokens}, DType::i32, Device::cuda);
  uint32_t* k_in = keys.data_as<uint32_t>();
  uint32_t* k_out = k_in + tokens;
  int32_t* t_in = toks.data_as<int32_t>();
  int32_t* t_out = t_in + tokens;
  size_t temp_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, k_in, k_out, t_in, t_out, tokens, 0, end_bit, stream));
  Tensor temp = Tensor::empty({static_cast<int64_t>(std::max<size_t>(temp_bytes, 1))}, DType::i8, Device::cuda);

  keys_kernel<<<blocks_for(tokens), kThreads, 0, stream>>>(ids.data_as<int32_t>(), k_in, t_in, tokens,
                                                           static_cast<int32_t>(vocab));
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, k_in, k_out, t_in, t_out, tokens, 0, end_bit,
                                             stream));
  const bool v8 = d % 8 == 0 && vec::aligned16(dout.data()) && vec::aligned16(dtable.data());
  const int chunks = v8 ? d / 8 : d;
  const int threads = std::min(kThreads, (chunks + 31) / 32 * 32);
  vec::with_type(dout.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto kernel = v8 ? accumulate_kernel<T, 8> : accumulate_kernel<T, 1>;
    kernel<<<static_cast<unsigned>(tokens), threads, 0, stream>>>(
        k_out, t_out, dout.data_as<T>(), dtable.data_as<float>(), rows_written, tokens, d, vocab);
  });
  CUDA_CHECK_LAUNCH();
}

void embedding_grad_clear_cuda(Tensor& dtable, Tensor& rows_written) {
  const int64_t vocab = dtable.size(0);
  const int d = static_cast<int>(dtable.size(1));
  const bool v4 = d % 4 == 0 && vec::aligned16(dtable.data());
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((vocab + kThreads / 32 - 1) / (kThreads / 32), 8 * sm_count()));
  auto kernel = v4 ? clear_rows_kernel<4> : clear_rows_kernel<1>;
  kernel<<<blocks, kThreads, 0, current_stream()>>>(dtable.data_as<float>(), rows_written.data_as<int8_t>(), vocab, d);
  CUDA_CHECK_LAUNCH();
}

}  // namespace halo::detail
