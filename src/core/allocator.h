// Memory for tensors. Host memory is 64-byte aligned; device memory comes from a
// caching allocator that keeps freed blocks for reuse (cudaMalloc and cudaFree
// synchronise the device, so a training step must not call them).
#pragma once
#include <cstddef>

#include "core/dtype.h"

namespace halo {

void* allocate(size_t bytes, Device device);
void release(void* ptr, size_t bytes, Device device);

struct DeviceMemoryStats {
  size_t in_use = 0;     // bytes handed out to tensors now
  size_t peak = 0;       // largest in_use since the last reset
  size_t reserved = 0;   // bytes held from the driver (in use + cached)
};
DeviceMemoryStats device_memory_stats();
// The bytes the caching allocator holds for a request of `bytes`: rounded up so
// that a freed block fits later requests of about the same size, to 512 bytes
// below 1 MiB, above to 1/16 of the size's power of two but at most 2 MiB (so
// at most 6.25% and at most 2 MiB more).
size_t device_block_bytes(size_t bytes);
// What a tensor of `bytes` on `device` holds: device_block_bytes on the GPU,
// `bytes` on the CPU.
size_t held_bytes(size_t bytes, Device device);
void reset_peak_device_memory();
void empty_device_cache();  // returns cached blocks to the driver

bool cuda_available();  // built with CUDA and a device is present

}  // namespace halo
