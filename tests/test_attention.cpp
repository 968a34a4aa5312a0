// Causal GQA attention (kernels/attention.h) on the CPU against a float64
// re-statement with an explicit masked softmax, float64 finite differences,
// document isolation and GQA as repeated kv heads; plus the CUDA self-checks
// where a GPU is present.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/attention.h"
#include "testing.h"

namespace halo {
namespace {

struct Problem {
  int64_t B, T, Hq, Hkv, D;
  std::vector<int32_t> doc;  // B*T ids, or empty
  float scale = 0.0f;
};

AttentionOptions options(const Problem& p) {
  AttentionOptions opt;
  opt.batch = p.B;
  opt.scale = p.scale;
  if (!p.doc.empty()) opt.doc_ids = Tensor::from_floats({p.B * p.T}, {p.doc.begin(), p.doc.end()}, DType::i32);
  return opt;
}

double softmax_scale(const Problem& p) { return p.scale != 0.0f ? p.scale : 1.0 / std::sqrt(static_cast<double>(p.D)); }

std::vector<double> doubles(const Tensor& t) {
  const auto f = t.to_floats();
  return {f.begin(), f.end()};
}

// The float64 reference: per (row, head), the T x T score matrix with -inf where
// key j is after query i or in another document, softmax, times v.
void reference_forward(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                       const std::vector<double>& v, std::vector<double>& out, std::vector<double>& lse) {
  const int64_t T = p.T, group = p.Hq / p.Hkv;
  const double scale = softmax_scale(p);
  out.assign(static_cast<size_t>(p.B * T * p.Hq * p.D), 0.0);
  lse.assign(static_cast<size_t>(p.B * T * p.Hq), 0.0);
  std::vector<double> s(static_cast<size_t>(T * T));
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h) {
      const int64_t hk = h / group;
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j) {
          const bool same_doc = p.doc.empty() || p.doc[b * T + i] == p.doc[b * T + j];
          double dot = 0.0;
          for (int64_t d = 0; d < p.D; ++d)
            dot += q[((b * T + i) * p.Hq + h) * p.D + d] * k[((b * T + j) * p.Hkv + hk) * p.D + d];
          s[i * T + j] = (j <= i && same_doc) ? scale * dot : -INFINITY;
        }
      for (int64_t i = 0; i < T; ++i) {
        double mx = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < T; ++j) mx = std::max(mx, s[i * T + j]);
        for (int64_t j = 0; j < T; ++j) sum += std::exp(s[i * T + j] - mx);
        lse[(b * T + i) * p.Hq + h] = mx + std::log(sum);
        for (int64_t j = 0; j < T; ++j) {
          const double pij = std::exp(s[i * T + j] - mx) / sum;
          for (int64_t d = 0; d < p.D; ++d)
            out[((b * T + i) * p.Hq + h) * p.D + d] += pij * v[((b * T + j) * p.Hkv + hk) * p.D + d];
        }
      }
    }
}

struct Inputs {
  Tensor q, k, v, dout;
};

Inputs random_inputs(const Problem& p, uint64_t seed) {
  return {testing::random_normal({p.B * p.T, p.Hq, p.D}, seed), testing::random_normal({p.B * p.T, p.Hkv, p.D}, seed + 1),
          testing::random_normal({p.B * p.T, p.Hkv, p.D}, seed + 2),
          testing::random_normal({p.B * p.T, p.Hq, p.D}, seed + 3)};
}

struct Outputs {
  Tensor out, lse, dq, dk, dv;
};

Outputs run_cpu(const Problem& p, const Inputs& in) {
  Outputs o;
  const AttentionOptions opt = options(p);
  o.out = Tensor::empty(in.q.shape(), DType::f32);
  o.lse = Tensor::empty({p.B * p.T, p.Hq}, DType::f32);
  attention_forward(in.q, in.k, in.v, opt, o.out, o.lse);
  o.dq = Tensor::empty(in.q.shape(), DType::f32);
  o.dk = Tensor::empty(in.k.shape(), DType::f32);
  o.dv = Tensor::empty(in.v.shape(), DType::f32);
  attention_backward(in.q, in.k, in.v, o.out, o.lse, in.dout, opt, o.dq, o.dk, o.dv);
  return o;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Documents of the given lengths, cycled, with ids growing along each row.
std::vector<int32_t> docs(int64_t B, int64_t T, const std::vector<int64_t>& lens) {
  std::vector<int32_t> d(static_cast<size_t>(B * T));
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0, n = 0;
    int32_t id = 3;
    while (t < T) {
      const int64_t len = lens[n++ % lens.size()];
      for (int64_t u = 0; u < len && t < T; ++u) d[b * T + t++] = id;
      id += 1 + static_cast<int32_t>(n % 2);
    }
  }
  return d;
}

TEST(Attention, ForwardMatchesFloat64Reference) {
  const std::vector<Problem> problems = {
      {1, 1, 1, 1, 8, {}},
      {2, 17, 2, 2, 16, {}},
      {2, 33, 6, 2, 24, {}},                                      // GQA, group of 3
      {1, 40, 4, 1, 64, docs(1, 40, {7, 1, 20})},                 // MQA with documents
      {3, 29, 4, 2, 8, docs(3, 29, {5, 11, 2}), 0.9f},            // documents per row, given scale
      {1, 64, 2, 2, 256, docs(1, 64, {64})},                      // one document = causal
  };
  uint64_t seed = 10;
  for (const Problem& p : problems) {
    const Inputs in = random_inputs(p, seed += 10);
    const Outputs o = run_cpu(p, in);
    std::vector<double> ref_out, ref_lse;
    reference_forward(p, doubles(in.q), doubles(in.k), doubles(in.v), ref_out, ref_lse);
    const std::string what = "B" + std::to_string(p.B) + " T" + std::to_string(p.T) + " Hq" + std::to_string(p.Hq) +
                             " Hkv" + std::to_string(p.Hkv) + " D" + std::to_string(p.D);
    EXPECT_LT(max_abs_diff(o.out.to_floats(), ref_out), 2e-5) << what;
    EXPECT_LT(max_abs_diff(o.lse.to_floats(), ref_lse), 2e-5) << what;
  }
}

// Gradients of L = sum(dout * out) against central differences of the float64
// reference, for every element of q, k and v.
TEST(Attention, BackwardMatchesFiniteDifferences) {
  const std::vector<Problem> problems = {
      {2, 5, 4, 2, 8, {}},
      {1, 7, 2, 1, 8, {0, 0, 0, 1, 1, 2, 2}, 0.7f},
      {2, 6, 3, 3, 16, docs(2, 6, {2, 3})},
  };
  uint64_t seed = 500;
  for (const Problem& p : problems) {
    const Inputs in = random_inputs(p, seed += 10);
    const Outputs o = run_cpu(p, in);
    std::vector<double> q = doubles(in.q), k = doubles(in.k), v = doubles(in.v);
    const std::vector<double> dout = doubles(in.dout);
    auto loss = [&]() {
      std::vector<double> out, lse;
      reference_forward(p, q, k, v, out, lse);
      double l = 0.0;
      for (size_t i = 0; i < out.size(); ++i) l += dout[i] * out[i];
      return l;
    };
    const double h = 1e-4;
    struct Wrt {
      std::vector<double>* x;
      const Tensor* grad;
      const char* name;
    } wrt[] = {{&q, &o.dq, "dq"}, {&k, &o.dk, "dk"}, {&v, &o.dv, "dv"}};
    for (const Wrt& w : wrt) {
      const std::vector<float> g = w.grad->to_floats();
      double worst = 0.0, norm = 0.0;
      for (size_t i = 0; i < w.x->size(); ++i) {
        const double x0 = (*w.x)[i];
        (*w.x)[i] = x0 + h;
        const double up = loss();
        (*w.x)[i] = x0 - h;
        const double down = loss();
        (*w.x)[i] = x0;
        const double fd = (up - down) / (2 * h);
        worst = std::max(worst, std::fabs(fd - g[i]));
        norm = std::max(norm, std::fabs(fd));
      }
      EXPECT_GT(norm, 1e-2) << w.name;  // the gradient is not trivially zero
      EXPECT_LT(worst, 1e-4 * std::max(1.0, norm)) << w.name << " T" << p.T << " D" << p.D;
    }
  }
}

// Tokens of one document do not see other documents or other rows: changing
// q, k, v and dout of document 1 leaves every output and gradient of the other
// documents bit for bit the same.
TEST(Attention, DocumentMaskingIsolatesDocuments) {
  Problem p{2, 40, 4, 2, 16, {}};
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 40; ++t) p.doc.push_back(t < 15 ? 0 : t < 25 ? 1 : 2);
  const Inputs a = random_inputs(p, 900);
  Inputs b = random_inputs(p, 900);  // the same values in new tensors
  // Row 0, document 1 (tokens 15..24) gets new values in every input.
  const Inputs fresh = random_inputs(p, 5000);
  auto replace = [&](Tensor& t, const Tensor& src) {
    const int64_t width = t.size(1) * t.size(2);
    std::copy_n(src.data_as<float>() + 15 * width, 10 * width, t.data_as<float>() + 15 * width);
  };
  replace(b.q, fresh.q);
  replace(b.k, fresh.k);
  replace(b.v, fresh.v);
  replace(b.dout, fresh.dout);
  const Outputs oa = run_cpu(p, a), ob = run_cpu(p, b);
  const struct {
    const Tensor& x;
    const Tensor& y;
    const char* name;
  } pairs[] = {{oa.out, ob.out, "out"}, {oa.lse, ob.lse, "lse"}, {oa.dq, ob.dq, "dq"}, {oa.dk, ob.dk, "dk"},
               {oa.dv, ob.dv, "dv"}};
  for (const auto& pr : pairs) {
    const auto x = pr.x.to_floats(), y = pr.y.to_floats();
    const int64_t width = pr.x.numel() / (2 * 40);
    int64_t changed_inside = 0;
    for (int64_t tok = 0; tok < 80; ++tok)
      for (int64_t c = 0; c < width; ++c) {
        const bool inside = tok >= 15 && tok < 25;
        const float u = x[tok * width + c], w = y[tok * width + c];
        if (inside) {
          changed_inside += u != w;
        } else {
          ASSERT_EQ(u, w) << pr.name << " token " << tok;
        }
      }
    EXPECT_GT(changed_inside, 0) << pr.name;
  }
}

// Hq / Hkv query heads share a kv head: the same as repeating each kv head for
// its group (dk, dv: the sums over the group of the repeated heads' gradients).
TEST(Attention, GqaEqualsRepeatedKvHeads) {
  const Problem gqa{2, 23, 6, 2, 16, docs(2, 23, {9, 4})};
  Problem rep = gqa;
  rep.Hkv = 6;
  const Inputs in = random_inputs(gqa, 77);
  Inputs in_rep = in;
  in_rep.k = Tensor::empty({46, 6, 16}, DType::f32);
  in_rep.v = Tensor::empty({46, 6, 16}, DType::f32);
  for (int64_t t = 0; t < 46; ++t)
    for (int64_t h = 0; h < 6; ++h)
      for (int64_t d = 0; d < 16; ++d) {
        in_rep.k.data_as<float>()[(t * 6 + h) * 16 + d] = in.k.data_as<float>()[(t * 2 + h / 3) * 16 + d];
        in_rep.v.data_as<float>()[(t * 6 + h) * 16 + d] = in.v.data_as<float>()[(t * 2 + h / 3) * 16 + d];
      }
  const Outputs a = run_cpu(gqa, in), b = run_cpu(rep, in_rep);
  EXPECT_EQ(a.out.to_floats(), b.out.to_floats());
  EXPECT_EQ(a.lse.to_floats(), b.lse.to_floats());
  EXPECT_EQ(a.dq.to_floats(), b.dq.to_floats());
  const auto dk = a.dk.to_floats(), dv = a.dv.to_floats(), dk_rep = b.dk.to_floats(), dv_rep = b.dv.to_floats();
  for (int64_t t = 0; t < 46; ++t)
    for (int64_t hk = 0; hk < 2; ++hk)
      for (int64_t d = 0; d < 16; ++d) {
        double sk = 0.0, sv = 0.0;
        for (int64_t h = 3 * hk; h < 3 * hk + 3; ++h) {
          sk += dk_rep[(t * 6 + h) * 16 + d];
          sv += dv_rep[(t * 6 + h) * 16 + d];
        }
        EXPECT_NEAR(dk[(t * 2 + hk) * 16 + d], sk, 1e-5 * (1.0 + std::fabs(sk)));
        EXPECT_NEAR(dv[(t * 2 + hk) * 16 + d], sv, 1e-5 * (1.0 + std::fabs(sv)));
      }
}

TEST(Attention, FlopCount) {
  // Row of 4 tokens: 1 + 2 + 3 + 4 = 10 (query, key) pairs per head; 4 flops per pair and dim.
  EXPECT_EQ(attention_forward_flops(1, 4, 2, 8), 4.0 * 10 * 2 * 8);
  const Tensor d = Tensor::from_floats({4}, {0, 0, 1, 1}, DType::i32);  // 1 + 2 + 1 + 2 pairs
  EXPECT_EQ(attention_forward_flops(1, 4, 1, 8, d), 4.0 * 6 * 8);
}

TEST(Attention, BadShapesThrow) {
  const Tensor q = Tensor::zeros({8, 4, 16}, DType::f32), k = Tensor::zeros({8, 2, 16}, DType::f32);
  Tensor out = Tensor::zeros({8, 4, 16}, DType::f32), lse = Tensor::zeros({8, 4}, DType::f32);
  AttentionOptions opt;
  opt.batch = 2;
  auto fwd = [&](const Tensor& q_, const Tensor& k_, const Tensor& v_, Tensor& o_, Tensor& l_) {
    attention_forward(q_, k_, v_, opt, o_, l_);
  };
  EXPECT_NO_THROW(fwd(q, k, k, out, lse));
  EXPECT_THROW(fwd(Tensor::zeros({8, 64}, DType::f32), k, k, out, lse), Error);                // not 3-D
  EXPECT_THROW(fwd(Tensor::zeros({8, 3, 16}, DType::f32), k, k, out, lse), Error);             // 3 % 2 heads
  EXPECT_THROW(fwd(q, k, Tensor::zeros({8, 1, 16}, DType::f32), out, lse), Error);             // k and v differ
  EXPECT_THROW(fwd(q, Tensor::zeros({6, 2, 16}, DType::f32), Tensor::zeros({6, 2, 16}, DType::f32), out, lse),
               Error);                                                                         // token counts
  EXPECT_THROW(fwd(q, k.view({8, 1, 32}), k.view({8, 1, 32}), out, lse), Error);               // head dims
  {
    Tensor q12 = Tensor::zeros({8, 2, 12}, DType::f32), o12 = Tensor::zeros({8, 2, 12}, DType::f32);
    Tensor l12 = Tensor::zeros({8, 2}, DType::f32);
    EXPECT_THROW(fwd(q12, q12, q12, o12, l12), Error);  // head dim not a multiple of 8
    Tensor q264 = Tensor::zeros({8, 1, 264}, DType::f32), o264 = Tensor::zeros({8, 1, 264}, DType::f32);
    Tensor l264 = Tensor::zeros({8, 1}, DType::f32);
    EXPECT_THROW(fwd(q264, q264, q264, o264, l264), Error);  // head dim above 256
  }
  {
    Tensor bad_out = Tensor::zeros({8, 4, 8}, DType::f32), bad_lse = Tensor::zeros({8, 4}, DType::bf16);
    EXPECT_THROW(fwd(q, k, k, bad_out, lse), Error);
    EXPECT_THROW(fwd(q, k, k, out, bad_lse), Error);
    EXPECT_THROW(fwd(q.to(DType::bf16), k.to(DType::bf16), k.to(DType::bf16), out, lse), Error);  // bf16 on the CPU
  }
  opt.batch = 3;  // 8 tokens are not 3 rows
  EXPECT_THROW(fwd(q, k, k, out, lse), Error);
  opt.batch = 2;
  opt.doc_ids = Tensor::from_floats({8}, {0, 0, 1, 1, 0, 1, 1, 1}, DType::i32);  // a new row may restart
  EXPECT_NO_THROW(fwd(q, k, k, out, lse));
  opt.doc_ids = Tensor::from_floats({8}, {0, 1, 0, 1, 0, 0, 0, 0}, DType::i32);  // decreasing within a row
  EXPECT_THROW(fwd(q, k, k, out, lse), Error);
  opt.doc_ids = Tensor::from_floats({7}, {0, 0, 0, 0, 0, 0, 0}, DType::i32);  // wrong length
  EXPECT_THROW(fwd(q, k, k, out, lse), Error);
  opt.doc_ids = Tensor::zeros({8}, DType::f32);  // wrong dtype
  EXPECT_THROW(fwd(q, k, k, out, lse), Error);
  opt.doc_ids = Tensor();
  opt.scale = NAN;
  EXPECT_THROW(fwd(q, k, k, out, lse), Error);
  opt.scale = 0.0f;

  Tensor dq = Tensor::zeros(q.shape(), DType::f32), dk = Tensor::zeros(k.shape(), DType::f32),
         dv = Tensor::zeros(k.shape(), DType::f32), wrong = Tensor::zeros(q.shape(), DType::f32);
  EXPECT_NO_THROW(attention_backward(q, k, k, out, lse, out, opt, dq, dk, dv));
  EXPECT_THROW(attention_backward(q, k, k, out, lse, out, opt, dq, wrong, dv), Error);  // dk shaped like q
  EXPECT_THROW(attention_backward(q, k, k, out, Tensor::zeros({8, 2}, DType::f32), out, opt, dq, dk, dv), Error);
  EXPECT_THROW(attention_backward(q, k, k, out, lse, Tensor::zeros({8, 4, 8}, DType::f32), opt, dq, dk, dv), Error);
}

TEST(Attention, CudaMatchesCpu) {
  HALO_REQUIRE_CUDA();
  const auto results = attention_cuda_checks(false);
  ASSERT_FALSE(results.empty());
  for (const CheckResult& r : results)
    EXPECT_TRUE(r.ok) << r.name << ": error " << r.error << " (tolerance " << r.tolerance << ") " << r.detail;
}

}  // namespace
}  // namespace halo
