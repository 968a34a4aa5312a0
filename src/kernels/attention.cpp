#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/error.h"

namespace halo {

#ifdef HALO_HAS_CUDA
void attention_forward_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt,
                            float scale, Tensor& out, Tensor& lse);
void attention_backward_cuda(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                             const Tensor& lse, const Tensor& dout, const AttentionOptions& opt, float scale,
                             Tensor& dq, Tensor& dk, Tensor& dv);
#endif

namespace {

struct Dims {
  int64_t B, T, Hq, Hkv, D;
};

// Checks the shapes, dtypes and devices shared by forward and backward.
Dims check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt) {
  HALO_CHECK(q.ndim() == 3 && k.ndim() == 3 && v.ndim() == 3, op, ": q, k, v must be [B*T, H, D], got ",
             q.describe(), ", ", k.describe(), ", ", v.describe());
  const int64_t N = q.size(0), Hq = q.size(1), Hkv = k.size(1), D = q.size(2);
  HALO_CHECK(k.shape() == v.shape(), op, ": k and v differ: ", k.describe(), " vs ", v.describe());
  HALO_CHECK(k.size(0) == N && k.size(2) == D, op, ": k ", k.describe(), " does not match q ", q.describe());
  HALO_CHECK(Hkv > 0 && Hq > 0 && Hq % Hkv == 0, op, ": query heads (", Hq, ") must be a multiple of kv heads (",
             Hkv, ")");
  HALO_CHECK(D >= 8 && D <= 256 && D % 8 == 0, op, ": head_dim must be a multiple of 8 in [8, 256], got ", D);
  HALO_CHECK(opt.batch >= 1 && N % opt.batch == 0, op, ": ", N, " tokens are not ", opt.batch, " rows");
  HALO_CHECK(std::isfinite(opt.scale), op, ": scale must be finite, got ", opt.scale);
  const DType want = q.is_cuda() ? DType::bf16 : DType::f32;
  check_dtype(q, want, op);
  check_dtype(k, want, op);
  check_dtype(v, want, op);
  check_same_device(q, k, op);
  check_same_device(q, v, op);
  const int64_t T = N / opt.batch;
  if (opt.doc_ids.defined()) {
    check_shape(opt.doc_ids, {N}, "attention doc_ids");
    check_dtype(opt.doc_ids, DType::i32, "attention doc_ids");
    check_same_device(q, opt.doc_ids, op);
    if (!opt.doc_ids.is_cuda()) {
      const int32_t* doc = opt.doc_ids.data_as<int32_t>();
      for (int64_t i = 0; i < N; ++i)
        HALO_CHECK(i % T == 0 || doc[i] >= doc[i - 1], op, ": doc_ids must be non-decreasing within a row; token ",
                   i, " has ", doc[i], " after ", doc[i - 1]);
    }
  }
  HALO_CHECK(T <= std::numeric_limits<int32_t>::max(), op, ": rows of ", T, " tokens are too long");
  return {opt.batch, T, Hq, Hkv, D};
}

float softmax_scale(const AttentionOptions& opt, int64_t D) {
  return opt.scale != 0.0f ? opt.scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
}

// n is a multiple of 8: eight partial sums, which the compiler vectorizes.
float dot(const float* a, const float* b, int64_t n) {
  float s[8] = {};
  for (int64_t i = 0; i < n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// The first token of each token's document, for the T tokens of one row.
void doc_starts(const int32_t* row_doc, int64_t T, std::vector<int64_t>& start) {
  start.resize(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i)
    start[i] = (!row_doc || i == 0 || row_doc[i] != row_doc[i - 1]) ? (row_doc ? i : 0) : start[i - 1];
}

void forward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt, const Dims& d,
                 float scale, Tensor& out, Tensor& lse) {
  const float* Q = q.data_as<float>();
  const float* K = k.data_as<float>();
  const float* V = v.data_as<float>();
  float* O = out.data_as<float>();
  float* L = lse.data_as<float>();
  const int32_t* doc = opt.doc_ids.defined() ? opt.doc_ids.data_as<int32_t>() : nullptr;
  const int64_t group = d.Hq / d.Hkv, D = d.D;
#pragma omp parallel
  {
    std::vector<float> p(static_cast<size_t>(d.T));
    std::vector<float> acc(static_cast<size_t>(D));
    std::vector<int64_t> start;
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t h = 0; h < d.Hq; ++h) {
        const int64_t row = b * d.T, hk = h / group;
        doc_starts(doc ? doc + row : nullptr, d.T, start);
        for (int64_t i = 0; i < d.T; ++i) {
          const float* qi = Q + ((row + i) * d.Hq + h) * D;
          const int64_t j0 = start[i];
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = j0; j <= i; ++j) {
            p[j] = scale * dot(qi, K + ((row + j) * d.Hkv + hk) * D, D);
            mx = std::max(mx, p[j]);
          }
          double sum = 0.0;
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t j = j0; j <= i; ++j) {
            const float e = std::exp(p[j] - mx);
            sum += e;
            const float* vj = V + ((row + j) * d.Hkv + hk) * D;
            for (int64_t c = 0; c < D; ++c) acc[c] += e * vj[c];
          }
          const float inv = static_cast<float>(1.0 / sum);
          float* oi = O + ((row + i) * d.Hq + h) * D;
          for (int64_t c = 0; c < D; ++c) oi[c] = acc[c] * inv;
          L[(row + i) * d.Hq + h] = mx + static_cast<float>(std::log(sum));
        }
      }
  }
}

// One thread per (row, kv head): it owns dk and dv of that slab and loops over the
// query heads of the group, so nothing is shared between threads.
void backward_cpu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                  const Tensor& dout, const AttentionOptions& opt, const Dims& d, float scale, Tensor& dq,
                  Tensor& dk, Tensor& dv) {
  const float* Q = q.data_as<float>();
  const float* K = k.data_as<float>();
  const float* V = v.data_as<float>();
  const float* O = out.data_as<float>();
  const float* L = lse.data_as<float>();
  const float* dO = dout.data_as<float>();
  float* dQ = dq.data_as<float>();
  float* dK = dk.data_as<float>();
  float* dV = dv.data_as<float>();
  const int32_t* doc = opt.doc_ids.defined() ? opt.doc_ids.data_as<int32_t>() : nullptr;
  const int64_t group = d.Hq / d.Hkv, D = d.D;
#pragma omp parallel
  {
    std::vector<float> p(static_cast<size_t>(d.T)), ds(static_cast<size_t>(d.T));
    std::vector<int64_t> start;
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t b = 0; b < d.B; ++b)
      for (int64_t hk = 0; hk < d.Hkv; ++hk) {
        const int64_t row = b * d.T;
        doc_starts(doc ? doc + row : nullptr, d.T, start);
        for (int64_t t = 0; t < d.T; ++t) {
          std::fill_n(dK + ((row + t) * d.Hkv + hk) * D, D, 0.0f);
          std::fill_n(dV + ((row + t) * d.Hkv + hk) * D, D, 0.0f);
        }
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
          for (int64_t i = 0; i < d.T; ++i) {
            const int64_t qi_off = ((row + i) * d.Hq + h) * D;
            const float* qi = Q + qi_off;
            const float* doi = dO + qi_off;
            const float li = L[(row + i) * d.Hq + h];
            const float Di = dot(doi, O + qi_off, D);
            const int64_t j0 = start[i];
            for (int64_t j = j0; j <= i; ++j) {
              const int64_t kj_off = ((row + j) * d.Hkv + hk) * D;
              p[j] = std::exp(scale * dot(qi, K + kj_off, D) - li);
              ds[j] = p[j] * (dot(doi, V + kj_off, D) - Di);
            }
            float* dqi = dQ + qi_off;
            std::fill_n(dqi, D, 0.0f);
            for (int64_t j = j0; j <= i; ++j) {
              const int64_t kj_off = ((row + j) * d.Hkv + hk) * D;
              const float* kj = K + kj_off;
              float* dkj = dK + kj_off;
              float* dvj = dV + kj_off;
              const float sd = scale * ds[j], pj = p[j];
              for (int64_t c = 0; c < D; ++c) {
                dqi[c] += sd * kj[c];
                dkj[c] += sd * qi[c];
                dvj[c] += pj * doi[c];
              }
            }
          }
      }
  }
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt,
                       Tensor& out, Tensor& lse) {
  const Dims d = check_inputs("attention_forward", q, k, v, opt);
  check_shape(out, q.shape(), "attention_forward out");
  check_dtype(out, q.dtype(), "attention_forward out");
  check_shape(lse, {q.size(0), d.Hq}, "attention_forward lse");
  check_dtype(lse, DType::f32, "attention_forward lse");
  check_same_device(q, out, "attention_forward out");
  check_same_device(q, lse, "attention_forward lse");
  const float scale = softmax_scale(opt, d.D);
  if (q.numel() == 0) return;
  if (q.is_cuda()) {
#ifdef HALO_HAS_CUDA
    attention_forward_cuda(q, k, v, opt, scale, out, lse);
    return;
#endif
  }
  forward_cpu(q, k, v, opt, d, scale, out, lse);
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, const AttentionOptions& opt, Tensor& dq,
                        Tensor& dk, Tensor& dv) {
  const Dims d = check_inputs("attention_backward", q, k, v, opt);
  const struct {
    const Tensor& t;
    const Tensor& like;
    const char* what;
  } same[] = {{out, q, "attention_backward out"}, {dout, q, "attention_backward dout"},
              {dq, q, "attention_backward dq"},   {dk, k, "attention_backward dk"},
              {dv, v, "attention_backward dv"}};
  for (const auto& s : same) {
    check_shape(s.t, s.like.shape(), s.what);
    check_dtype(s.t, s.like.dtype(), s.what);
    check_same_device(q, s.t, s.what);
  }
  check_shape(lse, {q.size(0), d.Hq}, "attention_backward lse");
  check_dtype(lse, DType::f32, "attention_backward lse");
  check_same_device(q, lse, "attention_backward lse");
  const float scale = softmax_scale(opt, d.D);
  if (q.numel() == 0) return;
  if (q.is_cuda()) {
#ifdef HALO_HAS_CUDA
    attention_backward_cuda(q, k, v, out, lse, dout, opt, scale, dq, dk, dv);
    return;
#endif
  }
  backward_cpu(q, k, v, out, lse, dout, opt, d, scale, dq, dk, dv);
}

double attention_forward_flops(int64_t batch, int64_t T, int64_t Hq, int64_t D, const Tensor& doc_ids) {
  HALO_CHECK(!doc_ids.defined() || (!doc_ids.is_cuda() && doc_ids.numel() == batch * T),
             "attention_forward_flops: host doc_ids of ", batch * T, " tokens, got ", doc_ids.describe());
  const int32_t* doc = doc_ids.defined() ? doc_ids.data_as<int32_t>() : nullptr;
  double pairs = 0.0;
  std::vector<int64_t> start;
  for (int64_t b = 0; b < batch; ++b) {
    doc_starts(doc ? doc + b * T : nullptr, T, start);
    for (int64_t i = 0; i < T; ++i) pairs += static_cast<double>(i - start[i] + 1);
  }
  return 4.0 * pairs * static_cast<double>(Hq) * static_cast<double>(D);
}

}  // namespace halo
