#include "core/device_info.h"

#include <cblas.h>
#include <omp.h>

#include <string>

#include "core/allocator.h"

#ifdef HALO_HAS_CUDA
#include <cublasLt.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#endif

extern "C" char* openblas_get_config();

namespace halo {

namespace {
std::string version_str(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }
}  // namespace

BuildInfo build_info() {
  BuildInfo b;
  b.blas = std::string("OpenBLAS ") + openblas_get_config();
  b.threads = omp_get_max_threads();
#ifdef HALO_HAS_CUDA
  b.cuda = true;
  int rt = 0;
  cudaRuntimeGetVersion(&rt);
  b.cuda_runtime = version_str(rt);
#ifdef HALO_CUDA_ARCHS
  b.cuda_archs = HALO_CUDA_ARCHS;
#endif
  const size_t lt = cublasLtGetVersion();
  b.cublaslt = std::to_string(lt / 10000) + "." + std::to_string(lt / 100 % 100) + "." + std::to_string(lt % 100);
#endif
  return b;
}

std::vector<GpuInfo> gpu_info() {
  std::vector<GpuInfo> out;
#ifdef HALO_HAS_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return out;
  }
  int driver = 0;
  cudaDriverGetVersion(&driver);
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    out.push_back({p.name, p.major, p.minor, p.multiProcessorCount,
                   static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0), version_str(driver)});
  }
#endif
  return out;
}

void gpu_profiler_start() {
#ifdef HALO_HAS_CUDA
  if (cuda_available()) cudaProfilerStart();
#endif
}

void gpu_profiler_stop() {
#ifdef HALO_HAS_CUDA
  if (cuda_available()) cudaProfilerStop();
#endif
}

}  // namespace halo
