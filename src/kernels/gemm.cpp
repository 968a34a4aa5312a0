// GEMMs: argument checks, the CPU implementation, and dispatch to CUDA (gemm.cu).
//
// CPU: operands are decoded exactly (bf16 and fp8 to f32, whose products are exact
// in f32; i8 to f64, exact below 2^53) and multiplied by BLAS (sgemm / dgemm).
// Scales are applied per group in f64: per tensor / per row on the product, and
// for block scales inside the sum, one 128-chunk of K at a time.
#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/numerics.h"

namespace halo {

namespace {

bool is_block(Granularity g) {
  return g == Granularity::block1x128 || g == Granularity::block128x128;
}

bool valid_pair(DType a, DType b, DType d, bool scaled) {
  if (is_fp8(a) && is_fp8(b))
    return !(a == DType::e5m2 && b == DType::e5m2) && (d == DType::f32 || d == DType::bf16);
  if (a != b) return false;
  switch (a) {
    case DType::f32: return !scaled && d == DType::f32;
    case DType::bf16: return !scaled && (d == DType::f32 || d == DType::bf16);
    case DType::i8: return scaled ? (d == DType::f32 || d == DType::bf16) : d == DType::i32;
    default: return false;
  }
}

void check_operand_scale(const detail::GemmOperand& op, const char* which, const std::string& what) {
  const Tensor& s = *op.scale;
  const int64_t R = op.data->size(0), C = op.data->size(1);
  HALO_CHECK(s.defined(), what, ": ", which, " has no scale tensor");
  HALO_CHECK(s.dtype() == DType::f32, what, ": ", which, " scales must be f32, got ", s.describe());
  const Shape want = scale_shape(op.granularity, R, C);
  HALO_CHECK(s.shape() == want, what, ": ", which, " has ", granularity_name(op.granularity),
             " scales ", s.describe(), ", expected shape ", shape_str(want),
             " (layouts in quantize.h)");
  HALO_CHECK(s.device() == op.data->device(), what, ": ", which, " scales on another device: ",
             s.describe());
}

void validate(const detail::GemmOperand& a, const detail::GemmOperand& b, const Tensor& d,
              const GemmOptions& opt, bool scaled) {
  HALO_CHECK(a.data->defined() && b.data->defined() && d.defined(),
             "gemm_nt: undefined tensor among A, B, D");
  const auto what = [&] { return detail::describe(a, b, d, opt); };
  HALO_CHECK(a.data->ndim() == 2 && b.data->ndim() == 2 && d.ndim() == 2, what(),
             ": A, B and D must be 2-D (flatten batch dims with as_2d())");
  const detail::GemmDims g = detail::gemm_dims(a, b);
  const int64_t M = g.M, N = g.N, K = g.K;
  const int64_t Kb = b.trans ? b.data->size(1) : b.data->size(0);
  HALO_CHECK(Kb == K, what(), ": ", a.trans ? "A^T" : "A", " is [M, K] and ",
             b.trans ? "B^T" : "B", " is [K, N], but their K differ (", K, " vs ", Kb, ")");
  HALO_CHECK(d.shape() == (Shape{M, N}), what(), ": D must be [M, N] = ", shape_str({M, N}));
  HALO_CHECK(K > 0, what(), ": K must be positive");
  HALO_CHECK(a.data->device() == d.device() && b.data->device() == d.device(), what(),
             ": A, B and D must be on one device");
  HALO_CHECK(valid_pair(a.data->dtype(), b.data->dtype(), d.dtype(), scaled), what(),
             ": unsupported dtypes (", scaled ? "scaled" : "unscaled",
             "). Supported: f32 x f32 -> f32, bf16 x bf16 -> bf16|f32, fp8 x fp8 -> bf16|f32 "
             "(not e5m2 x e5m2), i8 x i8 -> i32 (unscaled) or -> f32|bf16 (scaled)");
  if (a.data->dtype() == DType::i8)  // 128 * 128 * K must stay below 2^31
    HALO_CHECK(K <= 131071, what(), ": K too large for an exact int32 product");
  if (scaled) {
    check_operand_scale(a, "A", what());
    check_operand_scale(b, "B", what());
  }
  if (d.dtype() == DType::i32)
    HALO_CHECK(opt.alpha == 1.0f && !opt.bias, what(),
               ": an i32 product takes no alpha and no bias (scale it with scale_i32)");
  if (opt.bias) {
    const Tensor& bias = *opt.bias;
    HALO_CHECK(bias.defined() && bias.shape() == (Shape{N}) &&
                   (bias.dtype() == DType::f32 || bias.dtype() == DType::bf16),
               what(), ": bias must be f32 or bf16 of shape [", N, "]");
    HALO_CHECK(bias.device() == d.device(), what(), ": bias on another device");
  }
}

// ---- CPU --------------------------------------------------------------------

// C[M, N] = op(A) op(B), row-major, op(X) = X^T where t is set.
void blas(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* a, int64_t lda,
          const float* b, int64_t ldb, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
              K, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

// Every value of a host tensor as T, exactly (f32 data is used in place when T is float).
template <class T>
struct Decoded {
  std::vector<T> buf;
  const T* p = nullptr;
};

template <class T>
Decoded<T> decode(const Tensor& t) {
  Decoded<T> out;
  const int64_t n = t.numel();
  if constexpr (std::is_same_v<T, float>) {
    if (t.dtype() == DType::f32) {
      out.p = t.data_as<float>();
      return out;
    }
  }
  out.buf.resize(static_cast<size_t>(n));
  T* dst = out.buf.data();
  if (is_fp8(t.dtype())) {  // 256-entry table: one decode per code, not per element
    T table[256];
    for (int c = 0; c < 256; ++c) {
      const uint8_t code = static_cast<uint8_t>(c);
      table[c] = static_cast<T>(load_float(&code, t.dtype(), 0));
    }
    const uint8_t* src = t.data_as<uint8_t>();
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) dst[i] = table[src[i]];
  } else if (t.dtype() == DType::bf16) {
    const uint16_t* src = t.data_as<uint16_t>();
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(bf16_bits_to_float(src[i]));
  } else if (t.dtype() == DType::i8) {
    const int8_t* src = t.data_as<int8_t>();
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
  } else {
#pragma omp parallel for
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(load_float(t.data(), t.dtype(), i));
  }
  out.p = dst;
  return out;
}

// Scale of the group holding element (r, c) of an operand (1 when unscaled).
double scale_of(const detail::GemmOperand& op, int64_t r, int64_t c) {
  if (!op.scale) return 1.0;
  const int64_t R = op.data->size(0), C = op.data->size(1);
  return op.scale->data_as<float>()[scale_index(op.granularity, r, c, R, C)];
}

// d = alpha * value(i, j) (+ d) (+ bias[j]), computed in f64 and rounded once.
template <class F>
void write_output(Tensor& d, const GemmOptions& opt, F value) {
  const int64_t M = d.size(0), N = d.size(1);
  std::vector<double> bias(static_cast<size_t>(N), 0.0);
  if (opt.bias)
    for (int64_t j = 0; j < N; ++j) bias[j] = load_float(opt.bias->data(), opt.bias->dtype(), j);
  if (d.dtype() == DType::i32) {
    int32_t* out = d.data_as<int32_t>();
    bool overflow = false;
#pragma omp parallel for reduction(|| : overflow)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        int64_t v = std::llround(value(i, j));
        if (opt.accumulate) v += out[i * N + j];
        overflow = overflow || v < std::numeric_limits<int32_t>::min() ||
                   v > std::numeric_limits<int32_t>::max();
        out[i * N + j] = static_cast<int32_t>(v);
      }
    HALO_CHECK(!overflow, "gemm_nt: i32 result overflows int32 for D ", d.describe());
    return;
  }
  void* out = d.data();
  const DType dt = d.dtype();
#pragma omp parallel for
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double v = static_cast<double>(opt.alpha) * value(i, j) + bias[j];
      if (opt.accumulate) v += load_float(out, dt, i * N + j);
      store_float(out, dt, i * N + j, static_cast<float>(v));
    }
}

// Products of i8 operands are summed exactly in f32 over chunks of at most
// 1024 along K: every partial sum is an integer of magnitude <= 128 * 128 *
// 1024 = 2^24, which f32 holds exactly, and the chunks add up in f64.
constexpr int64_t kExactI8ChunkF32 = 1024;

void gemm_cpu(const detail::GemmOperand& a, const detail::GemmOperand& b, Tensor& d,
              const GemmOptions& opt) {
  const auto [M, N, K] = detail::gemm_dims(a, b);
  if (M == 0 || N == 0) return;
  const Decoded<float> A = decode<float>(*a.data), B = decode<float>(*b.data);
  const int64_t lda = a.data->size(1), ldb = b.data->size(1);
  // Block scales change along K every 128 elements: sum each 128-chunk separately.
  const bool blocked = (a.scale && is_block(a.granularity)) || (b.scale && is_block(b.granularity));
  const bool i8 = a.data->dtype() == DType::i8;
  const int64_t chunk = blocked ? 128 : i8 ? kExactI8ChunkF32 : K;
  std::vector<float> P(static_cast<size_t>(M * N));
  std::vector<double> acc(static_cast<size_t>(M * N), 0.0);
  std::vector<double> sa(static_cast<size_t>(M)), sb(static_cast<size_t>(N));
  for (int64_t k0 = 0; k0 < K; k0 += chunk) {
    const int64_t kc = std::min(chunk, K - k0);
    // Where column k0 of op(A) and row k0 of op(B) start.
    const float* pa = A.p + (a.trans ? k0 * lda : k0);
    const float* pb = B.p + (b.trans ? k0 : k0 * ldb);
    blas(a.trans, b.trans, M, N, kc, pa, lda, pb, ldb, P.data(), N);
    for (int64_t i = 0; i < M; ++i) sa[i] = scale_of(a, i, k0);
    for (int64_t j = 0; j < N; ++j) sb[j] = scale_of(b, j, k0);
#pragma omp parallel for
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j)
        acc[i * N + j] += static_cast<double>(P[i * N + j]) * sa[i] * sb[j];
  }
  write_output(d, opt, [&](int64_t i, int64_t j) { return acc[i * N + j]; });
}

void gemm_dispatch(const detail::GemmOperand& a, const detail::GemmOperand& b, Tensor& d,
                   const GemmOptions& opt) {
  if (d.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::gemm_cuda(a, b, d, opt);
    return;
#else
    HALO_FAIL("gemm_nt: this build of halo has no CUDA support");
#endif
  }
  gemm_cpu(a, b, d, opt);
}

void validate_scale_i32(const Tensor& acc, const QTensor& a, const QTensor& b, const Tensor& d) {
  const auto what = [&] {
    std::ostringstream os;
    os << "scale_i32(acc " << acc.describe() << ", A " << a.data.describe() << " "
       << granularity_name(a.granularity) << " scales, B " << b.data.describe() << " "
       << granularity_name(b.granularity) << " scales, D " << d.describe() << ")";
    return os.str();
  };
  HALO_CHECK(acc.ndim() == 2 && acc.dtype() == DType::i32, what(), ": acc must be a 2-D i32 tensor");
  const int64_t M = acc.size(0), N = acc.size(1);
  HALO_CHECK(a.data.ndim() == 2 && b.data.ndim() == 2 && a.rows() == M && b.rows() == N, what(),
             ": acc must be [rows of A, rows of B]");
  HALO_CHECK(d.shape() == acc.shape() && (d.dtype() == DType::f32 || d.dtype() == DType::bf16),
             what(), ": D must be f32 or bf16 shaped like acc");
  for (const QTensor* q : {&a, &b}) {
    HALO_CHECK(!is_block(q->granularity), what(),
               ": block scales must be applied inside the sum over K (use gemm_nt)");
    HALO_CHECK(q->scale.dtype() == DType::f32 &&
                   q->scale.shape() == scale_shape(q->granularity, q->rows(), q->cols()),
               what(), ": bad scale tensor ", q->scale.describe());
    HALO_CHECK(q->scale.device() == acc.device(), what(), ": scales on another device");
  }
  HALO_CHECK(d.device() == acc.device(), what(), ": acc and D on different devices");
}

}  // namespace

namespace detail {

GemmDims cuda_padded_dims(const GemmDims& g, DType operand, DType out, bool block_scaled) {
  const auto round_up = [](int64_t n, int64_t m) { return (n + m - 1) / m * m; };
  GemmDims p = g;
  p.K = round_up(g.K, 16);
  if (is_fp8(operand)) p.N = round_up(g.N, 16 / static_cast<int64_t>(dtype_size(out)));
  if (block_scaled) {
    p.M = round_up(p.M, 8);
    p.N = round_up(p.N, 8);
  }
  return p;
}

Tensor relayout_scales(const Tensor& scale, Granularity from, Granularity to, int64_t rows_from,
                       int64_t rows_to, int64_t cols) {
  Tensor out = Tensor::empty(scale_shape(to, rows_to, cols), DType::f32, scale.device());
  if (scale.is_cuda()) {
#ifdef HALO_HAS_CUDA
    relayout_scales_cuda(scale, from, to, rows_from, rows_to, cols, out);
    return out;
#else
    HALO_FAIL("relayout_scales: this build of halo has no CUDA support");
#endif
  }
  const float* src = scale.data_as<float>();
  float* dst = out.data_as<float>();
  for (int64_t e = 0; e < out.numel(); ++e) {
    const int64_t i = scale_source(from, to, e, rows_from, rows_to, cols);
    dst[e] = i >= 0 ? src[i] : 1.0f;
  }
  return out;
}

GemmDims gemm_dims(const GemmOperand& a, const GemmOperand& b) {
  GemmDims g;
  g.M = a.trans ? a.data->size(1) : a.data->size(0);
  g.K = a.trans ? a.data->size(0) : a.data->size(1);
  g.N = b.trans ? b.data->size(0) : b.data->size(1);
  return g;
}

std::string describe(const GemmOperand& a, const GemmOperand& b, const Tensor& d,
                     const GemmOptions& opt) {
  std::ostringstream os;
  const bool nt = !a.trans && b.trans;
  const auto operand = [&](const char* name, const GemmOperand& op, bool show_t) {
    os << name << (show_t && op.trans ? "^T " : " ")
       << (op.data && op.data->defined() ? op.data->describe() : "undefined");
    if (op.scale) os << " (" << granularity_name(op.granularity) << " scales)";
  };
  os << (nt ? "gemm_nt(" : "gemm(");
  operand("A", a, !nt);
  os << ", ";
  operand("B", b, !nt);
  os << " -> D " << (d.defined() ? d.describe() : "undefined");
  if (opt.alpha != 1.0f) os << ", alpha " << opt.alpha;
  if (opt.accumulate) os << ", accumulate";
  if (opt.bias) os << ", bias " << (opt.bias->defined() ? opt.bias->describe() : "undefined");
  os << ")";
  return os.str();
}

namespace {
// x [R, C] in the top-left corner of a zeroed [rows, cols] tensor (x itself when it fits).
Tensor pad_data(const Tensor& x, int64_t rows, int64_t cols) {
  if (x.size(0) == rows && x.size(1) == cols) return x;
  Tensor p = Tensor::zeros({rows, cols}, x.dtype(), x.device());
  Tensor top = p.rows(0, x.size(0));
  copy_columns(x, 0, top, 0, x.size(1));
  return p;
}

// The scales of op for its operand padded to `rows` rows (and K columns rounded up,
// which changes no layout: see cuda_padded_dims). Only row and 1x128 layouts depend
// on the row count beyond ceil(rows / 128).
Tensor pad_scales(const GemmOperand& op, int64_t rows) {
  const int64_t R = op.data->size(0), C = op.data->size(1);
  const Granularity g = op.granularity;
  if (rows == R || g == Granularity::tensor || g == Granularity::block128x128) return *op.scale;
  return relayout_scales(*op.scale, g, g, R, rows, C);
}
}  // namespace

void gemm_padded(const GemmOperand& a, const GemmOperand& b, Tensor& d, const GemmOptions& opt,
                 const GemmDims& p) {
  const auto [M, N, K] = gemm_dims(a, b);
  HALO_CHECK(!a.trans && b.trans && p.M >= M && p.N >= N && p.K >= K, describe(a, b, d, opt),
             ": cannot pad to ", p.M, "x", p.N, "x", p.K);
  const Tensor a_data = pad_data(*a.data, p.M, p.K), b_data = pad_data(*b.data, p.N, p.K);
  Tensor a_scale, b_scale;
  GemmOperand pa{&a_data, nullptr, a.granularity, false}, pb{&b_data, nullptr, b.granularity, true};
  if (a.scale) {
    a_scale = pad_scales(a, p.M);
    b_scale = pad_scales(b, p.N);
    pa.scale = &a_scale;
    pb.scale = &b_scale;
  }
  GemmOptions popt = opt;
  Tensor bias;
  if (opt.bias && p.N != N) {
    bias = Tensor::zeros({p.N}, opt.bias->dtype(), opt.bias->device());
    bias.rows(0, N).copy_from(*opt.bias);
    popt.bias = &bias;
  }
  if (p.M == M && p.N == N) {  // only K padded: D as it is
    gemm_dispatch(pa, pb, d, popt);
    return;
  }
  Tensor dp = Tensor::empty({p.M, p.N}, d.dtype(), d.device());
  Tensor dp_top = dp.rows(0, M);
  if (opt.accumulate) {  // D's values in the valid block, zeros (not garbage) around it
    dp.fill_zero();
    copy_columns(d, 0, dp_top, 0, N);
  }
  gemm_dispatch(pa, pb, dp, popt);
  copy_columns(dp_top, 0, d, 0, N);
}

}  // namespace detail

void gemm_nt(const Tensor& a, const Tensor& b, Tensor& d, const GemmOptions& opt) {
  gemm(a, false, b, true, d, opt);
}

void gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, Tensor& d, const GemmOptions& opt) {
  const detail::GemmOperand A{&a, nullptr, Granularity::tensor, ta};
  const detail::GemmOperand B{&b, nullptr, Granularity::tensor, tb};
  validate(A, B, d, opt, false);
  gemm_dispatch(A, B, d, opt);
}

void gemm_nt(const QTensor& a, const QTensor& b, Tensor& d, const GemmOptions& opt) {
  const detail::GemmOperand A{&a.data, &a.scale, a.granularity, false};
  const detail::GemmOperand B{&b.data, &b.scale, b.granularity, true};
  validate(A, B, d, opt, true);
  gemm_dispatch(A, B, d, opt);
}

void scale_i32(const Tensor& acc, const QTensor& a, const QTensor& b, Tensor& d, float alpha) {
  GemmOptions opt;
  opt.alpha = alpha;
  scale_i32(acc, a, b, d, opt);
}

void scale_i32(const Tensor& acc, const QTensor& a, const QTensor& b, Tensor& d,
               const GemmOptions& opt) {
  validate_scale_i32(acc, a, b, d);
  if (opt.bias) {
    HALO_CHECK(opt.bias->shape() == (Shape{acc.size(1)}) &&
                   (opt.bias->dtype() == DType::f32 || opt.bias->dtype() == DType::bf16) &&
                   opt.bias->device() == acc.device(),
               "scale_i32: bias must be f32 or bf16 [", acc.size(1), "] on the device of acc, got ",
               opt.bias->describe());
  }
  if (acc.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::scale_i32_cuda(acc, a, b, d, opt);
    return;
#else
    HALO_FAIL("scale_i32: this build of halo has no CUDA support");
#endif
  }
  const detail::GemmOperand A{&a.data, &a.scale, a.granularity}, B{&b.data, &b.scale, b.granularity};
  const int64_t N = acc.size(1);
  const int32_t* q = acc.data_as<int32_t>();
  write_output(d, opt, [&](int64_t i, int64_t j) {
    return static_cast<double>(q[i * N + j]) * scale_of(A, i, 0) * scale_of(B, j, 0);
  });
}

}  // namespace halo
