// The CUDA linear layer against the CPU one, per recipe, on the same inputs.
#include <string>
#include <utility>
#include <vector>

#include "core/rng.h"
#include "halo/linear.h"
#include "kernels/selfcheck.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace {

Tensor random_input(int64_t rows, int64_t cols, uint64_t seed, bool outliers) {
  Tensor t = Tensor::empty({rows, cols}, DType::bf16);
  for (int64_t i = 0; i < t.numel(); ++i) {
    float v = normal01(seed, 0, i);
    if (outliers && (i % cols) % 97 == 13) v *= 60.0f;  // a few outlier channels
    store_float(t.data(), DType::bf16, i, v);
  }
  return t;
}

// Runs forward and `backwards` backward calls (the gradients add up) on `device`;
// inputs are bf16 values (as f32 on the CPU). bf16_grad: the GPU's weight
// gradient in bf16.
std::vector<std::vector<float>> run(const Recipe& recipe, Device device, const Tensor& x, const Tensor& w,
                                    const Tensor& dy, bool bf16_grad = false, int backwards = 1) {
  const DType dtype = device == Device::cuda ? DType::bf16 : DType::f32;
  HaloLinear layer(x.size(1), w.size(0), true, recipe, device, dtype, 7);
  if (bf16_grad && device == Device::cuda) layer.set_weight_grad_dtype(DType::bf16);
  layer.weight = w.to(dtype).to(device);
  layer.bias = layer.bias.to(Device::cpu).to(DType::bf16).to(dtype).to(device);
  LinearSaved saved;
  const Tensor y = layer.forward(x.to(dtype).to(device), &saved);
  Tensor dx;
  for (int i = 0; i < backwards; ++i) dx = layer.backward(dy.to(dtype).to(device), saved);
  return {y.to_floats(), dx.to_floats(), layer.weight_grad().to_floats(), layer.bias_grad().to_floats()};
}

}  // namespace

std::vector<CheckResult> linear_cuda_checks(bool full) {
  std::vector<CheckResult> out;
  struct Case {
    int64_t m, n, k;
  };
  std::vector<Case> cases{{192, 160, 96}, {100, 64, 112}};
  if (full) cases.push_back({2048, 4096, 4096});
  const char* recipes[] = {"bf16",       "halo0-int8",      "halo1-int8",       "halo2-int8",
                           "halo0-fp8",  "halo1-fp8",       "halo2-fp8",        "ideal-int8",
                           "ideal-fp8",  "halo1-int8+row",  "halo2-fp8+1x128",  "halo1-fp8+128x128+e5m2",
                           "halo2-fp8+sr", "halo1-fp8+sim", "halo1-fp8+promote"};
  // bf16 weight gradients (HaloLinear::set_weight_grad_dtype), two backward
  // calls adding up: one more bf16 rounding of dW (2^-9 relative at most).
  const char* bf16_grad_recipes[] = {"bf16", "halo1-fp8", "halo2-int8"};
  for (const Case& c : cases) {
    const Tensor x = random_input(c.m, c.k, 1, true), w = random_input(c.n, c.k, 2, true);
    const Tensor dy = random_input(c.m, c.n, 3, false);
    std::vector<std::pair<const char*, bool>> runs;
    for (const char* name : recipes) runs.emplace_back(name, false);
    for (const char* name : bf16_grad_recipes) runs.emplace_back(name, true);
    for (const auto& [name, bf16_grad] : runs) {
      const Recipe r = parse_recipe(name);
      CheckResult res;
      res.name = std::string("linear ") + name + (bf16_grad ? " bf16-grad x2" : "") + " " + std::to_string(c.m) +
                 "x" + std::to_string(c.n) + "x" + std::to_string(c.k);
      // The GPU keeps activations and outputs in bf16 (about 4e-3 relative
      // rounding per value, twice on rotated outputs); a few 8-bit codes may
      // land one step apart where bf16 and f32 rotations straddle a rounding
      // boundary. Ideal recipes saturate, so only finiteness is checked there.
      // Stochastic rounding (+sr, the gradients) is unbiased, but its error per
      // element has twice the variance of round-to-nearest (a value a fraction p
      // of a step Δ above a code: p(1-p)Δ², which averages Δ²/6 over p, against
      // Δ²/12), so about sqrt(2) times the error: 1.5x the tolerance. (Measured on
      // an H100: halo2-fp8 1.34e-2, halo2-fp8+sr 1.70e-2, dX at 192x160x96.)
      // A flipped e4m3 code moves its value by 1/8 to 1/16 of itself, an int8
      // code by 1/127 of the absmax at most, so FP8 recipes get a wider
      // tolerance (measured on an H100: halo2-fp8 dX 1.61e-2 at 100x64x112).
      const double rne_tolerance = r.format == DType::e4m3 ? 2.5e-2 : 1.5e-2;
      res.tolerance = r.method == Method::ideal ? 1e30 : r.stochastic_grad ? 1.5 * rne_tolerance : rne_tolerance;
      try {
        const int backwards = bf16_grad ? 2 : 1;
        const auto gpu = run(r, Device::cuda, x, w, dy, bf16_grad, backwards);
        const auto cpu = run(r, Device::cpu, x, w, dy, false, backwards);
        const char* what[] = {"Y", "dX", "dW", "db"};
        for (int i = 0; i < 4; ++i) {
          const double e = relative_error(gpu[i], cpu[i]);
          if (!(e <= res.error)) {  // NaN propagates
            res.error = e;
            res.detail = std::string("worst: ") + what[i];
          }
        }
        res.ok = res.error <= res.tolerance;
      } catch (const std::exception& e) {
        res.detail = e.what();
      }
      out.push_back(res);
    }
  }
  return out;
}
#else
std::vector<CheckResult> linear_cuda_checks(bool) { return {}; }
#endif

}  // namespace halo
