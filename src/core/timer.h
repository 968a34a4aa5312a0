// Times a region of work on one device: CUDA events on the GPU (no host
// synchronisation inside the region), a steady clock on the CPU.
#pragma once
#include <memory>

#include "core/dtype.h"

namespace halo {

class DeviceTimer {
 public:
  explicit DeviceTimer(Device device);
  ~DeviceTimer();
  DeviceTimer(const DeviceTimer&) = delete;
  DeviceTimer& operator=(const DeviceTimer&) = delete;
  void start();
  void stop();
  double milliseconds();  // waits for the region to finish

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace halo
