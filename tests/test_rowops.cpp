// The row/elementwise ops of the Llama block on the CPU: each against a
// float64 re-statement of its formula, each backward against finite
// differences of that re-statement (float64, tiny sizes); then the CUDA
// kernels against the CPU (rowops_cuda_checks) where a GPU is present.
#include <cmath>
#include <functional>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/embedding.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "testing.h"

namespace halo {
namespace {

using testing::random_normal;
using Vec = std::vector<double>;

Vec doubles(const Tensor& t) {
  const auto f = t.to_floats();
  return Vec(f.begin(), f.end());
}

// max |a - b| / max |b|
double max_rel(const Vec& a, const Vec& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num = std::max(num, std::fabs(a[i] - b[i]));
    den = std::max(den, std::fabs(b[i]));
  }
  return den > 0 ? num / den : num;
}

Tensor clone(const Tensor& t) {
  Tensor c = Tensor::empty(t.shape(), t.dtype());
  c.copy_from(t);
  return c;
}

// Central differences in float64 of a scalar function of p: dL/dp[i].
Vec numeric_grad(const std::function<double(const Vec&)>& loss, Vec p, double h = 1e-6) {
  Vec g(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    const double saved = p[i];
    p[i] = saved + h;
    const double up = loss(p);
    p[i] = saved - h;
    const double down = loss(p);
    p[i] = saved;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// ---- RMSNorm ------------------------------------------------------------------

// y = x / sqrt(mean(x^2) + eps) * w, row by row, in float64.
Vec rmsnorm64(const Vec& x, const Vec& w, int64_t rows, int64_t d, double eps, Vec* rstd = nullptr) {
  Vec y(x.size());
  if (rstd) rstd->resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < d; ++c) ss += x[r * d + c] * x[r * d + c];
    const double rs = 1.0 / std::sqrt(ss / d + eps);
    if (rstd) (*rstd)[r] = rs;
    for (int64_t c = 0; c < d; ++c) y[r * d + c] = x[r * d + c] * rs * w[c];
  }
  return y;
}

TEST(RmsNorm, ForwardMatchesFloat64) {
  const int64_t rows = 7, d = 37;
  const float eps = 1e-5f;
  const Tensor x = random_normal({rows, d}, 1, 2.0f), w = random_normal({d}, 2);
  Tensor y = Tensor::empty({rows, d}, DType::f32), rstd = Tensor::empty({rows}, DType::f32);
  rmsnorm_forward(x, w, eps, y, rstd);
  Vec rs64;
  const Vec y64 = rmsnorm64(doubles(x), doubles(w), rows, d, eps, &rs64);
  EXPECT_LT(max_rel(doubles(y), y64), 1e-6);
  EXPECT_LT(max_rel(doubles(rstd), rs64), 1e-6);

  // Leading dims are flattened; y may alias x.
  Tensor x3 = clone(x).view({1, rows, d});
  rmsnorm_forward(x3, w, eps, x3, rstd);
  EXPECT_EQ(x3.to_floats(), y.to_floats());
}

TEST(RmsNorm, Bf16RoundsOutputs) {
  const int64_t rows = 4, d = 24;
  const Tensor x = random_normal({rows, d}, 3, 1.0f, DType::bf16), w = random_normal({d}, 4, 1.0f, DType::bf16);
  Tensor y = Tensor::empty({rows, d}, DType::bf16), rstd = Tensor::empty({rows}, DType::f32);
  rmsnorm_forward(x, w, 1e-6f, y, rstd);
  Tensor yf = Tensor::empty({rows, d}, DType::f32), rstdf = Tensor::empty({rows}, DType::f32);
  rmsnorm_forward(x.to(DType::f32), w.to(DType::f32), 1e-6f, yf, rstdf);
  EXPECT_EQ(y.to_floats(), yf.to(DType::bf16).to_floats());
  EXPECT_EQ(rstd.to_floats(), rstdf.to_floats());
}

TEST(RmsNorm, FusedResidualIsAddThenNorm) {
  const int64_t rows = 5, d = 40;
  for (DType act : {DType::f32, DType::bf16}) {
    const Tensor r = random_normal({rows, d}, 5, 1.0f, act), b = random_normal({rows, d}, 6, 1.0f, act);
    const Tensor w = random_normal({d}, 7);
    Tensor rnew = Tensor::empty({rows, d}, act), y = Tensor::empty({rows, d}, act);
    Tensor rstd = Tensor::empty({rows}, DType::f32);
    residual_rmsnorm_forward(r, b, w, 1e-5f, rnew, y, rstd);
    // The reference: the sum rounded to the activation dtype, then the plain norm.
    Tensor sum = Tensor::empty({rows, d}, act);
    for (int64_t i = 0; i < rows * d; ++i)
      store_float(sum.data(), act, i, load_float(r.data(), act, i) + load_float(b.data(), act, i));
    Tensor y2 = Tensor::empty({rows, d}, act), rstd2 = Tensor::empty({rows}, DType::f32);
    rmsnorm_forward(sum, w, 1e-5f, y2, rstd2);
    EXPECT_EQ(rnew.to_floats(), sum.to_floats());
    EXPECT_EQ(y.to_floats(), y2.to_floats());
    EXPECT_EQ(rstd.to_floats(), rstd2.to_floats());
    // In place: residual_out over residual, y over branch.
    Tensor r2 = clone(r), b2 = clone(b);
    residual_rmsnorm_forward(r2, b2, w, 1e-5f, r2, b2, rstd);
    EXPECT_EQ(r2.to_floats(), sum.to_floats());
    EXPECT_EQ(b2.to_floats(), y2.to_floats());
  }
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  const int64_t rows = 3, d = 8;
  const double eps = 1e-5;
  const Tensor x = random_normal({rows, d}, 8, 1.5f), w = random_normal({d}, 9), dy = random_normal({rows, d}, 10);
  const Vec x64 = doubles(x), w64 = doubles(w), c = doubles(dy);
  Tensor y = Tensor::empty({rows, d}, DType::f32), rstd = Tensor::empty({rows}, DType::f32);
  rmsnorm_forward(x, w, static_cast<float>(eps), y, rstd);

  const Tensor dw0 = random_normal({d}, 11);
  Tensor dx = Tensor::empty({rows, d}, DType::f32), dw = clone(dw0);
  rmsnorm_backward(dy, x, w, rstd, nullptr, dx, dw);

  // L = sum(dy * y): dL/dx and dL/dw by central differences.
  const Vec gx = numeric_grad([&](const Vec& p) { return dot(c, rmsnorm64(p, w64, rows, d, eps)); }, x64);
  const Vec gw = numeric_grad([&](const Vec& p) { return dot(c, rmsnorm64(x64, p, rows, d, eps)); }, w64);
  EXPECT_LT(max_rel(doubles(dx), gx), 1e-5);
  Vec dw_delta = doubles(dw);
  for (int64_t i = 0; i < d; ++i) dw_delta[i] -= dw0.data_as<float>()[i];  // dw accumulates
  EXPECT_LT(max_rel(dw_delta, gw), 1e-5);

  // With the residual gradient: dx += dresidual; dx may alias dresidual or dy.
  const Tensor dres = random_normal({rows, d}, 12);
  Tensor dx2 = Tensor::empty({rows, d}, DType::f32), dw2 = Tensor::zeros({d}, DType::f32);
  rmsnorm_backward(dy, x, w, rstd, &dres, dx2, dw2);
  Vec expect = doubles(dx);
  for (int64_t i = 0; i < rows * d; ++i) expect[i] += dres.data_as<float>()[i];
  EXPECT_LT(max_rel(doubles(dx2), expect), 1e-6);
  Tensor acc = clone(dres), dw3 = Tensor::zeros({d}, DType::f32);
  rmsnorm_backward(dy, x, w, rstd, &acc, acc, dw3);
  EXPECT_EQ(acc.to_floats(), dx2.to_floats());
  Tensor dyc = clone(dy), dw4 = Tensor::zeros({d}, DType::f32);
  rmsnorm_backward(dyc, x, w, rstd, &dres, dyc, dw4);
  EXPECT_EQ(dyc.to_floats(), dx2.to_floats());
  EXPECT_EQ(dw4.to_floats(), dw2.to_floats());
}

TEST(RmsNorm, RejectsBadArguments) {
  const Tensor x = random_normal({4, 8}, 1), w = random_normal({8}, 2);
  Tensor y = Tensor::empty({4, 8}, DType::f32), rstd = Tensor::empty({4}, DType::f32);
  const Tensor w_bad = random_normal({7}, 2);
  EXPECT_THROW(rmsnorm_forward(x, w_bad, 1e-5f, y, rstd), Error);
  Tensor rstd_bad = Tensor::empty({3}, DType::f32);
  EXPECT_THROW(rmsnorm_forward(x, w, 1e-5f, y, rstd_bad), Error);
  Tensor y_bad = Tensor::empty({4, 9}, DType::f32);
  EXPECT_THROW(rmsnorm_forward(x, w, 1e-5f, y_bad, rstd), Error);
  Tensor dw_bf16 = Tensor::zeros({8}, DType::bf16), dx = Tensor::empty({4, 8}, DType::f32);
  EXPECT_THROW(rmsnorm_backward(x, x, w, rstd, nullptr, dx, dw_bf16), Error);
  Tensor rnew = Tensor::empty({4, 8}, DType::f32);
  EXPECT_THROW(residual_rmsnorm_forward(x, x, w, 1e-5f, rnew, rnew, rstd), Error);  // y == residual_out
}

// ---- SwiGLU -------------------------------------------------------------------

double silu64(double g) { return g / (1.0 + std::exp(-g)); }

TEST(SwiGlu, ForwardMatchesFloat64) {
  const Tensor g = random_normal({6, 45}, 20, 4.0f), u = random_normal({6, 45}, 21);
  Tensor h = Tensor::empty({6, 45}, DType::f32);
  swiglu_forward(g, u, h);
  const Vec g64 = doubles(g), u64 = doubles(u);
  Vec ref(g64.size());
  for (size_t i = 0; i < ref.size(); ++i) ref[i] = silu64(g64[i]) * u64[i];
  EXPECT_LT(max_rel(doubles(h), ref), 1e-6);
  // Saturation: no NaN or inf far out.
  const Tensor big = Tensor::from_floats({4}, {-200.0f, -90.0f, 90.0f, 200.0f}), one = Tensor::from_floats({4}, {1, 1, 1, 1});
  Tensor hb = Tensor::empty({4}, DType::f32), dg = Tensor::empty({4}, DType::f32), du = Tensor::empty({4}, DType::f32);
  swiglu_forward(big, one, hb);
  swiglu_backward(one, big, one, dg, du);
  EXPECT_EQ(hb.to_floats(), (std::vector<float>{-0.0f, -0.0f, 90.0f, 200.0f}));
  EXPECT_EQ(dg.to_floats(), (std::vector<float>{0.0f, 0.0f, 1.0f, 1.0f}));
}

TEST(SwiGlu, BackwardMatchesFiniteDifferences) {
  const int64_t n = 24;
  const Tensor g = random_normal({3, 8}, 22, 3.0f), u = random_normal({3, 8}, 23), dh = random_normal({3, 8}, 24);
  Tensor dg = Tensor::empty({3, 8}, DType::f32), du = Tensor::empty({3, 8}, DType::f32);
  swiglu_backward(dh, g, u, dg, du);
  const Vec g64 = doubles(g), u64 = doubles(u), c = doubles(dh);
  auto loss = [&](const Vec& gv, const Vec& uv) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += c[i] * silu64(gv[i]) * uv[i];
    return s;
  };
  EXPECT_LT(max_rel(doubles(dg), numeric_grad([&](const Vec& p) { return loss(p, u64); }, g64)), 1e-5);
  EXPECT_LT(max_rel(doubles(du), numeric_grad([&](const Vec& p) { return loss(g64, p); }, u64)), 1e-5);
  // In place: dg over g, du over u.
  Tensor g2 = clone(g), u2 = clone(u);
  swiglu_backward(dh, g2, u2, g2, u2);
  EXPECT_EQ(g2.to_floats(), dg.to_floats());
  EXPECT_EQ(u2.to_floats(), du.to_floats());
  // bf16: the f32 results rounded.
  Tensor dgb = Tensor::empty({3, 8}, DType::bf16), dub = Tensor::empty({3, 8}, DType::bf16);
  const Tensor gb = g.to(DType::bf16), ub = u.to(DType::bf16), dhb = dh.to(DType::bf16);
  swiglu_backward(dhb, gb, ub, dgb, dub);
  Tensor dgf = Tensor::empty({3, 8}, DType::f32), duf = Tensor::empty({3, 8}, DType::f32);
  swiglu_backward(dhb.to(DType::f32), gb.to(DType::f32), ub.to(DType::f32), dgf, duf);
  EXPECT_EQ(dgb.to_floats(), dgf.to(DType::bf16).to_floats());
  EXPECT_EQ(dub.to_floats(), duf.to(DType::bf16).to_floats());
  Tensor bad = Tensor::empty({3, 9}, DType::f32);
  EXPECT_THROW(swiglu_forward(g, u, bad), Error);
}

// The fused gate|up layout gives exactly the separate form's values, in place too.
TEST(SwiGlu, FusedLayoutMatchesSeparateForm) {
  const int64_t rows = 5, F = 13;
  const Tensor gu = random_normal({rows, 2 * F}, 25, 2.0f), dh = random_normal({rows, F}, 26);
  Tensor g = Tensor::empty({rows, F}, DType::f32), u = Tensor::empty({rows, F}, DType::f32);
  copy_columns(gu, 0, g, 0, F);
  copy_columns(gu, F, u, 0, F);
  Tensor h = Tensor::empty({rows, F}, DType::f32), hf = Tensor::empty({rows, F}, DType::f32);
  swiglu_forward(g, u, h);
  swiglu_forward_fused(gu, hf);
  EXPECT_EQ(hf.to_floats(), h.to_floats());
  for (float v : hf.to_floats()) EXPECT_NE(v, 0.0f);

  Tensor dg = Tensor::empty({rows, F}, DType::f32), du = Tensor::empty({rows, F}, DType::f32);
  swiglu_backward(dh, g, u, dg, du);
  Tensor dgu = Tensor::empty({rows, 2 * F}, DType::f32), joined = Tensor::empty({rows, 2 * F}, DType::f32);
  swiglu_backward_fused(dh, gu, dgu);
  copy_columns(dg, 0, joined, 0, F);
  copy_columns(du, 0, joined, F, F);
  EXPECT_EQ(dgu.to_floats(), joined.to_floats());
  Tensor in_place = clone(gu).view({1, rows, 2 * F});  // leading dims flattened
  swiglu_backward_fused(dh, in_place, in_place);
  EXPECT_EQ(in_place.to_floats(), joined.to_floats());

  // bf16: the f32 results rounded.
  Tensor hb = Tensor::empty({rows, F}, DType::bf16), dgub = Tensor::empty({rows, 2 * F}, DType::bf16);
  const Tensor gub = gu.to(DType::bf16), dhb = dh.to(DType::bf16);
  swiglu_forward_fused(gub, hb);
  swiglu_backward_fused(dhb, gub, dgub);
  swiglu_forward_fused(gub.to(DType::f32), hf);
  swiglu_backward_fused(dhb.to(DType::f32), gub.to(DType::f32), dgu);
  EXPECT_EQ(hb.to_floats(), hf.to(DType::bf16).to_floats());
  EXPECT_EQ(dgub.to_floats(), dgu.to(DType::bf16).to_floats());

  Tensor bad = Tensor::empty({rows, F + 1}, DType::f32);
  EXPECT_THROW(swiglu_forward_fused(gu, bad), Error);
  EXPECT_THROW(swiglu_backward_fused(dh, gu, bad), Error);
  EXPECT_THROW(swiglu_forward_fused(Tensor::empty({rows, 2 * F + 1}, DType::f32), h), Error);
}

// ---- Embedding ----------------------------------------------------------------

Tensor ids_of(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
  for (size_t i = 0; i < v.size(); ++i) t.data_as<int32_t>()[i] = v[i];
  return t;
}

TEST(Embedding, ForwardGathersRows) {
  const int64_t vocab = 10, d = 6;
  const Tensor table = random_normal({vocab, d}, 30), ids = ids_of({3, 0, 9, 3, 7});
  for (DType out_dt : {DType::f32, DType::bf16}) {
    Tensor out = Tensor::empty({5, d}, out_dt);
    embedding_forward(ids, table, out);
    for (int64_t t = 0; t < 5; ++t)
      for (int64_t c = 0; c < d; ++c) {
        float want = table.data_as<float>()[ids.data_as<int32_t>()[t] * d + c];
        if (out_dt == DType::bf16) want = bf16_bits_to_float(float_to_bf16_bits(want));
        EXPECT_EQ(load_float(out.data(), out_dt, t * d + c), want);
      }
  }
}

TEST(Embedding, OutOfRangeIdsAreNamed) {
  const Tensor table = random_normal({10, 4}, 31);
  for (int32_t bad : {-1, 10}) {
    const Tensor ids = ids_of({1, bad, 2});
    Tensor out = Tensor::zeros({3, 4}, DType::f32), dtable = Tensor::zeros({10, 4}, DType::f32);
    try {
      embedding_forward(ids, table, out);
      FAIL() << "no error for id " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("token 1 has id " + std::to_string(bad)), std::string::npos) << e.what();
    }
    for (float v : out.to_floats()) EXPECT_EQ(v, 0.0f);  // nothing written
    EXPECT_THROW(embedding_backward(ids, out, dtable), Error);
    for (float v : dtable.to_floats()) EXPECT_EQ(v, 0.0f);
  }
}

TEST(Embedding, BackwardAccumulatesInTokenOrder) {
  const int64_t vocab = 6, d = 5;
  const std::vector<int32_t> idv = {2, 5, 2, 0, 2, 5, 1};
  const int64_t tokens = static_cast<int64_t>(idv.size());
  const Tensor ids = ids_of(idv), dout = random_normal({tokens, d}, 32), dtable0 = random_normal({vocab, d}, 33);
  Tensor dtable = clone(dtable0);
  embedding_backward(ids, dout, dtable);
  // float64 re-statement, and the exact f32 sums in ascending token order.
  Vec ref = doubles(dtable0);
  std::vector<float> exact = dtable0.to_floats();
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < d; ++c) {
      ref[idv[t] * d + c] += dout.data_as<float>()[t * d + c];
      exact[idv[t] * d + c] += dout.data_as<float>()[t * d + c];
    }
  EXPECT_LT(max_rel(doubles(dtable), ref), 1e-6);
  EXPECT_EQ(dtable.to_floats(), exact);

  // Finite differences of L = sum(dout * table[ids]) with respect to the table.
  const Vec c = doubles(dout);
  const Vec g = numeric_grad(
      [&](const Vec& tab) {
        double s = 0;
        for (int64_t t = 0; t < tokens; ++t)
          for (int64_t j = 0; j < d; ++j) s += c[t * d + j] * tab[idv[t] * d + j];
        return s;
      },
      doubles(dtable0));
  Vec got = doubles(dtable);
  for (size_t i = 0; i < got.size(); ++i) got[i] -= dtable0.data_as<float>()[i];
  EXPECT_LT(max_rel(got, g), 1e-6);

  // bf16 gradients in, f32 accumulator.
  Tensor dt2 = Tensor::zeros({vocab, d}, DType::f32);
  embedding_backward(ids, dout.to(DType::bf16), dt2);
  Tensor dt3 = Tensor::zeros({vocab, d}, DType::f32);
  embedding_backward(ids, dout.to(DType::bf16).to(DType::f32), dt3);
  EXPECT_EQ(dt2.to_floats(), dt3.to_floats());
}

TEST(Embedding, RowsWrittenAreFlaggedAndClearedAlone) {
  const int64_t vocab = 7, d = 3;
  const Tensor ids = ids_of({4, 1, 4, 6}), dout = random_normal({4, d}, 34), start = random_normal({vocab, d}, 35);
  Tensor dtable = clone(start), rows = Tensor::zeros({vocab}, DType::i8);
  embedding_backward(ids, dout, dtable, &rows);
  const std::vector<int8_t> want = {0, 1, 0, 0, 1, 0, 1};
  EXPECT_EQ(std::vector<int8_t>(rows.data_as<int8_t>(), rows.data_as<int8_t>() + vocab), want);
  embedding_grad_clear(dtable, rows);
  const std::vector<float> got = dtable.to_floats(), before = start.to_floats();
  for (int64_t r = 0; r < vocab; ++r)
    for (int64_t j = 0; j < d; ++j) EXPECT_EQ(got[r * d + j], want[r] ? 0.0f : before[r * d + j]) << r;
  for (int64_t r = 0; r < vocab; ++r) EXPECT_EQ(rows.data_as<int8_t>()[r], 0);
  // Flags of the wrong length or type are refused, naming the expected shape.
  Tensor short_rows = Tensor::zeros({vocab - 1}, DType::i8), f32_rows = Tensor::zeros({vocab}, DType::f32);
  EXPECT_THROW(embedding_backward(ids, dout, dtable, &short_rows), Error);
  EXPECT_THROW(embedding_grad_clear(dtable, f32_rows), Error);
}

// ---- RoPE ---------------------------------------------------------------------

// Hugging Face Llama: q * cos(emb) + rotate_half(q) * sin(emb), emb = cat(freqs, freqs),
// freqs = position * inv_freq (an f32 product, as transformers computes it), in float64.
Vec rope64(const Vec& x, const std::vector<int32_t>& pos, const std::vector<float>& inv_freq, int64_t heads,
           int64_t D) {
  const int64_t half = D / 2, tokens = static_cast<int64_t>(pos.size());
  Vec y(x.size());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < D; ++i) {
        const int64_t o = (t * heads + h) * D;
        const double angle = static_cast<float>(pos[t]) * inv_freq[i % half];
        const double rot = i < half ? -x[o + i + half] : x[o + i - half];
        y[o + i] = x[o + i] * std::cos(angle) + rot * std::sin(angle);
      }
  return y;
}

std::vector<float> inv_freq_of(int64_t D, double theta) {
  std::vector<float> f(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) f[i] = static_cast<float>(std::pow(theta, -2.0 * i / D));
  return f;
}

TEST(Rope, ForwardMatchesHuggingFaceFormula) {
  const int64_t tokens = 6, heads = 3, D = 16;
  const std::vector<int32_t> pos = {0, 1, 2, 0, 1, 5000};  // two packed documents, one far position
  const auto f = inv_freq_of(D, 500000.0);
  const Tensor x = random_normal({tokens, heads, D}, 40);
  Tensor y = clone(x);
  rope_forward(y, ids_of(pos), Tensor::from_floats({D / 2}, f));
  EXPECT_LT(max_rel(doubles(y), rope64(doubles(x), pos, f, heads, D)), 1e-6);
  // Position 0 is the identity.
  for (int64_t i = 0; i < heads * D; ++i) EXPECT_EQ(y.data_as<float>()[i], x.data_as<float>()[i]);
}

TEST(Rope, BackwardIsTheTransposeAndInverts) {
  const int64_t tokens = 4, heads = 2, D = 8;
  const std::vector<int32_t> pos = {3, 0, 7, 1};
  const auto f = inv_freq_of(D, 10000.0);
  const Tensor pos_t = ids_of(pos), f_t = Tensor::from_floats({D / 2}, f);
  const Tensor x = random_normal({tokens, heads, D}, 41), dy = random_normal({tokens, heads, D}, 42);
  Tensor dx = clone(dy);
  rope_backward(dx, pos_t, f_t);
  const Vec c = doubles(dy);
  const Vec g = numeric_grad([&](const Vec& p) { return dot(c, rope64(p, pos, f, heads, D)); }, doubles(x));
  EXPECT_LT(max_rel(doubles(dx), g), 1e-6);
  // backward(forward(x)) == x
  Tensor y = clone(x);
  rope_forward(y, pos_t, f_t);
  rope_backward(y, pos_t, f_t);
  EXPECT_LT(max_rel(doubles(y), doubles(x)), 1e-6);
}

TEST(Rope, PackedDocumentsRestartPositions) {
  // Two documents with the same content: the same result whatever their place in the pack.
  const int64_t heads = 2, D = 12, len = 5;
  const auto f = inv_freq_of(D, 10000.0);
  const Tensor doc = random_normal({len, heads, D}, 43, 1.0f, DType::bf16);
  Tensor packed = Tensor::empty({2 * len, heads, D}, DType::bf16);
  packed.rows(0, len).copy_from(doc);
  packed.rows(len, len).copy_from(doc);
  rope_forward(packed, ids_of({0, 1, 2, 3, 4, 0, 1, 2, 3, 4}), Tensor::from_floats({D / 2}, f));
  EXPECT_EQ(packed.rows(0, len).to_floats(), packed.rows(len, len).to_floats());
  // bf16: the f32 rotation rounded.
  Tensor ref = doc.to(DType::f32);
  rope_forward(ref, ids_of({0, 1, 2, 3, 4}), Tensor::from_floats({D / 2}, f));
  EXPECT_EQ(packed.rows(0, len).to_floats(), ref.to(DType::bf16).to_floats());
}

TEST(Rope, BetweenColumnsOfTwoTensors) {
  // q|k|v rows [tokens, 3 heads + 1 + 1 of D]: k (columns 3D..4D) rotated into its
  // own tensor equals the copy rotated in place; the gradient goes back into the
  // same columns of a fused gradient and leaves the others alone.
  const int64_t tokens = 5, D = 8, C = 5 * D;
  const auto f = inv_freq_of(D, 10000.0);
  const Tensor pos = ids_of({0, 3, 1, 9, 2}), ft = Tensor::from_floats({D / 2}, f);
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor qkv = random_normal({tokens, C}, 46, 1.0f, dt);
    Tensor k = Tensor::empty({tokens, D}, dt), ref = Tensor::empty({tokens, D}, dt);
    rope_forward(qkv, 3 * D, k, 0, D, pos, ft);
    copy_columns(qkv, 3 * D, ref, 0, D);
    Tensor ref3 = ref.view({tokens, 1, D});
    rope_forward(ref3, pos, ft);
    EXPECT_EQ(k.to_floats(), ref.to_floats());
    Tensor dqkv = clone(qkv);
    rope_backward(k, 0, dqkv, 3 * D, D, pos, ft);
    rope_backward(ref3, pos, ft);
    Tensor back = Tensor::empty({tokens, D}, dt);
    copy_columns(dqkv, 3 * D, back, 0, D);
    EXPECT_EQ(back.to_floats(), ref.to_floats());
    Tensor others = clone(dqkv);
    copy_columns(qkv, 3 * D, others, 3 * D, D);  // dqkv with k's columns put back: qkv again
    EXPECT_EQ(others.to_floats(), qkv.to_floats());
  }
  Tensor q = Tensor::empty({tokens, 3 * D}, DType::f32);
  const Tensor qkv = random_normal({tokens, C}, 47);
  EXPECT_THROW(rope_forward(qkv, 3 * D, q, 0, 3 * D, pos, ft), Error);  // past qkv's columns
  EXPECT_THROW(rope_forward(qkv, 0, q, 0, 2 * D + 2, pos, ft), Error);  // not whole heads
  Tensor same = clone(qkv);
  EXPECT_THROW(rope_forward(same, 0, same, D, D, pos, ft), Error);  // in place on other columns
}

TEST(Rope, RejectsBadArguments) {
  const auto f = inv_freq_of(8, 10000.0);
  Tensor x = random_normal({3, 2, 8}, 44), odd = random_normal({3, 2, 7}, 45);
  EXPECT_THROW(rope_forward(x, ids_of({0, 1}), Tensor::from_floats({4}, f)), Error);  // 2 positions, 3 tokens
  EXPECT_THROW(rope_forward(x, ids_of({0, 1, 2}), Tensor::from_floats({3}, {1, 1, 1})), Error);
  EXPECT_THROW(rope_forward(odd, ids_of({0, 1, 2}), Tensor::from_floats({3}, {1, 1, 1})), Error);
}

// ---- CUDA against CPU ---------------------------------------------------------

TEST(RowOpsCuda, MatchCpu) {
  HALO_REQUIRE_CUDA();
  const auto results = rowops_cuda_checks(false);
  EXPECT_FALSE(results.empty());
  for (const CheckResult& r : results)
    EXPECT_TRUE(r.ok) << r.name << ": error " << r.error << " > " << r.tolerance << " (" << r.detail << ")";
}

}  // namespace
}  // namespace halo
