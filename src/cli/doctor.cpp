// halo doctor: what this build and machine are, and every CUDA kernel checked
// against its CPU twin (--full: at Llama sizes too; the GPU test entry point).
#include <chrono>
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/allocator.h"
#include "core/device_info.h"
#include "kernels/selfcheck.h"

namespace halo::cli {

int doctor(const std::vector<std::string>& argv) {
  Args args(argv, {"full", "probe"});
  args.check_all_used({"full", "probe"});
  if (args.has("probe")) {  // prints the best device, for scripts
    std::puts(cuda_available() ? "cuda" : "cpu");
    return 0;
  }
  const BuildInfo b = build_info();
  std::printf("build: CUDA %s", b.cuda ? ("runtime " + b.cuda_runtime).c_str() : "not built");
  if (b.cuda) std::printf(", targets %s, cuBLASLt %s", b.cuda_archs.c_str(), b.cublaslt.c_str());
  std::printf("\nBLAS: %s\nthreads: %d\n", b.blas.c_str(), b.threads);
  const auto gpus = gpu_info();
  if (gpus.empty()) std::puts("GPU: none found; the CPU kernels are the reference, nothing to compare");
  for (const auto& g : gpus)
    std::printf("GPU: %s, compute capability %d.%d, %d SMs, %.1f GiB, driver %s\n", g.name.c_str(), g.major,
                g.minor, g.multiprocessors, g.memory_gib, g.driver.c_str());
  if (gpus.empty()) return 0;

  const bool full = args.has("full");
  std::printf("checking every CUDA kernel against the CPU reference%s...\n", full ? " (Llama sizes)" : "");
  const auto t0 = std::chrono::steady_clock::now();
  int failed = 0;
  const auto results = all_cuda_checks(full, [&](const std::vector<CheckResult>& family) {
    for (const auto& r : family) {
      std::printf("  %-4s %-58s err %9.2e  tol %9.2e  %s\n", r.ok ? "ok" : "FAIL", r.name.c_str(), r.error,
                  r.tolerance, r.detail.c_str());
      failed += !r.ok;
    }
    std::fflush(stdout);
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%zu passed, %d failed (%.1f s)\n", results.size() - failed, failed, secs);
  return failed ? 1 : 0;
}

}  // namespace halo::cli
