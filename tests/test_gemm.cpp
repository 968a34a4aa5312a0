// GEMMs on the CPU against a float64 triple loop, error messages, and (on a GPU
// machine) the CUDA self-checks against the CPU.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/numerics.h"
#include "core/rng.h"
#include "kernels/gemm.h"
#include "testing.h"

namespace halo {
namespace {

constexpr Granularity kAllGranularities[] = {Granularity::tensor, Granularity::row,
                                             Granularity::block1x128, Granularity::block128x128};

// A host [R, C] operand of random values of dtype dt (8-bit: random codes spread over
// the format's range).
Tensor random_operand(DType dt, int64_t R, int64_t C, uint64_t seed) {
  Tensor t = Tensor::empty({R, C}, dt);
  const float spread = dt == DType::e4m3 ? 64.0f : dt == DType::e5m2 ? 4096.0f : dt == DType::i8 ? 40.0f : 1.0f;
  for (int64_t i = 0; i < R * C; ++i) store_float(t.data(), dt, i, spread * normal01(seed, 0, i));
  return t;
}

// Random positive scales in the layout of g; padding entries are NaN, so reading one
// shows up in the result.
Tensor random_scales(Granularity g, int64_t R, int64_t C, uint64_t seed) {
  Tensor s = Tensor::empty(scale_shape(g, R, C), DType::f32);
  float* p = s.data_as<float>();
  for (int64_t i = 0; i < s.numel(); ++i) p[i] = NAN;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; c += 128) {
      const int64_t i = scale_index(g, r, c, R, C);
      p[i] = 0.01f * std::exp2(4.0f * uniform01(seed, 1, i) - 2.0f);
    }
  return s;
}

QTensor random_q(DType dt, Granularity g, int64_t R, int64_t C, uint64_t seed) {
  QTensor q;
  q.data = random_operand(dt, R, C, seed);
  q.scale = random_scales(g, R, C, seed + 1000);
  q.granularity = g;
  return q;
}

double value(const Tensor& t, int64_t i) { return load_float(t.data(), t.dtype(), i); }

double scale_at(const QTensor* q, int64_t r, int64_t c) {
  if (!q) return 1.0;
  return q->scale.data_as<float>()[scale_index(q->granularity, r, c, q->rows(), q->cols())];
}

// The float64 reference: every product scaled by its own elements' scales.
std::vector<double> reference(const Tensor& a, const QTensor* qa, const Tensor& b, const QTensor* qb,
                              const GemmOptions& opt, const Tensor* d0) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  std::vector<double> ref(static_cast<size_t>(M * N));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double sum = 0.0;
      for (int64_t k = 0; k < K; ++k)
        sum += value(a, i * K + k) * value(b, j * K + k) * scale_at(qa, i, k) * scale_at(qb, j, k);
      double v = opt.alpha * sum;
      if (opt.bias) v += value(*opt.bias, j);
      if (opt.accumulate) v += value(*d0, i * N + j);
      ref[i * N + j] = v;
    }
  return ref;
}

double rel_error(const Tensor& got, const std::vector<double>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = value(got, static_cast<int64_t>(i)) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

// f32 output: inputs and products are exact in f32, only the f32 sums round
// (K <= 512 here: ~1e-7). bf16 output: one rounding to 8 bits, <= 2^-9 relative.
double tolerance(DType out) { return out == DType::bf16 ? 4e-3 : 1e-6; }

struct Outputs {
  Tensor d0, bias;
  GemmOptions opt;
};

// Output, start value of D (for accumulate) and options: alpha, accumulate, bias.
Outputs make_setup(DType out, int64_t M, int64_t N, float alpha, bool accumulate, DType bias, uint64_t seed) {
  Outputs s;
  s.opt.alpha = alpha;
  s.opt.accumulate = accumulate;
  if (accumulate) s.d0 = testing::random_normal({M, N}, seed + 7, 3.0f, out);
  if (bias != DType::i32) {
    s.bias = testing::random_normal({N}, seed + 8, 2.0f, bias);
    s.opt.bias = &s.bias;
  }
  return s;
}

Tensor start_d(const Outputs& s, DType out, int64_t M, int64_t N) {
  Tensor d = Tensor::empty({M, N}, out);
  if (s.opt.accumulate) d.copy_from(s.d0);
  return d;
}

// Options tried for each dtype pair: plain, alpha + bias, accumulate + bias.
struct Variant {
  float alpha;
  bool accumulate;
  bool bias;
};
constexpr Variant kVariants[] = {{1.0f, false, false}, {-0.75f, false, true}, {1.5f, true, true}};

std::string label(const Variant& v, DType out) {
  return std::string("out ") + std::string(dtype_name(out)) + " alpha " + std::to_string(v.alpha) +
         (v.accumulate ? " accumulate" : "") + (v.bias ? " bias" : "");
}

TEST(Gemm, UnscaledPairsMatchFloat64) {
  struct Pair {
    DType a, b;
  };
  const Pair pairs[] = {{DType::f32, DType::f32}, {DType::bf16, DType::bf16}, {DType::e4m3, DType::e4m3},
                        {DType::e4m3, DType::e5m2}, {DType::e5m2, DType::e4m3}};
  const int64_t M = 19, N = 23, K = 200;
  uint64_t seed = 10;
  for (const Pair& p : pairs) {
    const Tensor a = random_operand(p.a, M, K, ++seed), b = random_operand(p.b, N, K, ++seed);
    for (DType out : {DType::f32, DType::bf16}) {
      if (p.a == DType::f32 && out != DType::f32) continue;
      for (const Variant& v : kVariants) {
        const DType bias_dt = v.bias ? (out == DType::f32 ? DType::bf16 : DType::f32) : DType::i32;
        Outputs s = make_setup(out, M, N, v.alpha, v.accumulate, bias_dt, ++seed);
        Tensor d = start_d(s, out, M, N);
        gemm_nt(a, b, d, s.opt);
        const double err = rel_error(d, reference(a, nullptr, b, nullptr, s.opt, &s.d0));
        EXPECT_LT(err, tolerance(out)) << dtype_name(p.a) << " x " << dtype_name(p.b) << " "
                                        << label(v, out);
      }
    }
  }
}

TEST(Gemm, TransposedFormsMatchFloat64) {
  // D = op(A) op(B) with op(A) [M, K], op(B) [K, N]; the reference works on the
  // explicit transposes (gemm_nt form).
  const int64_t M = 13, N = 29, K = 70;
  uint64_t seed = 50;
  for (DType dt : {DType::f32, DType::bf16})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const Tensor a = random_operand(dt, ta ? K : M, ta ? M : K, ++seed);
        const Tensor b = random_operand(dt, tb ? N : K, tb ? K : N, ++seed);
        Tensor a_mk = Tensor::empty({M, K}, dt), b_nk = Tensor::empty({N, K}, dt);
        for (int64_t i = 0; i < M; ++i)
          for (int64_t k = 0; k < K; ++k)
            store_float(a_mk.data(), dt, i * K + k, value(a, ta ? k * M + i : i * K + k));
        for (int64_t j = 0; j < N; ++j)
          for (int64_t k = 0; k < K; ++k)
            store_float(b_nk.data(), dt, j * K + k, value(b, tb ? j * K + k : k * N + j));
        Outputs s = make_setup(DType::f32, M, N, 0.5f, true, DType::f32, ++seed);
        Tensor d = start_d(s, DType::f32, M, N);
        gemm(a, ta, b, tb, d, s.opt);
        EXPECT_LT(rel_error(d, reference(a_mk, nullptr, b_nk, nullptr, s.opt, &s.d0)), 1e-6)
            << dtype_name(dt) << " ta " << ta << " tb " << tb;
      }
  // Shapes are checked in the transposed terms.
  const Tensor a = random_operand(DType::f32, 8, 4, 1), b = random_operand(DType::f32, 8, 3, 2);
  Tensor d = Tensor::empty({4, 3}, DType::f32);
  gemm(a, true, b, false, d, {});  // [4, 8] x [8, 3]
  Tensor d_bad = Tensor::empty({8, 3}, DType::f32);
  EXPECT_THROW(gemm(a, false, b, false, d_bad, {}), Error);
}

TEST(Gemm, ScaledFp8EveryGranularityPair) {
  // M, N not multiples of 4 or 128 and K = 300 (two full 128-chunks and a partial one):
  // block scales change inside the sum, and padded scale layouts are exercised.
  const int64_t M = 37, N = 130, K = 300;
  uint64_t seed = 100;
  for (Granularity ga : kAllGranularities)
    for (Granularity gb : kAllGranularities)
      for (DType out : {DType::f32, DType::bf16}) {
        const QTensor a = random_q(DType::e4m3, ga, M, K, ++seed);
        const QTensor b = random_q(out == DType::f32 ? DType::e5m2 : DType::e4m3, gb, N, K, ++seed);
        const Variant& v = kVariants[seed % 3];
        Outputs s = make_setup(out, M, N, v.alpha, v.accumulate, v.bias ? DType::bf16 : DType::i32, ++seed);
        Tensor d = start_d(s, out, M, N);
        gemm_nt(a, b, d, s.opt);
        const double err = rel_error(d, reference(a.data, &a, b.data, &b, s.opt, &s.d0));
        EXPECT_LT(err, tolerance(out)) << granularity_name(ga) << " x " << granularity_name(gb) << " "
                                        << label(v, out);
      }
}

TEST(Gemm, ScaledInt8EveryGranularityPair) {
  const int64_t M = 21, N = 34, K = 260;
  uint64_t seed = 200;
  for (Granularity ga : kAllGranularities)
    for (Granularity gb : kAllGranularities)
      for (const Variant& v : kVariants) {
        const DType out = v.accumulate ? DType::bf16 : DType::f32;
        const QTensor a = random_q(DType::i8, ga, M, K, ++seed), b = random_q(DType::i8, gb, N, K, ++seed);
        Outputs s = make_setup(out, M, N, v.alpha, v.accumulate, v.bias ? DType::f32 : DType::i32, ++seed);
        Tensor d = start_d(s, out, M, N);
        gemm_nt(a, b, d, s.opt);
        const double err = rel_error(d, reference(a.data, &a, b.data, &b, s.opt, &s.d0));
        // i8 products and their sums are exact (f64); only the final rounding remains.
        EXPECT_LT(err, out == DType::f32 ? 1e-7 : 4e-3)
            << granularity_name(ga) << " x " << granularity_name(gb) << " " << label(v, out);
      }
}

TEST(Gemm, Int8ProductIsExactWhereFloat32IsNot) {
  // Codes of 90..127, mostly positive: the sums reach ~5e7 > 2^24, where float32
  // can no longer hold every integer, so an f32 accumulation would round.
  const int64_t M = 6, N = 5, K = 4096;
  Tensor a = Tensor::empty({M, K}, DType::i8), b = Tensor::empty({N, K}, DType::i8);
  for (Tensor* t : {&a, &b})
    for (int64_t i = 0; i < t->numel(); ++i) {
      const int mag = 90 + static_cast<int>(38 * uniform01(t == &a ? 1 : 2, 0, i));
      const int v = std::min(mag, 127) * (uniform01(t == &a ? 3 : 4, 0, i) < 0.9f ? 1 : -1);
      t->data_as<int8_t>()[i] = static_cast<int8_t>(v);
    }
  const int8_t* pa = a.data_as<int8_t>();
  const int8_t* pb = b.data_as<int8_t>();
  for (bool accumulate : {false, true}) {
    Tensor d = Tensor::empty({M, N}, DType::i32);
    std::vector<int64_t> start(M * N, 0);
    if (accumulate)
      for (int64_t i = 0; i < M * N; ++i) d.data_as<int32_t>()[i] = static_cast<int32_t>(start[i] = 1000003 * i - 7);
    GemmOptions opt;
    opt.accumulate = accumulate;
    gemm_nt(a, b, d, opt);
    int float_inexact = 0;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        int64_t exact = 0;
        float f32 = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
          exact += static_cast<int64_t>(pa[i * K + k]) * pb[j * K + k];
          f32 += static_cast<float>(pa[i * K + k]) * static_cast<float>(pb[j * K + k]);
        }
        ASSERT_GT(std::llabs(exact), int64_t{1} << 24);
        float_inexact += static_cast<int64_t>(f32) != exact;
        EXPECT_EQ(d.data_as<int32_t>()[i * N + j], exact + start[i * N + j]) << i << ", " << j;
      }
    EXPECT_GT(float_inexact, 0) << "K too small to show that the product must be exact";
  }
}

TEST(Gemm, ScaleI32MatchesFloat64) {
  const int64_t M = 9, N = 12;
  Tensor acc = Tensor::empty({M, N}, DType::i32);
  for (int64_t i = 0; i < M * N; ++i)
    acc.data_as<int32_t>()[i] = static_cast<int32_t>(4e7 * (uniform01(5, 0, i) - 0.5));
  uint64_t seed = 300;
  for (Granularity ga : {Granularity::tensor, Granularity::row})
    for (Granularity gb : {Granularity::tensor, Granularity::row})
      for (DType out : {DType::f32, DType::bf16}) {
        const QTensor a = random_q(DType::i8, ga, M, 64, ++seed), b = random_q(DType::i8, gb, N, 64, ++seed);
        Outputs s = make_setup(out, M, N, 0.5f, true, DType::bf16, ++seed);
        Tensor d = start_d(s, out, M, N);
        scale_i32(acc, a, b, d, s.opt);
        std::vector<double> ref(M * N);
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j)
            ref[i * N + j] = 0.5 * acc.data_as<int32_t>()[i * N + j] * scale_at(&a, i, 0) * scale_at(&b, j, 0) +
                             value(s.bias, j) + value(s.d0, i * N + j);
        EXPECT_LT(rel_error(d, ref), tolerance(out)) << granularity_name(ga) << " x " << granularity_name(gb);
        // The alpha-only overload.
        Tensor d2 = Tensor::empty({M, N}, DType::f32);
        scale_i32(acc, a, b, d2, 2.0f);
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j)
            ref[i * N + j] = 2.0 * acc.data_as<int32_t>()[i * N + j] * scale_at(&a, i, 0) * scale_at(&b, j, 0);
        EXPECT_LT(rel_error(d2, ref), 1e-7);
      }
}

TEST(Gemm, ScaleLayoutsArePaddedForCublasLt) {
  // 1x128: [ceil(C/128), pad4(R)], R fastest. 128x128: [ceil(R/128), pad4(ceil(C/128))].
  EXPECT_EQ(scale_shape(Granularity::block1x128, 5, 300), (Shape{3, 8}));
  EXPECT_EQ(scale_index(Granularity::block1x128, 4, 299, 5, 300), 2 * 8 + 4);
  EXPECT_EQ(scale_shape(Granularity::block128x128, 300, 700), (Shape{3, 8}));
  EXPECT_EQ(scale_index(Granularity::block128x128, 299, 699, 300, 700), 2 * 8 + 5);
  EXPECT_EQ(scale_shape(Granularity::row, 5, 300), (Shape{5}));
  EXPECT_EQ(scale_shape(Granularity::tensor, 5, 300), (Shape{1}));
}

// Runs fn and expects a halo::Error whose message contains every part.
template <class F>
void expect_error(F fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning " << parts.front();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

TEST(Gemm, ErrorsNameTheOpAndShapes) {
  const Tensor a = random_operand(DType::f32, 4, 8, 1), b7 = random_operand(DType::f32, 3, 7, 2);
  const Tensor b = random_operand(DType::f32, 3, 8, 3);
  Tensor d = Tensor::empty({4, 3}, DType::f32);
  expect_error([&] { gemm_nt(a, b7, d); }, {"gemm_nt", "f32[4, 8]", "f32[3, 7]", "K differ"});
  Tensor d_bad = Tensor::empty({3, 4}, DType::f32);
  expect_error([&] { gemm_nt(a, b, d_bad); }, {"gemm_nt", "f32[3, 4]", "[4, 3]"});
  const Tensor a16 = random_operand(DType::bf16, 4, 8, 4);
  expect_error([&] { gemm_nt(a16, b, d); }, {"gemm_nt", "bf16[4, 8]", "f32[3, 8]", "unsupported dtypes"});
  const Tensor e5a = random_operand(DType::e5m2, 4, 8, 5), e5b = random_operand(DType::e5m2, 3, 8, 6);
  expect_error([&] { gemm_nt(e5a, e5b, d); }, {"gemm_nt", "e5m2[4, 8]", "e5m2 x e5m2"});
  const Tensor i8a = random_operand(DType::i8, 4, 8, 7), i8b = random_operand(DType::i8, 3, 8, 8);
  expect_error([&] { gemm_nt(i8a, i8b, d); }, {"gemm_nt", "i8[4, 8]", "-> i32"});
  Tensor d32 = Tensor::empty({4, 3}, DType::i32);
  const Tensor bias = random_operand(DType::f32, 1, 3, 9).view({3});
  GemmOptions with_bias;
  with_bias.bias = &bias;
  expect_error([&] { gemm_nt(i8a, i8b, d32, with_bias); }, {"gemm_nt", "i32[4, 3]", "no bias"});
  GemmOptions alpha2;
  alpha2.alpha = 2.0f;
  expect_error([&] { gemm_nt(i8a, i8b, d32, alpha2); }, {"gemm_nt", "alpha"});
  const Tensor bias4 = random_operand(DType::f32, 1, 4, 9).view({4});
  GemmOptions wrong_bias;
  wrong_bias.bias = &bias4;
  expect_error([&] { gemm_nt(a, b, d, wrong_bias); }, {"gemm_nt", "bias", "[3]"});
  const Tensor a3d = random_operand(DType::f32, 4, 8, 1).view({2, 2, 8});
  expect_error([&] { gemm_nt(a3d, b, d); }, {"gemm_nt", "f32[2, 2, 8]", "2-D"});

  // Scales: the unpadded 1x128 layout [ceil(C/128), R] is rejected with the expected shape.
  QTensor qa = random_q(DType::e4m3, Granularity::block1x128, 5, 300, 10);
  const QTensor qb = random_q(DType::e4m3, Granularity::row, 3, 300, 11);
  qa.scale = Tensor::zeros({3, 5}, DType::f32);
  Tensor dq = Tensor::empty({5, 3}, DType::bf16);
  expect_error([&] { gemm_nt(qa, qb, dq); }, {"gemm_nt", "e4m3[5, 300]", "1x128", "expected shape [3, 8]"});
  QTensor qf;  // scaled f32 data is not an 8-bit operand
  qf.data = random_operand(DType::f32, 5, 300, 12);
  qf.scale = Tensor::zeros({1}, DType::f32);
  expect_error([&] { gemm_nt(qf, qb, dq); }, {"gemm_nt", "f32[5, 300]", "scaled"});
  // scale_i32 takes per-tensor / per-row scales only.
  const QTensor qblock = random_q(DType::i8, Granularity::block1x128, 5, 300, 13);
  const QTensor qrow = random_q(DType::i8, Granularity::row, 3, 300, 14);
  Tensor acc = Tensor::zeros({5, 3}, DType::i32);
  expect_error([&] { scale_i32(acc, qblock, qrow, dq); }, {"scale_i32", "i32[5, 3]", "block scales"});
}

TEST(Gemm, EmptyOutputIsANoOp) {
  const Tensor a = random_operand(DType::bf16, 0, 32, 1), b = random_operand(DType::bf16, 5, 32, 2);
  Tensor d = Tensor::empty({0, 5}, DType::f32);
  gemm_nt(a, b, d);
  EXPECT_EQ(d.numel(), 0);
}

// ---- odd shapes: the padding the CUDA 8-bit path applies -----------------------------

TEST(GemmPadding, CudaPaddedDims) {
  using detail::cuda_padded_dims;
  const detail::GemmDims g{100, 37, 100};
  const auto is = [](const detail::GemmDims& p, int64_t M, int64_t N, int64_t K) {
    return p.M == M && p.N == N && p.K == K;
  };
  // INT8: K only (its i32 output takes any N).
  EXPECT_TRUE(is(cuda_padded_dims(g, DType::i8, DType::i32, false), 100, 37, 112));
  // FP8: K, and N to whole 16-byte rows of D (8 bf16, 4 f32); blocks: M and N to 8.
  EXPECT_TRUE(is(cuda_padded_dims(g, DType::e4m3, DType::bf16, false), 100, 40, 112));
  EXPECT_TRUE(is(cuda_padded_dims(g, DType::e4m3, DType::f32, false), 100, 40, 112));
  EXPECT_TRUE(is(cuda_padded_dims({100, 20, 64}, DType::e4m3, DType::f32, false), 100, 20, 64));
  EXPECT_TRUE(is(cuda_padded_dims({100, 20, 64}, DType::e5m2, DType::bf16, false), 100, 24, 64));
  EXPECT_TRUE(is(cuda_padded_dims({100, 20, 64}, DType::e4m3, DType::f32, true), 104, 24, 64));
  // Aligned shapes stay as they are (the direct path), and padding is idempotent.
  EXPECT_TRUE(is(cuda_padded_dims({64, 48, 256}, DType::e4m3, DType::bf16, true), 64, 48, 256));
  for (int64_t M = 1; M < 40; M += 3)
    for (int64_t K = 1; K < 300; K += 7) {
      const detail::GemmDims p = cuda_padded_dims({M, M + 5, K}, DType::e4m3, DType::bf16, true);
      EXPECT_TRUE(is(cuda_padded_dims(p, DType::e4m3, DType::bf16, true), p.M, p.N, p.K));
      // The block counts along K and along the rows do not change (the scales stay valid).
      EXPECT_EQ((p.K + 127) / 128, (K + 127) / 128);
      EXPECT_EQ((p.M + 127) / 128, (M + 127) / 128);
    }
}

// Every real element of the padded operand keeps its scale; padding rows and pad4
// slots read 1 (never a source padding entry: those are NaN here).
TEST(GemmPadding, RelayoutKeepsEveryElementsScale) {
  struct Move {
    Granularity from, to;
  };
  using G = Granularity;
  const Move moves[] = {{G::tensor, G::tensor},         {G::tensor, G::row},
                        {G::row, G::row},               {G::tensor, G::block1x128},
                        {G::row, G::block1x128},        {G::block1x128, G::block1x128},
                        {G::block128x128, G::block1x128}, {G::block128x128, G::block128x128}};
  const int64_t shapes[][4] = {{100, 104, 100, 112}, {37, 40, 300, 304}, {129, 136, 256, 256}, {5, 5, 40, 40}};
  uint64_t seed = 400;
  for (const Move& m : moves)
    for (const auto& sh : shapes) {
      const int64_t R = sh[0], Rp = sh[1], C = sh[2], Cp = sh[3];
      const Tensor src = random_scales(m.from, R, C, ++seed);
      const Tensor dst = detail::relayout_scales(src, m.from, m.to, R, Rp, C);
      const std::string what = std::string(granularity_name(m.from)) + " -> " +
                               std::string(granularity_name(m.to)) + " " + std::to_string(R) + "x" +
                               std::to_string(C);
      ASSERT_EQ(dst.shape(), scale_shape(m.to, Rp, Cp)) << what;
      const float* d = dst.data_as<float>();
      const float* s0 = src.data_as<float>();
      for (int64_t i = 0; i < dst.numel(); ++i) ASSERT_FALSE(std::isnan(d[i])) << what << " entry " << i;
      for (int64_t r = 0; r < Rp; ++r)
        for (int64_t c = 0; c < Cp; ++c) {
          const float got = d[scale_index(m.to, r, c, Rp, Cp)];
          if (r < R && c < C) {
            ASSERT_EQ(got, s0[scale_index(m.from, r, c, R, C)]) << what << " at " << r << ", " << c;
          } else if (r >= R && (m.to == Granularity::row || m.to == Granularity::block1x128)) {
            ASSERT_EQ(got, 1.0f) << what << " padding row " << r;
          }
        }
    }
}

// The padded product (what CUDA runs for odd shapes) equals the direct one, on the CPU:
// zero-padded operands, re-laid-out scales, padded bias, D copied in and back.
TEST(GemmPadding, PaddedProductEqualsDirect) {
  struct Kind {
    DType dt;
    Granularity g;
  };
  const Kind kinds[] = {{DType::i8, Granularity::tensor},       {DType::i8, Granularity::row},
                        {DType::e4m3, Granularity::tensor},     {DType::e4m3, Granularity::row},
                        {DType::e4m3, Granularity::block1x128}, {DType::e4m3, Granularity::block128x128}};
  const int64_t shapes[][3] = {{100, 64, 100}, {37, 20, 300}, {64, 48, 256}};
  uint64_t seed = 500;
  for (const Kind& k : kinds)
    for (const auto& sh : shapes)
      for (const Variant& v : kVariants)
        for (DType out : {DType::f32, DType::bf16}) {
          const int64_t M = sh[0], N = sh[1], K = sh[2];
          const QTensor a = random_q(k.dt, k.g, M, K, ++seed), b = random_q(k.dt, k.g, N, K, ++seed);
          Outputs s = make_setup(out, M, N, v.alpha, v.accumulate, v.bias ? DType::bf16 : DType::i32, ++seed);
          Tensor direct = start_d(s, out, M, N), padded = start_d(s, out, M, N);
          gemm_nt(a, b, direct, s.opt);
          const detail::GemmOperand A{&a.data, &a.scale, a.granularity, false};
          const detail::GemmOperand B{&b.data, &b.scale, b.granularity, true};
          const bool block = k.g == Granularity::block1x128 || k.g == Granularity::block128x128;
          detail::GemmDims p = detail::cuda_padded_dims({M, N, K}, k.dt, out, block);
          p.M += 8, p.N += 8;  // pad every dimension, also where CUDA would not need it
          detail::gemm_padded(A, B, padded, s.opt, p);
          std::vector<double> ref(static_cast<size_t>(M * N));
          for (int64_t i = 0; i < M * N; ++i) ref[i] = value(direct, i);
          EXPECT_LT(rel_error(padded, ref), out == DType::f32 ? 1e-6 : 4e-3)
              << dtype_name(k.dt) << " " << granularity_name(k.g) << " " << M << "x" << N << "x" << K << " "
              << label(v, out);
        }
}

// On the GPU: the shapes cuBLASLt has no kernel for (K % 16 != 0, M and N % 8 != 0
// with block scales, FP8 rows of D that are not whole 16-byte units) run padded and
// match float64. K = 100 and M = 100 are a 100-token layer's dW and Y.
TEST(GemmCuda, OddShapesMatchFloat64) {
  HALO_REQUIRE_CUDA();
  struct Kind {
    DType dt;
    Granularity ga, gb;
  };
  const Kind kinds[] = {{DType::i8, Granularity::tensor, Granularity::tensor},
                        {DType::i8, Granularity::row, Granularity::row},
                        {DType::e4m3, Granularity::tensor, Granularity::tensor},
                        {DType::e4m3, Granularity::row, Granularity::row},
                        {DType::e4m3, Granularity::block1x128, Granularity::block1x128},
                        {DType::e4m3, Granularity::block128x128, Granularity::block128x128},
                        {DType::e4m3, Granularity::block1x128, Granularity::block128x128}};
  const int64_t shapes[][3] = {{64, 112, 100}, {100, 64, 112}, {100, 100, 100}, {37, 20, 300}};
  uint64_t seed = 600;
  for (const Kind& k : kinds)
    for (const auto& sh : shapes)
      for (const Variant& v : kVariants)
        for (DType out : {DType::f32, DType::bf16}) {
          const int64_t M = sh[0], N = sh[1], K = sh[2];
          const QTensor a = random_q(k.dt, k.ga, M, K, ++seed), b = random_q(k.dt, k.gb, N, K, ++seed);
          Outputs s = make_setup(out, M, N, v.alpha, v.accumulate, v.bias ? DType::bf16 : DType::i32, ++seed);
          const std::vector<double> ref = reference(a.data, &a, b.data, &b, s.opt, &s.d0);
          const auto dev = [](const QTensor& q) {
            return QTensor{q.data.to(Device::cuda), q.scale.to(Device::cuda), q.granularity};
          };
          Tensor d = start_d(s, out, M, N).to(Device::cuda);
          const Tensor bias = s.opt.bias ? s.bias.to(Device::cuda) : Tensor();
          GemmOptions opt = s.opt;
          if (opt.bias) opt.bias = &bias;
          const std::string what = std::string(dtype_name(k.dt)) + " " + std::string(granularity_name(k.ga)) + " x " +
                                   std::string(granularity_name(k.gb)) + " " + std::to_string(M) + "x" +
                                   std::to_string(N) + "x" + std::to_string(K) + " " + label(v, out);
          try {
            gemm_nt(dev(a), dev(b), d, opt);
          } catch (const Error& e) {
            ADD_FAILURE() << what << ": " << e.what();
            continue;
          }
          // FP8 with f32 output: Hopper's tensor cores keep ~14 bits inside an MMA (gemm_check.cpp).
          const double tol = out == DType::bf16 ? 4e-3 : k.dt == DType::i8 ? 1e-6 : 5e-4;
          EXPECT_LT(rel_error(d.to(Device::cpu), ref), tol) << what;
        }
}

TEST(GemmCuda, MatchesCpu) {
  HALO_REQUIRE_CUDA();
  const auto results = gemm_cuda_checks(false);
  EXPECT_FALSE(results.empty());
  for (const CheckResult& r : results)
    EXPECT_TRUE(r.ok) << r.name << ": error " << r.error << " (tolerance " << r.tolerance << ") "
                      << r.detail;
}

}  // namespace
}  // namespace halo
