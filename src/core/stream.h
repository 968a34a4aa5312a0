// The CUDA stream that kernels of this thread are launched on (default: the
// legacy default stream). A StreamGuard switches it for a scope.
#pragma once
#include <cuda_runtime.h>

namespace halo {

cudaStream_t current_stream();
void set_current_stream(cudaStream_t stream);

class StreamGuard {
 public:
  explicit StreamGuard(cudaStream_t s) : saved_(current_stream()) { set_current_stream(s); }
  ~StreamGuard() { set_current_stream(saved_); }
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  cudaStream_t saved_;
};

}  // namespace halo
