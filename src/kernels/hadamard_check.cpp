// The CUDA Hadamard rotations against their CPU twin (hadamard_rows /
// hadamard_cols on host tensors) on random normal inputs.
//
// Each case: same input, same in/out dtypes, same transpose flag on both sides;
// error = ||gpu - cpu|| / ||cpu|| over all outputs. Both sides compute in f32
// (only the summation order differs), so f32 outputs agree to ~1e-7 and bf16
// outputs differ only where a value sits next to a rounding boundary (one bf16
// step, rarely). Covered: powers of two, K * 2^k with Paley I / Paley II /
// Williamson / doubled orders (the dense K-mix and the Paley II fast mix),
// the block-diagonal fallback, tiny and odd sizes, bf16 / f32 / mixed I/O,
// forward and transpose, in place, misaligned views (the general row kernel),
// rows and columns (by transposes around the row kernel, and the multi-pass
// column kernels for very long d). With `full`: Llama sizes, 8192 rows of d in
// {4096, 14336, 11008, 2048, 8192}, and the token-dim rotation of [8192, d] and
// [12288, 4096], with timings in `detail` (GB/s counting bytes read + written,
// and the percentage of a device-to-device copy of the same bytes).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/rng.h"
#include "kernels/hadamard.h"
#include "kernels/quantize.h"
#include "kernels/selfcheck.h"
#ifdef HALO_HAS_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "core/stream.h"
#endif

namespace halo {

#ifdef HALO_HAS_CUDA
namespace {

struct Case {
  bool cols;           // hadamard_cols (rotate dim 0) instead of hadamard_rows
  int64_t n0, n1;      // shape [n0, n1]
  DType in, out;
  bool transpose;
  bool in_place;       // y = x (same dtype only)
  bool misaligned;     // x and y are views at a 2-element offset (general row kernel)
  bool timed;
};

Tensor random_host(int64_t n0, int64_t n1, DType dt, uint64_t seed) {
  Tensor t = Tensor::empty({n0, n1}, dt);
  const int64_t n = n0 * n1;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) store_float(t.data(), dt, i, normal01(seed, 0, i));
  return t;
}

// A device tensor of the shape, optionally a view starting 2 elements into a
// larger buffer (so that its data pointer is not 16-byte aligned).
Tensor device_tensor(int64_t n0, int64_t n1, DType dt, bool misaligned) {
  if (!misaligned) return Tensor::empty({n0, n1}, dt, Device::cuda);
  Tensor big = Tensor::empty({n0 * n1 + 8}, dt, Device::cuda);
  return big.rows(2, n0 * n1).view({n0, n1});
}

std::string name_of(const Case& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "hadamard_%s %s->%s %lldx%lld%s%s%s", c.cols ? "cols" : "rows",
                std::string(dtype_name(c.in)).c_str(), std::string(dtype_name(c.out)).c_str(),
                static_cast<long long>(c.n0), static_cast<long long>(c.n1), c.transpose ? " T" : "",
                c.in_place ? " in-place" : "", c.misaligned ? " misaligned" : "");
  return buf;
}

void run(const Case& c, const Tensor& x, Tensor& y) {
  if (c.cols) hadamard_cols(x, y, c.transpose);
  else hadamard_rows(x, y, c.transpose);
}

// Milliseconds per call (median-free: mean of `iters` after warm-up), on the current stream.
template <class F>
double time_ms(F&& f, int iters) {
  cudaStream_t s = current_stream();
  for (int i = 0; i < 3; ++i) f();
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  CUDA_CHECK(cudaEventRecord(a, s));
  for (int i = 0; i < iters; ++i) f();
  CUDA_CHECK(cudaEventRecord(b, s));
  CUDA_CHECK(cudaEventSynchronize(b));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  return ms / iters;
}

CheckResult check_case(const Case& c, uint64_t seed) {
  CheckResult res;
  res.name = name_of(c);
  const int64_t d = c.cols ? c.n0 : c.n1;
  const HadamardPlan& plan = hadamard_plan(d);
  res.tolerance = c.out == DType::f32 ? 1e-5 : 1e-3;
  try {
    const Tensor xh = random_host(c.n0, c.n1, c.in, seed);
    Tensor ref = Tensor::empty({c.n0, c.n1}, c.out);
    if (c.cols) hadamard_cols(xh, ref, c.transpose);
    else hadamard_rows(xh, ref, c.transpose);

    Tensor xd = device_tensor(c.n0, c.n1, c.in, c.misaligned);
    xd.copy_from(xh);
    Tensor yd = c.in_place ? xd : device_tensor(c.n0, c.n1, c.out, c.misaligned);
    run(c, xd, yd);
    CUDA_CHECK(cudaStreamSynchronize(current_stream()));
    CUDA_CHECK(cudaGetLastError());
    const std::vector<float> got = yd.to_floats(), want = ref.to_floats();
    res.error = relative_error(got, want);
    res.ok = res.error <= res.tolerance;  // NaN fails
    // The worst element, to locate a bug (row/column and position in the plan).
    size_t worst = 0;
    double wdiff = -1;
    for (size_t i = 0; i < got.size(); ++i) {
      const double diff = std::isnan(got[i]) ? INFINITY : std::fabs(double(got[i]) - want[i]);
      if (diff > wdiff) wdiff = diff, worst = i;
    }
    char buf[400];
    const int64_t r = static_cast<int64_t>(worst) / c.n1, col = static_cast<int64_t>(worst) % c.n1;
    std::snprintf(buf, sizeof buf, "plan %s%s; worst |diff| %.3g at [%lld, %lld] (gpu %.6g, cpu %.6g)",
                  plan.describe().c_str(), plan.k > 1 && paley2_order(plan.h_k, plan.k) ? " (Paley II mix)" : "",
                  wdiff, static_cast<long long>(r), static_cast<long long>(col), got[worst], want[worst]);
    res.detail = buf;
    if (c.timed && res.ok) {
      Tensor xt = Tensor::empty({c.n0, c.n1}, c.in, Device::cuda);
      xt.copy_from(xh);
      Tensor yt = Tensor::empty({c.n0, c.n1}, c.out, Device::cuda);
      const double ms = time_ms([&] { run(c, xt, yt); }, 20);
      const double bytes = static_cast<double>(xt.nbytes() + yt.nbytes());
      // A device-to-device copy moving the same number of bytes (read + write).
      Tensor a = Tensor::empty({static_cast<int64_t>(bytes / 2)}, DType::i8, Device::cuda);
      Tensor b = Tensor::empty({static_cast<int64_t>(bytes / 2)}, DType::i8, Device::cuda);
      const double copy_ms = time_ms(
          [&] { CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), a.nbytes(), cudaMemcpyDeviceToDevice, current_stream())); },
          20);
      std::snprintf(buf, sizeof buf, "; %.3f ms, %.0f GB/s (%.0f%% of a %.0f GB/s device copy)", ms,
                    bytes / ms * 1e-6, 100.0 * copy_ms / ms, bytes / copy_ms * 1e-6);
      res.detail += buf;
    }
  } catch (const std::exception& e) {
    res.ok = false;
    res.error = INFINITY;
    res.detail = std::string("exception: ") + e.what();
  }
  return res;
}

// hadamard_cols_absmax: the rotation as hadamard_cols on the CPU; where it fused
// the maxima (the one-pass kernel), max |x| and max |y| exactly those of x and of
// the GPU's y, and per-tensor quantizers given them (QuantSpec::absmax_parts)
// bitwise equal to quantizers that find the maxima themselves.
CheckResult check_cols_absmax(int64_t n0, int64_t n1, DType in, DType out, uint64_t seed) {
  CheckResult res;
  res.name = "hadamard_cols_absmax " + std::string(dtype_name(in)) + "->" + std::string(dtype_name(out)) + " " +
             std::to_string(n0) + "x" + std::to_string(n1);
  res.tolerance = out == DType::f32 ? 1e-5 : 1e-3;
  try {
    Tensor xh = random_host(n0, n1, in, seed);
    store_float(xh.data(), in, (n0 / 3) * n1 + n1 / 2, -60.0f);  // an outlier: the maximum
    Tensor ref = Tensor::empty({n0, n1}, out);
    hadamard_cols(xh, ref);
    Tensor xd = xh.to(Device::cuda), yd = Tensor::empty({n0, n1}, out, Device::cuda), max_x, max_y;
    const bool fused = hadamard_cols_absmax(xd, yd, false, max_x, max_y);
    const std::vector<float> got = yd.to_floats(), want = ref.to_floats();
    res.error = relative_error(got, want);
    res.ok = res.error <= res.tolerance;
    res.detail = fused ? "fused" : "not fused (rotation only)";
    if (fused && res.ok) {
      const auto max_abs = [](const std::vector<float>& v) {
        float m = 0;
        for (float f : v) m = std::max(m, std::fabs(f));
        return m;
      };
      const float mx = max_abs(max_x.to_floats()), my = max_abs(max_y.to_floats());
      const float want_x = max_abs(xh.to_floats()), want_y = max_abs(got);
      char buf[200];
      std::snprintf(buf, sizeof buf, "; max |x| %.7g (want %.7g), max |y| %.7g (want %.7g)", mx, want_x, my, want_y);
      res.detail += buf;
      res.ok = mx == want_x && my == want_y;
      for (DType q : {DType::e4m3, DType::i8}) {
        QuantSpec spec;
        spec.dtype = q;
        QuantSpec given = spec;
        QTensor a, b;
        quantize(yd, spec, false, &a, nullptr);
        given.absmax_parts = &max_y;
        quantize(yd, given, false, &b, nullptr);
        QTensor at, bt;
        quantize(xd, spec, false, nullptr, &at);
        given.absmax_parts = &max_x;
        quantize(xd, given, false, nullptr, &bt);
        const bool same = a.data.to_floats() == b.data.to_floats() && a.scale.to_floats() == b.scale.to_floats() &&
                          at.data.to_floats() == bt.data.to_floats() && at.scale.to_floats() == bt.scale.to_floats();
        if (!same) res.detail += "; " + std::string(dtype_name(q)) + " codes differ with the given maxima";
        res.ok = res.ok && same;
      }
    }
  } catch (const std::exception& e) {
    res.ok = false;
    res.error = INFINITY;
    res.detail = std::string("exception: ") + e.what();
  }
  return res;
}

}  // namespace

std::vector<CheckResult> hadamard_cuda_checks(bool full) {
  if (!cuda_available()) return {};
  std::vector<Case> cases;
  const DType f32 = DType::f32, bf16 = DType::bf16;
  // Rows: every plan kind at small sizes. Comments give the plan.
  const int64_t row_dims[] = {
      1,    2,    7,     8,    12,   16,    24,   32,   40,   48,   // tiny; 7: fallback block 1
      64,   92,   96,    100,  172,  184,   256,  344,  384,  448,  // 92, 184: fallback; 100: Paley II q=49
      688,  1024, 1536,  2048, 2304, 2752,  2816, 3072, 5120, 640,  // 2304 = 36 x 64, 2752 = 172 x 16,
      1408, 4096, 14336, 11008, 6656, 7680, 3456, 560,  8192,       // 2816 = 44 x 64, 6656 = 52 x 128, ...
  };
  for (int64_t d : row_dims) {
    for (bool t : {false, true}) {
      cases.push_back({false, 5, d, bf16, bf16, t, false, false, false});
      cases.push_back({false, 3, d, f32, f32, t, false, false, false});
    }
  }
  // 2048, 4096, 8192: the S rotation (8, 4 and 2 rows per block: 11 rows end with a
  // partial group); 6144, 14336: the P rotation for bf16 inputs.
  for (int64_t d : {96, 2048, 4096, 6144, 8192, 14336, 11008, 344}) {
    cases.push_back({false, 11, d, bf16, f32, true, false, false, false});
    cases.push_back({false, 4, d, bf16, f32, false, false, false, false});
    cases.push_back({false, 4, d, f32, bf16, true, false, false, false});
    cases.push_back({false, 19, d, bf16, bf16, false, true, false, false});
    cases.push_back({false, 3, d, f32, f32, true, true, false, false});
    cases.push_back({false, 3, d, bf16, bf16, false, false, true, false});
    cases.push_back({false, 3, d, f32, f32, true, false, true, false});
  }
  // Columns: the rotated length is n0.
  const int64_t col_dims[] = {1, 2, 7, 12, 24, 40, 64, 92, 96, 100, 172, 256, 344, 448, 1536, 2048, 4096, 8192, 12288};
  for (int64_t d : col_dims) {
    for (bool t : {false, true}) {
      cases.push_back({true, d, 70, bf16, bf16, t, false, false, false});
      cases.push_back({true, d, 33, f32, f32, t, false, false, false});
    }
  }
  cases.push_back({true, 344, 64, bf16, f32, false, false, false, false});
  cases.push_back({true, 4096, 40, f32, bf16, true, false, false, false});
  cases.push_back({true, 1536, 100, bf16, bf16, false, true, false, false});
  cases.push_back({true, 96, 5, f32, f32, true, true, false, false});
  // The one-pass cluster kernel (d = 1024 C, columns a multiple of 16; on sm_90),
  // and next to it what falls back: an odd column count, a misaligned view.
  for (int64_t d : {1024, 2048, 4096, 8192, 16384}) {
    cases.push_back({true, d, 48, bf16, bf16, false, false, false, false});
    cases.push_back({true, d, 16, f32, f32, true, false, false, false});
    cases.push_back({true, d, 32, bf16, f32, true, false, false, false});
    cases.push_back({true, d, 16, f32, bf16, false, false, false, false});
    cases.push_back({true, d, 64, bf16, bf16, true, true, false, false});
    cases.push_back({true, d, 16, f32, f32, false, true, false, false});
  }
  cases.push_back({true, 4096, 48, bf16, bf16, false, false, true, false});
  // Strips of 16 columns for several waves of clusters.
  cases.push_back({true, 8192, 1040, bf16, bf16, false, false, false, false});
  cases.push_back({true, 8192, 1040, f32, bf16, true, false, false, false});
  cases.push_back({true, 16384, 528, bf16, bf16, false, false, false, false});
  // Rotated lengths beyond one block's shared memory: the multi-pass column kernels.
  cases.push_back({true, 65536, 3, f32, f32, false, false, false, false});
  cases.push_back({true, 98304, 2, bf16, bf16, true, false, false, false});  // 12 x 8192
  if (full) {
    for (int64_t d : {4096, 14336, 11008, 2048, 8192}) {
      for (DType dt : {bf16, f32}) {
        cases.push_back({false, 8192, d, dt, dt, false, false, false, true});
        cases.push_back({true, 8192, d, dt, dt, false, false, false, true});
      }
      cases.push_back({false, 8192, d, bf16, bf16, true, false, false, true});
      cases.push_back({true, 8192, d, bf16, bf16, true, false, false, false});
    }
    cases.push_back({true, 12288, 4096, bf16, bf16, false, false, false, true});
  }
  std::vector<CheckResult> results;
  uint64_t seed = 1000;
  for (const Case& c : cases) results.push_back(check_case(c, seed++));
  // The one-pass kernel for 1024 C rows (C = 1, 2, 4, 8, 16) and a shape it does not take;
  // 1024 x 128: the transposed codes by whole 64 x 64 tiles (quantize_t_kernel) from the given maxima.
  const int64_t absmax_shapes[][2] = {{8192, 48}, {1024, 16}, {2048, 32}, {16384, 16},
                                      {96, 40}, {1024, 128}, {8192, 1040}};
  for (const auto& sh : absmax_shapes) {
    results.push_back(check_cols_absmax(sh[0], sh[1], bf16, bf16, seed++));
    results.push_back(check_cols_absmax(sh[0], sh[1], f32, bf16, seed++));
  }
  results.push_back(check_cols_absmax(4096, 64, f32, f32, seed++));
  results.push_back(check_cols_absmax(2048, 32, bf16, f32, seed++));
  if (full) {
    results.push_back(check_cols_absmax(8192, 4096, bf16, bf16, seed++));
    results.push_back(check_cols_absmax(8192, 14336, bf16, bf16, seed++));
  }
  return results;
}

#else

std::vector<CheckResult> hadamard_cuda_checks(bool) { return {}; }

#endif

}  // namespace halo
