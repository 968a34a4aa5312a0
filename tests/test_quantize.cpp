// Quantizers (kernels/quantize.h) on the CPU against a float64 re-statement of
// the math, plus the CUDA self-checks where a GPU is present.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/numerics.h"
#include "core/rng.h"
#include "kernels/hadamard.h"
#include "kernels/quantize.h"
#include "testing.h"

namespace halo {
namespace {

const DType kFormats[] = {DType::i8, DType::e4m3, DType::e5m2};
const Granularity kGrans[] = {Granularity::tensor, Granularity::row, Granularity::block1x128,
                              Granularity::block128x128};

// ---- the reference ---------------------------------------------------------------

double qmax_ref(DType t) { return t == DType::i8 ? 127.0 : (t == DType::e4m3 ? 448.0 : 57344.0); }

// Nearest value of a float format with m mantissa bits and minimum normal
// exponent emin, ties to even, saturating at max.
double round_to_format(double x, int m, int emin, double max) {
  const double a = std::fabs(x);
  if (a >= max) return std::copysign(max, x);
  const int e = a == 0 ? emin : std::max(emin, static_cast<int>(std::floor(std::log2(a))));
  const double ulp = std::ldexp(1.0, e - m);
  double f = std::floor(a / ulp);
  const double r = a / ulp - f;
  if (r > 0.5 || (r == 0.5 && std::fmod(f, 2.0) == 1.0)) f += 1.0;
  return std::copysign(std::min(f * ulp, max), x);
}

// RNE with saturation (INT8: to [-127, 127]); NaN stays NaN (INT8: 0).
double round_ref(double y, DType t) {
  if (std::isnan(y)) return t == DType::i8 ? 0.0 : NAN;
  if (t == DType::i8) {
    double f = std::floor(y);
    const double r = y - f;
    if (r > 0.5 || (r == 0.5 && std::fmod(f, 2.0) != 0.0)) f += 1.0;
    return std::clamp(f, -127.0, 127.0);
  }
  return t == DType::e4m3 ? round_to_format(y, 3, -6, 448.0) : round_to_format(y, 2, -14, 57344.0);
}

double decode_ref(uint8_t q, DType t) {
  if (t == DType::i8) return static_cast<int8_t>(q);
  return load_float(&q, t, 0);
}

// The group of element (r, c) of an [R, C] operand, as its position in the
// scale tensor (restated from quantize.h's layout table).
struct Group {
  int64_t pos;
};
Group group_of(Granularity g, int64_t r, int64_t c, int64_t R, int64_t C) {
  const int64_t nc = (C + 127) / 128;
  switch (g) {
    case Granularity::tensor: return {0};
    case Granularity::row: return {r};
    case Granularity::block1x128: return {(c / 128) * ((R + 3) / 4 * 4) + r};  // [ceil(C/128), pad4(R)]
    case Granularity::block128x128:  // [ceil(R/128), pad4(ceil(C/128))]
      return {(r / 128) * ((nc + 3) / 4 * 4) + c / 128};
  }
  return {0};
}

// One copy of the expected result: the [rows, cols] operand whose element (i, j)
// is v(i, j). Values are what the quantizer must produce: scales (by position in
// the scale tensor, padding = 1) and the decoded value of every code.
struct Expected {
  std::vector<float> scale;
  std::vector<double> value;  // decoded code values, row-major [rows, cols]
  std::vector<float> mul;     // the multiplier of each element's group
};

template <class Get>
Expected reference(int64_t rows, int64_t cols, Get v, const QuantSpec& spec) {
  Expected e;
  e.scale.assign(static_cast<size_t>(Tensor::empty(scale_shape(spec.granularity, rows, cols), DType::f32).numel()),
                 1.0f);
  e.value.resize(static_cast<size_t>(rows * cols));
  e.mul.resize(static_cast<size_t>(rows * cols));
  const float qmax = static_cast<float>(qmax_ref(spec.dtype));
  std::vector<double> absmax(e.scale.size(), 0.0);  // per group, in double; NaN propagates
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      double& a = absmax[group_of(spec.granularity, i, j, rows, cols).pos];
      const double x = std::fabs(static_cast<double>(v(i, j)));
      a = (std::isnan(a) || std::isnan(x)) ? NAN : std::max(a, x);
    }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const Group grp = group_of(spec.granularity, i, j, rows, cols);
      const float a = static_cast<float>(absmax[grp.pos]);  // exact: the max of floats
      float m = 1.0f;
      if (spec.scaled) {
        // FP32 scale and multiplier (IEEE division); zero group: scale 1, multiplier 0.
        e.scale[grp.pos] = a == 0.0f ? 1.0f : a / qmax;
        m = a == 0.0f ? 0.0f : std::min(qmax / a, 3.40282347e38f);
        if (std::isnan(a)) m = NAN;
      }
      const float y = v(i, j) * m;  // the product is FP32, as documented
      e.value[i * cols + j] = round_ref(y, spec.dtype);
      e.mul[i * cols + j] = m;
    }
  return e;
}

void expect_matches(const QTensor& q, const Expected& e, const QuantSpec& spec, const std::string& what) {
  ASSERT_EQ(q.data.dtype(), spec.dtype) << what;
  ASSERT_EQ(q.granularity, spec.granularity) << what;
  ASSERT_EQ(q.scale.numel(), static_cast<int64_t>(e.scale.size())) << what;
  const float* s = q.scale.data_as<float>();
  for (size_t i = 0; i < e.scale.size(); ++i) {
    if (std::isnan(e.scale[i])) {
      ASSERT_TRUE(std::isnan(s[i])) << what << " scale " << i;
    } else {
      ASSERT_EQ(s[i], e.scale[i]) << what << " scale " << i;
    }
  }
  const uint8_t* d = q.data.data_as<uint8_t>();
  int bad = 0;
  for (size_t i = 0; i < e.value.size() && bad < 5; ++i) {
    const double got = decode_ref(d[i], spec.dtype);
    const bool ok = std::isnan(e.value[i]) ? std::isnan(got) : got == e.value[i];
    if (!ok) {
      ++bad;
      ADD_FAILURE() << what << " element " << i / q.cols() << ", " << i % q.cols() << ": got " << got
                    << " expected " << e.value[i];
    }
  }
}

Tensor outlier_input(int64_t R, int64_t C, uint64_t seed, DType dtype = DType::f32) {
  return testing::with_outlier_columns(testing::random_normal({R, C}, seed, 1.0f, dtype), 3, seed + 1);
}

// x, or x R when rotating, as host f32.
Tensor rotated_f32(const Tensor& x, bool rotate) {
  Tensor f = Tensor::empty(x.shape(), DType::f32);
  if (rotate) {
    hadamard_rows(x, f);
  } else {
    f.copy_from(x.to(DType::f32));
  }
  return f;
}

// Checks both copies of quantize(x) against the reference.
void check_against_reference(const Tensor& x, const QuantSpec& spec, bool rotate, const std::string& what) {
  const int64_t R = x.size(0), C = x.size(1);
  const Tensor xr = rotated_f32(x, rotate);
  const float* v = xr.data_as<float>();
  QTensor out, out_t;
  quantize(x, spec, rotate, &out, &out_t);
  ASSERT_EQ(out.data.shape(), (Shape{R, C}));
  ASSERT_EQ(out_t.data.shape(), (Shape{C, R}));
  expect_matches(out, reference(R, C, [&](int64_t i, int64_t j) { return v[i * C + j]; }, spec), spec,
                 what + " out");
  expect_matches(out_t, reference(C, R, [&](int64_t i, int64_t j) { return v[j * C + i]; }, spec), spec,
                 what + " out_t");
}

std::string describe(const QuantSpec& s, bool rotate, DType in, int64_t R, int64_t C) {
  return std::string(dtype_name(in)) + "->" + std::string(dtype_name(s.dtype)) + " " +
         std::string(granularity_name(s.granularity)) + (rotate ? " rot " : " ") + std::to_string(R) + "x" +
         std::to_string(C);
}

// ---- tests -------------------------------------------------------------------------

TEST(Quantize, NamesAndShapes) {
  for (Granularity g : kGrans) EXPECT_EQ(parse_granularity(granularity_name(g)), g);
  EXPECT_EQ(parse_granularity("1x128"), Granularity::block1x128);
  EXPECT_THROW(parse_granularity("2x2"), Error);
  EXPECT_EQ(scale_shape(Granularity::tensor, 300, 500), (Shape{1}));
  EXPECT_EQ(scale_shape(Granularity::row, 300, 500), (Shape{300}));
  EXPECT_EQ(scale_shape(Granularity::block1x128, 301, 500), (Shape{4, 304}));
  EXPECT_EQ(scale_shape(Granularity::block128x128, 300, 500), (Shape{3, 4}));
  EXPECT_EQ(scale_shape(Granularity::block128x128, 300, 700), (Shape{3, 8}));
  // scale_index agrees with the layout restated here.
  for (Granularity g : kGrans)
    for (int64_t r : {0, 5, 129, 299})
      for (int64_t c : {0, 127, 128, 499}) EXPECT_EQ(scale_index(g, r, c, 300, 500), group_of(g, r, c, 300, 500).pos);
}

TEST(Quantize, EveryModeMatchesReference) {
  // Shapes: 2^k, 12 x 64 and fallback block rotations; partial 128-blocks.
  const std::pair<int64_t, int64_t> shapes[] = {{128, 256}, {130, 300}, {5, 7}, {200, 384}, {64, 768}};
  uint64_t seed = 10;
  for (auto [R, C] : shapes)
    for (DType in : {DType::f32, DType::bf16}) {
      const Tensor x = outlier_input(R, C, ++seed, in);
      for (DType f : kFormats)
        for (Granularity g : kGrans)
          for (bool rotate : {false, true}) {
            QuantSpec s;
            s.dtype = f, s.granularity = g;
            check_against_reference(x, s, rotate, describe(s, rotate, in, R, C));
          }
    }
}

TEST(Quantize, UnscaledIsAPlainCast) {
  const Tensor x = outlier_input(40, 160, 3);
  for (DType f : kFormats)
    for (Granularity g : kGrans) {
      QuantSpec s;
      s.dtype = f, s.granularity = g, s.scaled = false;
      check_against_reference(x, s, false, "unscaled " + describe(s, false, DType::f32, 40, 160));
      QTensor q;
      quantize(x, s, false, &q, nullptr);
      const auto values = x.to_floats();
      for (size_t i = 0; i < values.size(); ++i)
        ASSERT_EQ(decode_ref(q.data.data_as<uint8_t>()[i], f), round_ref(values[i], f));
      for (float v : q.scale.to_floats()) EXPECT_EQ(v, 1.0f);
    }
}

TEST(Quantize, ZeroGroupsGetScaleOneAndZeroCodes) {
  const int64_t R = 260, C = 300;
  Tensor x = outlier_input(R, C, 4);
  float* p = x.data_as<float>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      if (r % 5 == 2 || (r < 128 && c >= 128 && c < 256) || c == 7) p[r * C + c] = 0.0f;
  for (DType f : kFormats)
    for (Granularity g : kGrans) {
      QuantSpec s;
      s.dtype = f, s.granularity = g;
      check_against_reference(x, s, false, "zero groups " + describe(s, false, DType::f32, R, C));
      QTensor out, out_t;
      quantize(x, s, false, &out, &out_t);
      if (g == Granularity::row) {
        EXPECT_EQ(out.scale.data_as<float>()[2], 1.0f);     // a zero row
        EXPECT_EQ(out_t.scale.data_as<float>()[7], 1.0f);   // a zero column
        EXPECT_NE(out.scale.data_as<float>()[3], 1.0f);
      }
      if (g == Granularity::block128x128) EXPECT_EQ(out.scale.data_as<float>()[1], 1.0f);  // tile (0, 1)
    }
  // An all-zero tensor, rotated or not: every scale 1, every code 0.
  const Tensor z = Tensor::zeros({130, 256}, DType::bf16);
  for (DType f : kFormats)
    for (Granularity g : kGrans)
      for (bool rotate : {false, true}) {
        QuantSpec s;
        s.dtype = f, s.granularity = g;
        QTensor out, out_t;
        quantize(z, s, rotate, &out, &out_t);
        for (const QTensor* q : {&out, &out_t}) {
          for (float v : q->scale.to_floats()) ASSERT_EQ(v, 1.0f);
          for (float v : q->data.to_floats()) ASSERT_EQ(v, 0.0f);
        }
      }
}

TEST(Quantize, NanPropagatesIntoItsScale) {
  Tensor x = outlier_input(8, 256, 5);
  x.data_as<float>()[3 * 256 + 200] = NAN;
  for (Granularity g : kGrans) {
    QuantSpec s;
    s.dtype = DType::e4m3, s.granularity = g;
    QTensor out, out_t;
    quantize(x, s, false, &out, &out_t);
    const auto sc = out.scale.to_floats();
    EXPECT_TRUE(std::isnan(sc[scale_index(g, 3, 200, 8, 256)])) << granularity_name(g);
    if (g != Granularity::tensor) EXPECT_FALSE(std::isnan(sc[scale_index(g, 4, 10, 8, 256)]));
    EXPECT_TRUE(std::isnan(out_t.scale.to_floats()[scale_index(g, 200, 3, 256, 8)])) << granularity_name(g);
    check_against_reference(x, s, false, "nan " + std::string(granularity_name(g)));
  }
}

TEST(Quantize, TransposedCopyIsQuantizeOfTheTranspose) {
  // out_t of x == out of x^T, for every granularity (no rotation).
  const int64_t R = 200, C = 300;
  const Tensor x = outlier_input(R, C, 6);
  Tensor xt = Tensor::empty({C, R}, DType::f32);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) xt.data_as<float>()[c * R + r] = x.data_as<float>()[r * C + c];
  for (DType f : kFormats)
    for (Granularity g : kGrans) {
      QuantSpec s;
      s.dtype = f, s.granularity = g;
      QTensor out_t, ref;
      quantize(x, s, false, nullptr, &out_t);
      quantize(xt, s, false, &ref, nullptr);
      EXPECT_EQ(out_t.data.to_floats(), ref.data.to_floats()) << describe(s, false, DType::f32, R, C);
      EXPECT_EQ(out_t.scale.to_floats(), ref.scale.to_floats()) << describe(s, false, DType::f32, R, C);
    }
}

TEST(Quantize, StochasticRoundingUsesElementIndexAndNeighbours) {
  const int64_t R = 70, C = 200;
  const Tensor x = outlier_input(R, C, 7, DType::bf16);
  for (DType f : kFormats)
    for (Granularity g : kGrans)
      for (bool rotate : {false, true}) {
        QuantSpec s;
        s.dtype = f, s.granularity = g, s.stochastic = true, s.seed = 42, s.stream = 5;
        const std::string what = "sr " + describe(s, rotate, DType::bf16, R, C);
        QTensor out, out_t;
        quantize(x, s, rotate, &out, &out_t);
        const Tensor xr = rotated_f32(x, rotate);
        const float* v = xr.data_as<float>();
        QuantSpec nearest = s;
        nearest.stochastic = false;
        const Expected e = reference(R, C, [&](int64_t i, int64_t j) { return v[i * C + j]; }, nearest);
        const Expected et = reference(C, R, [&](int64_t i, int64_t j) { return v[j * C + i]; }, nearest);
        EXPECT_EQ(out.scale.to_floats(), e.scale) << what;  // scales do not depend on the rounding
        EXPECT_EQ(out_t.scale.to_floats(), et.scale) << what;
        int bad = 0;
        for (int64_t r = 0; r < R && bad < 5; ++r)
          for (int64_t c = 0; c < C && bad < 5; ++c) {
            const int64_t i = r * C + c;
            // Element (r, c) of both copies uses uniform01(seed, stream, r*C + c).
            const float u = uniform01(42, 5, static_cast<uint64_t>(i));
            for (int copy = 0; copy < 2; ++copy) {
              const float m = copy == 0 ? e.mul[i] : et.mul[c * R + r];
              const uint8_t code =
                  copy == 0 ? out.data.data_as<uint8_t>()[i] : out_t.data.data_as<uint8_t>()[c * R + r];
              const float y = v[i] * m;
              const uint8_t want = f == DType::i8 ? static_cast<uint8_t>(float_to_i8_stochastic(y, u))
                                                  : fp8_encode_stochastic(y, u, f == DType::e4m3 ? kE4M3 : kE5M2);
              // ... which is one of the two neighbours of y in the format: less than a step away.
              const double got = decode_ref(code, f), qmax = qmax_ref(f);
              const double step = f == DType::i8 ? 1.0 : fp8_ulp(std::fabs(y), f == DType::e4m3 ? kE4M3 : kE5M2);
              const bool near = std::fabs(y) >= qmax ? std::fabs(got) == qmax : std::fabs(got - y) < step;
              if (code != want || !near) {
                ++bad;
                ADD_FAILURE() << what << (copy ? " out_t" : " out") << " element " << r << ", " << c << ": code "
                              << int(code) << " want " << int(want) << " value " << got << " for " << y;
              }
            }
          }
      }
}

TEST(Quantize, StochasticRoundingIsUnbiased) {
  const int64_t R = 32, C = 256;
  const Tensor x = outlier_input(R, C, 8);
  const auto xv = x.to_floats();
  for (DType f : {DType::i8, DType::e4m3}) {
    QuantSpec s;
    s.dtype = f, s.granularity = Granularity::row, s.stochastic = true, s.stream = 1;
    const int n = 256;
    std::vector<double> mean(xv.size(), 0.0);
    for (int k = 0; k < n; ++k) {
      s.seed = 1000 + k;
      Tensor d = Tensor::empty({R, C}, DType::f32);
      fake_quantize(x, s, d);
      const auto dv = d.to_floats();
      for (size_t i = 0; i < dv.size(); ++i) mean[i] += dv[i] / n;
    }
    QuantSpec nearest = s;
    nearest.stochastic = false;
    Tensor d = Tensor::empty({R, C}, DType::f32);
    fake_quantize(x, nearest, d);
    const auto rne = d.to_floats();
    double err_sr = 0, err_rne = 0, bias = 0;
    for (size_t i = 0; i < xv.size(); ++i) {
      err_sr += std::fabs(mean[i] - xv[i]);
      err_rne += std::fabs(rne[i] - xv[i]);
      bias += mean[i] - xv[i];
    }
    // Averaging n stochastic roundings shrinks the error like 1/sqrt(n); RNE's does not shrink.
    EXPECT_LT(err_sr, 0.2 * err_rne) << dtype_name(f);
    EXPECT_LT(std::fabs(bias), 0.05 * err_rne) << dtype_name(f);
  }
}

TEST(Quantize, MaxElementMapsToQmax) {
  // The FP32 multiplier never pushes the absmax element past q_max nor below it
  // (the reference's BF16 scale could give 128 in INT8).
  for (uint64_t seed = 0; seed < 200; ++seed)
    for (DType f : kFormats) {
      const Tensor x = testing::random_normal({1, 64}, seed, 0.37f + seed, DType::bf16);
      QuantSpec s;
      s.dtype = f;
      QTensor q;
      quantize(x, s, false, &q, nullptr);
      const auto xv = x.to_floats();
      const size_t arg = std::max_element(xv.begin(), xv.end(), [](float a, float b) {
                           return std::fabs(a) < std::fabs(b);
                         }) - xv.begin();
      ASSERT_EQ(std::fabs(decode_ref(q.data.data_as<uint8_t>()[arg], f)), qmax_ref(f));
    }
}

TEST(Quantize, DequantizeErrorIsWithinHalfAStep) {
  const int64_t R = 130, C = 300;
  const Tensor x = outlier_input(R, C, 9);
  const float* v = x.data_as<float>();
  for (DType f : kFormats)
    for (Granularity g : kGrans)
      for (DType out_dtype : {DType::f32, DType::bf16}) {
        QuantSpec s;
        s.dtype = f, s.granularity = g;
        QTensor q;
        quantize(x, s, false, &q, nullptr);
        Tensor d = Tensor::empty({R, C}, out_dtype);
        dequantize(q, d);
        const auto dv = d.to_floats();
        const Expected e = reference(R, C, [&](int64_t i, int64_t j) { return v[i * C + j]; }, s);
        const double rel = out_dtype == DType::bf16 ? 0x1p-8 : 0x1p-23;  // output rounding
        for (int64_t i = 0; i < R * C; ++i) {
          const float scale = q.scale.data_as<float>()[scale_index(g, i / C, i % C, R, C)];
          const float y = v[i] * e.mul[i];
          const double step = f == DType::i8 ? 1.0 : fp8_ulp(std::fabs(y), f == DType::e4m3 ? kE4M3 : kE5M2);
          const double bound = scale * 0.5 * step * (1 + 1e-6) + rel * std::fabs(dv[i]) + 1e-6 * std::fabs(v[i]);
          ASSERT_LE(std::fabs(dv[i] - v[i]), bound)
              << describe(s, false, DType::f32, R, C) << " element " << i << " -> " << dtype_name(out_dtype);
          // x ~= q * scale: the FP32 product, rounded to the output format.
          const float prod = static_cast<float>(decode_ref(q.data.data_as<uint8_t>()[i], f)) * scale;
          ASSERT_EQ(dv[i], out_dtype == DType::f32 ? prod : bf16_bits_to_float(float_to_bf16_bits(prod)));
        }
      }
}

TEST(Quantize, FakeQuantizeEqualsDequantizeOfQuantize) {
  const Tensor x = testing::random_normal({2, 3, 160}, 11, 2.0f, DType::bf16);
  for (DType f : kFormats)
    for (Granularity g : kGrans)
      for (DType out_dtype : {DType::f32, DType::bf16}) {
        QuantSpec s;
        s.dtype = f, s.granularity = g;
        Tensor fq = Tensor::empty(x.shape(), out_dtype);
        fake_quantize(x, s, fq);
        QTensor q;
        quantize(x, s, false, &q, nullptr);
        EXPECT_EQ(q.data.shape(), (Shape{6, 160}));
        Tensor d = Tensor::empty({6, 160}, out_dtype);
        dequantize(q, d);
        EXPECT_EQ(fq.to_floats(), d.to_floats()) << describe(s, false, DType::bf16, 6, 160);
      }
}

// Maxima given by the caller (QuantSpec::absmax_parts): their maximum is the
// tensor's absmax, for both copies; the true maxima give the same codes as none.
TEST(Quantize, GivenMaximaSetThePerTensorScale) {
  const Tensor x = testing::random_normal({40, 96}, 14, 3.0f, DType::bf16);
  float amax = 0;
  for (float v : x.to_floats()) amax = std::max(amax, std::fabs(v));
  for (DType f : kFormats) {
    QuantSpec s;
    s.dtype = f;
    QTensor q, qt;
    quantize(x, s, false, &q, &qt);
    Tensor parts = Tensor::empty({3}, DType::f32);
    float* p = parts.data_as<float>();
    p[0] = 0.5f * amax, p[1] = amax, p[2] = 0.0f;
    QuantSpec given = s;
    given.absmax_parts = &parts;
    QTensor g, gt;
    quantize(x, given, false, &g, &gt);
    EXPECT_EQ(g.data.to_floats(), q.data.to_floats()) << dtype_name(f);
    EXPECT_EQ(gt.data.to_floats(), qt.data.to_floats()) << dtype_name(f);
    EXPECT_EQ(g.scale.to_floats(), q.scale.to_floats()) << dtype_name(f);
    p[1] = 2.0f * amax;  // a larger maximum: twice the scale
    quantize(x, given, false, &g, &gt);
    EXPECT_EQ(g.scale.data_as<float>()[0], 2.0f * amax / static_cast<float>(qmax_ref(f))) << dtype_name(f);
    EXPECT_EQ(gt.scale.data_as<float>()[0], g.scale.data_as<float>()[0]) << dtype_name(f);
  }
  // Per-tensor scaling only, f32 maxima.
  const Tensor parts = Tensor::from_floats({1}, {1.0f});
  QuantSpec row;
  row.granularity = Granularity::row;
  row.absmax_parts = &parts;
  QTensor q;
  const std::string per_row = testing::error_of([&] { quantize(x, row, false, &q, nullptr); });
  EXPECT_NE(per_row.find("absmax_parts serve per-tensor scaling only"), std::string::npos) << per_row;
  const Tensor wrong = Tensor::empty({2}, DType::bf16);
  QuantSpec bad;
  bad.absmax_parts = &wrong;
  const std::string bf16 = testing::error_of([&] { quantize(x, bad, false, &q, nullptr); });
  EXPECT_NE(bf16.find("absmax_parts must be an f32 tensor"), std::string::npos) << bf16;
}

TEST(Quantize, RejectsBadArguments) {
  const Tensor x = testing::random_normal({4, 8}, 12);
  QuantSpec s;
  QTensor q;
  s.dtype = DType::bf16;
  EXPECT_THROW(quantize(x, s, false, &q, nullptr), Error);
  s.dtype = DType::e4m3;
  EXPECT_THROW(quantize(x.to(DType::i8), s, false, &q, nullptr), Error);
  EXPECT_THROW(quantize(x, s, false, &q, &q), Error);
  quantize(x, s, false, &q, nullptr);
  Tensor wrong = Tensor::empty({8, 4}, DType::f32);
  EXPECT_THROW(dequantize(q, wrong), Error);
}

TEST(Quantize, CudaMatchesCpu) {
  HALO_REQUIRE_CUDA();
  const auto results = quantize_cuda_checks(false);
  ASSERT_FALSE(results.empty());
  int failed = 0;
  for (const CheckResult& r : results) {
    if (!r.ok) ++failed;
    EXPECT_TRUE(r.ok) << r.name << ": error " << r.error << " (tolerance " << r.tolerance << "): " << r.detail;
  }
  std::printf("%zu CUDA quantizer checks, %d failed\n", results.size(), failed);
}

}  // namespace
}  // namespace halo
