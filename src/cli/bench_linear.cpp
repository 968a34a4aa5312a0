// halo bench linear: speed and accuracy of the HALO linear layer per recipe.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/allocator.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/timer.h"
#include "halo/linear.h"
#include "kernels/selfcheck.h"

namespace halo::cli {

namespace {

struct Inputs {
  Tensor x, w, dy;  // host, in the activation dtype
};

// Normal values; with outliers, `count` columns multiplied by 50..100 (the
// channels a pretrained model concentrates its outliers in).
Tensor make_input(int64_t rows, int64_t cols, uint64_t seed, bool outliers, DType dtype) {
  std::vector<float> v(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < v.size(); ++i) v[i] = normal01(seed, 0, i);
  if (outliers) {
    for (int j = 0; j < 4; ++j) {
      const int64_t col = static_cast<int64_t>(uniform01(seed, 1, j) * cols);
      const float factor = 50.0f + 50.0f * uniform01(seed, 2, j);
      for (int64_t r = 0; r < rows; ++r) v[r * cols + col] *= factor;
    }
  }
  return Tensor::from_floats({rows, cols}, v, dtype);
}

std::vector<double> as_doubles(const Tensor& t) {
  const std::vector<float> f = t.to_floats();
  return {f.begin(), f.end()};
}

// C[M, N] = op(A) op(B) in float64 (CPU runs) or float32 (GPU runs).
std::vector<double> reference_gemm(const std::vector<double>& a, bool ta, const std::vector<double>& b, bool tb,
                                   int64_t m, int64_t n, int64_t k, bool f64) {
  std::vector<double> c(static_cast<size_t>(m * n));
  const auto TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
  const int64_t lda = ta ? m : k, ldb = tb ? k : n;
  if (f64) {
    cblas_dgemm(CblasRowMajor, TA, TB, m, n, k, 1.0, a.data(), lda, b.data(), ldb, 0.0, c.data(), n);
  } else {
    std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end()), cf(c.size());
    cblas_sgemm(CblasRowMajor, TA, TB, m, n, k, 1.0f, af.data(), lda, bf.data(), ldb, 0.0f, cf.data(), n);
    c.assign(cf.begin(), cf.end());
  }
  return c;
}

double rel_err(const Tensor& got, const std::vector<double>& ref) {
  const std::vector<float> g = got.to_floats();
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (g[i] - ref[i]) * (g[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

struct Row {
  std::string recipe;
  double fwd_ms, bwd_ms, err_y, err_dx, err_dw;
};

}  // namespace

int bench_linear(const std::vector<std::string>& argv) {
  Args args(argv, {"outliers", "json", "bias"});
  args.check_all_used({"device", "recipe", "shape", "outliers", "json", "bias", "warmup", "iters", "seed"});
  const std::string device_name_arg = args.get("device", cuda_available() ? "cuda" : "cpu");
  HALO_CHECK(device_name_arg == "cpu" || device_name_arg == "cuda", "--device: expected cpu or cuda, got '",
             device_name_arg, "'");
  const Device device = device_name_arg == "cuda" ? Device::cuda : Device::cpu;
  HALO_CHECK(device == Device::cpu || cuda_available(), "--device cuda: no usable CUDA device",
             cuda_available() ? "" : " (or this build has no CUDA support)");
  const auto shape = parse_int_list(args.get("shape", device == Device::cuda ? "8192,4096,4096" : "256,512,512"),
                                    "shape");
  HALO_CHECK(shape.size() == 3, "--shape: expected M,N,K (tokens, output features, input features)");
  const int64_t M = shape[0], N = shape[1], K = shape[2];
  std::vector<Recipe> recipes = parse_recipe_list(
      args.get("recipe", "bf16,halo0-int8,halo1-int8,halo2-int8,halo0-fp8,halo1-fp8,halo2-fp8,ideal-int8,ideal-fp8"));
  if (std::none_of(recipes.begin(), recipes.end(), [](const Recipe& r) { return r.method == Method::bf16; }))
    recipes.insert(recipes.begin(), Recipe{});  // speedups are over bf16, so it always runs
  const bool outliers = args.has("outliers"), json = args.has("json"), with_bias = args.has("bias");
  const int warmup = static_cast<int>(args.get_int("warmup", device == Device::cuda ? 10 : 1));
  const int iters = static_cast<int>(args.get_int("iters", device == Device::cuda ? 50 : 3));
  const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", 1));
  const DType dtype = device == Device::cuda ? DType::bf16 : DType::f32;

  const Tensor x = make_input(M, K, seed, outliers, dtype);
  const Tensor w = make_input(N, K, seed + 1, outliers, dtype);
  Tensor dy = make_input(M, N, seed + 2, false, dtype);
  const bool f64 = device == Device::cpu;
  const auto xd = as_doubles(x), wd = as_doubles(w), dyd = as_doubles(dy);
  std::vector<double> ref_y = reference_gemm(xd, false, wd, true, M, N, K, f64);
  const std::vector<double> ref_dx = reference_gemm(dyd, false, wd, false, M, K, N, f64);
  const std::vector<double> ref_dw = reference_gemm(dyd, true, xd, false, N, K, M, f64);
  const Tensor x_dev = x.to(device), dy_dev = dy.to(device);

  if (!json)
    std::printf("halo bench linear: %s, %s, M=%lld tokens, N=%lld out, K=%lld in%s; median of %d after %d "
                "warm-up, recipes in turn\n",
                device_name_arg.c_str(), dtype_name(dtype).data(), static_cast<long long>(M),
                static_cast<long long>(N), static_cast<long long>(K), outliers ? ", outlier channels" : "", iters,
                warmup);
  // Every recipe's layer first runs once for the errors; then the timed rounds
  // take the recipes in turn, so that they all see the same clocks and
  // temperature (the GPU's clocks drift over a run).
  std::vector<Row> rows;
  std::vector<std::unique_ptr<HaloLinear>> layers;
  std::vector<LinearSaved> saved(recipes.size());
  for (size_t k = 0; k < recipes.size(); ++k) {
    layers.push_back(std::make_unique<HaloLinear>(K, N, with_bias, recipes[k], device, dtype, seed));
    HaloLinear& layer = *layers.back();
    layer.weight = w.to(device);
    std::vector<double> ref_y_b = ref_y;
    if (with_bias) {
      const std::vector<float> b = layer.bias.to_floats();
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) ref_y_b[i * N + j] += b[j];
    }
    const Tensor y = layer.forward(x_dev, &saved[k]);
    const Tensor dx = layer.backward(dy_dev, saved[k]);
    rows.push_back(Row{recipes[k].name(), 0, 0, rel_err(y, ref_y_b), rel_err(dx, ref_dx),
                       rel_err(layer.weight_grad(), ref_dw)});
  }
  // Every region has its own events and none is read before the loop ends, so
  // the host queues work ahead of the GPU as in training: the times are the
  // GPU's, launch latency and host work hidden behind the work before.
  const size_t n_regions = static_cast<size_t>(iters) * recipes.size();
  std::vector<std::unique_ptr<DeviceTimer>> tf, tb;
  for (size_t i = 0; i < n_regions; ++i) {
    tf.push_back(std::make_unique<DeviceTimer>(device));
    tb.push_back(std::make_unique<DeviceTimer>(device));
  }
  for (int i = 0; i < warmup + iters; ++i) {
    for (size_t k = 0; k < recipes.size(); ++k) {
      HaloLinear& layer = *layers[k];
      const size_t region = i >= warmup ? static_cast<size_t>(i - warmup) * recipes.size() + k : n_regions;
      layer.zero_grad();
      if (region < n_regions) tf[region]->start();
      layer.forward(x_dev, &saved[k]);
      if (region < n_regions) tf[region]->stop(), tb[region]->start();
      layer.backward(dy_dev, saved[k]);
      if (region < n_regions) tb[region]->stop();
    }
  }
  std::vector<std::vector<double>> fwd(recipes.size()), bwd(recipes.size());
  for (size_t region = 0; region < n_regions; ++region) {
    fwd[region % recipes.size()].push_back(tf[region]->milliseconds());
    bwd[region % recipes.size()].push_back(tb[region]->milliseconds());
  }
  for (size_t k = 0; k < recipes.size(); ++k) {
    rows[k].fwd_ms = median(fwd[k]);
    rows[k].bwd_ms = median(bwd[k]);
  }

  const double flops = 6.0 * M * N * K;
  const double base_ms = rows.front().fwd_ms + rows.front().bwd_ms;
  if (!json) {
    std::printf("%-22s %9s %9s %9s %8s %9s %9s %9s\n", "recipe", "fwd ms", "bwd ms", "TFLOP/s", "speedup",
                "err Y", "err dX", "err dW");
  }
  for (const Row& r : rows) {
    const double total = r.fwd_ms + r.bwd_ms;
    const double tflops = flops / (total * 1e-3) / 1e12;
    if (json) {
      std::printf("{\"recipe\": \"%s\", \"device\": \"%s\", \"M\": %lld, \"N\": %lld, \"K\": %lld, "
                  "\"outliers\": %s, \"fwd_ms\": %.6g, \"bwd_ms\": %.6g, \"tflops\": %.6g, "
                  "\"speedup_vs_bf16\": %.6g, \"err_y\": %.6g, \"err_dx\": %.6g, \"err_dw\": %.6g}\n",
                  r.recipe.c_str(), device_name_arg.c_str(), static_cast<long long>(M), static_cast<long long>(N),
                  static_cast<long long>(K), outliers ? "true" : "false", r.fwd_ms, r.bwd_ms, tflops,
                  base_ms / total, r.err_y, r.err_dx, r.err_dw);
    } else {
      std::printf("%-22s %9.3f %9.3f %9.1f %7.2fx %9.2e %9.2e %9.2e\n", r.recipe.c_str(), r.fwd_ms, r.bwd_ms,
                  tflops, base_ms / total, r.err_y, r.err_dx, r.err_dw);
    }
  }
  if (!json)
    std::printf("errors: ||out - ref|| / ||ref|| against a %s product of the unquantized inputs\n",
                f64 ? "float64" : "float32");
  return 0;
}

}  // namespace halo::cli
