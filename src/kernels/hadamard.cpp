// Hadamard plans, the CPU implementation (the reference) and the device dispatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include "core/error.h"
#include "core/numerics.h"
#include "kernels/hadamard.h"

namespace halo {

namespace {

bool is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

int log2_exact(int64_t v) {
  int n = 0;
  while ((int64_t{1} << n) < v) ++n;
  return n;
}

// The K of a full rotation of length d = K * 2^k (1 for a power of two), or 0.
int64_t full_order(int64_t d) {
  if (is_pow2(d)) return 1;
  for (int64_t k : hadamard_orders())  // ascending: the smallest K is the cheapest mix
    if (!is_pow2(k) && d % k == 0 && is_pow2(d / k)) return k;
  return 0;
}

HadamardPlan make_plan(int64_t d) {
  HadamardPlan p;
  p.dim = d;
  const int64_t low = d & -d;  // largest power of two dividing d
  if (const int64_t k = full_order(d)) {
    p.block = d;
    p.k = k;
    p.pow2 = d / k;
    if (k > 1) p.h_k = hadamard_matrix(k);
    return p;
  }
  p.block = low;
  p.pow2 = low;
  std::fprintf(stderr,
               "halo: no Hadamard matrix of order %lld fits; rotating blocks of %lld instead "
               "(block-diagonal fallback)\n",
               static_cast<long long>(d), static_cast<long long>(low));
  return p;
}

// ---- CPU kernels ---------------------------------------------------------------------

// In place on a contiguous vector: x := x R or x R^T (plan p).
void rotate_vector(float* x, float* tmp, const HadamardPlan& p, bool transpose) {
  const int64_t d = p.dim, P = p.pow2;
  // Walsh-Hadamard transform of every length-P segment (H_P is symmetric).
  for (int64_t h = 1; h < P; h <<= 1)
    for (int64_t s = 0; s < d; s += 2 * h)
      for (int64_t i = s; i < s + h; ++i) {
        const float a = x[i], b = x[i + h];
        x[i] = a + b;
        x[i + h] = a - b;
      }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.block)));
  if (p.k == 1) {
    for (int64_t i = 0; i < d; ++i) x[i] *= scale;
    return;
  }
  // Mix the K segments: y_j = sum_a M[a][j] z_a, M = H_K (x R) or H_K^T (x R^T).
  const int64_t K = p.k;
  std::fill(tmp, tmp + d, 0.0f);
  for (int64_t j = 0; j < K; ++j) {
    float* y = tmp + j * P;
    for (int64_t a = 0; a < K; ++a) {
      const float m = transpose ? p.h_k[j * K + a] : p.h_k[a * K + j];
      const float* z = x + a * P;
      for (int64_t c = 0; c < P; ++c) y[c] += m * z[c];
    }
  }
  for (int64_t i = 0; i < d; ++i) x[i] = tmp[i] * scale;
}

void load_row(const Tensor& t, int64_t offset, int64_t n, float* out) {
  if (t.dtype() == DType::f32) {
    const float* src = t.data_as<float>() + offset;
    std::copy(src, src + n, out);
  } else {
    const uint16_t* src = t.data_as<uint16_t>() + offset;
    for (int64_t i = 0; i < n; ++i) out[i] = bf16_bits_to_float(src[i]);
  }
}

void store_row(Tensor& t, int64_t offset, int64_t n, const float* in) {
  if (t.dtype() == DType::f32) {
    std::copy(in, in + n, t.data_as<float>() + offset);
  } else {
    uint16_t* dst = t.data_as<uint16_t>() + offset;
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16_bits(in[i]);
  }
}

void rows_cpu(const Tensor& x, Tensor& y, const HadamardPlan& p, bool transpose) {
  const int64_t d = p.dim, rows = x.numel() / d;
#pragma omp parallel
  {
    std::vector<float> buf(static_cast<size_t>(d)), tmp(static_cast<size_t>(d));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      load_row(x, r * d, d, buf.data());
      rotate_vector(buf.data(), tmp.data(), p, transpose);
      store_row(y, r * d, d, buf.data());
    }
  }
}

// Along the first dim: the rows of the [d, cols] matrix are combined exactly as
// the elements of a vector in rotate_vector, a column chunk at a time.
void cols_cpu(const Tensor& x, Tensor& y, const HadamardPlan& p, bool transpose) {
  const int64_t d = p.dim, cols = x.numel() / d, P = p.pow2, K = p.k;
  constexpr int64_t kChunk = 64;
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.block)));
#pragma omp parallel
  {
    std::vector<float> w(static_cast<size_t>(d * kChunk)), t;
    if (K > 1) t.resize(static_cast<size_t>(d * kChunk));
#pragma omp for schedule(dynamic)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t c0 = ch * kChunk, nc = std::min(kChunk, cols - c0);
      for (int64_t i = 0; i < d; ++i) load_row(x, i * cols + c0, nc, &w[i * kChunk]);
      for (int64_t h = 1; h < P; h <<= 1)
        for (int64_t s = 0; s < d; s += 2 * h)
          for (int64_t i = s; i < s + h; ++i) {
            float* a = &w[i * kChunk];
            float* b = &w[(i + h) * kChunk];
            for (int64_t c = 0; c < nc; ++c) {
              const float u = a[c], v = b[c];
              a[c] = u + v;
              b[c] = u - v;
            }
          }
      float* out = w.data();
      if (K > 1) {
        std::fill(t.begin(), t.end(), 0.0f);
        for (int64_t j = 0; j < K; ++j)
          for (int64_t a = 0; a < K; ++a) {
            const float m = transpose ? p.h_k[j * K + a] : p.h_k[a * K + j];
            for (int64_t b = 0; b < P; ++b) {
              float* yr = &t[(j * P + b) * kChunk];
              const float* zr = &w[(a * P + b) * kChunk];
              for (int64_t c = 0; c < nc; ++c) yr[c] += m * zr[c];
            }
          }
        out = t.data();
      }
      for (int64_t i = 0; i < d; ++i) {
        float* r = out + i * kChunk;
        for (int64_t c = 0; c < nc; ++c) r[c] *= scale;
        store_row(y, i * cols + c0, nc, r);
      }
    }
  }
}

void check_io(const Tensor& x, const Tensor& y, const char* op) {
  HALO_CHECK(x.defined() && y.defined(), op, ": undefined tensor");
  HALO_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, op, ": x must be f32 or bf16, got ",
             x.describe());
  HALO_CHECK(y.dtype() == DType::f32 || y.dtype() == DType::bf16, op, ": y must be f32 or bf16, got ",
             y.describe());
  check_shape(y, x.shape(), op);
  check_same_device(x, y, op);
  HALO_CHECK(x.ndim() >= 1, op, ": x must have at least one dimension");
}

}  // namespace

int64_t paley2_order(const std::vector<int8_t>& h, int64_t k) {
  if (k < 4 || k % 2 != 0 || static_cast<int64_t>(h.size()) != k * k) return 0;
  static const int A[2][2] = {{1, -1}, {-1, -1}}, B[2][2] = {{1, 1}, {1, -1}};
  const int64_t n = k / 2;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const int c = h[(2 * i) * k + 2 * j] - (i == j ? 1 : 0);
      if (i == j ? c != 0 : (c != 1 && c != -1)) return 0;
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b)
          if (h[(2 * i + a) * k + 2 * j + b] != c * A[a][b] + (i == j ? B[a][b] : 0)) return 0;
    }
  return n;
}

std::string HadamardPlan::describe() const {
  std::ostringstream os;
  if (!full()) {
    os << "block " << block << " of " << dim << " (fallback)";
  } else if (k == 1) {
    os << dim << " = 2^" << log2_exact(dim);
  } else {
    os << dim << " = " << k << " x " << pow2;
  }
  return os.str();
}

bool hadamard_full(int64_t d) { return d >= 1 && full_order(d) != 0; }

const HadamardPlan& hadamard_plan(int64_t d) {
  HALO_CHECK(d >= 1, "hadamard_plan: dimension must be >= 1, got ", d);
  static std::mutex mu;
  static std::map<int64_t, std::unique_ptr<HadamardPlan>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[d];
  if (!slot) slot = std::make_unique<HadamardPlan>(make_plan(d));
  return *slot;
}

namespace detail {
#ifdef HALO_HAS_CUDA
void hadamard_rows_cuda(const Tensor& x2, Tensor& y2, const HadamardPlan& p, bool transpose);
void hadamard_cols_cuda(const Tensor& x2, Tensor& y2, const HadamardPlan& p, bool transpose);
#endif
}  // namespace detail

HadamardDevicePlan hadamard_device_plan(const HadamardPlan& plan) {
#ifdef HALO_HAS_CUDA
  // Plans live in the cache for the whole process: each one's device view (and
  // the device copy of H_K) is made once, under the lock, and never changes.
  static std::mutex mu;
  static std::map<const HadamardPlan*, HadamardDevicePlan> views;
  std::lock_guard<std::mutex> lock(mu);
  const auto found = views.find(&plan);
  if (found != views.end()) return found->second;
  HadamardDevicePlan dp;
  dp.dim = static_cast<int>(plan.dim);
  dp.block = static_cast<int>(plan.block);
  dp.k = static_cast<int>(plan.k);
  dp.pow2 = static_cast<int>(plan.pow2);
  dp.log2_pow2 = log2_exact(plan.pow2);
  dp.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(plan.block)));
  if (plan.k > 1) {
    const int64_t k = plan.k;
    std::vector<float> both(static_cast<size_t>(2 * k * k));
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) {
        both[i * k + j] = plan.h_k[i * k + j];
        both[k * k + i * k + j] = plan.h_k[j * k + i];
      }
    auto& mutable_plan = const_cast<HadamardPlan&>(plan);
    mutable_plan.h_k_device = Tensor::from_floats({2 * k * k}, both).to(Device::cuda);
    dp.h_k = plan.h_k_device.data_as<float>();
    dp.h_kt = dp.h_k + k * k;
    const int64_t n = paley2_order(plan.h_k, k);
    if (n > 0 && n <= HadamardDevicePlan::kMaxPaleyN) {
      dp.paley_n = static_cast<int>(n);
      for (int64_t i = 0; i < n; ++i)  // C_ij = H[2i][2j] - [i == j]
        for (int64_t j = 0; j < n; ++j)
          dp.conf[i * HadamardDevicePlan::kMaxPaleyN + j] =
              plan.h_k[(2 * i) * k + 2 * j] - (i == j ? 1.0f : 0.0f);
    }
  }
  return views.emplace(&plan, dp).first->second;
#else
  (void)plan;
  HALO_FAIL("hadamard_device_plan: this build of halo has no CUDA support");
#endif
}

void hadamard_rows(const Tensor& x, Tensor& y, bool transpose) {
  check_io(x, y, "hadamard_rows");
  const int64_t d = x.size(-1);
  if (x.numel() == 0) return;
  const HadamardPlan& p = hadamard_plan(d);
  const Tensor x2 = x.as_2d();
  Tensor y2 = y.as_2d();
  if (x.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::hadamard_rows_cuda(x2, y2, p, transpose);
    return;
#else
    HALO_FAIL("hadamard_rows: this build of halo has no CUDA support");
#endif
  }
  rows_cpu(x2, y2, p, transpose);
}

void hadamard_cols(const Tensor& x, Tensor& y, bool transpose) {
  check_io(x, y, "hadamard_cols");
  const int64_t d = x.size(0);
  if (x.numel() == 0) return;
  const HadamardPlan& p = hadamard_plan(d);
  const Tensor x2 = x.view({d, -1});
  Tensor y2 = y.view({d, -1});
  if (x.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::hadamard_cols_cuda(x2, y2, p, transpose);
    return;
#else
    HALO_FAIL("hadamard_cols: this build of halo has no CUDA support");
#endif
  }
  cols_cpu(x2, y2, p, transpose);
}

bool hadamard_cols_absmax(const Tensor& x, Tensor& y, bool transpose, Tensor& max_x, Tensor& max_y) {
#ifdef HALO_HAS_CUDA
  check_io(x, y, "hadamard_cols_absmax");
  if (x.is_cuda() && x.numel() > 0) {
    const int64_t d = x.size(0);
    Tensor y2 = y.view({d, -1}), amax;
    // The one-pass kernel's R (K = 1, Sylvester) is its own transpose.
    if (detail::hadamard_cols_absmax_cuda(x.view({d, -1}), y2, hadamard_plan(d), amax)) {
      max_x = amax.rows(0, 1).view({amax.size(1)});
      max_y = amax.rows(1, 1).view({amax.size(1)});
      return true;
    }
  }
#endif
  hadamard_cols(x, y, transpose);
  return false;
}

}  // namespace halo
