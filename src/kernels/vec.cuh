// Device helpers shared by the memory-bound row/elementwise kernels (rmsnorm,
// swiglu, embedding, rope): V consecutive elements of f32 or bf16 moved as
// 16-byte accesses, held as f32 in registers.
//
// V = 8 moves 16 bytes of bf16 or 32 bytes (two 16-byte accesses) of f32 and
// needs the address 16-byte aligned; V = 2 loads two elements in one access
// (aligned to its size); V = 1 moves one element.
// bf16 is written with round-to-nearest-even (as store_float on the host).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "core/dtype.h"

namespace halo::vec {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_f32(float v) {
  if constexpr (sizeof(T) == 4)
    return v;
  else
    return __float2bfloat16_rn(v);
}

// v rounded to T and back (what a store then a load would give).
template <class T>
__device__ __forceinline__ float round_to(float v) {
  return to_f32(from_f32<T>(v));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {  // lo: the first element
  return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}

// One 8- or 16-byte store to global memory (p aligned to the size), written in
// PTX: in large unrolled kernels the compiler has split the C++ vector stores
// (uint2, uint4, float4) into 4-byte ones, so that each 32-byte sector was
// written in parts by several store instructions.
__device__ __forceinline__ void store_global(void* p, uint2 v) {
  asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(__cvta_generic_to_global(p)), "r"(v.x), "r"(v.y) : "memory");
}
__device__ __forceinline__ void store_global(void* p, uint4 v) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(p)), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}
__device__ __forceinline__ void store_global(void* p, float4 v) {
  asm volatile("st.global.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(__cvta_generic_to_global(p)), "f"(v.x), "f"(v.y),
               "f"(v.z), "f"(v.w)
               : "memory");
}

// V elements of T in registers exactly as loaded (bf16 stays packed two per
// word: half the registers of floats); c[j] unpacks element j (j a constant
// after unrolling).
template <class T, int V>
struct Chunk {
  static constexpr int kWords = (V * static_cast<int>(sizeof(T)) + 3) / 4;
  uint32_t w[kWords];
  __device__ __forceinline__ float operator[](int j) const {
    if constexpr (sizeof(T) == 4)
      return __uint_as_float(w[j]);
    else  // little endian: the first element is the low half
      return __uint_as_float(j % 2 ? w[j / 2] & 0xffff0000u : w[j / 2] << 16);
  }
};

template <int V, class T>
__device__ __forceinline__ Chunk<T, V> load_chunk(const T* p) {
  Chunk<T, V> c;
  if constexpr (V == 8) {
#pragma unroll
    for (int k = 0; k < Chunk<T, V>::kWords / 4; ++k) {
      const uint4 a = reinterpret_cast<const uint4*>(p)[k];
      c.w[4 * k] = a.x, c.w[4 * k + 1] = a.y, c.w[4 * k + 2] = a.z, c.w[4 * k + 3] = a.w;
    }
  } else if constexpr (V == 2) {  // one 4-byte (bf16) or 8-byte (f32) load
    if constexpr (sizeof(T) == 4) {
      const uint2 a = *reinterpret_cast<const uint2*>(p);
      c.w[0] = a.x, c.w[1] = a.y;
    } else {
      c.w[0] = *reinterpret_cast<const uint32_t*>(p);
    }
  } else {
    static_assert(V == 1, "V is 1, 2 or 8");
    if constexpr (sizeof(T) == 4)
      c.w[0] = __float_as_uint(p[0]);
    else
      c.w[0] = __bfloat16_as_ushort(p[0]);
  }
  return c;
}

template <int V, class T>
__device__ __forceinline__ void load(const T* p, float (&v)[V]) {
  const Chunk<T, V> c = load_chunk<V>(p);
#pragma unroll
  for (int j = 0; j < V; ++j) v[j] = c[j];
}

template <int V>
__device__ __forceinline__ void store(float* p, const float (&v)[V]) {
  if constexpr (V == 8) {
    store_global(p, make_float4(v[0], v[1], v[2], v[3]));
    store_global(p + 4, make_float4(v[4], v[5], v[6], v[7]));
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = v[j];
  }
}

template <int V>
__device__ __forceinline__ void store(bf16* p, const float (&v)[V]) {
  if constexpr (V == 8) {
    store_global(p, make_uint4(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]), pack_bf16(v[6], v[7])));
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = __float2bfloat16_rn(v[j]);
  }
}

// Sum over the warp (every lane gets it); fixed butterfly order.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// f(Tag<float>{}) or f(Tag<bf16>{}) for an f32 or bf16 dtype (host-side dispatch).
template <class T>
struct Tag {
  using type = T;
};
template <class F>
void with_type(DType t, F&& f) {
  if (t == DType::f32)
    f(Tag<float>{});
  else
    f(Tag<bf16>{});
}

}  // namespace halo::vec
