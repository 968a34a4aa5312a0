// What this build and machine are: for `halo doctor` and benchmark headers.
#pragma once
#include <string>
#include <vector>

namespace halo {

struct BuildInfo {
  bool cuda = false;
  std::string cuda_runtime;   // e.g. "13.0"
  std::string cuda_archs;     // compiled GPU targets
  std::string cublaslt;       // cuBLASLt version
  std::string blas;           // BLAS library and its configuration
  int threads = 1;            // OpenMP threads
};
BuildInfo build_info();

struct GpuInfo {
  std::string name;
  int major = 0, minor = 0;  // compute capability
  int multiprocessors = 0;
  double memory_gib = 0.0;
  std::string driver;
};
std::vector<GpuInfo> gpu_info();  // empty without CUDA or devices

// Marks the span a profiler started with --profile-from-start off records
// (cudaProfilerStart / Stop); no-ops without CUDA or a GPU.
void gpu_profiler_start();
void gpu_profiler_stop();

}  // namespace halo
