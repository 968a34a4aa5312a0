// Decoding kernels (decode_attention.h): argument checks, the CPU
// implementations (the reference) and the device dispatch (decode_attention.cu).
#include "kernels/decode_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/error.h"

namespace halo {

#ifdef HALO_HAS_CUDA
namespace detail {
void kv_cache_append_cuda(const Tensor& x, const Tensor& seq, const Tensor& pos, Tensor& cache);
void decode_attention_cuda(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seq,
                           const Tensor& len, int64_t max_len, float scale, Tensor& out);
void argmax_rows_cuda(const Tensor& x, Tensor& out);
}  // namespace detail
#endif

namespace {

void check_index(const Tensor& t, int64_t n, const Tensor& like, const char* what) {
  HALO_CHECK(t.defined(), what, " is undefined");
  check_dtype(t, DType::i32, what);
  HALO_CHECK(t.numel() == n, what, ": one entry per row (", n, ") expected, got ", t.describe());
  check_same_device(like, t, what);
}

// n is a multiple of 8: eight partial sums (the order attention.cpp's CPU path uses).
float dot(const float* a, const float* b, int64_t n) {
  float s[8] = {};
  for (int64_t i = 0; i < n; i += 8)
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

}  // namespace

void kv_cache_append(const Tensor& x, const Tensor& seq, const Tensor& pos, Tensor& cache) {
  const char* op = "kv_cache_append";
  HALO_CHECK(x.defined() && x.ndim() == 3, op, ": x must be [n, Hkv, D], got ",
             x.defined() ? x.describe() : std::string("undefined"));
  HALO_CHECK(cache.defined() && cache.ndim() == 4 && cache.size(2) == x.size(1) && cache.size(3) == x.size(2), op,
             ": cache must be [S, Tmax, ", x.size(1), ", ", x.size(2), "], got ",
             cache.defined() ? cache.describe() : std::string("undefined"));
  HALO_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, op, ": x must be f32 or bf16, got ", x.describe());
  check_dtype(cache, x.dtype(), op);
  check_same_device(x, cache, op);
  const int64_t n = x.size(0);
  check_index(seq, n, x, "kv_cache_append seq");
  check_index(pos, n, x, "kv_cache_append pos");
  if (n == 0 || x.numel() == 0) return;
  if (x.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::kv_cache_append_cuda(x, seq, pos, cache);
    return;
#endif
  }
  const int64_t S = cache.size(0), Tmax = cache.size(1), row = x.size(1) * x.size(2);
  const size_t bytes = static_cast<size_t>(row) * dtype_size(x.dtype());
  const int32_t* s = seq.data_as<int32_t>();
  const int32_t* p = pos.data_as<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    HALO_CHECK(s[i] >= 0 && s[i] < S, op, ": row ", i, " has sequence ", s[i], ", outside the cache's ", S);
    HALO_CHECK(p[i] >= 0 && p[i] < Tmax, op, ": row ", i, " has position ", p[i], ", outside the cache's ", Tmax,
               " tokens");
    std::memcpy(static_cast<char*>(cache.data()) + (s[i] * Tmax + p[i]) * bytes,
                static_cast<const char*>(x.data()) + i * bytes, bytes);
  }
}

void decode_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seq,
                      const Tensor& len, int64_t max_len, Tensor& out, float scale) {
  const char* op = "decode_attention";
  HALO_CHECK(q.defined() && q.ndim() == 3, op, ": q must be [n, Hq, D], got ",
             q.defined() ? q.describe() : std::string("undefined"));
  HALO_CHECK(k_cache.defined() && k_cache.ndim() == 4, op, ": k_cache must be [S, Tmax, Hkv, D], got ",
             k_cache.defined() ? k_cache.describe() : std::string("undefined"));
  HALO_CHECK(v_cache.defined() && v_cache.shape() == k_cache.shape(), op, ": v_cache must be ",
             k_cache.describe(), " like k_cache, got ", v_cache.defined() ? v_cache.describe() : std::string("undefined"));
  const int64_t n = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t S = k_cache.size(0), Tmax = k_cache.size(1), Hkv = k_cache.size(2);
  HALO_CHECK(k_cache.size(3) == D, op, ": the cache's head_dim ", k_cache.size(3), " differs from q's ", D);
  HALO_CHECK(Hkv > 0 && Hq > 0 && Hq % Hkv == 0, op, ": query heads (", Hq, ") must be a multiple of kv heads (",
             Hkv, ")");
  HALO_CHECK(D >= 8 && D <= 256 && D % 8 == 0, op, ": head_dim must be a multiple of 8 in [8, 256], got ", D);
  HALO_CHECK(max_len >= 1 && max_len <= Tmax, op, ": max_len ", max_len, " must be in [1, ", Tmax,
             "] (the cache's length)");
  HALO_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  const DType want = q.is_cuda() ? DType::bf16 : DType::f32;
  check_dtype(q, want, op);
  check_dtype(k_cache, want, "decode_attention k_cache");
  check_dtype(v_cache, want, "decode_attention v_cache");
  check_shape(out, q.shape(), "decode_attention out");
  check_dtype(out, want, "decode_attention out");
  check_same_device(q, k_cache, op);
  check_same_device(q, v_cache, op);
  check_same_device(q, out, op);
  check_index(seq, n, q, "decode_attention seq");
  check_index(len, n, q, "decode_attention len");
  const float sc = scale != 0.0f ? scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  if (n == 0) return;
  if (q.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::decode_attention_cuda(q, k_cache, v_cache, seq, len, max_len, sc, out);
    return;
#endif
  }
  const int32_t* s = seq.data_as<int32_t>();
  const int32_t* L = len.data_as<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    HALO_CHECK(s[i] >= 0 && s[i] < S, op, ": query ", i, " has sequence ", s[i], ", outside the cache's ", S);
    HALO_CHECK(L[i] >= 1 && L[i] <= max_len, op, ": query ", i, " has length ", L[i], ", outside [1, max_len ",
               max_len, "]");
  }
  const float* Q = q.data_as<float>();
  const float* K = k_cache.data_as<float>();
  const float* V = v_cache.data_as<float>();
  float* O = out.data_as<float>();
  const int64_t group = Hq / Hkv;
#pragma omp parallel
  {
    std::vector<float> p(static_cast<size_t>(max_len)), acc(static_cast<size_t>(D));
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t hk = h / group, base = static_cast<int64_t>(s[i]) * Tmax;
        const float* qi = Q + (i * Hq + h) * D;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < L[i]; ++j) {
          p[j] = sc * dot(qi, K + ((base + j) * Hkv + hk) * D, D);
          mx = std::max(mx, p[j]);
        }
        double sum = 0.0;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < L[i]; ++j) {
          const float e = std::exp(p[j] - mx);
          sum += e;
          const float* vj = V + ((base + j) * Hkv + hk) * D;
          for (int64_t c = 0; c < D; ++c) acc[c] += e * vj[c];
        }
        const float inv = static_cast<float>(1.0 / sum);
        float* oi = O + (i * Hq + h) * D;
        for (int64_t c = 0; c < D; ++c) oi[c] = acc[c] * inv;
      }
  }
}

void argmax_rows(const Tensor& x, Tensor& out) {
  const char* op = "argmax_rows";
  HALO_CHECK(x.defined() && x.ndim() == 2 && x.size(1) > 0, op, ": x must be [rows, V] with V > 0, got ",
             x.defined() ? x.describe() : std::string("undefined"));
  HALO_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, op, ": x must be f32 or bf16, got ", x.describe());
  HALO_CHECK(x.size(1) <= std::numeric_limits<int32_t>::max(), op, ": rows of ", x.size(1), " are too long");
  check_shape(out, {x.size(0)}, "argmax_rows out");
  check_dtype(out, DType::i32, "argmax_rows out");
  check_same_device(x, out, op);
  const int64_t rows = x.size(0), V = x.size(1);
  if (rows == 0) return;
  if (x.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::argmax_rows_cuda(x, out);
    return;
#endif
  }
  for (int64_t r = 0; r < rows; ++r) {
    int64_t best = 0;
    float bv = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < V; ++j) {
      const float v = load_float(x.data(), x.dtype(), r * V + j);
      if (v > bv) bv = v, best = j;  // NaN never compares greater: it counts as -inf
    }
    out.data_as<int32_t>()[r] = static_cast<int32_t>(best);
  }
}

}  // namespace halo
