#include "core/allocator.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

#include "core/error.h"
#ifdef HALO_HAS_CUDA
#include "core/cuda_check.h"
#endif

namespace halo {

size_t device_block_bytes(size_t bytes) {
  size_t step = 512;
  if (bytes >= (size_t{1} << 20)) {  // 1/16 of the largest power of two <= bytes, at most 2 MiB
    size_t p = size_t{1} << 20;
    while (p <= bytes / 2) p *= 2;
    step = std::min(p / 16, size_t{2} << 20);
  }
  return (std::max<size_t>(bytes, 1) + step - 1) / step * step;
}

size_t held_bytes(size_t bytes, Device device) {
  return device == Device::cuda ? device_block_bytes(bytes) : bytes;
}

namespace {

struct DeviceCache {
  std::mutex mutex;
  std::multimap<size_t, void*> free_blocks;  // rounded size -> block
  DeviceMemoryStats stats;
};

DeviceCache& device_cache() {
  static DeviceCache* cache = new DeviceCache;  // never destroyed: outlives static tensors
  return *cache;
}

#ifdef HALO_HAS_CUDA
void release_cached(DeviceCache& cache) {
  for (auto& [size, ptr] : cache.free_blocks) {
    cudaFree(ptr);
    cache.stats.reserved -= size;
  }
  cache.free_blocks.clear();
}
#endif

}  // namespace

void* allocate(size_t bytes, Device device) {
  if (bytes == 0) bytes = 1;
  if (device == Device::cpu) {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    HALO_CHECK(p, "out of host memory allocating ", bytes, " bytes");
    return p;
  }
#ifdef HALO_HAS_CUDA
  auto& cache = device_cache();
  std::lock_guard lock(cache.mutex);
  const size_t size = device_block_bytes(bytes);
  void* p = nullptr;
  auto it = cache.free_blocks.lower_bound(size);
  if (it != cache.free_blocks.end() && it->first == size) {
    p = it->second;
    cache.free_blocks.erase(it);
  } else {
    if (cudaMalloc(&p, size) != cudaSuccess) {
      cudaGetLastError();  // clear the error, give back the cache and try once more
      release_cached(cache);
      if (cudaMalloc(&p, size) != cudaSuccess) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        HALO_FAIL("out of GPU memory allocating ", size, " bytes (", cache.stats.in_use,
                  " in use by tensors, ", free_b, " free of ", total_b, ")");
      }
    }
    cache.stats.reserved += size;
  }
  cache.stats.in_use += size;
  if (cache.stats.in_use > cache.stats.peak) cache.stats.peak = cache.stats.in_use;
  return p;
#else
  HALO_FAIL("this build of halo has no CUDA support");
#endif
}

void release(void* ptr, size_t bytes, Device device) {
  if (!ptr) return;
  if (device == Device::cpu) {
    std::free(ptr);
    return;
  }
  auto& cache = device_cache();
  std::lock_guard lock(cache.mutex);
  const size_t size = device_block_bytes(bytes);
  cache.free_blocks.emplace(size, ptr);
  cache.stats.in_use -= size;
}

DeviceMemoryStats device_memory_stats() {
  auto& cache = device_cache();
  std::lock_guard lock(cache.mutex);
  return cache.stats;
}

void reset_peak_device_memory() {
  auto& cache = device_cache();
  std::lock_guard lock(cache.mutex);
  cache.stats.peak = cache.stats.in_use;
}

void empty_device_cache() {
#ifdef HALO_HAS_CUDA
  if (!cuda_available()) return;  // nothing can have been cached
  auto& cache = device_cache();
  std::lock_guard lock(cache.mutex);
  CUDA_CHECK(cudaDeviceSynchronize());
  release_cached(cache);
#endif
}

bool cuda_available() {
#ifdef HALO_HAS_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
#else
  return false;
#endif
}

}  // namespace halo
