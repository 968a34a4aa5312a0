#include "kernels/selfcheck.h"

namespace halo {

std::vector<CheckResult> quantize_cuda_checks(bool) { return {}; }

}  // namespace halo
