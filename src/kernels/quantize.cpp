// Quantizers: argument checks, the CPU implementation (the reference the CUDA
// kernels in quantize.cu are checked against), and dispatch to the GPU.
#include "kernels/quantize.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/hadamard.h"

namespace halo {

std::string_view granularity_name(Granularity g) {
  switch (g) {
    case Granularity::tensor: return "tensor";
    case Granularity::row: return "row";
    case Granularity::block1x128: return "1x128";
    case Granularity::block128x128: return "128x128";
  }
  return "?";
}

Granularity parse_granularity(std::string_view name) {
  for (Granularity g : {Granularity::tensor, Granularity::row, Granularity::block1x128,
                        Granularity::block128x128})
    if (name == granularity_name(g)) return g;
  HALO_FAIL("unknown scale granularity '", name, "' (expected tensor, row, 1x128 or 128x128)");
}

Shape scale_shape(Granularity g, int64_t R, int64_t C) {
  switch (g) {
    case Granularity::tensor: return {1};
    case Granularity::row: return {R};
    case Granularity::block1x128: return {(C + 127) / 128, pad4(R)};
    case Granularity::block128x128: return {(R + 127) / 128, pad4((C + 127) / 128)};
  }
  return {1};
}

namespace {

inline uint8_t encode(float v, DType t, bool stochastic, float u) {
  switch (t) {
    case DType::i8:
      return static_cast<uint8_t>(stochastic ? float_to_i8_stochastic(v, u) : float_to_i8(v));
    case DType::e4m3: return stochastic ? fp8_encode_stochastic(v, u, kE4M3) : float_to_e4m3(v);
    default: return stochastic ? fp8_encode_stochastic(v, u, kE5M2) : float_to_e5m2(v);
  }
}

inline float decode(uint8_t q, DType t) {
  switch (t) {
    case DType::i8: return static_cast<float>(static_cast<int8_t>(q));
    case DType::e4m3: return e4m3_to_float(q);
    default: return e5m2_to_float(q);
  }
}

QTensor allocate_qtensor(int64_t R, int64_t C, const QuantSpec& spec, Device device) {
  QTensor q;
  q.data = Tensor::empty({R, C}, spec.dtype, device);
  q.scale = Tensor::empty(scale_shape(spec.granularity, R, C), DType::f32, device);
  q.granularity = spec.granularity;
  return q;
}

// The (optionally rotated) input as a host f32 [R, C] tensor.
Tensor prepared_input(const Tensor& x2, bool rotate) {
  Tensor xf = x2.to(DType::f32);
  if (!rotate) return xf;
  if (xf.data() == x2.data()) {  // x2 was already f32: rotate a copy, not the caller's tensor
    xf = Tensor::empty(x2.shape(), DType::f32);
    xf.copy_from(x2);
  }
  hadamard_rows(xf, xf);
  return xf;
}

// The largest |v| of the f32 values in t, as bits (QuantSpec::absmax_parts).
uint32_t max_abs_bits(const Tensor& t) {
  uint32_t a = 0;
  for (int64_t i = 0; i < t.numel(); ++i) a = std::max(a, abs_bits(t.data_as<float>()[i]));
  return a;
}

// Multipliers and scales of every group of one copy, laid out like its scale
// tensor. amax holds the absmax bits per group (0 for padding entries).
void finish_groups(const std::vector<uint32_t>& amax, float qmax, std::vector<float>& mul,
                   Tensor& scale) {
  float* s = scale.data_as<float>();
  mul.resize(amax.size());
  for (size_t i = 0; i < amax.size(); ++i) {
    const float a = bits_float(amax[i]);
    mul[i] = quant_multiplier(a, qmax);
    s[i] = quant_scale(a, qmax);
  }
}

void quantize_cpu(const Tensor& x2, const QuantSpec& spec, bool rotate, QTensor* out,
                  QTensor* out_t) {
  const int64_t R = x2.size(0), C = x2.size(1);
  const Granularity g = spec.granularity;
  const Tensor xf = prepared_input(x2, rotate);
  const float* v = xf.data_as<float>();

  // Multipliers per group of each copy (1 everywhere when unscaled).
  std::vector<float> mul_o, mul_t;
  if (!spec.scaled) {
    for (QTensor* q : {out, out_t}) {
      if (!q) continue;
      std::fill_n(q->scale.data_as<float>(), q->scale.numel(), 1.0f);
      (q == out ? mul_o : mul_t).assign(static_cast<size_t>(q->scale.numel()), 1.0f);
    }
  } else {
    // Absmax of every (row, 128-column chunk) and every (128-row block, column):
    // each group of either copy is a union of cells of one of the two.
    const int64_t nc = (C + 127) / 128, nrb = (R + 127) / 128;
    std::vector<uint32_t> chunk(static_cast<size_t>(R * nc), 0), colblk(static_cast<size_t>(nrb * C), 0);
#pragma omp parallel for schedule(static)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      for (int64_t r = rb * 128; r < std::min(R, rb * 128 + 128); ++r) {
        for (int64_t c = 0; c < C; ++c) {
          const uint32_t b = abs_bits(v[r * C + c]);
          uint32_t& ch = chunk[r * nc + c / 128];
          uint32_t& cb = colblk[rb * C + c];
          ch = std::max(ch, b);
          cb = std::max(cb, b);
        }
      }
    }
    const float qmax = qmax_of(spec.dtype);
    const uint32_t given = spec.absmax_parts ? max_abs_bits(*spec.absmax_parts) : 0;  // per tensor only
    if (out) {
      std::vector<uint32_t> amax(static_cast<size_t>(out->scale.numel()), 0);
      for (int64_t r = 0; r < R; ++r)
        for (int64_t k = 0; k < nc; ++k) {
          uint32_t& a = amax[scale_index(g, r, k * 128, R, C)];
          a = std::max(a, chunk[r * nc + k]);
        }
      if (spec.absmax_parts) amax[0] = given;
      finish_groups(amax, qmax, mul_o, out->scale);
    }
    if (out_t) {  // element (c, r) of the [C, R] copy
      std::vector<uint32_t> amax(static_cast<size_t>(out_t->scale.numel()), 0);
      for (int64_t rb = 0; rb < nrb; ++rb)
        for (int64_t c = 0; c < C; ++c) {
          uint32_t& a = amax[scale_index(g, c, rb * 128, C, R)];
          a = std::max(a, colblk[rb * C + c]);
        }
      if (spec.absmax_parts) amax[0] = given;
      finish_groups(amax, qmax, mul_t, out_t->scale);
    }
  }

  uint8_t* q_o = out ? out->data.data_as<uint8_t>() : nullptr;
  uint8_t* q_t = out_t ? out_t->data.data_as<uint8_t>() : nullptr;
  // Blocks of 64 rows x 256 columns keep the transposed writes within cache lines.
#pragma omp parallel for schedule(static)
  for (int64_t r0 = 0; r0 < R; r0 += 64) {
    for (int64_t c0 = 0; c0 < C; c0 += 256) {
      for (int64_t r = r0; r < std::min(R, r0 + 64); ++r) {
        for (int64_t c = c0; c < std::min(C, c0 + 256); ++c) {
          const int64_t i = r * C + c;
          const float u = spec.stochastic ? uniform01(spec.seed, spec.stream, static_cast<uint64_t>(i)) : 0.0f;
          if (q_o) q_o[i] = encode(v[i] * mul_o[scale_index(g, r, c, R, C)], spec.dtype, spec.stochastic, u);
          if (q_t)
            q_t[c * R + r] = encode(v[i] * mul_t[scale_index(g, c, r, C, R)], spec.dtype, spec.stochastic, u);
        }
      }
    }
  }
}

void dequantize_cpu(const QTensor& q, Tensor& out) {
  const int64_t R = q.rows(), C = q.cols();
  const uint8_t* d = q.data.data_as<uint8_t>();
  const float* s = q.scale.data_as<float>();
  const DType t = q.data.dtype();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      store_float(out.data(), out.dtype(), r * C + c,
                  decode(d[r * C + c], t) * s[scale_index(q.granularity, r, c, R, C)]);
}

}  // namespace

void quantize(const Tensor& x, const QuantSpec& spec, bool rotate_rows, QTensor* out,
              QTensor* out_t) {
  HALO_CHECK(x.defined() && x.ndim() >= 1, "quantize: expected a tensor [R, C], got ",
             x.defined() ? x.describe() : std::string("an undefined tensor"));
  HALO_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16,
             "quantize: input must be f32 or bf16, got ", x.describe());
  HALO_CHECK(is_8bit(spec.dtype),
             "quantize: target format must be i8, e4m3 or e5m2, got ", dtype_name(spec.dtype));
  HALO_CHECK(!out || out != out_t, "quantize: out and out_t must be different QTensors");
  if (spec.absmax_parts) {
    const Tensor& a = *spec.absmax_parts;
    HALO_CHECK(spec.scaled && spec.granularity == Granularity::tensor,
               "quantize: absmax_parts serve per-tensor scaling only, not ", granularity_name(spec.granularity),
               spec.scaled ? "" : " unscaled");
    HALO_CHECK(a.defined() && a.dtype() == DType::f32 && a.numel() >= 1,
               "quantize: absmax_parts must be an f32 tensor of at least one element, got ",
               a.defined() ? a.describe() : std::string("an undefined tensor"));
    check_same_device(x, a, "quantize absmax_parts");
  }
  if (!out && !out_t) return;
  const Tensor x2 = x.as_2d();
  const int64_t R = x2.size(0), C = x2.size(1);
  if (out) *out = allocate_qtensor(R, C, spec, x.device());
  if (out_t) *out_t = allocate_qtensor(C, R, spec, x.device());
  if (x.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::quantize_cuda(x2, spec, rotate_rows, out, out_t);
    return;
#else
    HALO_FAIL("quantize: this build of halo has no CUDA support");
#endif
  }
  quantize_cpu(x2, spec, rotate_rows, out, out_t);
}

void dequantize(const QTensor& q, Tensor& out) {
  HALO_CHECK(q.data.defined() && q.data.ndim() == 2 && is_8bit(q.data.dtype()),
             "dequantize: expected 8-bit data [R, C], got ",
             q.data.defined() ? q.data.describe() : std::string("an undefined tensor"));
  check_shape(out, q.data.shape(), "dequantize output");
  check_shape(q.scale, scale_shape(q.granularity, q.rows(), q.cols()), "dequantize scales");
  check_dtype(q.scale, DType::f32, "dequantize scales");
  check_same_device(q.data, out, "dequantize");
  check_same_device(q.data, q.scale, "dequantize");
  HALO_CHECK(out.dtype() == DType::f32 || out.dtype() == DType::bf16,
             "dequantize: output must be f32 or bf16, got ", out.describe());
  if (out.is_cuda()) {
#ifdef HALO_HAS_CUDA
    detail::dequantize_cuda(q, out);
    return;
#else
    HALO_FAIL("dequantize: this build of halo has no CUDA support");
#endif
  }
  dequantize_cpu(q, out);
}

void fake_quantize(const Tensor& x, const QuantSpec& spec, Tensor& out) {
  check_shape(out, x.shape(), "fake_quantize output");
  check_same_device(x, out, "fake_quantize");
  QTensor q;
  quantize(x, spec, false, &q, nullptr);
  Tensor out2 = out.as_2d();
  dequantize(q, out2);
}

}  // namespace halo
