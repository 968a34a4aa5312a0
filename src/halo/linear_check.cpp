#include "kernels/selfcheck.h"

namespace halo {

std::vector<CheckResult> linear_cuda_checks(bool) { return {}; }

}  // namespace halo
