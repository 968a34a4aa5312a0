#include "kernels/selfcheck.h"

namespace halo {

std::vector<CheckResult> gemm_cuda_checks(bool) { return {}; }

}  // namespace halo
