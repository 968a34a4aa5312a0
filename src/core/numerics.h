// Exact scalar number formats, usable on the host and in CUDA kernels.
//
// bf16, f16, fp8 e4m3 (the "fn" variant: no infinities, max 448) and fp8 e5m2
// (IEEE-like, max 57344) conversions with round-to-nearest-even; conversions to
// the 8-bit formats saturate to the largest finite value (as the hardware's
// "satfinite" mode does); NaN stays NaN. INT8 rounds half to even and clamps
// to [-127, 127]; NaN becomes 0 (as cvt.rni.sat.s8.f32 does).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define HALO_HD __host__ __device__ __forceinline__
#else
#define HALO_HD inline
#endif

namespace halo {

HALO_HD uint32_t float_bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
#endif
}
// |v| as bits: non-negative floats order like their bits, so a max over these is
// the absmax, and a NaN (bits above those of infinity) wins every comparison.
HALO_HD uint32_t abs_bits(float v) { return float_bits(v) & 0x7fffffffu; }

HALO_HD float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, 4);
  return x;
#endif
}

// ---- bf16 -------------------------------------------------------------------
HALO_HD uint16_t float_to_bf16_bits(float x) {
  uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}
HALO_HD float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// ---- f16 --------------------------------------------------------------------
HALO_HD float f16_bits_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    float v = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

HALO_HD uint16_t float_to_f16_bits(float x) {
  uint32_t u = float_bits(x);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;                 // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;                // rounds to >= 65536: inf
  if (a < 0x38800000u) {                                      // below 2^-14: subnormal or zero
    float v = bits_float(a) * 16777216.0f;                    // in units of 2^-24, exact
    return sign | static_cast<uint16_t>(rintf(v));            // RNE; 1024 encodes 2^-14 exactly
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u);                 // round to nearest even at bit 13
  return sign | static_cast<uint16_t>((r >> 13) - (112u << 10));
}

// ---- fp8 --------------------------------------------------------------------
// Layout of one 8-bit float format.
struct Fp8Format {
  int mbits;      // mantissa bits
  int bias;       // exponent bias
  float max;         // largest finite value
  uint8_t max_code;  // its code
  uint8_t nan;       // code of a positive NaN
};
constexpr Fp8Format kE4M3{3, 7, 448.0f, 0x7e, 0x7f};
constexpr Fp8Format kE5M2{2, 15, 57344.0f, 0x7b, 0x7f};

// Spacing of representable values around |a| (a finite, >= 0) in format f.
HALO_HD float fp8_ulp(float a, Fp8Format f) {
  int e = 1 - f.bias;  // exponent of the smallest normal; subnormals share its spacing
  if (a >= ldexpf(1.0f, e)) {
    int ea;
    frexpf(a, &ea);  // a = m * 2^ea, m in [0.5, 1)
    e = ea - 1;
  }
  return ldexpf(1.0f, e - f.mbits);
}

// Encodes a value that is exactly representable (or is rounded here, to nearest even).
HALO_HD uint8_t fp8_encode(float x, Fp8Format f) {
  uint32_t u = float_bits(x);
  uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  float a = bits_float(u & 0x7fffffffu);
  if (a != a) return sign | f.nan;
  if (a >= f.max) return sign | f.max_code;  // saturate
  int min_exp = 1 - f.bias;
  if (a < ldexpf(1.0f, min_exp)) {  // subnormal range: code = multiple of the smallest step
    float q = rintf(ldexpf(a, f.bias - 1 + f.mbits));
    return sign | static_cast<uint8_t>(q);  // q == 2^mbits encodes the smallest normal
  }
  int ea;
  float m = frexpf(a, &ea);  // a = m * 2^ea, m in [0.5, 1)
  int e = ea - 1;
  float q = rintf((2.0f * m - 1.0f) * static_cast<float>(1 << f.mbits));
  if (q >= static_cast<float>(1 << f.mbits)) {
    q = 0.0f;
    ++e;
  }
  return sign | static_cast<uint8_t>((static_cast<uint32_t>(e + f.bias) << f.mbits) |
                                     static_cast<uint32_t>(q));
}

HALO_HD float fp8_decode(uint8_t c, Fp8Format f) {
  float sign = (c & 0x80) ? -1.0f : 1.0f;
  uint32_t exp = (c & 0x7f) >> f.mbits, man = c & ((1u << f.mbits) - 1);
  if (f.mbits == 3 && (c & 0x7f) == 0x7f) return nanf("");
  if (f.mbits == 2 && exp == 0x1f) return man ? nanf("") : sign * INFINITY;
  if (exp == 0) return sign * ldexpf(static_cast<float>(man), 1 - f.bias - f.mbits);
  return sign * ldexpf(1.0f + static_cast<float>(man) / static_cast<float>(1 << f.mbits),
                       static_cast<int>(exp) - f.bias);
}

HALO_HD uint8_t float_to_e4m3(float x) { return fp8_encode(x, kE4M3); }
HALO_HD uint8_t float_to_e5m2(float x) { return fp8_encode(x, kE5M2); }
HALO_HD float e4m3_to_float(uint8_t c) { return fp8_decode(c, kE4M3); }
HALO_HD float e5m2_to_float(uint8_t c) { return fp8_decode(c, kE5M2); }

// Stochastic rounding to fp8: rounds |x| down or up to its two neighbours with
// probability proportional to closeness; u is uniform in [0, 1).
HALO_HD uint8_t fp8_encode_stochastic(float x, float u, Fp8Format f) {
  float a = fabsf(x);
  if (a != a || a >= f.max) return fp8_encode(x, f);
  float ulp = fp8_ulp(a, f);
  float lo = floorf(a / ulp) * ulp;  // exact: ulp is a power of two
  float r = (u < (a - lo) / ulp) ? lo + ulp : lo;
  return fp8_encode(x < 0 ? -r : r, f);
}

// ---- int8 -------------------------------------------------------------------
HALO_HD int8_t float_to_i8(float x) {
  if (x != x) return 0;
  float r = rintf(x);
  r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
  return static_cast<int8_t>(r);
}

HALO_HD int8_t float_to_i8_stochastic(float x, float u) {
  if (x != x) return 0;
  float r = floorf(x + u);
  r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
  return static_cast<int8_t>(r);
}

}  // namespace halo
