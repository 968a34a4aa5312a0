// AdamW, fused: one pass over a parameter tensor reads p, g, m, v and writes
// p, m, v (and, with FP32 master weights, the bf16 copy of p used by the forward).
//
// Storage, chosen per run by the dtype of the parameter:
//   FP32 master  param, m, v f32; param_bf16 (optional) receives bf16(p) (RNE).
//   BF16         param, m, v bf16; the update is computed in f32 and the three
//                are rounded back to bf16: to nearest even, or stochastically
//                (AdamWConfig::stochastic_rounding; plain rounding of updates
//                smaller than half a bf16 ulp leaves p, and v with beta2 = 0.999,
//                stuck).
// The gradient is f32 or bf16 in both modes (read as f32; a bf16 gradient
// saves 2 of the 16 bytes per element that BF16 storage moves, and half the
// gradient norm's reads).
//
// Per element, in f32, in this order (the CPU and the GPU do the same IEEE
// operations, no fused multiply-adds, so the results are bitwise equal):
//   g  = grad * grad_scale                       (grad_scale: f32 [1] in device memory,
//                                                 e.g. clip_coefficient(); 1 if absent)
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * (g * g)
//   p  = p - (step_size * (m / (sqrt(v) * inv_sqrt_bc2 + eps)) + decay * p)
// with, computed on the host in f64 and rounded to f32:
//   step_size = lr / (1 - beta1^t), inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t),
//   decay = lr * weight_decay (0 for tensors marked no-decay): decoupled weight
//   decay, applied to the weight before this step's update (as PyTorch's AdamW).
// The rounding of m and v to bf16 comes after they are used (the update uses
// the f32 values).
//
// Non-finite gradients: when grad_scale holds a NaN or an infinity the step is
// skipped: no tensor is written (clip_coefficient returns NaN for a non-finite
// norm, so a step whose gradients overflowed leaves the weights intact with no
// host sync). The trainer should still read the norm (once per step, for its
// log) and count the step as skipped. Without grad_scale a NaN gradient
// propagates into its elements: check global_norm_squared first.
//
// Stochastic rounding to bf16: x is rounded away from zero with probability
// (low 16 bits of x) / 2^16, i.e. to one of its two bf16 neighbours with
// probabilities proportional to closeness (unbiased). The uniform numbers come
// from one Philox call per element, philox4x32(seed, i, stream) with
// stream = (step << 32) | id and i the element index in the tensor: word 0 for
// p (that is uniform01(seed, stream, i) of core/rng.h), word 1 for m, word 2
// for v. Same numbers on the CPU and the GPU, whatever the launch shape.
//
// Bitwise equality of the CPU and the GPU needs a host build that does not
// contract a * b + c into an FMA (the x86-64-v2 target of CMakeLists.txt has no
// FMA); on the GPU the kernel uses __fmul_rn / __fadd_rn, which are never fused.
#pragma once
#include <cstdint>
#include <vector>

#include "core/numerics.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace halo {

struct AdamWConfig {
  float lr = 1e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;         // decoupled; skipped for tensors with decay = false
  int64_t step = 1;                  // t >= 1, for the bias corrections 1 - beta^t
  bool stochastic_rounding = false;  // BF16 storage only: round p, m, v stochastically
  uint64_t seed = 0;                 // of the stochastic rounding
};

// One parameter tensor and its state, all on one device with the same element
// count (shapes may differ: only the elements are visited).
struct AdamWParam {
  Tensor param;       // f32 master weights, or bf16 weights
  Tensor grad;        // f32 or bf16
  Tensor m, v;        // the param's dtype
  Tensor param_bf16;  // FP32 master only, optional: written with bf16(param)
  bool decay = true;  // false: no weight decay (norm weights, biases)
  uint32_t id = 0;    // tells tensors apart in the stochastic-rounding stream
  // true: grad holds G R, the gradient G with its rows rotated by the Hadamard
  // rotation of their length (a HALO linear's weight gradient as its backward
  // accumulates it); the step uses G = (G R) R^T. The GPU rotates back inside
  // the update for rows of 2048, 4096 and 8192 (hadamard_s_width; 16-byte
  // aligned tensors): no rotated copy of the gradient is written and read
  // again. Otherwise, and on the CPU, hadamard_rows rotates it first.
  bool grad_rotated = false;
  // Optional: i8 [rows of grad] (grad's last dim is a row): 0 where that row of
  // grad is all zeros, as embedding_backward's rows_written says of an embedding
  // gradient. The GPU then does not read those rows (the results are the same,
  // a sparse gradient costs less); the CPU reads them anyway.
  Tensor grad_rows;
};

// One AdamW step of one tensor. grad_scale: undefined, or f32 [1] on the
// tensor's device, multiplied into the gradient (clip_coefficient's result).
void adamw_step(const AdamWParam& t, const AdamWConfig& cfg, const Tensor& grad_scale = Tensor());

// Sum of the squares of every element of every tensor (f32 or bf16 gradients, all on one
// device), as an f32 [1] tensor on that device. Deterministic: fixed partition
// and summation order (f64 partial sums), independent of thread counts. No host sync.
// grad_rows: empty, or one per tensor, each undefined or as AdamWParam::grad_rows
// (rows known to be zero are not read on the GPU; the sum is the same).
Tensor global_norm_squared(const std::vector<Tensor>& grads, const std::vector<Tensor>& grad_rows = {});

// f32 [1] on norm_sq's device: min(1, max_norm / (sqrt(norm_sq) + 1e-6)), or 1
// when max_norm <= 0 (no clipping); NaN when norm_sq is not finite (adamw_step
// then skips). No host sync.
Tensor clip_coefficient(const Tensor& norm_sq, float max_norm);

// ---- shared by the CPU twin and the kernel ---------------------------------------
namespace detail {

// Per-step constants, computed on the host (f64, rounded to f32).
struct AdamWScalars {
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float step_size, inv_sqrt_bc2, eps, decay;
};
AdamWScalars adamw_scalars(const AdamWConfig& cfg, bool decay);

// IEEE f32 operations that the CUDA compiler does not fuse into FMAs.
HALO_HD float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
HALO_HD float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
HALO_HD float div_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
HALO_HD float sqrt_rn(float a) {
#ifdef __CUDA_ARCH__
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// Updates (p, m, v) of one element in f32 from the (scaled) gradient g.
HALO_HD void adamw_update(float& p, float& m, float& v, float g, const AdamWScalars& k) {
  m = add_rn(mul_rn(k.beta1, m), mul_rn(k.one_minus_beta1, g));
  v = add_rn(mul_rn(k.beta2, v), mul_rn(k.one_minus_beta2, mul_rn(g, g)));
  const float denom = add_rn(mul_rn(sqrt_rn(v), k.inv_sqrt_bc2), k.eps);
  p = add_rn(p, -add_rn(mul_rn(k.step_size, div_rn(m, denom)), mul_rn(k.decay, p)));
}

// bf16 bits of x rounded stochastically with u uniform in [0, 1): away from
// zero iff u * 2^16 < (low 16 bits of x). Infinities and NaN round to nearest.
HALO_HD uint16_t float_to_bf16_stochastic(float x, float u) {
  const uint32_t b = float_bits(x);
  if ((b & 0x7fffffffu) >= 0x7f800000u) return float_to_bf16_bits(x);
  const uint32_t r = static_cast<uint32_t>(u * 65536.0f);  // exact: u has 24 bits
  return static_cast<uint16_t>((b >> 16) + (r < (b & 0xffffu) ? 1u : 0u));
}

// The three uniforms of element i: for p (== uniform01(seed, stream, i)), m and v.
HALO_HD void adamw_uniforms(uint64_t seed, uint64_t stream, uint64_t i, float& up, float& um, float& uv) {
  const Philox4 r = philox4x32(seed, i, stream);
  up = static_cast<float>(r.v[0] >> 8) * 5.9604644775390625e-8f;
  um = static_cast<float>(r.v[1] >> 8) * 5.9604644775390625e-8f;
  uv = static_cast<float>(r.v[2] >> 8) * 5.9604644775390625e-8f;
}

HALO_HD uint64_t adamw_stream(int64_t step, uint32_t id) {
  return (static_cast<uint64_t>(step) << 32) | id;
}

HALO_HD bool finite_f32(float x) { return (float_bits(x) & 0x7f800000u) != 0x7f800000u; }

// clip_coefficient's formula.
HALO_HD float clip_coefficient_of(float norm_sq, float max_norm) {
  if (!finite_f32(norm_sq)) return bits_float(0x7fc00000u);  // NaN: adamw_step skips
  if (max_norm <= 0.0f) return 1.0f;
  const float c = div_rn(max_norm, add_rn(sqrt_rn(norm_sq), 1e-6f));
  return c < 1.0f ? c : 1.0f;
}

}  // namespace detail
}  // namespace halo
