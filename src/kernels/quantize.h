// Symmetric absmax quantization to INT8, FP8 e4m3 or FP8 e5m2 (HALO-METHOD.md, "Q(A)").
//
// Operand layout: a quantized GEMM operand is row-major [R, C] with C the
// contracted dimension. Scales are FP32 and stay on the operand's device:
//   scale = absmax(group) / q_max   (absmax computed in FP32; an all-zero group
//   gets scale 1), q = round(x * (q_max / absmax))   (for a zero group: q = 0),
// so that x ~= q * scale. q_max = 127 (INT8), 448 (e4m3), 57344 (e5m2).
// Exactly, on every device: m = quant_multiplier(absmax) = q_max / absmax in FP32
// (IEEE division), then q = round(fl32(x * m)) to the format (RNE, saturating;
// INT8 clamps to [-127, 127]), and scale = quant_scale(absmax) = absmax / q_max.
// absmax is the largest |x| of the group; a NaN anywhere in the group makes it
// NaN (and so the scale), so callers can detect it; an infinite absmax gives
// scale inf and m = 0.
//
// Scale tensor layouts (what cuBLASLt reads for each scaling mode; see gemm.cu):
//   tensor        [1]                              SCALAR_32F
//   row           [R]                              OUTER_VEC_32F: one per row (per token /
//                                                  per output channel)
//   block1x128    [ceil(C/128), pad4(R)]           VEC128_32F: one per 128 consecutive
//                                                  elements of a row; R is the fastest-moving
//                                                  index, padded to a multiple of 4
//   block128x128  [ceil(R/128), pad4(ceil(C/128))] BLK128x128_32F: one per 128x128 tile,
//                                                  row-major over tiles, each row of tiles
//                                                  padded to a multiple of 4
// pad4(n) rounds n up to a multiple of 4 so that every run of scales starts 16-byte
// aligned (the layout NVIDIA's TransformerEngine hands to cuBLASLt for its 1D/2D block
// recipes). Padding entries are never read. Always index through scale_index.
#pragma once
#include <cstdint>
#include <string_view>

#include "core/numerics.h"
#include "core/tensor.h"

namespace halo {

enum class Granularity : uint8_t { tensor, row, block1x128, block128x128 };
std::string_view granularity_name(Granularity g);
Granularity parse_granularity(std::string_view name);  // "tensor", "row", "1x128", "128x128"

HALO_HD float qmax_of(DType t) {
  return t == DType::i8 ? 127.0f : (t == DType::e4m3 ? 448.0f : 57344.0f);
}

HALO_HD int64_t pad4(int64_t n) { return (n + 3) / 4 * 4; }

// Index into the scale tensor of the group holding element (r, c) of an [R, C] operand.
HALO_HD int64_t scale_index(Granularity g, int64_t r, int64_t c, int64_t R, int64_t C) {
  switch (g) {
    case Granularity::tensor: return 0;
    case Granularity::row: return r;
    case Granularity::block1x128: return (c / 128) * pad4(R) + r;
    case Granularity::block128x128: return (r / 128) * pad4((C + 127) / 128) + c / 128;
  }
  return 0;
}
Shape scale_shape(Granularity g, int64_t R, int64_t C);

// The multiplier applied before rounding: q_max / absmax; 0 for an all-zero
// group; clamped to FLT_MAX when absmax is so tiny (< ~1e-36) that the quotient
// overflows, so that zeros stay zero (0 * inf would be NaN). NaN stays NaN.
HALO_HD float quant_multiplier(float absmax, float qmax) {
  if (absmax == 0.0f) return 0.0f;
  const float m = qmax / absmax;
  return m > 3.40282347e38f ? 3.40282347e38f : m;
}
HALO_HD float quant_scale(float absmax, float qmax) {
  return absmax == 0.0f ? 1.0f : absmax / qmax;
}

struct QuantSpec {
  DType dtype = DType::e4m3;  // i8, e4m3 or e5m2
  Granularity granularity = Granularity::tensor;
  bool scaled = true;       // false: plain cast with scale 1 (the "ideal" recipes)
  bool stochastic = false;  // stochastic rounding, from counter-based random numbers
  uint64_t seed = 0;        // with stochastic: the numbers for element i of the input
  uint64_t stream = 0;      //   are uniform01(seed, stream, i) on every device
  // Per-tensor scaling: maxima of |x| over parts of the (rotated) input, already
  // computed where x was made (f32 >= 0, any length >= 1, on x's device; e.g. by
  // hadamard_cols_absmax). The tensor's absmax is taken as their maximum, and the
  // GPU skips its first pass over x. Null: computed here.
  const Tensor* absmax_parts = nullptr;
};

// A quantized GEMM operand: data [R, C] (8-bit) and its FP32 scales.
struct QTensor {
  Tensor data;
  Tensor scale;
  Granularity granularity = Granularity::tensor;
  int64_t rows() const { return data.size(0); }
  int64_t cols() const { return data.size(1); }
};

// Quantizes x ([R, C], f32 or bf16; more dims are flattened to [R, C] with C
// the last one) after an optional rotation of each row by
// R_C (rotate_rows: x R_C, the HALO rotation along the contracted dimension).
//   out:   the [R, C] operand (row-major copy) — may be null
//   out_t: the [C, R] operand (transposed copy, scales grouped along its own
//          rows, i.e. per column of x) — may be null
// Outputs are allocated on x's device. Element i = r*C + c of the (rotated)
// input is rounded with uniform01(seed, stream, i) in both copies. With
// scaled = false the codes are plain casts and every scale entry is 1.
// Scale padding entries (see pad4 above) are written as 1.
// CUDA: asynchronous on current_stream(), no host synchronisation.
void quantize(const Tensor& x, const QuantSpec& spec, bool rotate_rows, QTensor* out,
              QTensor* out_t);

// x ~= q * scale, written to out (f32 or bf16, shape of q.data, same device).
void dequantize(const QTensor& q, Tensor& out);

// Simulation ("fake quant"): out = dequantize(quantize(x)) in one call, same math
// (no rotation: rotate first where the recipe calls for it). out: f32 or bf16,
// shape of x, same device.
void fake_quantize(const Tensor& x, const QuantSpec& spec, Tensor& out);

namespace detail {
// Internal: quantize.cpp validates and allocates, quantize.cu runs on the GPU.
// x2 is [R, C]; out / out_t are allocated (data and scale) or null.
void quantize_cuda(const Tensor& x2, const QuantSpec& spec, bool rotate_rows, QTensor* out,
                   QTensor* out_t);
void dequantize_cuda(const QTensor& q, Tensor& out);
}  // namespace detail

}  // namespace halo
