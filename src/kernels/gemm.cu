// GEMMs on the GPU through cuBLASLt, and the INT8 epilogue kernel (scale_i32).
//
// Row-major -> column-major. cuBLASLt is column-major: a row-major [R, C] buffer is
// a column-major C x R matrix with leading dimension C. So D[M, N] = A[M, K] B[N, K]^T
// (all row-major) is D^T = B A^T in cuBLASLt's terms:
//   cuBLASLt A := our B   layout K x N, ld K, TRANSA = T   (op(A) is N x K)
//   cuBLASLt B := our A   layout K x M, ld K, TRANSB = N   (op(B) is K x M)
//   cuBLASLt C = D := D   layout N x M, ld N;   m = N, n = M, k = K
// Both operands are K-major ("TN"), the only form Hopper's FP8 and IMMA kernels run.
// The general gemm(a, ta, b, tb) (f32/bf16) is D^T = op(B)^T op(A)^T the same way:
//   cuBLASLt A := our B: tb ? (K x N, ld K, T) : (N x K, ld N, N)
//   cuBLASLt B := our A: ta ? (M x K, ld M, T) : (K x M, ld K, N)
// The scales swap with the operands: our A's scales go to B_SCALE_POINTER/B_SCALE_MODE,
// our B's to A_SCALE_POINTER/A_SCALE_MODE; a bias of length N is cuBLASLt's "rows of D".
//
// Modes (cuBLAS 13.x; the scale modes need >= 12.8, the block modes >= 12.9):
//   f32 x f32   COMPUTE_32F (no TF32), scale 32F, C/D f32
//   bf16 x bf16 COMPUTE_32F, scale 32F, C/D bf16 or f32
//   fp8 x fp8   COMPUTE_32F, scale 32F, C/D bf16 or f32, FAST_ACCUM off unless asked;
//               our granularity -> cuBLASLt scale mode (quantize.h has the layouts):
//               tensor SCALAR_32F, row OUTER_VEC_32F, 1x128 VEC128_32F, 128x128 BLK128x128_32F
//   i8 x i8     COMPUTE_32I, scale 32I (alpha/beta int), C/D i32; scales applied by
//               scale_i32 below (fused with alpha, accumulate and bias, one pass).
//               Scaled products that gemm_sm90.cu's kernel runs go there instead.
//   bias        EPILOGUE_BIAS with BIAS_DATA_TYPE = the bias dtype; where cuBLASLt has no
//               kernel for that combination (e.g. FP8 with f32 output takes a bf16 bias)
//               the plan falls back to a separate bias-add pass.
// Scale-mode mixes cuBLASLt runs (as NVIDIA TransformerEngine uses them, cublaslt_gemm.cu):
//   SCALAR x SCALAR, OUTER_VEC x OUTER_VEC, and for blocks VEC128 x VEC128,
//   VEC128 x BLK128x128, BLK128x128 x VEC128 -- not BLK128x128 x BLK128x128.
// Other mixes are made runnable by expanding one operand's scales on the device
// (relayout_scales_kernel): tensor -> row, and tensor/row/128x128 -> 1x128 (a 128x128
// tile's scale repeated for each of its rows is the same 1x128 scaling). Our B (the
// weight, cuBLASLt A) keeps a 128x128 layout; our A is expanded when needed.
//
// Odd shapes. cuBLASLt's FP8 and IMMA kernels read 16-byte rows (A and B: K % 16; FP8
// also D: N * sizeof(D) % 16) and its block-scaled FP8 kernels need M, N % 8 == 0. Such
// products go through detail::gemm_padded (gemm.cpp) at detail::cuda_padded_dims: zero
// padded copies of the operands, scales re-laid out for the padded rows (padding rows
// get scale 1), a padded D and bias; the padded call comes back to gemm_cuda aligned.
//
// Plans (descriptor, layouts, algorithm) are cached per device and per (shapes,
// dtypes, scale modes, bias, accumulate, pointer alignments), so a repeated call
// makes no heuristic query; the per-call pointers are set on the cached descriptor
// under a mutex. Algorithm: the heuristic's first choice, except for products of
// at least kTuneFlops outside a stream capture, where the first call times the
// heuristic's first kTuneCandidates (into a scratch D, beta 0) and keeps the
// earliest one within kTuneSlack of the fastest: its first choice is often not
// the fastest (FP8 with fast accumulation on an H100: up to 15% slower). That
// first call synchronises the stream once; later ones never do. One 32 MiB
// workspace per (device, stream). Everything is launched on current_stream()
// without any host synchronisation (but that one) or host read of a scale. Temporary buffers come from the caching allocator, which is not stream
// aware: like every op here, a GEMM assumes its buffers are used on one stream.
#include <cublasLt.h>

#include <algorithm>
#include <compare>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>
#include <type_traits>

#include "core/allocator.h"
#include "core/cuda_check.h"
#include "core/error.h"
#include "core/numerics.h"
#include "core/stream.h"
#include "kernels/gemm.h"

// Every cuBLASLt call: the status name and the GEMM it was for. (CUBLAS_CHECK in
// cuda_check.h needs libcublas for cublasGetStatusName; we link only cublasLt.)
#define LT_CHECK(call, what)                                                                   \
  do {                                                                                         \
    const cublasStatus_t lt_status_ = (call);                                                  \
    if (lt_status_ != CUBLAS_STATUS_SUCCESS)                                                   \
      HALO_FAIL("cuBLASLt error ", static_cast<int>(lt_status_), " (",                         \
                cublasLtGetStatusName(lt_status_), ": ", cublasLtGetStatusString(lt_status_), \
                ") in ", #call, " for ", what);                                                \
  } while (0)

namespace halo {

namespace {

// ---- kernels ------------------------------------------------------------------

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 1 << 20));
}

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(uint16_t x) { return bf16_bits_to_float(x); }
template <class T>
__device__ __forceinline__ T from_f32(float x) {
  if constexpr (std::is_same_v<T, float>)
    return x;
  else
    return float_to_bf16_bits(x);
}

__device__ __forceinline__ float load_bias(const void* bias, bool bf16, int64_t j) {
  return bf16 ? bf16_bits_to_float(static_cast<const uint16_t*>(bias)[j])
              : static_cast<const float*>(bias)[j];
}

// V consecutive elements of a row (V = 4: one 16-byte acc load, one 16- or 8-byte store).
template <class Out, int V>
struct Pack {
  Out v[V];
};
template <class T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  Pack<T, V> r;
  if constexpr (V == 1) {
    r.v[0] = *p;
  } else if constexpr (sizeof(T) == 4) {
    const int4 u = *reinterpret_cast<const int4*>(p);
    memcpy(r.v, &u, 16);
  } else {
    const uint2 u = *reinterpret_cast<const uint2*>(p);
    memcpy(r.v, &u, 8);
  }
  return r;
}
template <class T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& r) {
  if constexpr (V == 1) {
    *p = r.v[0];
  } else if constexpr (sizeof(T) == 4) {
    int4 u;
    memcpy(&u, r.v, 16);
    *reinterpret_cast<int4*>(p) = u;
  } else {
    uint2 u;
    memcpy(&u, r.v, 8);
    *reinterpret_cast<uint2*>(p) = u;
  }
}

// out[i, j] = alpha * sa[i * sa_step] * sb[j * sb_step] * acc[i, j] (+ out) (+ bias[j]).
// A step of 0 is a per-tensor scale, 1 a per-row one. One pass, V elements per thread.
template <class Out, int V>
__global__ void scale_i32_kernel(const int32_t* __restrict__ acc, const float* __restrict__ sa,
                                 int64_t sa_step, const float* __restrict__ sb, int64_t sb_step,
                                 float alpha, Out* __restrict__ out, bool accumulate,
                                 const void* __restrict__ bias, bool bias_bf16, int64_t M,
                                 int64_t N) {
  const int64_t groups = M * N / V;  // V divides N
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = g * V, i = e / N, j = e - i * N;
    const Pack<int32_t, V> q = load_pack<int32_t, V>(acc + e);
    const float si = alpha * sa[i * sa_step];
    float r[V];
#pragma unroll
    for (int t = 0; t < V; ++t) r[t] = static_cast<float>(q.v[t]) * si * sb[(j + t) * sb_step];
    if (accumulate) {
      const Pack<Out, V> old = load_pack<Out, V>(out + e);
#pragma unroll
      for (int t = 0; t < V; ++t) r[t] += to_f32(old.v[t]);
    }
    if (bias) {
#pragma unroll
      for (int t = 0; t < V; ++t) r[t] += load_bias(bias, bias_bf16, j + t);
    }
    Pack<Out, V> o;
#pragma unroll
    for (int t = 0; t < V; ++t) o.v[t] = from_f32<Out>(r[t]);
    store_pack<Out, V>(out + e, o);
  }
}

// out[i, j] += bias[j], for a bias cuBLASLt's epilogue does not take.
template <class Out>
__global__ void add_bias_kernel(Out* out, const void* bias, bool bias_bf16, int64_t M, int64_t N) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < M * N;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[e] = from_f32<Out>(to_f32(out[e]) + load_bias(bias, bias_bf16, e % N));
}

// Rewrites scales in another layout (finer, and/or for an operand padded to more rows):
// entry e of dst from detail::scale_source, 1 where no real element uses it.
__global__ void relayout_scales_kernel(const float* __restrict__ src, Granularity from,
                                       Granularity to, int64_t rows_from, int64_t rows_to,
                                       int64_t cols, float* __restrict__ dst, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = detail::scale_source(from, to, e, rows_from, rows_to, cols);
    dst[e] = i >= 0 ? src[i] : 1.0f;
  }
}

// ---- cuBLASLt -------------------------------------------------------------------

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // what NVIDIA suggests for Hopper
constexpr int kTuneCandidates = 8;
constexpr double kTuneFlops = 1 << 30;
constexpr float kTuneSlack = 1.02f;
constexpr int kTuneWarmup = 2, kTuneRuns = 10;
constexpr int kNoScale = -1;

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::f32: return CUDA_R_32F;
    case DType::bf16: return CUDA_R_16BF;
    case DType::f16: return CUDA_R_16F;
    case DType::e4m3: return CUDA_R_8F_E4M3;
    case DType::e5m2: return CUDA_R_8F_E5M2;
    case DType::i8: return CUDA_R_8I;
    case DType::i32: return CUDA_R_32I;
  }
  return CUDA_R_32F;
}

int lt_scale_mode(Granularity g) {
  switch (g) {
    case Granularity::tensor: return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
    case Granularity::row: return CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    case Granularity::block1x128: return CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    case Granularity::block128x128: return CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
  }
  return CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
}

const char* lt_scale_mode_name(int mode) {
  switch (mode) {
    case kNoScale: return "none";
    case CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F: return "SCALAR_32F";
    case CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F: return "OUTER_VEC_32F";
    case CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F: return "VEC128_32F";
    case CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F: return "BLK128x128_32F";
  }
  return "?";
}

uint32_t alignment_of(const void* p) {
  uint32_t a = 256;  // cuBLASLt's heuristics assume 256 unless told less
  while (a > 1 && reinterpret_cast<uintptr_t>(p) % a != 0) a /= 2;
  return a;
}
bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// One cuBLASLt product in our row-major terms (see the mapping at the top).
struct LtCall {
  int64_t M = 0, N = 0, K = 0;
  bool ta = false, tb = true;  // D = op(A) op(B); gemm_nt is (false, true)
  const void* a = nullptr;
  DType a_type = DType::f32;
  const float* a_scale = nullptr;
  int a_mode = kNoScale;
  const void* b = nullptr;
  DType b_type = DType::f32;
  const float* b_scale = nullptr;
  int b_mode = kNoScale;
  void* d = nullptr;
  DType d_type = DType::f32;
  const void* bias = nullptr;
  DType bias_type = DType::f32;
  float alpha = 1.0f;
  bool accumulate = false;
  bool fast_accum = false;
  // The user-level call, described only when something fails (no per-call host cost).
  const detail::GemmOperand* user_a = nullptr;
  const detail::GemmOperand* user_b = nullptr;
  const Tensor* user_d = nullptr;
  const GemmOptions* user_opt = nullptr;
  std::string what() const { return detail::describe(*user_a, *user_b, *user_d, *user_opt); }
};

// The cuBLASLt-side configuration of a call, for errors.
// cuBLASLt's view of our operands (see the mapping at the top).
struct LtLayout {
  uint64_t rows, cols;
  int64_t ld;
  cublasOperation_t op;
};
LtLayout lt_layout_a(const LtCall& c) {  // cuBLASLt A := our B
  return c.tb ? LtLayout{uint64_t(c.K), uint64_t(c.N), c.K, CUBLAS_OP_T}
              : LtLayout{uint64_t(c.N), uint64_t(c.K), c.N, CUBLAS_OP_N};
}
LtLayout lt_layout_b(const LtCall& c) {  // cuBLASLt B := our A
  return c.ta ? LtLayout{uint64_t(c.M), uint64_t(c.K), c.M, CUBLAS_OP_T}
              : LtLayout{uint64_t(c.K), uint64_t(c.M), c.K, CUBLAS_OP_N};
}

// The cuBLASLt-side configuration of a call, for errors.
std::string lt_config(const LtCall& c, bool fuse_bias) {
  std::ostringstream os;
  const bool i8 = c.a_type == DType::i8;
  const LtLayout la = lt_layout_a(c), lb = lt_layout_b(c);
  const auto op = [](cublasOperation_t o) { return o == CUBLAS_OP_T ? "T" : "N"; };
  os << "[cuBLASLt m=" << c.N << " n=" << c.M << " k=" << c.K << "; A = our B "
     << dtype_name(c.b_type) << " " << la.rows << "x" << la.cols << " ld " << la.ld << " op "
     << op(la.op) << ", scale " << lt_scale_mode_name(c.b_mode) << "; B = our A "
     << dtype_name(c.a_type) << " " << lb.rows << "x" << lb.cols << " ld " << lb.ld << " op "
     << op(lb.op) << ", scale " << lt_scale_mode_name(c.a_mode) << "; C = D "
     << dtype_name(c.d_type) << " " << c.N << "x" << c.M << " ld " << c.N << "; compute "
     << (i8 ? "32I" : "32F") << "; epilogue "
     << (fuse_bias ? std::string("BIAS ") + std::string(dtype_name(c.bias_type)) : "DEFAULT")
     << "; beta " << (c.accumulate ? 1 : 0) << "; alignments A " << alignment_of(c.b) << " B "
     << alignment_of(c.a) << " D " << alignment_of(c.d) << "]";
  return os.str();
}

struct PlanKey {
  int64_t m = 0, n = 0, k = 0;
  bool ta = false, tb = true;
  int a_type = 0, b_type = 0, d_type = 0, bias_type = -1;
  int a_mode = kNoScale, b_mode = kNoScale;
  bool accumulate = false, fast_accum = false;
  uint32_t align_a = 0, align_b = 0, align_d = 0, align_bias = 0;
  auto operator<=>(const PlanKey&) const = default;
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulAlgo_t algo{};
  cublasLtMatmulAlgo_t candidates[kTuneCandidates]{};  // the heuristic's, best first, until algo is chosen
  int n_candidates = 0;
  bool bias_fused = false;
};

struct DeviceState {
  cublasLtHandle_t handle = nullptr;
  std::map<cudaStream_t, void*> workspace;
  std::map<PlanKey, Plan> plans;
};

// Never destroyed: plans and handles outlive static tensors and the CUDA context's
// teardown order is not ours to know.
std::mutex& lt_mutex() {
  static std::mutex* m = new std::mutex;
  return *m;
}
DeviceState& device_state(int device) {
  static auto* states = new std::map<int, DeviceState>;
  DeviceState& s = (*states)[device];
  if (!s.handle) LT_CHECK(cublasLtCreate(&s.handle), "device " + std::to_string(device));
  return s;
}

template <class T>
void set_attr(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value,
              const LtCall& c) {
  LT_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)), c.what());
}

// The per-call pointers (scales, bias) on a cached descriptor.
void set_pointers(const Plan& p, const LtCall& c) {
  if (c.b_mode != kNoScale) {
    const void* s = c.b_scale;  // our B is cuBLASLt's A
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, s, c);
  }
  if (c.a_mode != kNoScale) {
    const void* s = c.a_scale;
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, s, c);
  }
  if (p.bias_fused) set_attr(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, c.bias, c);
}

void destroy(Plan& p) {
  if (p.lc) cublasLtMatrixLayoutDestroy(p.lc);
  if (p.lb) cublasLtMatrixLayoutDestroy(p.lb);
  if (p.la) cublasLtMatrixLayoutDestroy(p.la);
  if (p.desc) cublasLtMatmulDescDestroy(p.desc);
  p = Plan{};
}

bool is_block_mode(int mode) {
  return mode == CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F || mode == CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
}
// Block-scaled FP8 kernels promote at every 128-wide block of K whatever is asked.
bool fast_accum_applies(const LtCall& c) {
  return c.fast_accum && is_fp8(c.a_type) && !is_block_mode(c.a_mode) && !is_block_mode(c.b_mode);
}

// Builds a plan and asks the heuristic for up to kTuneCandidates algorithms (its
// first one becomes the plan's); false (with the reason) when cuBLASLt has none
// for this configuration.
bool try_plan(cublasLtHandle_t handle, const LtCall& c, bool fuse_bias, Plan& p, std::string& why) {
  const bool i8 = c.a_type == DType::i8;
  const LtCall& w = c;  // LT_CHECK describes the call only on failure
  p.bias_fused = fuse_bias;
  LT_CHECK(cublasLtMatmulDescCreate(&p.desc, i8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F,
                                    i8 ? CUDA_R_32I : CUDA_R_32F),
           w.what());
  const LtLayout la = lt_layout_a(c), lb = lt_layout_b(c);
  set_attr(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(la.op), w);
  set_attr(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(lb.op), w);
  if (is_fp8(c.a_type)) {
    if (c.b_mode != kNoScale)
      set_attr(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, static_cast<int32_t>(c.b_mode), w);
    if (c.a_mode != kNoScale)
      set_attr(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, static_cast<int32_t>(c.a_mode), w);
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, static_cast<int8_t>(fast_accum_applies(c) ? 1 : 0), w);
  }
  if (fuse_bias) {
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(CUBLASLT_EPILOGUE_BIAS), w);
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
             static_cast<int32_t>(cuda_type(c.bias_type)), w);
  }
  // The heuristic reads the scale and bias pointers' values for their alignment.
  set_pointers(p, c);
  LT_CHECK(cublasLtMatrixLayoutCreate(&p.la, cuda_type(c.b_type), la.rows, la.cols, la.ld), w.what());
  LT_CHECK(cublasLtMatrixLayoutCreate(&p.lb, cuda_type(c.a_type), lb.rows, lb.cols, lb.ld), w.what());
  LT_CHECK(cublasLtMatrixLayoutCreate(&p.lc, cuda_type(c.d_type), c.N, c.M, c.N), w.what());

  cublasLtMatmulPreference_t pref = nullptr;
  LT_CHECK(cublasLtMatmulPreferenceCreate(&pref), w.what());
  const uint64_t ws = kWorkspaceBytes;
  const uint32_t align_a = alignment_of(c.b), align_b = alignment_of(c.a), align_d = alignment_of(c.d);
  LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                sizeof(ws)),
           w.what());
  LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                &align_a, sizeof(align_a)),
           w.what());
  LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                &align_b, sizeof(align_b)),
           w.what());
  LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                &align_d, sizeof(align_d)),
           w.what());
  LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                &align_d, sizeof(align_d)),
           w.what());
  cublasLtMatmulHeuristicResult_t results[kTuneCandidates]{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.la, p.lb, p.lc, p.lc,
                                                           pref, kTuneCandidates, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) p.candidates[p.n_candidates++] = results[i].algo;
  if (p.n_candidates == 0) {
    std::ostringstream os;
    if (st != CUBLAS_STATUS_SUCCESS)
      os << "cublasLtMatmulAlgoGetHeuristic returned " << cublasLtGetStatusName(st);
    else if (found == 0)
      os << "cublasLtMatmulAlgoGetHeuristic found no algorithm";
    else
      os << "heuristic result state " << cublasLtGetStatusName(results[0].state);
    why = os.str();
    destroy(p);
    return false;
  }
  p.algo = p.candidates[0];
  return true;
}

void launch_add_bias(const LtCall& c) {
  const bool bias_bf16 = c.bias_type == DType::bf16;
  const int64_t n = c.M * c.N;
  if (c.d_type == DType::bf16)
    add_bias_kernel<uint16_t><<<grid_for(n), kThreads, 0, current_stream()>>>(
        static_cast<uint16_t*>(c.d), c.bias, bias_bf16, c.M, c.N);
  else
    add_bias_kernel<float><<<grid_for(n), kThreads, 0, current_stream()>>>(
        static_cast<float*>(c.d), c.bias, bias_bf16, c.M, c.N);
  CUDA_CHECK_LAUNCH();
}

// The call with `algo`, on its own D (beta as the call says) or on a scratch d (beta 0).
cublasStatus_t run_algo(cublasLtHandle_t handle, const Plan& plan, const cublasLtMatmulAlgo_t& algo,
                        const LtCall& c, void* d, void* workspace, cudaStream_t stream) {
  const bool accumulate = c.accumulate && d == c.d;
  const float alpha_f = c.alpha, beta_f = accumulate ? 1.0f : 0.0f;
  const int32_t alpha_i = 1, beta_i = accumulate ? 1 : 0;
  const bool i8 = c.a_type == DType::i8;
  const void* alpha = i8 ? static_cast<const void*>(&alpha_i) : &alpha_f;
  const void* beta = i8 ? static_cast<const void*>(&beta_i) : &beta_f;
  return cublasLtMatmul(handle, plan.desc, alpha, c.b, plan.la, c.a, plan.lb, beta, d, plan.lc, d, plan.lc, &algo,
                        workspace, kWorkspaceBytes, stream);
}

// The earliest of the plan's candidates within kTuneSlack of the fastest, timed on
// the call's operands (see the top); the heuristic's choice where no memory is
// left for the scratch D. Synchronises the stream.
cublasLtMatmulAlgo_t tune(cublasLtHandle_t handle, const Plan& plan, const LtCall& c, void* workspace,
                          cudaStream_t stream) {
  const size_t d_bytes = static_cast<size_t>(c.M) * c.N * dtype_size(c.d_type);
  void* scratch = nullptr;
  try {
    scratch = allocate(d_bytes, Device::cuda);
  } catch (const Error&) {
    return plan.candidates[0];
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  float ms[kTuneCandidates];
  for (int i = 0; i < plan.n_candidates; ++i) {
    ms[i] = std::numeric_limits<float>::infinity();
    bool ok = true;
    for (int r = 0; r < kTuneWarmup + kTuneRuns && ok; ++r) {
      if (r == kTuneWarmup) CUDA_CHECK(cudaEventRecord(start, stream));
      ok = run_algo(handle, plan, plan.candidates[i], c, scratch, workspace, stream) == CUBLAS_STATUS_SUCCESS;
    }
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    if (ok) CUDA_CHECK(cudaEventElapsedTime(&ms[i], start, stop));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  release(scratch, d_bytes, Device::cuda);
  const float best = *std::min_element(ms, ms + plan.n_candidates);
  for (int i = 0; i < plan.n_candidates; ++i)
    if (ms[i] <= best * kTuneSlack) return plan.candidates[i];
  return plan.candidates[0];  // none ran: the heuristic's choice reports its own error
}

// Tunes a new plan's algorithm where that pays (see the top); a plan first used
// inside a stream capture is tuned at its first call outside one.
void choose_algo(cublasLtHandle_t handle, Plan& plan, const LtCall& c, void* workspace, cudaStream_t stream) {
  if (plan.n_candidates > 1 && 2.0 * c.M * c.N * c.K >= kTuneFlops) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone) return;
    plan.algo = tune(handle, plan, c, workspace, stream);
  }
  plan.n_candidates = 0;
}

void lt_matmul(const LtCall& c) {
  if (c.M == 0 || c.N == 0) return;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const cudaStream_t stream = current_stream();
  std::lock_guard lock(lt_mutex());
  DeviceState& state = device_state(device);

  PlanKey key;
  key.m = c.M;
  key.n = c.N;
  key.k = c.K;
  key.ta = c.ta;
  key.tb = c.tb;
  key.a_type = static_cast<int>(c.a_type);
  key.b_type = static_cast<int>(c.b_type);
  key.d_type = static_cast<int>(c.d_type);
  key.bias_type = c.bias ? static_cast<int>(c.bias_type) : -1;
  key.a_mode = c.a_mode;
  key.b_mode = c.b_mode;
  key.accumulate = c.accumulate;
  key.fast_accum = fast_accum_applies(c);
  key.align_a = alignment_of(c.a);
  key.align_b = alignment_of(c.b);
  key.align_d = alignment_of(c.d);
  key.align_bias = c.bias ? alignment_of(c.bias) : 0;

  auto it = state.plans.find(key);
  if (it == state.plans.end()) {
    Plan plan;
    std::string why, why_fused;
    bool ok = false;
    if (c.bias) {  // the fused bias epilogue first, then a separate bias pass
      ok = try_plan(state.handle, c, true, plan, why_fused);
      if (!ok) why_fused = "with the bias epilogue: " + why_fused + "; without: ";
    }
    if (!ok) ok = try_plan(state.handle, c, false, plan, why);
    HALO_CHECK(ok, c.what(), ": cuBLASLt has no algorithm for this GEMM (", why_fused, why, ") ",
               lt_config(c, c.bias != nullptr));
    it = state.plans.emplace(key, plan).first;
  }
  Plan& plan = it->second;
  set_pointers(plan, c);

  void*& workspace = state.workspace[stream];
  if (!workspace) workspace = allocate(kWorkspaceBytes, Device::cuda);
  if (plan.n_candidates > 0) choose_algo(state.handle, plan, c, workspace, stream);
  const cublasStatus_t st = run_algo(state.handle, plan, plan.algo, c, c.d, workspace, stream);
  HALO_CHECK(st == CUBLAS_STATUS_SUCCESS, c.what(), ": cublasLtMatmul failed with ",
             cublasLtGetStatusName(st), " (", cublasLtGetStatusString(st), ") ",
             lt_config(c, plan.bias_fused));
  if (c.bias && !plan.bias_fused) launch_add_bias(c);
}

bool is_block(Granularity g) {
  return g == Granularity::block1x128 || g == Granularity::block128x128;
}

// The scales of an [R, C] operand rewritten on the device in the `target` layout.
Tensor expand_scales(const detail::GemmOperand& op, Granularity target) {
  const int64_t R = op.data->size(0), C = op.data->size(1);
  return detail::relayout_scales(*op.scale, op.granularity, target, R, R, C);
}

void launch_scale_i32(const Tensor& acc, const detail::GemmOperand& a,
                      const detail::GemmOperand& b, Tensor& d, const GemmOptions& opt) {
  const int64_t M = acc.size(0), N = acc.size(1);
  if (M == 0 || N == 0) return;
  const float* sa = a.scale->data_as<float>();
  const float* sb = b.scale->data_as<float>();
  const int64_t sa_step = a.granularity == Granularity::row ? 1 : 0;
  const int64_t sb_step = b.granularity == Granularity::row ? 1 : 0;
  const void* bias = opt.bias ? opt.bias->data() : nullptr;
  const bool bias_bf16 = opt.bias && opt.bias->dtype() == DType::bf16;
  const bool bf16 = d.dtype() == DType::bf16;
  // Vector path: whole rows of 4, 16-byte aligned i32 loads, 16/8-byte aligned stores.
  const uintptr_t out_align = bf16 ? 8 : 16;
  const bool vec = N % 4 == 0 && aligned16(acc.data()) &&
                   reinterpret_cast<uintptr_t>(d.data()) % out_align == 0;
  const int64_t work = vec ? M * N / 4 : M * N;
  const cudaStream_t s = current_stream();
  const int32_t* q = acc.data_as<int32_t>();
#define HALO_SCALE_I32(Out, V)                                                                 \
  scale_i32_kernel<Out, V><<<grid_for(work), kThreads, 0, s>>>(                                \
      q, sa, sa_step, sb, sb_step, opt.alpha, static_cast<Out*>(d.data()), opt.accumulate, bias, \
      bias_bf16, M, N)
  if (bf16 && vec)
    HALO_SCALE_I32(uint16_t, 4);
  else if (bf16)
    HALO_SCALE_I32(uint16_t, 1);
  else if (vec)
    HALO_SCALE_I32(float, 4);
  else
    HALO_SCALE_I32(float, 1);
#undef HALO_SCALE_I32
  CUDA_CHECK_LAUNCH();
}

size_t cublaslt_version() {
  static const size_t v = cublasLtGetVersion();
  return v;
}

}  // namespace

namespace detail {

void gemm_cuda(const GemmOperand& a, const GemmOperand& b, Tensor& d, const GemmOptions& opt) {
  const auto [M, N, K] = gemm_dims(a, b);
  const DType at = a.data->dtype(), bt = b.data->dtype();
  const bool scaled = a.scale != nullptr;

  LtCall c;
  c.M = M;
  c.N = N;
  c.K = K;
  c.ta = a.trans;
  c.tb = b.trans;
  c.a = a.data->data();
  c.a_type = at;
  c.b = b.data->data();
  c.b_type = bt;
  c.d = d.data();
  c.d_type = d.dtype();
  c.bias = opt.bias ? opt.bias->data() : nullptr;
  c.bias_type = opt.bias ? opt.bias->dtype() : DType::f32;
  c.alpha = opt.alpha;
  c.accumulate = opt.accumulate;
  c.fast_accum = opt.fast_accum;
  c.user_a = &a;
  c.user_b = &b;
  c.user_d = &d;
  c.user_opt = &opt;

  const bool block = scaled && (is_block(a.granularity) || is_block(b.granularity));
  if (is_8bit(at)) {
    HALO_CHECK(!a.trans && b.trans, c.what(), ": 8-bit operands on CUDA only in the NT form "
               "(both K-major; Hopper's FP8/INT8 kernels take no other): use gemm_nt");
    HALO_CHECK(aligned16(c.a) && aligned16(c.b), c.what(),
               ": 8-bit operands on CUDA need 16-byte aligned data pointers");
    HALO_CHECK(!(at == DType::i8 && block), c.what(),
               ": INT8 with block scales runs on the CPU only (the scales must be applied inside "
               "the sum over K; cuBLASLt has no block-scaled INT8 kernels): use fp8 or tensor/row "
               "scales");
    if (block)
      HALO_CHECK(cublaslt_version() >= 120900, c.what(), ": FP8 block scaling needs cuBLASLt >= "
                 "12.9, this one is ", cublaslt_version());
    // Shapes cuBLASLt has no kernel for run padded (gemm.h); the padded call comes back
    // here with an aligned shape.
    const GemmDims p = cuda_padded_dims({M, N, K}, at, d.dtype(), block);
    if (p.M != M || p.N != N || p.K != K) {
      gemm_padded(a, b, d, opt, p);
      return;
    }
  }

  if (at == DType::i8) {
    if (!scaled) {  // the raw int32 product
      lt_matmul(c);
      return;
    }
    if (gemm_i8_sm90_runs(a, b, d)) {
      gemm_i8_sm90(a, b, d, opt);
      return;
    }
    Tensor acc = Tensor::empty({M, N}, DType::i32, Device::cuda);
    LtCall raw = c;
    raw.d = acc.data();
    raw.d_type = DType::i32;
    raw.bias = nullptr;
    raw.alpha = 1.0f;
    raw.accumulate = false;
    lt_matmul(raw);
    launch_scale_i32(acc, a, b, d, opt);
    return;
  }

  if (is_fp8(at) && scaled) {
    HALO_CHECK(aligned16(a.scale->data()) && aligned16(b.scale->data()), c.what(),
               ": cuBLASLt needs 16-byte aligned scale pointers (FP8 returns NOT_SUPPORTED "
               "otherwise)");
    // Choose the scale layouts cuBLASLt runs, expanding one operand's scales if needed.
    Granularity ga = a.granularity, gb = b.granularity;
    Tensor a_expanded, b_expanded;
    if (!is_block(ga) && !is_block(gb)) {
      if (ga != gb) {  // tensor x row: both as row
        if (ga == Granularity::tensor) ga = Granularity::row;
        else gb = Granularity::row;
      }
    } else if (gb == Granularity::block128x128) {
      ga = Granularity::block1x128;  // B (the weight) keeps its tiles; A goes 1x128
    } else if (ga == Granularity::block128x128) {
      gb = Granularity::block1x128;
    } else {
      ga = gb = Granularity::block1x128;
    }
    if (ga != a.granularity) a_expanded = expand_scales(a, ga);
    if (gb != b.granularity) b_expanded = expand_scales(b, gb);
    c.a_scale = (a_expanded.defined() ? a_expanded : *a.scale).data_as<float>();
    c.b_scale = (b_expanded.defined() ? b_expanded : *b.scale).data_as<float>();
    c.a_mode = lt_scale_mode(ga);
    c.b_mode = lt_scale_mode(gb);
    lt_matmul(c);  // the expanded scales live until the call is queued; same stream after
    return;
  }

  lt_matmul(c);  // f32, bf16, unscaled fp8 (scale pointers null: scale 1)
}

void relayout_scales_cuda(const Tensor& scale, Granularity from, Granularity to, int64_t rows_from,
                          int64_t rows_to, int64_t cols, Tensor& out) {
  const int64_t n = out.numel();
  relayout_scales_kernel<<<grid_for(n), kThreads, 0, current_stream()>>>(
      scale.data_as<float>(), from, to, rows_from, rows_to, cols, out.data_as<float>(), n);
  CUDA_CHECK_LAUNCH();
}

void scale_i32_cuda(const Tensor& acc, const QTensor& a, const QTensor& b, Tensor& d,
                    const GemmOptions& opt) {
  const GemmOperand A{&a.data, &a.scale, a.granularity}, B{&b.data, &b.scale, b.granularity};
  launch_scale_i32(acc, A, B, d, opt);
}

}  // namespace detail

}  // namespace halo
