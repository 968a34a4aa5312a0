#include <cmath>

#include "core/error.h"
#include "halo/linear.h"
#include "halo/recipe.h"
#include "kernels/hadamard.h"
#include "kernels/selfcheck.h"
#include "testing.h"

namespace halo {
namespace {

using testing::random_normal;
using testing::with_outlier_columns;

// ---- plain float64 re-statement of the method -------------------------------
using Mat = std::vector<double>;  // row-major

Mat to_mat(const Tensor& t) {
  const auto f = t.to_floats();
  return {f.begin(), f.end()};
}

// C[m, n] = A[m, k] B[n, k]^T
Mat mul_nt(const Mat& a, const Mat& b, int64_t m, int64_t n, int64_t k) {
  Mat c(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p) s += a[i * k + p] * b[j * k + p];
      c[i * n + j] = s;
    }
  return c;
}

Mat transpose(const Mat& a, int64_t rows, int64_t cols) {
  Mat t(a.size());
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) t[j * rows + i] = a[i * cols + j];
  return t;
}

// The dense rotation R_d, read off the kernel applied to the identity
// (its correctness against H_K kron H_2^k is tested in test_hadamard).
Mat rotation(int64_t d) {
  Tensor eye = Tensor::zeros({d, d}, DType::f32);
  for (int64_t i = 0; i < d; ++i) eye.data_as<float>()[i * d + i] = 1.0f;
  Tensor r = Tensor::empty({d, d}, DType::f32);
  hadamard_rows(eye, r);
  return to_mat(r);
}

// Per-tensor absmax quantize-dequantize (the reference Q of HALO-METHOD.md).
Mat fake_quant(const Mat& a, DType fmt) {
  double amax = 0;
  for (double v : a) amax = std::max(amax, std::fabs(v));
  const float qmax = qmax_of(fmt);
  const float inv = static_cast<float>(qmax / static_cast<float>(amax));
  const float scale = static_cast<float>(amax) / qmax;
  Mat out(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const float v = static_cast<float>(a[i]) * inv;
    const float q = fmt == DType::i8 ? float_to_i8(v) : e4m3_to_float(float_to_e4m3(v));
    out[i] = static_cast<double>(q) * scale;
  }
  return out;
}

double rel(const Tensor& got, const Mat& ref) {
  const auto g = got.to_floats();
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (g[i] - ref[i]) * (g[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

struct LayerRun {
  Tensor y, dx, dw;
};

LayerRun run_layer(const Recipe& r, const Tensor& x, const Tensor& w, const Tensor& dy) {
  HaloLinear layer(x.size(-1), w.size(0), false, r, Device::cpu, DType::f32, 5);
  layer.weight = w;
  LinearSaved saved;
  LayerRun out;
  out.y = layer.forward(x, &saved);
  out.dx = layer.backward(dy, saved);
  out.dw = layer.weight_grad();
  return out;
}

TEST(Recipe, NamesRoundTrip) {
  for (const auto& name : recipe_names()) EXPECT_EQ(parse_recipe(name).name(), name);
  const Recipe r = parse_recipe("halo1-fp8+row+e5m2+sr+sim");
  EXPECT_EQ(r.method, Method::halo1);
  EXPECT_EQ(r.format, DType::e4m3);
  EXPECT_EQ(r.grad_format, DType::e5m2);
  EXPECT_EQ(r.granularity, Granularity::row);
  EXPECT_TRUE(r.stochastic_grad && r.simulate);
  EXPECT_EQ(parse_recipe(r.name()), r);
  EXPECT_THROW(parse_recipe("halo3-int8"), Error);
  EXPECT_THROW(parse_recipe("halo1-int8+e5m2"), Error);
  EXPECT_THROW(parse_recipe("halo1-int8+1x128"), Error);
  EXPECT_THROW(parse_recipe("bf16+row"), Error);
  EXPECT_TRUE(parse_recipe("halo2-fp8").fast_accum());
  const Recipe promote = parse_recipe("halo2-fp8+row+promote");
  EXPECT_FALSE(promote.fast_accum());
  EXPECT_EQ(parse_recipe(promote.name()), promote);
  EXPECT_FALSE(parse_recipe("halo1-int8").fast_accum());
  EXPECT_THROW(parse_recipe("halo1-int8+promote"), Error);
  EXPECT_THROW(parse_recipe("halo1-fp8+sim+promote"), Error);
  EXPECT_THROW(parse_recipe("halo1-fp8+1x128+promote"), Error);
  EXPECT_EQ(parse_recipe_list("bf16,halo2-int8").size(), 2u);
}

// Each recipe against a float64 re-statement of its math (per-tensor scales).
class RecipeMath : public ::testing::TestWithParam<const char*> {};

TEST_P(RecipeMath, MatchesRestatement) {
  const Recipe r = parse_recipe(GetParam());
  // 176 = 44 * 4 and 88 = 44 * 2: H_44 (Paley I) is not symmetric, so R and R^T differ.
  const int64_t b = 88, n = 176, m = 40;
  const Tensor x = with_outlier_columns(random_normal({b, n}, 1), 2, 11);
  const Tensor w = random_normal({m, n}, 2, 0.1f);
  const Tensor dy = random_normal({b, m}, 3);
  const LayerRun got = run_layer(r, x, w, dy);

  const Mat X = to_mat(x), W = to_mat(w), E = to_mat(dy);
  const DType f = r.format;
  const bool rot = r.rotates();
  const Mat Rn = rotation(n);
  const Mat Rn_t = transpose(Rn, n, n);
  // X~ = X R, W~ = W R (as rows times R: mul_nt with R^T as the second operand).
  const Mat Xr = rot ? mul_nt(X, Rn_t, b, n, n) : X;
  const Mat Wr = rot ? mul_nt(W, Rn_t, m, n, n) : W;
  const Mat qX = fake_quant(Xr, f), qW = fake_quant(Wr, f);
  const Mat Y = mul_nt(qX, qW, b, m, n);
  Mat dX, dW;
  const Mat qWt = transpose(qW, m, n);
  if (r.method == Method::halo2) {
    const Mat Rb = rotation(b);
    const Mat Ert = mul_nt(transpose(Rb, b, b), transpose(E, b, m), b, m, b);  // R_b^T E
    const Mat G = mul_nt(fake_quant(Ert, f), qWt, b, n, m);
    dX = mul_nt(Rb, transpose(G, b, n), b, n, b);  // R_b G
  } else {
    dX = mul_nt(fake_quant(E, f), qWt, b, n, m);
  }
  dW = mul_nt(transpose(fake_quant(E, f), b, m), transpose(qX, b, n), m, n, b);
  if (rot) {
    dX = mul_nt(dX, Rn, b, n, n);  // dX R^T
    dW = mul_nt(dW, Rn, m, n, n);
  }
  // Tolerance: f32 rotation and accumulation against float64; a code may move
  // one step where the two land on either side of a rounding boundary.
  EXPECT_LT(rel(got.y, Y), 2e-3) << r.name();
  EXPECT_LT(rel(got.dx, dX), 2e-3) << r.name();
  EXPECT_LT(rel(got.dw, dW), 2e-3) << r.name();
}

INSTANTIATE_TEST_SUITE_P(AllLevels, RecipeMath,
                         ::testing::Values("halo0-int8", "halo1-int8", "halo2-int8", "halo0-fp8", "halo1-fp8",
                                           "halo2-fp8"));

TEST(HaloLinear, RotationsBeatHalo0OnOutliers) {
  const int64_t b = 256, n = 512, m = 384;
  const Tensor x = with_outlier_columns(random_normal({b, n}, 21), 4, 1);
  const Tensor w = with_outlier_columns(random_normal({m, n}, 22, 0.05f), 4, 2);
  const Tensor dy = random_normal({b, m}, 23);
  const Mat X = to_mat(x), W = to_mat(w), E = to_mat(dy);
  const Mat Y = mul_nt(X, W, b, m, n);
  const Mat dX = mul_nt(E, transpose(W, m, n), b, n, m);
  const Mat dW = mul_nt(transpose(E, b, m), transpose(X, b, n), m, n, b);
  const LayerRun h0 = run_layer(parse_recipe("halo0-int8"), x, w, dy);
  for (const char* name : {"halo1-int8", "halo2-int8"}) {
    const LayerRun h = run_layer(parse_recipe(name), x, w, dy);
    EXPECT_LT(2 * rel(h.y, Y), rel(h0.y, Y)) << name;
    EXPECT_LT(2 * rel(h.dx, dX), rel(h0.dx, dX)) << name;
    EXPECT_LT(2 * rel(h.dw, dW), rel(h0.dw, dW)) << name;
  }
}

TEST(HaloLinear, SimulationMatchesEightBitPath) {
  const Tensor x = with_outlier_columns(random_normal({48, 128}, 31), 2, 3);
  const Tensor w = random_normal({64, 128}, 32, 0.1f);
  const Tensor dy = random_normal({48, 64}, 33);
  for (const char* name : {"halo1-int8", "halo2-fp8+row", "halo1-fp8+1x128+e5m2+sr"}) {
    const LayerRun q = run_layer(parse_recipe(name), x, w, dy);
    const LayerRun s = run_layer(parse_recipe(std::string(name) + "+sim"), x, w, dy);
    EXPECT_LT(rel(q.y, to_mat(s.y)), 1e-5) << name;
    EXPECT_LT(rel(q.dx, to_mat(s.dx)), 1e-5) << name;
    EXPECT_LT(rel(q.dw, to_mat(s.dw)), 1e-5) << name;
  }
}

TEST(HaloLinear, AnyBatchShapeBiasAndAccumulation) {
  for (const char* name : {"bf16", "halo2-int8", "halo1-fp8+row"}) {
    const Recipe r = parse_recipe(name);
    HaloLinear layer(96, 20, true, r, Device::cpu, DType::f32, 9);
    const Tensor x = random_normal({2, 50, 96}, 41);  // 100 tokens: halo2 pads to a Hadamard size
    const Tensor dy = random_normal({2, 50, 20}, 42);
    LinearSaved saved;
    const Tensor y = layer.forward(x, &saved);
    EXPECT_EQ(y.shape(), (Shape{2, 50, 20}));
    const Tensor dx = layer.backward(dy, saved);
    EXPECT_EQ(dx.shape(), (Shape{2, 50, 96}));
    // db = column sums of dY; a second backward adds the same again.
    const auto e = dy.to_floats();
    const Mat g1 = to_mat(layer.weight_grad());
    layer.backward(dy, saved);
    const auto db = layer.bias_grad().to_floats();
    for (int j = 0; j < 20; ++j) {
      double s = 0;
      for (int i = 0; i < 100; ++i) s += e[i * 20 + j];
      EXPECT_NEAR(db[j], 2 * s, 1e-3) << name;
    }
    Mat twice = g1;
    for (double& v : twice) v *= 2;
    if (!r.stochastic_grad) {
      EXPECT_LT(rel(layer.weight_grad(), twice), 1e-6) << name;
    }
    // dX of the quantized recipe stays close to the exact product.
    const Mat dX = mul_nt(to_mat(dy), transpose(to_mat(layer.weight), 20, 96), 100, 96, 20);
    EXPECT_LT(rel(dx, dX), 0.05) << name;
    EXPECT_THROW(layer.forward(random_normal({4, 95}, 1), nullptr), Error);
  }
  // bf16 weight gradients are for the GPU; the CPU keeps f32 and says so.
  HaloLinear layer(96, 20, false, parse_recipe("halo1-fp8"), Device::cpu, DType::f32, 9);
  EXPECT_NO_THROW(layer.set_weight_grad_dtype(DType::f32));
  EXPECT_EQ(layer.weight_grad_dtype(), DType::f32);
  try {
    layer.set_weight_grad_dtype(DType::bf16);
    ADD_FAILURE() << "bf16 gradients accepted on the CPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16 on the GPU"), std::string::npos) << e.what();
  }
}

TEST(HaloLinear, WeightIsQuantizedOncePerUpdate) {
  HaloLinear layer(64, 32, false, parse_recipe("halo1-int8"), Device::cpu, DType::f32, 3);
  const Tensor x = random_normal({16, 64}, 51);
  const Tensor y1 = layer.forward(x, nullptr);
  // Changing the weight without weight_updated() keeps the cached 8-bit copy...
  float* w = layer.weight.data_as<float>();
  for (int64_t i = 0; i < layer.weight.numel(); ++i) w[i] *= 2.0f;
  EXPECT_EQ(layer.forward(x, nullptr).to_floats(), y1.to_floats());
  // ...and weight_updated() makes the next forward use the new weight.
  layer.weight_updated();
  EXPECT_LT(rel(layer.forward(x, nullptr), [&] { Mat m = to_mat(y1); for (double& v : m) v *= 2; return m; }()),
            1e-2);
}

// The CUDA layer against the CPU one per recipe (linear_check.cpp), including a
// 100-token, 112-wide case whose 8-bit GEMMs run padded (K = 100 in dW, M = 100 in Y).
TEST(HaloLinearCuda, MatchesCpu) {
  HALO_REQUIRE_CUDA();
  const auto results = linear_cuda_checks(false);
  EXPECT_FALSE(results.empty());
  for (const CheckResult& r : results)
    EXPECT_TRUE(r.ok) << r.name << ": error " << r.error << " (tolerance " << r.tolerance << ") " << r.detail;
}

}  // namespace
}  // namespace halo
