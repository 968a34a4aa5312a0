// The CUDA quantizers against their CPU twin on the same inputs.
//
// Codes must be identical, except where the f32 rotation differs in the last
// bit between the GPU (hadamard_rotate_smem) and the CPU (hadamard_rows) and a
// value sits on a rounding boundary: with rotation, a tiny fraction of codes
// (kRotatedFraction) may differ, by one code step only. Without rotation the
// math is the same IEEE operations on both sides and no difference is allowed.
// Scales must agree within 1e-6 relative (NaN with NaN).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

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

constexpr double kRotatedFraction = 1e-4;  // codes allowed to differ (by one step) with rotation
constexpr double kScaleTolerance = 1e-6;

enum class Fill { normal, zero_rows, all_zero, nan };

// Normal values with a few outlier columns (50-100x), stored as `dtype`.
Tensor make_input(int64_t R, int64_t C, DType dtype, Fill fill, uint64_t seed) {
  Tensor t = Tensor::empty({R, C}, dtype);
  std::vector<float> factor(static_cast<size_t>(C), 1.0f);
  for (int j = 0; j < std::max<int64_t>(1, C / 256); ++j)
    factor[static_cast<size_t>(uniform01(seed, 1, j) * C)] = 50.0f + 50.0f * uniform01(seed, 2, j);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      float v = normal01(seed, 0, i) * factor[c];
      if (fill == Fill::all_zero) v = 0.0f;
      // Zero rows, and a zero 128 x 128 tile / 1x128 chunks, to exercise zero groups.
      if (fill == Fill::zero_rows && (r % 7 == 3 || (r < 128 && c >= 128 && c < 256))) v = 0.0f;
      if (fill == Fill::nan && r == R / 2 && c == C / 3) v = NAN;
      store_float(t.data(), dtype, i, v);
    }
  return t;
}

// Distance in code steps between two codes of the same format (NaN codes: 0 if both NaN).
int code_steps(uint8_t a, uint8_t b, DType t) {
  if (t == DType::i8) return std::abs(static_cast<int8_t>(a) - static_cast<int8_t>(b));
  const float fa = load_float(&a, t, 0), fb = load_float(&b, t, 0);
  if (std::isnan(fa) || std::isnan(fb)) return std::isnan(fa) && std::isnan(fb) ? 0 : 1000;
  auto ord = [](uint8_t c) { return (c & 0x80) ? -static_cast<int>(c & 0x7f) : static_cast<int>(c & 0x7f); };
  return std::abs(ord(a) - ord(b));
}

struct Compare {
  int64_t mismatches = 0, far = 0, n = 0;
  double scale_err = 0.0;
  bool scale_nan_mismatch = false;
  std::string first;  // the first difference, for the report
};

// gpu vs cpu copy of one operand; `what` names the copy in the report.
void compare(const QTensor& gpu, const QTensor& cpu, const char* what, Compare& cmp) {
  const Tensor gd = gpu.data.to(Device::cpu), gs = gpu.scale.to(Device::cpu);
  char buf[256];
  if (gd.shape() != cpu.data.shape() || gs.shape() != cpu.scale.shape()) {
    cmp.far += 1;
    cmp.first = std::string(what) + ": shapes differ: " + gd.describe() + " / " + gs.describe() + " vs " +
                cpu.data.describe() + " / " + cpu.scale.describe();
    return;
  }
  const int64_t C = cpu.cols();
  const uint8_t* a = gd.data_as<uint8_t>();
  const uint8_t* b = cpu.data.data_as<uint8_t>();
  for (int64_t i = 0; i < cpu.data.numel(); ++i) {
    ++cmp.n;
    if (a[i] == b[i]) continue;
    const int steps = code_steps(a[i], b[i], cpu.data.dtype());
    if (steps == 0) continue;
    ++cmp.mismatches;
    if (steps > 1) ++cmp.far;
    if (cmp.first.empty()) {
      std::snprintf(buf, sizeof buf, "%s[%lld, %lld]: gpu 0x%02x cpu 0x%02x (%d steps)", what,
                    static_cast<long long>(i / C), static_cast<long long>(i % C), a[i], b[i], steps);
      cmp.first = buf;
    }
  }
  const float* sa = gs.data_as<float>();
  const float* sb = cpu.scale.data_as<float>();
  for (int64_t i = 0; i < cpu.scale.numel(); ++i) {
    if (std::isnan(sa[i]) || std::isnan(sb[i])) {
      if (std::isnan(sa[i]) != std::isnan(sb[i])) {
        cmp.scale_nan_mismatch = true;
        std::snprintf(buf, sizeof buf, "%s scale[%lld]: gpu %g cpu %g", what, static_cast<long long>(i), sa[i],
                      sb[i]);
        cmp.first = buf;
      }
      continue;
    }
    const double err = std::fabs(static_cast<double>(sa[i]) - sb[i]) / std::max(std::fabs(static_cast<double>(sb[i])), 1e-30);
    if (err > cmp.scale_err) {
      cmp.scale_err = err;
      if (err > kScaleTolerance) {
        std::snprintf(buf, sizeof buf, "%s scale[%lld]: gpu %.9g cpu %.9g", what, static_cast<long long>(i), sa[i],
                      sb[i]);
        cmp.first = buf;
      }
    }
  }
}

std::string case_name(int64_t R, int64_t C, DType in, const QuantSpec& s, bool rotate, bool want_o, bool want_t,
                      Fill fill) {
  std::string n = "quantize " + std::string(dtype_name(in)) + "->" + std::string(dtype_name(s.dtype)) + " " +
                  std::to_string(R) + "x" + std::to_string(C) + " " + std::string(granularity_name(s.granularity));
  if (rotate) n += " rot";
  if (!s.scaled) n += " unscaled";
  if (s.stochastic) n += " sr";
  n += want_o && want_t ? " out+out_t" : (want_o ? " out" : " out_t");
  if (fill == Fill::zero_rows) n += " zero-groups";
  if (fill == Fill::all_zero) n += " all-zero";
  if (fill == Fill::nan) n += " nan";
  return n;
}

// Median time of the GPU call in milliseconds.
template <class F>
double time_ms(F&& f) {
  cudaStream_t s = current_stream();
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  f();  // warm-up (plans, allocator)
  std::vector<float> ms;
  for (int i = 0; i < 7; ++i) {
    CUDA_CHECK(cudaEventRecord(a, s));
    f();
    CUDA_CHECK(cudaEventRecord(b, s));
    CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

struct Input {
  Tensor cpu;      // as given (f32 or bf16), host
  Tensor gpu;      // the same on the GPU
  Tensor rotated;  // host f32, hadamard_rows(cpu): the CPU twin's input when rotating
};

Input make(int64_t R, int64_t C, DType dtype, Fill fill, uint64_t seed) {
  Input in;
  in.cpu = make_input(R, C, dtype, fill, seed);
  in.gpu = in.cpu.to(Device::cuda);
  in.rotated = Tensor::empty({R, C}, DType::f32);
  hadamard_rows(in.cpu, in.rotated);
  return in;
}

CheckResult run_case(const Input& in, const QuantSpec& spec, bool rotate, bool want_o, bool want_t, Fill fill,
                     bool timed) {
  const int64_t R = in.cpu.size(0), C = in.cpu.size(1);
  CheckResult res;
  res.name = case_name(R, C, in.cpu.dtype(), spec, rotate, want_o, want_t, fill);
  res.tolerance = rotate ? kRotatedFraction : 0.0;
  try {
    QTensor go, gt, co, ct;
    quantize(in.gpu, spec, rotate, want_o ? &go : nullptr, want_t ? &gt : nullptr);
    // The CPU twin quantizes the CPU rotation (what quantize(x, rotate=true) does on the CPU).
    quantize(rotate ? in.rotated : in.cpu, spec, false, want_o ? &co : nullptr, want_t ? &ct : nullptr);
    Compare cmp;
    if (want_o) compare(go, co, "out", cmp);
    if (want_t) compare(gt, ct, "out_t", cmp);
    res.error = cmp.n ? static_cast<double>(cmp.mismatches) / cmp.n : 0.0;
    const bool codes_ok = cmp.far == 0 && res.error <= res.tolerance;
    const bool scales_ok = !cmp.scale_nan_mismatch && cmp.scale_err <= kScaleTolerance;
    res.ok = codes_ok && scales_ok;
    char buf[256];
    std::snprintf(buf, sizeof buf, "%lld of %lld codes differ (%lld by more than one step); max scale error %.3g",
                  static_cast<long long>(cmp.mismatches), static_cast<long long>(cmp.n),
                  static_cast<long long>(cmp.far), cmp.scale_err);
    res.detail = buf;
    if (!cmp.first.empty()) res.detail += "; first: " + cmp.first;
    if (timed) {
      const double ms = time_ms([&] { quantize(in.gpu, spec, rotate, want_o ? &go : nullptr, want_t ? &gt : nullptr); });
      // Bytes moved, summed over the passes: pass 1 reads x; pass 2 reads x and
      // writes the row-major codes (out's, and the transposed copy's own where
      // its groups differ); the transpose reads and writes R*C bytes.
      const double x_bytes = static_cast<double>(in.cpu.nbytes()), q = static_cast<double>(R * C);
      const bool same = !spec.scaled || spec.granularity == Granularity::tensor ||
                        spec.granularity == Granularity::block128x128;
      double bytes = (spec.scaled ? x_bytes : 0.0) + x_bytes;
      bytes += (want_o || same ? q : 0.0) + (want_t && !same ? q : 0.0) + (want_t ? 2 * q : 0.0);
      std::snprintf(buf, sizeof buf, "; %.3f ms, %.0f GB/s", ms, bytes / ms * 1e-6);
      res.detail += buf;
    }
  } catch (const std::exception& e) {
    res.ok = false;
    res.detail = std::string("threw: ") + e.what();
  }
  return res;
}

// dequantize and fake_quantize on the GPU against the CPU: exact (same decode,
// same f32 product, same bf16 rounding).
CheckResult run_dequantize(const Input& in, const QuantSpec& spec, DType out_dtype) {
  const int64_t R = in.cpu.size(0), C = in.cpu.size(1);
  CheckResult res;
  res.name = "dequantize+fake_quantize " + std::string(dtype_name(spec.dtype)) + "->" +
             std::string(dtype_name(out_dtype)) + " " + std::to_string(R) + "x" + std::to_string(C) + " " +
             std::string(granularity_name(spec.granularity));
  try {
    QTensor q;
    quantize(in.cpu, spec, false, &q, nullptr);
    QTensor qg{q.data.to(Device::cuda), q.scale.to(Device::cuda), q.granularity};
    Tensor dc = Tensor::empty({R, C}, out_dtype), dg = Tensor::empty({R, C}, out_dtype, Device::cuda);
    dequantize(q, dc);
    dequantize(qg, dg);
    Tensor fc = Tensor::empty({R, C}, out_dtype), fg = Tensor::empty({R, C}, out_dtype, Device::cuda);
    fake_quantize(in.cpu, spec, fc);
    fake_quantize(in.gpu, spec, fg);
    const auto a = dg.to_floats(), b = dc.to_floats(), fa = fg.to_floats(), fb = fc.to_floats();
    int64_t diff = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))) ++diff;
      if (!(fa[i] == fb[i] || (std::isnan(fa[i]) && std::isnan(fb[i])))) ++diff;
    }
    res.error = static_cast<double>(diff);
    res.ok = diff == 0;
    res.detail = std::to_string(diff) + " values differ (dequantize and fake_quantize, max relative " +
                 std::to_string(std::max(relative_error(a, b), relative_error(fa, fb))) + ")";
  } catch (const std::exception& e) {
    res.ok = false;
    res.detail = std::string("threw: ") + e.what();
  }
  return res;
}

// No host synchronisation: the call must be capturable into a CUDA graph (a
// synchronising or allocating call fails the capture), and the graph must
// reproduce the eager result bit for bit.
CheckResult run_graph_capture(const Input& in, const QuantSpec& spec, bool rotate) {
  const int64_t R = in.cpu.size(0), C = in.cpu.size(1);
  CheckResult res;
  res.name = "quantize in a CUDA graph (no host sync) " + case_name(R, C, in.cpu.dtype(), spec, rotate, true, true,
                                                                   Fill::normal).substr(9);
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  try {
    StreamGuard guard(s);
    {  // warm up plans and the allocator's cache with two sets of blocks
      QTensor a, b, c, d;
      quantize(in.gpu, spec, rotate, &a, &b);
      quantize(in.gpu, spec, rotate, &c, &d);
    }
    QTensor eo, et, go, gt;
    quantize(in.gpu, spec, rotate, &eo, &et);
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    try {
      quantize(in.gpu, spec, rotate, &go, &gt);
    } catch (...) {
      cudaStreamEndCapture(s, &graph);
      cudaGetLastError();
      throw;
    }
    CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_CHECK(cudaGraphLaunch(exec, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    // compare() reads its second argument on the host.
    const auto on_host = [](const QTensor& q) {
      return QTensor{q.data.to(Device::cpu), q.scale.to(Device::cpu), q.granularity};
    };
    Compare cmp;
    compare(go, on_host(eo), "out", cmp);
    compare(gt, on_host(et), "out_t", cmp);
    res.error = static_cast<double>(cmp.mismatches);
    res.ok = cmp.mismatches == 0 && cmp.scale_err == 0.0 && !cmp.scale_nan_mismatch;
    res.detail = cmp.first.empty() ? "captured; graph result identical to the eager one" : "differs: " + cmp.first;
  } catch (const std::exception& e) {
    res.ok = false;
    res.detail = std::string("capture failed (a host synchronisation or allocation inside?): ") + e.what();
  }
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
  return res;
}

}  // namespace

std::vector<CheckResult> quantize_cuda_checks(bool full) {
  if (!cuda_available()) return {};
  std::vector<CheckResult> results;
  const DType formats[] = {DType::i8, DType::e4m3, DType::e5m2};
  const Granularity grans[] = {Granularity::tensor, Granularity::row, Granularity::block1x128,
                               Granularity::block128x128};
  struct Shape2 {
    int64_t R, C;
  };
  // 64 x 1024: vector path (C % 8 == 0) and word transposes; 130 x 300: scalar
  // path, partial 128-blocks, byte transposes, fallback block rotation; 256 x 896:
  // a 28 x 32 rotation (the H_K mix of hadamard_rotate_smem).
  const Shape2 small[] = {{64, 1024}, {130, 300}, {256, 896}};
  uint64_t seed = 100;
  for (const Shape2& sh : small) {
    for (DType in_dtype : {DType::f32, DType::bf16}) {
      const Input in = make(sh.R, sh.C, in_dtype, Fill::normal, ++seed);
      for (DType f : formats)
        for (Granularity g : grans)
          for (bool rotate : {false, true})
            for (bool sr : {false, true}) {
              QuantSpec s;
              s.dtype = f, s.granularity = g, s.stochastic = sr, s.seed = seed, s.stream = 3;
              results.push_back(run_case(in, s, rotate, true, true, Fill::normal, false));
            }
      // One copy at a time (other code paths: out_t alone, out alone), and unscaled casts.
      for (Granularity g : grans)
        for (bool rotate : {false, true}) {
          QuantSpec s;
          s.dtype = DType::e4m3, s.granularity = g;
          results.push_back(run_case(in, s, rotate, false, true, Fill::normal, false));
          results.push_back(run_case(in, s, rotate, true, false, Fill::normal, false));
        }
      for (DType f : formats)
        for (bool rotate : {false, true})
          for (bool sr : {false, true}) {
            QuantSpec s;
            s.dtype = f, s.granularity = Granularity::row, s.scaled = false, s.stochastic = sr, s.seed = seed;
            results.push_back(run_case(in, s, rotate, true, true, Fill::normal, false));
          }
    }
    // Zero groups (rotation keeps zero rows zero), an all-zero tensor, a NaN
    // (its group's scale must be NaN on both sides; rotated: its whole row).
    for (Fill fill : {Fill::zero_rows, Fill::all_zero, Fill::nan}) {
      const Input in = make(sh.R, sh.C, DType::bf16, fill, ++seed);
      for (DType f : formats)
        for (Granularity g : grans)
          for (bool rotate : {false, true}) {
            QuantSpec s;
            s.dtype = f, s.granularity = g;
            results.push_back(run_case(in, s, rotate, true, true, fill, false));
          }
    }
    const Input in = make(sh.R, sh.C, DType::f32, Fill::normal, ++seed);
    for (DType f : formats)
      for (Granularity g : grans) {
        QuantSpec s;
        s.dtype = f, s.granularity = g;
        results.push_back(run_dequantize(in, s, f == DType::e4m3 ? DType::bf16 : DType::f32));
      }
  }
  // The fused rotation at the widths it is tuned for: 2048, 4096 and 8192 (the S
  // rotation: 32, 64 and 128 threads per row, 8, 4 and 2 rows per block; and the
  // one-row kernels when a transposed copy has its own groups), 6144 = 12 x 512
  // and 14336 = 28 x 512 (the P rotation for bf16 rows, out's codes, round to
  // nearest; the fast one-row kernels with the K-mix otherwise). R = 27, 102, 25 and 41 end with a
  // partial group of rows (41 x 14336: rows longer than one chunk of the unrotated
  // kernel). Each copy alone and both, every mode; stochastic rounding where out's
  // codes are the only ones and where the transposed copy has its own groups.
  const Shape2 wide[] = {{27, 2048}, {102, 4096}, {25, 8192}, {19, 6144}, {41, 14336}};
  for (const Shape2& sh : wide) {
    for (DType in_dtype : {DType::bf16, DType::f32}) {
      if (in_dtype == DType::f32 && sh.C == 14336) continue;
      const Input in = make(sh.R, sh.C, in_dtype, Fill::normal, ++seed);
      for (DType f : formats)
        for (Granularity g : grans)
          for (bool rotate : {false, true})
            for (int copies = 0; copies < 3; ++copies) {
              QuantSpec s;
              s.dtype = f, s.granularity = g, s.seed = seed;
              s.stochastic = (copies == 2 && g != Granularity::tensor) || (copies == 0 && rotate);
              results.push_back(run_case(in, s, rotate, copies != 1, copies != 0, Fill::normal, false));
            }
    }
  }
  // The P rotation in every mode (the loop above sends out alone with stochastic
  // rounding), and with zero groups and a NaN.
  for (const Shape2 sh : {Shape2{19, 6144}, Shape2{41, 14336}}) {
    for (Fill fill : {Fill::normal, Fill::zero_rows, Fill::nan}) {
      const Input in = make(sh.R, sh.C, DType::bf16, fill, ++seed);
      for (DType f : formats)
        for (Granularity g : grans) {
          QuantSpec s;
          s.dtype = f, s.granularity = g;
          results.push_back(run_case(in, s, true, true, false, fill, false));
        }
      QuantSpec unscaled;
      unscaled.scaled = false;
      results.push_back(run_case(in, unscaled, true, true, false, fill, false));
    }
  }
  // 64 x 1024: the one-row kernels; 36 x 4096: the four-row kernels (rotated and not).
  for (const Shape2 sh : {Shape2{64, 1024}, Shape2{36, 4096}}) {
    const Input in = make(sh.R, sh.C, DType::bf16, Fill::normal, ++seed);
    for (Granularity g : grans) {
      QuantSpec s;
      s.dtype = DType::e4m3, s.granularity = g, s.stochastic = g == Granularity::row, s.seed = 1;
      results.push_back(run_graph_capture(in, s, true));
      if (sh.C == 4096 && g == Granularity::tensor) results.push_back(run_graph_capture(in, s, false));
    }
  }
  if (full) {
    // Llama sizes, bf16 activations; the first case is the performance target
    // (per-tensor e4m3 with rotation), each timed.
    const Shape2 big[] = {{8192, 4096}, {8192, 14336}, {4096, 11008}, {8192, 2048}, {8192, 8192}};
    for (const Shape2& sh : big) {
      const Input in = make(sh.R, sh.C, DType::bf16, Fill::normal, ++seed);
      struct Big {
        DType f;
        Granularity g;
        bool rotate, sr, want_o, want_t;
      };
      const Big cases[] = {
          {DType::e4m3, Granularity::tensor, true, false, true, false},
          {DType::e4m3, Granularity::tensor, true, false, true, true},
          {DType::e4m3, Granularity::row, true, false, true, true},
          {DType::e4m3, Granularity::block1x128, true, false, true, true},
          {DType::e4m3, Granularity::block128x128, true, false, true, true},
          {DType::i8, Granularity::tensor, true, false, true, true},
          {DType::i8, Granularity::row, false, false, true, true},
          {DType::e5m2, Granularity::block1x128, false, true, true, true},
          {DType::e4m3, Granularity::tensor, false, false, true, false},
      };
      for (const Big& b : cases) {
        QuantSpec s;
        s.dtype = b.f, s.granularity = b.g, s.stochastic = b.sr, s.seed = seed, s.stream = 9;
        results.push_back(run_case(in, s, b.rotate, b.want_o, b.want_t, Fill::normal, true));
      }
    }
  }
  return results;
}

#else

std::vector<CheckResult> quantize_cuda_checks(bool) { return {}; }

#endif

}  // namespace halo
