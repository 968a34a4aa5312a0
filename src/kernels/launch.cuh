// Launch helpers shared by the CUDA kernels: the GPU's SM count, and how many
// blocks of a kernel fit on it at once (the size of a persistent grid).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "core/cuda_check.h"

namespace halo {

inline int sm_count() {
  int dev = 0, n = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

// Blocks of `threads` threads of `kernel`, each with `smem` bytes of dynamic
// shared memory, resident on the whole GPU at once (at least one per SM; cached
// per kernel, shape and device). Allows the kernel `smem` bytes when that is
// above the default 48 KB, as its launches need.
template <class Kernel>
int64_t resident_blocks(Kernel kernel, int threads, size_t smem = 0) {
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, size_t, int>, int64_t> cache;
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), threads, smem, dev);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) {
    int per_sm = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    it = cache.emplace(key, static_cast<int64_t>(std::max(per_sm, 1)) * sm_count()).first;
  }
  return it->second;
}

}  // namespace halo
