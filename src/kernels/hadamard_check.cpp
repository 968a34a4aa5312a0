#include "kernels/selfcheck.h"

namespace halo {

std::vector<CheckResult> hadamard_cuda_checks(bool) { return {}; }

}  // namespace halo
