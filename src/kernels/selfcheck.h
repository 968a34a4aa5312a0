// Checks of each CUDA kernel against its CPU twin on random inputs, run by
// `halo doctor` and by the GPU tests. `full` adds Llama sizes (4096, 14336).
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace halo {

struct CheckResult {
  std::string name;     // e.g. "hadamard_rows bf16 8192x14336"
  bool ok = false;
  double error = 0.0;   // the measured error (relative, or max ulps: see detail)
  double tolerance = 0.0;
  std::string detail;
};

// One per op family; each returns an empty list on a build without CUDA.
std::vector<CheckResult> hadamard_cuda_checks(bool full);
std::vector<CheckResult> quantize_cuda_checks(bool full);
std::vector<CheckResult> gemm_cuda_checks(bool full);
std::vector<CheckResult> linear_cuda_checks(bool full);
std::vector<CheckResult> rowops_cuda_checks(bool full);  // RMSNorm, SwiGLU, embedding, RoPE
std::vector<CheckResult> attention_cuda_checks(bool full);
std::vector<CheckResult> loss_optim_cuda_checks(bool full);  // cross-entropy, AdamW
std::vector<CheckResult> decode_cuda_checks(bool full);  // decode attention, KV cache, argmax

// Every family's checks; `done` (if given) sees each family's results as soon as
// they are in, so that a long run can report as it goes.
std::vector<CheckResult> all_cuda_checks(bool full,
                                         const std::function<void(const std::vector<CheckResult>&)>& done = {});

// ||a - b|| / ||b|| in double.
double relative_error(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace halo
