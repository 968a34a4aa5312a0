#include "kernels/selfcheck.h"

#include <cmath>

#include "core/error.h"

namespace halo {

std::vector<CheckResult> all_cuda_checks(bool full,
                                         const std::function<void(const std::vector<CheckResult>&)>& done) {
  std::vector<CheckResult> all;
  for (auto* family : {hadamard_cuda_checks, quantize_cuda_checks, gemm_cuda_checks, linear_cuda_checks,
                       rowops_cuda_checks, attention_cuda_checks, loss_optim_cuda_checks,
                       decode_cuda_checks}) {
    auto results = family(full);
    if (done) done(results);
    all.insert(all.end(), results.begin(), results.end());
  }
  return all;
}

double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  HALO_CHECK(a.size() == b.size(), "relative_error: sizes ", a.size(), " and ", b.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  if (std::isnan(num)) return NAN;
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace halo
