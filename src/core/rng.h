// Counter-based random numbers (Philox4x32-10): the same numbers on the CPU and
// the GPU for the same (seed, stream, index), whatever the thread layout.
#pragma once
#include <cstdint>

#include "core/numerics.h"

namespace halo {

struct Philox4 {
  uint32_t v[4];
};

HALO_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

HALO_HD Philox4 philox4x32(uint64_t seed, uint64_t c_lo, uint64_t c_hi) {
  uint32_t c0 = static_cast<uint32_t>(c_lo), c1 = static_cast<uint32_t>(c_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(c_hi), c3 = static_cast<uint32_t>(c_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0 = mulhi32(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    uint32_t hi1 = mulhi32(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Uniform float in [0, 1) with 24 random bits, for element `index` of `stream`.
HALO_HD float uniform01(uint64_t seed, uint64_t stream, uint64_t index) {
  return static_cast<float>(philox4x32(seed, index, stream).v[0] >> 8) * 5.9604644775390625e-8f;
}

// Standard normal (Box-Muller on two of the four words).
HALO_HD float normal01(uint64_t seed, uint64_t stream, uint64_t index) {
  Philox4 r = philox4x32(seed, index, stream);
  float u1 = (static_cast<float>(r.v[0] >> 8) + 1.0f) * 5.9604644775390625e-8f;  // (0, 1]
  float u2 = static_cast<float>(r.v[1] >> 8) * 5.9604644775390625e-8f;
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

}  // namespace halo
