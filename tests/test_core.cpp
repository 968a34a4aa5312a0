#include <algorithm>
#include <cmath>
#include <limits>

#include "core/allocator.h"
#include "core/error.h"
#include "core/numerics.h"
#include "core/rng.h"
#include "testing.h"

namespace halo {
namespace {

// Reference rounding of a double to a float format with m mantissa bits, minimum
// normal exponent emin, saturating at max: nearest representable, ties to even.
double round_to_format(double x, int m, int emin, double max) {
  const double a = std::fabs(x);
  if (a >= max) return std::copysign(max, x);
  int e = a == 0 ? emin : std::max(emin, static_cast<int>(std::floor(std::log2(a))));
  const double ulp = std::ldexp(1.0, e - m);
  double q = a / ulp;
  double f = std::floor(q), r = q - f;
  if (r > 0.5 || (r == 0.5 && std::fmod(f, 2.0) == 1.0)) f += 1.0;
  return std::copysign(std::min(f * ulp, max), x);
}

TEST(Numerics, Bf16RoundTripAndRounding) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float x = bf16_bits_to_float(static_cast<uint16_t>(b));
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(bf16_bits_to_float(float_to_bf16_bits(x))));
      continue;
    }
    EXPECT_EQ(float_to_bf16_bits(x), b);
  }
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even gives 1.
  EXPECT_EQ(bf16_bits_to_float(float_to_bf16_bits(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(bf16_bits_to_float(float_to_bf16_bits(1.0f + 0x1.8p-7f)), 1.0f + 0x1p-6f);
}

TEST(Numerics, F16MatchesReferenceRounding) {
  for (int i = 0; i < 200000; ++i) {
    const float x = 70000.0f * (uniform01(1, 0, i) - 0.5f) * std::pow(2.0f, -20.0f * uniform01(1, 1, i));
    const double ref = round_to_format(x, 10, -14, 65504.0 + 16.0);  // beyond: inf
    const float got = f16_bits_to_float(float_to_f16_bits(x));
    if (std::fabs(x) >= 65520.0f) {
      EXPECT_TRUE(std::isinf(got)) << x;
    } else {
      EXPECT_EQ(static_cast<double>(got), ref) << x;
    }
  }
  EXPECT_TRUE(std::isnan(f16_bits_to_float(float_to_f16_bits(NAN))));
}

TEST(Numerics, Fp8EveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const float a = e4m3_to_float(static_cast<uint8_t>(c));
    if (std::isnan(a)) {
      EXPECT_TRUE((c & 0x7f) == 0x7f);
    } else if (!(a == 0 && c == 0x80)) {
      EXPECT_EQ(float_to_e4m3(a), c) << c;
    }
    const float b = e5m2_to_float(static_cast<uint8_t>(c));
    if (!std::isnan(b) && !std::isinf(b) && !(b == 0 && c == 0x80)) EXPECT_EQ(float_to_e5m2(b), c) << c;
  }
  EXPECT_EQ(e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(e5m2_to_float(0x7b), 57344.0f);
  EXPECT_EQ(e4m3_to_float(0x01), 0x1p-9f);
  EXPECT_EQ(e5m2_to_float(0x01), 0x1p-16f);
}

TEST(Numerics, Fp8RoundsToNearestEvenAndSaturates) {
  for (int i = 0; i < 200000; ++i) {
    const float x = 1000.0f * (uniform01(2, 0, i) - 0.5f) * std::pow(2.0f, -14.0f * uniform01(2, 1, i));
    EXPECT_EQ(static_cast<double>(e4m3_to_float(float_to_e4m3(x))), round_to_format(x, 3, -6, 448.0)) << x;
    const float y = x * 128.0f;
    EXPECT_EQ(static_cast<double>(e5m2_to_float(float_to_e5m2(y))), round_to_format(y, 2, -14, 57344.0)) << y;
  }
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1e9f)), 448.0f);
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(-INFINITY)), -448.0f);
  EXPECT_EQ(e5m2_to_float(float_to_e5m2(1e9f)), 57344.0f);
  EXPECT_TRUE(std::isnan(e4m3_to_float(float_to_e4m3(NAN))));
  EXPECT_TRUE(std::isnan(e5m2_to_float(float_to_e5m2(NAN))));
  // Ties: 1.0625 is halfway between 1 and 1.125 in e4m3: even mantissa (1.0) wins.
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1.0625f)), 1.0f);
  EXPECT_EQ(e4m3_to_float(float_to_e4m3(1.1875f)), 1.25f);
}

TEST(Numerics, Int8RoundsHalfToEvenAndClamps) {
  EXPECT_EQ(float_to_i8(2.5f), 2);
  EXPECT_EQ(float_to_i8(3.5f), 4);
  EXPECT_EQ(float_to_i8(-2.5f), -2);
  EXPECT_EQ(float_to_i8(-0.5f), 0);
  EXPECT_EQ(float_to_i8(126.6f), 127);
  EXPECT_EQ(float_to_i8(1000.0f), 127);
  EXPECT_EQ(float_to_i8(-1000.0f), -127);
  EXPECT_EQ(float_to_i8(NAN), 0);
}

TEST(Numerics, StochasticRoundingIsUnbiased) {
  const float values[] = {0.3f, -1.7f, 5.25f, 100.1f};
  for (float v : values) {
    double sum_i8 = 0, sum_fp8 = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
      const float u = uniform01(3, 0, i);
      const int8_t q = float_to_i8_stochastic(v, u);
      EXPECT_TRUE(q == std::floor(v) || q == std::floor(v) + 1);
      sum_i8 += q;
      sum_fp8 += e4m3_to_float(fp8_encode_stochastic(v, u, kE4M3));
    }
    EXPECT_NEAR(sum_i8 / n, v, 0.01 * std::max(1.0f, std::fabs(v)));
    EXPECT_NEAR(sum_fp8 / n, v, 0.01 * std::max(1.0f, std::fabs(v)));
  }
  // A representable value is never moved.
  EXPECT_EQ(e4m3_to_float(fp8_encode_stochastic(1.25f, 0.999f, kE4M3)), 1.25f);
}

TEST(Rng, PhiloxKnownAnswer) {
  // Philox4x32-10 test vector (Salmon et al., Random123): counter 0, key 0.
  const Philox4 r = philox4x32(0, 0, 0);
  EXPECT_EQ(r.v[0], 0x6627e8d5u);
  EXPECT_EQ(r.v[1], 0xe169c58du);
  EXPECT_EQ(r.v[2], 0xbc57ac4cu);
  EXPECT_EQ(r.v[3], 0x9b00dbd8u);
}

TEST(Rng, UniformAndNormalMoments) {
  double s = 0, s2 = 0, n1 = 0, n2 = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const float u = uniform01(7, 3, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    s += u;
    s2 += u * u;
    const float g = normal01(7, 3, i);
    n1 += g;
    n2 += g * g;
  }
  EXPECT_NEAR(s / n, 0.5, 0.01);
  EXPECT_NEAR(s2 / n - 0.25, 1.0 / 12, 0.01);
  EXPECT_NEAR(n1 / n, 0.0, 0.02);
  EXPECT_NEAR(n2 / n, 1.0, 0.02);
  EXPECT_NE(uniform01(7, 3, 0), uniform01(8, 3, 0));
  EXPECT_NE(uniform01(7, 3, 0), uniform01(7, 4, 0));
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::zeros({4, 6}, DType::f32);
  Tensor r = t.rows(1, 2);
  EXPECT_EQ(r.shape(), (Shape{2, 6}));
  r.data_as<float>()[0] = 5.0f;
  EXPECT_EQ(t.data_as<float>()[6], 5.0f);
  Tensor v = t.view({2, -1, 3});
  EXPECT_EQ(v.shape(), (Shape{2, 4, 3}));
  EXPECT_EQ(v.as_2d().shape(), (Shape{8, 3}));
  EXPECT_THROW(t.view({5, 5}), Error);
  EXPECT_THROW(t.rows(3, 2), Error);
}

TEST(Tensor, ConversionsAndErrors) {
  Tensor t = Tensor::from_floats({3}, {1.0f, -2.5f, 1000.0f});
  EXPECT_EQ(t.to(DType::bf16).to_floats(), (std::vector<float>{1.0f, -2.5f, 1000.0f}));
  EXPECT_EQ(t.to(DType::e4m3).to_floats(), (std::vector<float>{1.0f, -2.5f, 448.0f}));
  EXPECT_EQ(t.to(DType::i8).to_floats(), (std::vector<float>{1.0f, -2.0f, 127.0f}));
  try {
    check_shape(t, {4}, "my_op");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("my_op: expected shape [4], got f32[3] cpu"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(parse_dtype("fp9"), Error);
  EXPECT_EQ(parse_dtype("e5m2"), DType::e5m2);
}

// Blocks of columns out of a fused [R, C] tensor and back, on the CPU; the same
// on the GPU (bitwise: a copy) where there is one.
TEST(Tensor, CopyColumns) {
  const int64_t R = 7, C = 11;
  for (Device dev : {Device::cpu, Device::cuda}) {
    if (dev == Device::cuda && !cuda_available()) continue;
    for (DType dt : {DType::f32, DType::bf16}) {
      const Tensor src = testing::random_normal({R, C}, 2, 1.0f, dt);
      Tensor part = Tensor::zeros({R, 4}, dt, dev);
      copy_columns(src.to(dev), 3, part, 0, 4);
      const auto s = src.to_floats(), p = part.to_floats();
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(p[r * 4 + j], s[r * C + 3 + j]) << r << " " << j;
      // Back into columns [5, 9) of a [R, 1, 9] tensor (leading dims flattened); the rest untouched.
      Tensor dst = Tensor::zeros({R, 1, 9}, dt, dev);
      copy_columns(part, 0, dst, 5, 4);
      const auto d = dst.to_floats();
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < 9; ++j) EXPECT_EQ(d[r * 9 + j], j < 5 ? 0.0f : s[r * C + 3 + j - 5]);
      EXPECT_THROW(copy_columns(src.to(dev), 8, part, 0, 4), Error);  // past the end
      Tensor other_rows = Tensor::zeros({R + 1, 4}, dt, dev);
      EXPECT_THROW(copy_columns(src.to(dev), 0, other_rows, 0, 4), Error);
      Tensor other_dtype = Tensor::zeros({R, 4}, dt == DType::f32 ? DType::bf16 : DType::f32, dev);
      EXPECT_THROW(copy_columns(src.to(dev), 0, other_dtype, 0, 4), Error);
    }
  }
}

TEST(Tensor, DeviceRoundTrip) {
  HALO_REQUIRE_CUDA();
  Tensor t = testing::random_normal({33, 17}, 1, 1.0f, DType::bf16);
  Tensor back = t.to(Device::cuda).to(Device::cpu);
  EXPECT_EQ(back.to_floats(), t.to_floats());
  EXPECT_FALSE(Tensor().to(Device::cuda).defined());  // e.g. a Batch without doc_ids
  const auto before = device_memory_stats().in_use;
  { Tensor g = Tensor::zeros({1024}, DType::f32, Device::cuda); }
  EXPECT_EQ(device_memory_stats().in_use, before);
}

TEST(Allocator, DeviceBlocksWasteLittle) {
  // Every request gets a block at least its size, at most 6.25% (or 512 bytes)
  // and at most 2 MiB larger, and sizes round monotonically (a freed block
  // serves its own size).
  EXPECT_EQ(device_block_bytes(0), 512u);
  EXPECT_EQ(device_block_bytes(1), 512u);
  EXPECT_EQ(device_block_bytes(512), 512u);
  EXPECT_EQ(device_block_bytes(513), 1024u);
  EXPECT_EQ(device_block_bytes(size_t{1} << 20), size_t{1} << 20);
  EXPECT_EQ(device_block_bytes((size_t{1} << 20) + 1), (size_t{1} << 20) + (size_t{1} << 16));
  EXPECT_EQ(device_block_bytes(576 * 960 * 2), size_t{17} << 16);  // a SmolLM2 q/k/v weight, 1.05 MiB
  size_t previous = 0;
  for (size_t bytes = 1; bytes < (size_t{1} << 34); bytes = bytes * 5 / 4 + 7) {
    const size_t b = device_block_bytes(bytes);
    EXPECT_GE(b, bytes);
    EXPECT_LE(static_cast<double>(b), std::max(1.0625 * static_cast<double>(bytes), static_cast<double>(bytes) + 512))
        << bytes;
    EXPECT_LT(b - bytes, size_t{2} << 20) << bytes;
    EXPECT_GE(b, previous) << bytes;
    EXPECT_EQ(device_block_bytes(b), b) << bytes;
    previous = b;
  }
}

}  // namespace
}  // namespace halo
