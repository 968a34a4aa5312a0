#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/numerics.h"
#include "core/rng.h"
#include "kernels/hadamard.h"
#include "testing.h"

namespace halo {
namespace {

// Entry (i, j) of R_d from the definition: (H_K kron H_2^k) / sqrt(d) with
// element i = (i / 2^k, i % 2^k), or block-diagonal Sylvester blocks for the fallback.
double r_entry(const HadamardPlan& p, int64_t i, int64_t j) {
  auto syl = [](int64_t a, int64_t b) { return (__builtin_popcountll(a & b) & 1) ? -1.0 : 1.0; };
  if (!p.full()) {
    if (i / p.block != j / p.block) return 0.0;
    return syl(i % p.block, j % p.block) / std::sqrt(static_cast<double>(p.block));
  }
  const int64_t P = p.pow2;
  const double hk = p.k == 1 ? 1.0 : p.h_k[(i / P) * p.k + j / P];
  return hk * syl(i % P, j % P) / std::sqrt(static_cast<double>(p.dim));
}

std::vector<double> dense_r(int64_t d) {
  const HadamardPlan& p = hadamard_plan(d);
  std::vector<double> r(static_cast<size_t>(d * d));
  for (int64_t i = 0; i < d; ++i)
    for (int64_t j = 0; j < d; ++j) r[i * d + j] = r_entry(p, i, j);
  return r;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

TEST(HadamardMatrix, EveryOrderIsHadamard) {
  const auto orders = hadamard_orders();
  ASSERT_FALSE(orders.empty());
  for (int64_t k : orders) {
    const auto h = hadamard_matrix(k);
    ASSERT_EQ(static_cast<int64_t>(h.size()), k * k) << k;
    for (int8_t v : h) ASSERT_TRUE(v == 1 || v == -1) << k;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        int64_t dot = 0;
        for (int64_t c = 0; c < k; ++c) dot += h[i * k + c] * h[j * k + c];
        ASSERT_EQ(dot, i == j ? k : 0) << "order " << k << " rows " << i << ", " << j;
      }
  }
}

TEST(HadamardMatrix, RequiredOrdersAreBuilt) {
  const auto orders = hadamard_orders();
  for (int64_t k : {2, 4, 8, 16, 32, 64, 128, 12, 20, 28, 36, 40, 44, 52, 60, 108, 140, 172})
    EXPECT_NE(std::find(orders.begin(), orders.end(), k), orders.end()) << "missing order " << k;
  EXPECT_TRUE(std::is_sorted(orders.begin(), orders.end()));
  EXPECT_EQ(hadamard_matrix(1), std::vector<int8_t>{1});
  EXPECT_TRUE(hadamard_matrix(6).empty());
  EXPECT_TRUE(hadamard_matrix(0).empty());
  // Paley II results are symmetric (28 = 2 (13 + 1), 52 = 2 (25 + 1) over GF(25)).
  for (int64_t k : {28, 52}) {
    const auto h = hadamard_matrix(k);
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) ASSERT_EQ(h[i * k + j], h[j * k + i]) << k;
  }
  // Paley I (44 = 43 + 1): H - I is skew-symmetric.
  const auto h = hadamard_matrix(44);
  for (int64_t i = 0; i < 44; ++i)
    for (int64_t j = 0; j < 44; ++j)
      if (i != j) ASSERT_EQ(h[i * 44 + j], -h[j * 44 + i]);
}

// The Paley II structure the GPU mix relies on: detection and its formula
// y_2i = sum_j C_ij t_j + s_i, y_2i+1 = -sum_j C_ij s_j + t_i (s, t: pair sums
// and differences) against the dense H z.
TEST(HadamardMatrix, PaleyIIStructure) {
  EXPECT_EQ(paley2_order(hadamard_matrix(12), 12), 6);
  EXPECT_EQ(paley2_order(hadamard_matrix(20), 20), 10);  // over GF(9)
  EXPECT_EQ(paley2_order(hadamard_matrix(28), 28), 14);
  EXPECT_EQ(paley2_order(hadamard_matrix(36), 36), 18);
  EXPECT_EQ(paley2_order(hadamard_matrix(52), 52), 26);
  EXPECT_EQ(paley2_order(hadamard_matrix(44), 44), 0);  // Paley I
  EXPECT_EQ(paley2_order(hadamard_matrix(172), 172), 0);  // Williamson
  EXPECT_EQ(paley2_order(hadamard_matrix(16), 16), 0);
  for (int64_t k : {12, 20, 28, 36, 52}) {
    const auto h = hadamard_matrix(k);
    const int64_t n = k / 2;
    std::vector<double> z(k);
    for (int64_t i = 0; i < k; ++i) z[i] = normal01(5, k, i);
    for (int64_t i = 0; i < n; ++i) {
      double ye = 0, yo = 0;
      for (int64_t j = 0; j < n; ++j) {
        const double c = h[2 * i * k + 2 * j] - (i == j ? 1 : 0);
        ye += c * (z[2 * j] - z[2 * j + 1]);
        yo += c * (z[2 * j] + z[2 * j + 1]);
      }
      ye += z[2 * i] + z[2 * i + 1];
      yo = -yo + (z[2 * i] - z[2 * i + 1]);
      double de = 0, dd = 0;  // dense: (H^T z)_2i, (H^T z)_2i+1
      for (int64_t a = 0; a < k; ++a) de += h[a * k + 2 * i] * z[a], dd += h[a * k + 2 * i + 1] * z[a];
      EXPECT_NEAR(ye, de, 1e-9) << k;
      EXPECT_NEAR(yo, dd, 1e-9) << k;
    }
  }
}

TEST(HadamardPlan, ChoosesTheSmallestOrder) {
  const HadamardPlan& a = hadamard_plan(4096);
  EXPECT_TRUE(a.full());
  EXPECT_EQ(a.k, 1);
  EXPECT_EQ(a.pow2, 4096);
  EXPECT_EQ(a.describe(), "4096 = 2^12");
  const HadamardPlan& b = hadamard_plan(14336);
  EXPECT_EQ(b.k, 28);
  EXPECT_EQ(b.pow2, 512);
  EXPECT_EQ(b.describe(), "14336 = 28 x 512");
  const HadamardPlan& c = hadamard_plan(11008);
  EXPECT_EQ(c.k, 172);
  EXPECT_EQ(c.pow2, 64);
  EXPECT_EQ(hadamard_plan(100).k, 100);  // Paley II over GF(49)
  const HadamardPlan& e = hadamard_plan(92);  // 4 x 23: no construction here
  EXPECT_FALSE(e.full());
  EXPECT_EQ(e.block, 4);
  EXPECT_NE(e.describe().find("fallback"), std::string::npos);
  EXPECT_EQ(hadamard_plan(7).block, 1);
  EXPECT_EQ(hadamard_plan(1).block, 1);
  EXPECT_EQ(hadamard_plan(12).k, 12);
  EXPECT_EQ(hadamard_plan(40).k, 20);  // the smallest K whose 2^k cofactor fits
  EXPECT_EQ(&hadamard_plan(14336), &b);  // cached
  EXPECT_THROW(hadamard_plan(0), Error);
}

const int64_t kDims[] = {1, 2, 8, 12, 24, 40, 56, 64, 96, 100, 92, 184, 172, 344, 7, 48};

TEST(HadamardRows, MatchesDenseReference) {
  for (int64_t d : kDims) {
    const auto r = dense_r(d);
    // R R^T = I (the dense reference itself is orthogonal).
    for (int64_t i = 0; i < d; ++i)
      for (int64_t j = 0; j < d; ++j) {
        double s = 0;
        for (int64_t c = 0; c < d; ++c) s += r[i * d + c] * r[j * d + c];
        ASSERT_NEAR(s, i == j ? 1.0 : 0.0, 1e-12) << d;
      }
    const int64_t rows = 5;
    Tensor x = testing::random_normal({rows, d}, 11 + d);
    const auto xv = x.to_floats();
    for (bool transpose : {false, true}) {
      Tensor y = Tensor::empty({rows, d}, DType::f32);
      hadamard_rows(x, y, transpose);
      std::vector<double> ref(static_cast<size_t>(rows * d), 0.0);
      for (int64_t n = 0; n < rows; ++n)
        for (int64_t j = 0; j < d; ++j) {
          double s = 0;
          for (int64_t i = 0; i < d; ++i)
            s += xv[n * d + i] * (transpose ? r[j * d + i] : r[i * d + j]);
          ref[n * d + j] = s;
        }
      EXPECT_LT(max_abs_diff(y.to_floats(), ref), 2e-5) << "d " << d << " transpose " << transpose;
    }
  }
}

TEST(HadamardCols, MatchesDenseReference) {
  for (int64_t d : kDims) {
    const auto r = dense_r(d);
    const int64_t cols = 70;  // more than one 64-column chunk
    Tensor x = testing::random_normal({d, cols}, 23 + d);
    const auto xv = x.to_floats();
    for (bool transpose : {false, true}) {
      Tensor y = Tensor::empty({d, cols}, DType::f32);
      hadamard_cols(x, y, transpose);
      // R^T x (transpose = false) or R x.
      std::vector<double> ref(static_cast<size_t>(d * cols), 0.0);
      for (int64_t j = 0; j < d; ++j)
        for (int64_t c = 0; c < cols; ++c) {
          double s = 0;
          for (int64_t i = 0; i < d; ++i) s += (transpose ? r[j * d + i] : r[i * d + j]) * xv[i * cols + c];
          ref[j * cols + c] = s;
        }
      EXPECT_LT(max_abs_diff(y.to_floats(), ref), 2e-5) << "d " << d << " transpose " << transpose;
    }
  }
}

TEST(HadamardRows, InverseAliasingAndShapes) {
  for (int64_t d : {64, 96, 100, 184, 344, 4096, 14336}) {
    Tensor x = testing::random_normal({2, 3, d}, 5 + d);
    const auto xv = x.to_floats();
    Tensor y = Tensor::empty(x.shape(), DType::f32);
    hadamard_rows(x, y);
    // Orthogonal: norms are kept.
    double nx = 0, ny = 0;
    const auto yv = y.to_floats();
    for (size_t i = 0; i < xv.size(); ++i) nx += double(xv[i]) * xv[i], ny += double(yv[i]) * yv[i];
    EXPECT_NEAR(ny / nx, 1.0, 1e-5) << d;
    // x R R^T == x, in place (y aliases itself).
    hadamard_rows(y, y, /*transpose=*/true);
    EXPECT_LT(relative_error(y.to_floats(), xv), 1e-6) << d;
    // And the other order: x R^T R == x.
    Tensor z = Tensor::empty(x.shape(), DType::f32);
    z.copy_from(x);
    hadamard_rows(z, z, true);
    hadamard_rows(z, z, false);
    EXPECT_LT(relative_error(z.to_floats(), xv), 1e-6) << d;
  }
}

TEST(HadamardCols, InverseAndAliasing) {
  for (int64_t d : {64, 100, 184, 344, 1536}) {
    Tensor x = testing::random_normal({d, 2, 9}, 9 + d);
    const auto xv = x.to_floats();
    Tensor y = Tensor::empty(x.shape(), DType::f32);
    y.copy_from(x);
    hadamard_cols(y, y);
    hadamard_cols(y, y, true);
    EXPECT_LT(relative_error(y.to_floats(), xv), 1e-6) << d;
  }
}

// Large Llama widths: compare a few output entries with the definition.
TEST(HadamardRows, LlamaWidthsSampledEntries) {
  for (int64_t d : {2048, 4096, 11008, 14336}) {
    const HadamardPlan& p = hadamard_plan(d);
    Tensor x = testing::random_normal({2, d}, 31 + d);
    const auto xv = x.to_floats();
    for (bool transpose : {false, true}) {
      Tensor y = Tensor::empty({2, d}, DType::f32);
      hadamard_rows(x, y, transpose);
      const auto yv = y.to_floats();
      for (int64_t j : {int64_t{0}, int64_t{1}, d / 3, d / 2 + 7, d - 1}) {
        double s = 0;
        for (int64_t i = 0; i < d; ++i) s += xv[d + i] * (transpose ? r_entry(p, j, i) : r_entry(p, i, j));
        EXPECT_NEAR(yv[d + j], s, 1e-4) << "d " << d << " j " << j;
      }
    }
  }
}

TEST(Hadamard, Bf16IsTheRoundedF32Result) {
  for (int64_t d : {96, 344, 4096}) {
    Tensor x = testing::random_normal({4, d}, 77 + d, 1.0f, DType::bf16);
    Tensor yf = Tensor::empty({4, d}, DType::f32);
    Tensor yb = Tensor::empty({4, d}, DType::bf16);
    hadamard_rows(x, yf);
    hadamard_rows(x, yb);
    const auto f = yf.to_floats(), b = yb.to_floats();
    for (size_t i = 0; i < f.size(); ++i) ASSERT_EQ(b[i], bf16_bits_to_float(float_to_bf16_bits(f[i]))) << i;
    Tensor xc = testing::random_normal({d, 3}, 78 + d, 1.0f, DType::bf16);
    Tensor cf = Tensor::empty({d, 3}, DType::f32), cb = Tensor::empty({d, 3}, DType::bf16);
    hadamard_cols(xc, cf, true);
    hadamard_cols(xc, cb, true);
    const auto f2 = cf.to_floats(), b2 = cb.to_floats();
    for (size_t i = 0; i < f2.size(); ++i) ASSERT_EQ(b2[i], bf16_bits_to_float(float_to_bf16_bits(f2[i]))) << i;
  }
}

TEST(Hadamard, SpreadsAnOutlier) {
  // One huge entry becomes d entries of equal magnitude: the point of HALO.
  const int64_t d = 14336;
  std::vector<float> v(d, 0.0f);
  v[1234] = 1000.0f;
  Tensor x = Tensor::from_floats({1, d}, v), y = Tensor::empty({1, d}, DType::f32);
  hadamard_rows(x, y);
  for (float e : y.to_floats()) ASSERT_NEAR(std::fabs(e), 1000.0 / std::sqrt(double(d)), 1e-3);
}

TEST(Hadamard, RejectsBadInputs) {
  Tensor x = Tensor::zeros({2, 8}, DType::f32);
  Tensor y = Tensor::zeros({2, 9}, DType::f32);
  EXPECT_THROW(hadamard_rows(x, y), Error);
  Tensor q = Tensor::zeros({2, 8}, DType::i8);
  EXPECT_THROW(hadamard_rows(q, q), Error);
}

TEST(HadamardCuda, MatchesCpu) {
  HALO_REQUIRE_CUDA();
  const auto results = hadamard_cuda_checks(false);
  ASSERT_FALSE(results.empty());
  for (const auto& r : results)
    EXPECT_TRUE(r.ok) << r.name << ": error " << r.error << " > " << r.tolerance << " " << r.detail;
}

}  // namespace
}  // namespace halo

namespace halo {
namespace {

TEST(HadamardPlan, FullQueryMatchesThePlans) {
  for (int64_t d : {1, 2, 12, 96, 100, 4096, 11008, 14336}) {
    EXPECT_TRUE(hadamard_full(d)) << d;
    EXPECT_TRUE(hadamard_plan(d).full()) << d;
  }
  for (int64_t d : {7, 92, 300}) EXPECT_FALSE(hadamard_full(d)) << d;
  EXPECT_FALSE(hadamard_full(0));
}

}  // namespace
}  // namespace halo
