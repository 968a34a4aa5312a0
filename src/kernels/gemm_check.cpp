// GEMM self-checks: every dtype / scaling combination on CUDA (cuBLASLt) against the
// CPU implementation, with identical random inputs.
//
// Inputs: 8-bit operands are random codes (normal values spread over the format's
// range, then encoded) with random positive scales written through scale_index, so
// nothing depends on the quantizer; padding entries of the scale layouts are NaN, so
// a kernel that reads the wrong slot produces NaN. Element (r, c) of every operand
// and every scale is a function of (seed, r, c), so a band of rows can be rebuilt
// exactly on the CPU: for the large Llama shapes the CPU reference computes 256 rows
// of D (the GPU computes all of them) to keep the check fast.
//
// Tolerances (relative Frobenius error ||gpu - cpu|| / ||cpu||):
//   i8 x i8 -> i32         0: both sides are exact integer sums.
//   f32 output, f32/bf16   1e-5: products are exact in f32, only the f32 sums differ
//                          in order; an f32 sum of K random terms has relative error
//                          ~2^-24 sqrt(K/6) (1.5e-6 at K = 4096, 3e-6 at 14336) per side.
//   f32 output, fp8        5e-4: cuBLASLt promotes to an f32 accumulator (FAST_ACCUM off),
//                          but inside one tensor-core MMA Hopper adds FP8 products with
//                          only ~14 bits kept (DeepSeek-V3 report, 3.3.2): measured on an
//                          H100 1.0e-4..1.3e-4 at K = 256..512 (2026-11-23).
//                          1e-3 with fast_accum. A wrong scale or layout gives O(1).
//   f32 output, scaled i8  1e-6: exact int32 product; the GPU applies the scales with 3
//                          f32 roundings (<= 2.4e-7), the CPU with one.
//   bf16 output            4e-3: each side rounds once to bf16 (<= 2^-9 = 2e-3 relative);
//                          where the f32 values differ the two roundings may differ by one
//                          bf16 ulp for a few elements.
// Odd shapes: 8-bit operands with K % 16 != 0, FP8 with rows of D that are not a
// multiple of 16 bytes, and block scales with M or N not a multiple of 8 run padded
// (gemm.h) and must match; INT8 with block scales must fail with a clear error (CPU
// only). Shapes whose support is up to cuBLASLt's heuristic pass either way but say in
// the detail which happened.
#include "kernels/selfcheck.h"

#ifdef HALO_HAS_CUDA
#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <sstream>
#include <string>
#include <utility>

#include "core/allocator.h"
#include "core/cuda_check.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/stream.h"
#include "kernels/gemm.h"
#endif

namespace halo {

#ifndef HALO_HAS_CUDA
std::vector<CheckResult> gemm_cuda_checks(bool) { return {}; }
#else

namespace {

constexpr int kNone = -1;  // no bias

enum class Expect : uint8_t {
  match,     // must run and match the CPU
  error,     // must fail with a halo::Error containing `error_has`
  either,    // up to cuBLASLt: match, or a halo::Error naming gemm_nt
};

struct Case {
  DType a = DType::bf16, b = DType::bf16, out = DType::bf16;
  bool scaled = false;
  Granularity ga = Granularity::tensor, gb = Granularity::tensor;
  int64_t M = 64, N = 48, K = 256;
  float alpha = 1.0f;
  bool accumulate = false;
  int bias = kNone;  // a DType, or kNone
  bool fast_accum = false;
  bool own_stream = false;   // run on a freshly created stream
  bool offset_d = false;     // D is a view one row into a larger tensor (unaligned pointer)
  Expect expect = Expect::match;
  std::string error_has;
  uint64_t seed = 1;
};

std::string case_name(const Case& c) {
  std::ostringstream os;
  os << "gemm " << dtype_name(c.a) << " x " << dtype_name(c.b) << " -> " << dtype_name(c.out);
  if (c.scaled) os << " [" << granularity_name(c.ga) << " x " << granularity_name(c.gb) << "]";
  else if (is_8bit(c.a) && c.out != DType::i32) os << " [unscaled]";
  os << " " << c.M << "x" << c.N << "x" << c.K;
  if (c.alpha != 1.0f) os << " alpha=" << c.alpha;
  if (c.bias != kNone) os << " +bias(" << dtype_name(static_cast<DType>(c.bias)) << ")";
  if (c.accumulate) os << " +acc";
  if (c.fast_accum) os << " fast_accum";
  if (c.own_stream) os << " (own stream)";
  if (c.offset_d) os << " (unaligned D view)";
  return os.str();
}

float spread_of(DType t) {
  switch (t) {
    case DType::e4m3: return 64.0f;
    case DType::e5m2: return 4096.0f;
    case DType::i8: return 40.0f;
    default: return 1.0f;
  }
}

// Rows [r0, r0 + rows) of the logical [R, C] operand of dtype t.
Tensor make_data(DType t, int64_t C, uint64_t seed, int64_t r0, int64_t rows) {
  Tensor x = Tensor::empty({rows, C}, t);
  const float spread = spread_of(t);
  void* p = x.data();
#pragma omp parallel for
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c)
      store_float(p, t, r * C + c, spread * normal01(seed, 0, (r0 + r) * C + c));
  return x;
}

// Scales of rows [r0, r0 + rows) (r0 a multiple of 128) in the layout of g, NaN padding.
Tensor make_scales(Granularity g, DType t, int64_t C, uint64_t seed, int64_t r0, int64_t rows) {
  Tensor s = Tensor::empty(scale_shape(g, rows, C), DType::f32);
  float* p = s.data_as<float>();
  std::fill(p, p + s.numel(), NAN);
  const float base = 1.0f / spread_of(t);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; c += 128) {
      const int64_t gr = r0 + r, gc = c / 128;
      int64_t key = 0;  // the group in the whole operand
      switch (g) {
        case Granularity::tensor: key = 0; break;
        case Granularity::row: key = gr; break;
        case Granularity::block1x128: key = gr * 65536 + gc; break;
        case Granularity::block128x128: key = (gr / 128) * 65536 + gc; break;
      }
      p[scale_index(g, r, c, rows, C)] = base * (0.5f + uniform01(seed, 1, static_cast<uint64_t>(key)));
    }
  return s;
}

QTensor to_device(const QTensor& q) {
  QTensor d;
  d.data = q.data.to(Device::cuda);
  d.scale = q.scale.to(Device::cuda);
  d.granularity = q.granularity;
  return d;
}

double tolerance_of(const Case& c) {
  if (c.out == DType::i32) return 0.0;
  if (c.out == DType::bf16) return 4e-3;
  if (is_fp8(c.a)) return c.fast_accum ? 1e-3 : 5e-4;
  if (c.a == DType::i8) return 1e-6;
  return 1e-5;
}

// Runs the product with the operands given (host or device) into d.
void run_gemm(const Case& c, const QTensor& a, const QTensor& b, Tensor& d, const Tensor* bias) {
  GemmOptions opt;
  opt.alpha = c.alpha;
  opt.accumulate = c.accumulate;
  opt.bias = bias;
  opt.fast_accum = c.fast_accum;
  if (c.scaled)
    gemm_nt(a, b, d, opt);
  else
    gemm_nt(a.data, b.data, d, opt);
}

struct Compared {
  double error = 0.0;
  std::string note;
};

Compared compare(const Tensor& gpu, const Tensor& cpu, bool exact) {
  Compared r;
  if (exact) {  // int32 element by element (through float, values above 2^24 would merge)
    const Tensor g = gpu.to(Device::cpu);
    const int32_t* pg = g.data_as<int32_t>();
    const int32_t* ph = cpu.data_as<int32_t>();
    double worst = 0.0;
    int64_t bad = 0;
    for (int64_t i = 0; i < g.numel(); ++i) {
      const double diff = std::fabs(static_cast<double>(pg[i]) - ph[i]);
      bad += diff != 0.0;
      worst = std::max(worst, diff);
    }
    r.error = worst;
    if (bad) r.note = std::to_string(bad) + " of " + std::to_string(g.numel()) + " elements differ";
    return r;
  }
  r.error = relative_error(gpu.to_floats(), cpu.to_floats());
  return r;
}

CheckResult run_case(const Case& c) {
  CheckResult res;
  res.name = case_name(c);
  res.tolerance = tolerance_of(c);
  cudaStream_t stream = nullptr;
  try {
    // The CPU reference covers a band of rows of big outputs.
    const int64_t r0 = c.M > 1024 ? (c.M / 2) / 128 * 128 : 0;
    const int64_t band = c.M > 1024 ? std::min<int64_t>(256, c.M - r0) : c.M;
    const uint64_t sa = c.seed * 16 + 1, sb = c.seed * 16 + 2, sd = c.seed * 16 + 3;

    QTensor a_full, b_full, a_band;
    a_full.data = make_data(c.a, c.K, sa, 0, c.M);
    a_full.granularity = a_band.granularity = c.ga;
    b_full.data = make_data(c.b, c.K, sb, 0, c.N);
    b_full.granularity = c.gb;
    a_band.data = band == c.M ? a_full.data : make_data(c.a, c.K, sa, r0, band);
    if (c.scaled) {
      a_full.scale = make_scales(c.ga, c.a, c.K, sa, 0, c.M);
      b_full.scale = make_scales(c.gb, c.b, c.K, sb, 0, c.N);
      a_band.scale = band == c.M ? a_full.scale : make_scales(c.ga, c.a, c.K, sa, r0, band);
    }
    Tensor bias_h, bias_d;
    if (c.bias != kNone) {
      bias_h = make_data(static_cast<DType>(c.bias), c.N, sd + 7, 0, 1).view({c.N});
      bias_d = bias_h.to(Device::cuda);
    }
    Tensor d0 = make_data(c.out == DType::i32 ? DType::i8 : c.out, c.N, sd, 0, c.M);  // start of D
    if (c.out == DType::i32) d0 = d0.to(DType::i32);

    // CPU: the band.
    Tensor d_cpu = Tensor::empty({band, c.N}, c.out);
    d_cpu.copy_from(d0.rows(r0, band));
    run_gemm(c, a_band, b_full, d_cpu, c.bias != kNone ? &bias_h : nullptr);

    // GPU: everything, twice (the second call runs from the cached plan).
    if (c.own_stream) CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    StreamGuard guard(c.own_stream ? stream : current_stream());
    const QTensor a_dev = c.scaled ? to_device(a_full) : QTensor{a_full.data.to(Device::cuda), {}, c.ga};
    const QTensor b_dev = c.scaled ? to_device(b_full) : QTensor{b_full.data.to(Device::cuda), {}, c.gb};
    Tensor storage = Tensor::empty({c.M + (c.offset_d ? 1 : 0), c.N}, c.out, Device::cuda);
    Tensor d_gpu = c.offset_d ? storage.rows(1, c.M) : storage;
    Tensor first;
    for (int run = 0; run < 2; ++run) {
      d_gpu.copy_from(d0);
      run_gemm(c, a_dev, b_dev, d_gpu, c.bias != kNone ? &bias_d : nullptr);
      if (run == 0) first = d_gpu.to(Device::cpu);
    }
    CUDA_CHECK(cudaStreamSynchronize(current_stream()));
    const Tensor gpu_band = d_gpu.rows(r0, band).to(Device::cpu);
    const Compared cmp = compare(gpu_band, d_cpu, c.out == DType::i32);
    const Tensor second = d_gpu.to(Device::cpu);
    const bool repeat_same = std::memcmp(first.data(), second.data(), first.nbytes()) == 0;

    res.error = cmp.error;
    res.ok = std::isfinite(cmp.error) && cmp.error <= res.tolerance;
    std::ostringstream os;
    os << (res.ok ? "matches the CPU" : "MISMATCH with the CPU");
    if (!cmp.note.empty()) os << " (" << cmp.note << ")";
    if (band != c.M) os << "; CPU reference on rows [" << r0 << ", " << r0 + band << ")";
    os << "; repeated call " << (repeat_same ? "bitwise identical" : "NOT bitwise identical");
    if (c.expect == Expect::error) {
      res.ok = false;
      os << "; expected an error mentioning '" << c.error_has << "' but it ran";
    } else if (c.expect == Expect::either) {
      os << " (cuBLASLt supports this shape)";
    }
    res.detail = os.str();
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    if (c.expect == Expect::error) {
      res.ok = msg.find(c.error_has) != std::string::npos;
      res.detail = std::string(res.ok ? "fails as expected: " : "WRONG error: ") + msg;
    } else if (c.expect == Expect::either) {
      res.ok = msg.find("gemm_nt") != std::string::npos;
      res.detail = std::string("not supported by cuBLASLt here (clean error): ") + msg;
    } else {
      res.ok = false;
      res.detail = std::string("FAILED: ") + msg;
    }
    cudaGetLastError();  // leave no sticky launch error behind for the next case
  }
  if (stream) {
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
  }
  return res;
}

// res from a float comparison of the GPU's d with the CPU's, against res.tolerance.
void judge(CheckResult& res, const Tensor& d_gpu, const Tensor& d_cpu) {
  const Compared cmp = compare(d_gpu, d_cpu, false);
  res.error = cmp.error;
  res.ok = std::isfinite(cmp.error) && cmp.error <= res.tolerance;
  res.detail = res.ok ? "matches the CPU" : "MISMATCH with the CPU";
}
void failed(CheckResult& res, const std::exception& e) {
  res.ok = false;
  res.detail = std::string("FAILED: ") + e.what();
  cudaGetLastError();
}

// A random i32 product [M, N] and i8 operands A [M, 16], B [N, 16] with scales.
struct I32Product {
  Tensor acc;
  QTensor a, b;
};
I32Product random_i32_product(Granularity ga, Granularity gb, int64_t M, int64_t N, uint64_t seed) {
  I32Product p;
  p.acc = Tensor::empty({M, N}, DType::i32);
  int32_t* q = p.acc.data_as<int32_t>();
  for (int64_t i = 0; i < M * N; ++i) q[i] = static_cast<int32_t>(4e8 * (uniform01(seed, 5, i) - 0.5));
  p.a.data = make_data(DType::i8, 16, seed + 1, 0, M);
  p.a.scale = make_scales(ga, DType::i8, 16, seed + 1, 0, M);
  p.a.granularity = ga;
  p.b.data = make_data(DType::i8, 16, seed + 2, 0, N);
  p.b.scale = make_scales(gb, DType::i8, 16, seed + 2, 0, N);
  p.b.granularity = gb;
  return p;
}

// scale_i32 on its own: random i32 products, per-tensor / per-row scales.
CheckResult run_scale_i32(Granularity ga, Granularity gb, DType out, int64_t M, int64_t N, uint64_t seed) {
  CheckResult res;
  std::ostringstream name;
  name << "scale_i32 [" << granularity_name(ga) << " x " << granularity_name(gb) << "] -> "
       << dtype_name(out) << " " << M << "x" << N << " alpha=0.5 +bias(f32) +acc";
  res.name = name.str();
  res.tolerance = out == DType::bf16 ? 4e-3 : 1e-6;
  try {
    const I32Product p = random_i32_product(ga, gb, M, N, seed);
    const Tensor& acc = p.acc;
    const QTensor &a = p.a, &b = p.b;
    const Tensor bias = make_data(DType::f32, N, seed + 3, 0, 1).view({N});
    const Tensor d0 = make_data(out, N, seed + 4, 0, M);
    GemmOptions opt;
    opt.alpha = 0.5f;
    opt.accumulate = true;
    opt.bias = &bias;
    Tensor d_cpu = Tensor::empty({M, N}, out);
    d_cpu.copy_from(d0);
    scale_i32(acc, a, b, d_cpu, opt);
    const Tensor bias_dev = bias.to(Device::cuda);
    opt.bias = &bias_dev;
    Tensor d_gpu = d0.to(Device::cuda);
    scale_i32(acc.to(Device::cuda), to_device(a), to_device(b), d_gpu, opt);
    judge(res, d_gpu, d_cpu);
  } catch (const std::exception& e) {
    failed(res, e);
  }
  return res;
}

bool is_block(Granularity g) {
  return g == Granularity::block1x128 || g == Granularity::block128x128;
}

constexpr Granularity kGranularities[] = {Granularity::tensor, Granularity::row,
                                          Granularity::block1x128, Granularity::block128x128};

Case make(DType a, DType b, DType out, int64_t M, int64_t N, int64_t K) {
  Case c;
  c.a = a;
  c.b = b;
  c.out = out;
  c.M = M;
  c.N = N;
  c.K = K;
  return c;
}

Case scaled(Case c, Granularity ga, Granularity gb) {
  c.scaled = true;
  c.ga = ga;
  c.gb = gb;
  return c;
}

Case with(Case c, float alpha, bool accumulate, int bias) {
  c.alpha = alpha;
  c.accumulate = accumulate;
  c.bias = bias;
  return c;
}

std::vector<Case> small_cases() {
  std::vector<Case> cs;
  const int f32 = static_cast<int>(DType::f32), bf16 = static_cast<int>(DType::bf16);
  const DType F = DType::f32, B = DType::bf16, E4 = DType::e4m3, E5 = DType::e5m2, I8 = DType::i8;
  // Shapes: small; K = 208 ends in a partial 128-block; 256 x 384 x 512 several blocks.
  const int64_t shapes[][3] = {{64, 48, 256}, {136, 72, 208}, {256, 384, 512}};
  for (const auto& s : shapes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    // f32 and bf16, plain / alpha + bias / accumulate + bias (fused and separate bias).
    cs.push_back(make(F, F, F, M, N, K));
    cs.push_back(with(make(F, F, F, M, N, K), 0.5f, true, f32));
    for (DType out : {B, F}) {
      cs.push_back(make(B, B, out, M, N, K));
      cs.push_back(with(make(B, B, out, M, N, K), -0.75f, false, bf16));
      cs.push_back(with(make(B, B, out, M, N, K), 1.0f, true, f32));
    }
    // FP8 unscaled (scale 1).
    cs.push_back(make(E4, E4, B, M, N, K));
    cs.push_back(make(E4, E5, F, M, N, K));
    cs.push_back(with(make(E5, E4, B, M, N, K), 2.0f, true, bf16));
    // FP8, every granularity pair (direct and expanded layouts). With block scales and
    // K % 128 != 0 (a partial last block) cuBLASLt may refuse: then a clean error is fine.
    for (Granularity ga : kGranularities)
      for (Granularity gb : kGranularities) {
        const bool partial = (is_block(ga) || is_block(gb)) && K % 128 != 0;
        std::vector<Case> fp8 = {scaled(make(E4, E4, B, M, N, K), ga, gb)};
        if (M != 64) {  // f32 output, e5m2, alpha, accumulate, bias
          fp8.push_back(with(scaled(make(E4, E5, F, M, N, K), ga, gb), 0.5f, true, bf16));
          fp8.push_back(with(scaled(make(E5, E4, B, M, N, K), ga, gb), 1.0f, false, f32));
        }
        for (Case& c : fp8) {
          if (partial) c.expect = Expect::either;
          cs.push_back(c);
        }
      }
    Case fast = scaled(make(E4, E4, F, M, N, K), Granularity::row, Granularity::row);
    fast.fast_accum = true;
    cs.push_back(fast);
    // INT8: the raw int32 product, and scaled per tensor / per row.
    cs.push_back(make(I8, I8, DType::i32, M, N, K));
    cs.push_back(with(make(I8, I8, DType::i32, M, N, K), 1.0f, true, kNone));
    for (Granularity ga : {Granularity::tensor, Granularity::row})
      for (Granularity gb : {Granularity::tensor, Granularity::row}) {
        cs.push_back(scaled(make(I8, I8, B, M, N, K), ga, gb));
        cs.push_back(with(scaled(make(I8, I8, F, M, N, K), ga, gb), -1.5f, true, bf16));
      }
  }
  // Another stream, and a D that is not 16-byte aligned.
  for (Case c : {make(B, B, B, 256, 384, 512),
                 scaled(make(E4, E4, B, 256, 384, 512), Granularity::row, Granularity::row),
                 scaled(make(I8, I8, F, 256, 384, 512), Granularity::row, Granularity::tensor)}) {
    c.own_stream = true;
    cs.push_back(c);
  }
  Case unaligned = with(make(B, B, B, 33, 37, 64), 1.0f, true, bf16);
  unaligned.offset_d = true;
  unaligned.expect = Expect::either;  // 2-byte aligned D: up to cuBLASLt's kernels
  cs.push_back(unaligned);
  // Odd shapes.
  cs.push_back(with(make(B, B, F, 33, 17, 45), 1.0f, true, f32));  // bf16: any shape
  // K % 16 != 0, M % 8 != 0 with block scales, N odd: run padded (K = 100, M = 100 are
  // the token counts of a layer's dW and Y with 100 tokens).
  cs.push_back(make(E4, E4, B, 64, 48, 40));
  cs.push_back(scaled(make(E4, E4, B, 64, 48, 40), Granularity::row, Granularity::row));
  cs.push_back(make(I8, I8, DType::i32, 64, 48, 40));
  cs.push_back(with(make(I8, I8, DType::i32, 64, 48, 40), 1.0f, true, kNone));
  cs.push_back(scaled(make(E4, E4, B, 36, 48, 256), Granularity::block1x128, Granularity::block128x128));
  const int64_t odd[][3] = {{64, 112, 100}, {100, 64, 112}, {100, 100, 100}, {37, 20, 300}};
  for (const auto& s : odd) {
    const int64_t M = s[0], N = s[1], K = s[2];
    for (Granularity g : {Granularity::tensor, Granularity::row}) {
      cs.push_back(scaled(make(I8, I8, F, M, N, K), g, g));
      cs.push_back(with(scaled(make(I8, I8, B, M, N, K), g, g), 0.5f, true, bf16));
    }
    for (Granularity g : kGranularities) {
      cs.push_back(scaled(make(E4, E4, B, M, N, K), g, g));
      cs.push_back(with(scaled(make(E4, E5, F, M, N, K), g, g), -0.75f, true, f32));
      cs.push_back(with(scaled(make(E5, E4, B, M, N, K), g, g), 1.0f, false, bf16));
    }
    cs.push_back(with(scaled(make(E4, E4, B, M, N, K), Granularity::block1x128, Granularity::block128x128),
                      1.0f, true, bf16));
  }
  Case i8block = scaled(make(I8, I8, B, 64, 48, 256), Granularity::block1x128, Granularity::row);
  i8block.expect = Expect::error;
  i8block.error_has = "CPU only";
  cs.push_back(i8block);
  for (int64_t n : {20, 37}) {  // FP8: D rows of 40 / 74 / 148 bytes run padded
    cs.push_back(scaled(make(E4, E4, B, 64, n, 256), Granularity::tensor, Granularity::tensor));
    cs.push_back(scaled(make(E4, E4, F, 33, n, 256), Granularity::row, Granularity::row));
    Case i = make(I8, I8, DType::i32, 33, n, 256);  // up to cuBLASLt (it ran these on an H100)
    i.expect = Expect::either;
    cs.push_back(i);
  }
  return cs;
}

std::vector<Case> full_cases() {
  std::vector<Case> cs;
  const DType B = DType::bf16, F = DType::f32, E4 = DType::e4m3, E5 = DType::e5m2, I8 = DType::i8;
  const int64_t shapes[][3] = {{8192, 4096, 4096}, {8192, 14336, 4096}, {8192, 4096, 14336}, {4096, 2048, 8192}};
  for (const auto& s : shapes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    cs.push_back(with(make(B, B, B, M, N, K), 1.0f, false, static_cast<int>(B)));
    cs.push_back(scaled(make(E4, E4, B, M, N, K), Granularity::tensor, Granularity::tensor));
    cs.push_back(scaled(make(E4, E4, B, M, N, K), Granularity::row, Granularity::row));
    cs.push_back(scaled(make(E4, E4, B, M, N, K), Granularity::block1x128, Granularity::block128x128));
    cs.push_back(with(scaled(make(E5, E4, F, M, N, K), Granularity::row, Granularity::row), 1.0f, true, kNone));
    cs.push_back(make(I8, I8, DType::i32, M, N, K));
    cs.push_back(scaled(make(I8, I8, B, M, N, K), Granularity::row, Granularity::row));
  }
  return cs;
}

}  // namespace

// Token count x width: the one-pass kernel (8192 = 8 x 1024, 1024 = 1 x 1024, widths
// of 16k) and the fallbacks (96 = 12 x 8 rows; 37 columns).
std::vector<CheckResult> gemm_cuda_checks(bool full) {
  if (!cuda_available()) return {};
  std::vector<Case> cases = small_cases();
  if (full) {
    const auto more = full_cases();
    cases.insert(cases.end(), more.begin(), more.end());
  }
  std::vector<CheckResult> out;
  uint64_t seed = 1;
  for (Case& c : cases) {
    c.seed = seed++;
    out.push_back(run_case(c));
  }
  for (Granularity ga : {Granularity::tensor, Granularity::row})
    for (Granularity gb : {Granularity::tensor, Granularity::row})
      for (DType out_t : {DType::f32, DType::bf16})
        for (int64_t n : {48, 37})  // vectorized (N % 4 == 0) and scalar paths
          out.push_back(run_scale_i32(ga, gb, out_t, 67, n, seed++));
  return out;
}

#endif  // HALO_HAS_CUDA

}  // namespace halo
