#include "core/timer.h"

#include <chrono>

#ifdef HALO_HAS_CUDA
#include "core/cuda_check.h"
#include "core/stream.h"
#endif

namespace halo {

struct DeviceTimer::Impl {
  Device device;
  std::chrono::steady_clock::time_point t0, t1;
#ifdef HALO_HAS_CUDA
  cudaEvent_t e0 = nullptr, e1 = nullptr;
#endif
};

DeviceTimer::DeviceTimer(Device device) : impl_(std::make_unique<Impl>()) {
  impl_->device = device;
#ifdef HALO_HAS_CUDA
  if (device == Device::cuda) {
    CUDA_CHECK(cudaEventCreate(&impl_->e0));
    CUDA_CHECK(cudaEventCreate(&impl_->e1));
  }
#endif
}

DeviceTimer::~DeviceTimer() {
#ifdef HALO_HAS_CUDA
  if (impl_->e0) cudaEventDestroy(impl_->e0);
  if (impl_->e1) cudaEventDestroy(impl_->e1);
#endif
}

void DeviceTimer::start() {
#ifdef HALO_HAS_CUDA
  if (impl_->device == Device::cuda) {
    CUDA_CHECK(cudaEventRecord(impl_->e0, current_stream()));
    return;
  }
#endif
  impl_->t0 = std::chrono::steady_clock::now();
}

void DeviceTimer::stop() {
#ifdef HALO_HAS_CUDA
  if (impl_->device == Device::cuda) {
    CUDA_CHECK(cudaEventRecord(impl_->e1, current_stream()));
    return;
  }
#endif
  impl_->t1 = std::chrono::steady_clock::now();
}

double DeviceTimer::milliseconds() {
#ifdef HALO_HAS_CUDA
  if (impl_->device == Device::cuda) {
    CUDA_CHECK(cudaEventSynchronize(impl_->e1));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, impl_->e0, impl_->e1));
    return ms;
  }
#endif
  return std::chrono::duration<double, std::milli>(impl_->t1 - impl_->t0).count();
}

}  // namespace halo
