#include "io/gguf.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <cmath>
#include <cstring>
#include <system_error>

#include "core/error.h"
#include "io/mapped_file.h"
#include "core/numerics.h"
#include "io/atomic_file.h"

namespace halo {

static_assert(std::endian::native == std::endian::little, "GGUF I/O assumes a little-endian host");

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS

// ---- block decoders -----------------------------------------------------------------------
// Each decodes `nb` consecutive blocks from `b` into `y`. The layouts are
// ggml's (ggml-common.h); a "d" is the block's scale, an "m"/"dmin" its offset.
// The float arithmetic follows ggml's reference dequantizers operation by
// operation (int code converted to float, then scaled), so results are bit-equal.

float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_bits_to_float(h);
}

void dq_f32(const uint8_t* b, float* y, int64_t n) { std::memcpy(y, b, static_cast<size_t>(n) * 4); }
void dq_f16(const uint8_t* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = f16_at(b + 2 * i);
}
void dq_bf16(const uint8_t* b, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, b + 2 * i, 2);
    y[i] = bf16_bits_to_float(h);
  }
}

// Q4_0, 32 elements in 18 bytes: f16 d, then 16 bytes of 4-bit codes q; element
// j < 16 is the low nibble of byte j, element 16 + j its high nibble.
// x = (q - 8) d.
void dq_q4_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 18, y += 32) {
    const float d = f16_at(b);
    const uint8_t* q = b + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>((q[j] & 15) - 8) * d;
      y[j + 16] = static_cast<float>((q[j] >> 4) - 8) * d;
    }
  }
}

// Q4_1, 32 elements in 20 bytes: f16 d, f16 m, 16 bytes of nibbles as Q4_0.
// x = q d + m.
void dq_q4_1(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 20, y += 32) {
    const float d = f16_at(b), m = f16_at(b + 2);
    const uint8_t* q = b + 4;
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>(q[j] & 15) * d + m;
      y[j + 16] = static_cast<float>(q[j] >> 4) * d + m;
    }
  }
}

// The fifth bit of element j of a Q5 block: bit j of the little-endian u32 at p.
uint32_t bits32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Q5_0, 32 elements in 22 bytes: f16 d, u32 of fifth bits (bit j for element j),
// 16 bytes of low nibbles as Q4_0. x = (q - 16) d.
void dq_q5_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 22, y += 32) {
    const float d = f16_at(b);
    const uint32_t hi = bits32(b + 2);
    const uint8_t* q = b + 6;
    for (int j = 0; j < 16; ++j) {
      const int lo = static_cast<int>((q[j] & 15) | (((hi >> j) & 1) << 4));
      const int up = static_cast<int>((q[j] >> 4) | (((hi >> (j + 16)) & 1) << 4));
      y[j] = static_cast<float>(lo - 16) * d;
      y[j + 16] = static_cast<float>(up - 16) * d;
    }
  }
}

// Q5_1, 32 elements in 24 bytes: f16 d, f16 m, u32 fifth bits, 16 bytes of
// low nibbles. x = q d + m.
void dq_q5_1(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 24, y += 32) {
    const float d = f16_at(b), m = f16_at(b + 2);
    const uint32_t hi = bits32(b + 4);
    const uint8_t* q = b + 8;
    for (int j = 0; j < 16; ++j) {
      const uint32_t lo = (q[j] & 15u) | (((hi >> j) & 1u) << 4);
      const uint32_t up = (q[j] >> 4) | (((hi >> (j + 16)) & 1u) << 4);
      y[j] = static_cast<float>(lo) * d + m;
      y[j + 16] = static_cast<float>(up) * d + m;
    }
  }
}

// Q8_0, 32 elements in 34 bytes: f16 d, 32 int8 codes. x = q d.
void dq_q8_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 34, y += 32) {
    const float d = f16_at(b);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
  }
}

// The K-quants: super-blocks of 256 elements made of sub-blocks of 16 or 32,
// each sub-block with its own small integer scale (and min) relative to the
// super-block's f16 d (and dmin).

// Q2_K, 256 elements in 84 bytes: u8 scales[16], u8 qs[64], f16 d, f16 dmin.
// Element 128 h + 32 s + l (h < 2, s < 4, l < 32) has the 2-bit code
// (qs[32 h + l] >> 2 s) & 3 and sub-block k = 8 h + 2 s + l / 16, whose byte
// scales[k] holds the scale (low nibble) and the min (high nibble).
// x = (d sc) q - dmin mn.
void dq_q2_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 84, y += 256) {
    const uint8_t* sc = b;
    const uint8_t* qs = b + 16;
    const float d = f16_at(b + 80), dmin = f16_at(b + 82);
    for (int h = 0; h < 2; ++h)
      for (int s = 0; s < 4; ++s)
        for (int l = 0; l < 32; ++l) {
          const uint8_t k = sc[8 * h + 2 * s + l / 16];
          const float dl = d * static_cast<float>(k & 15), ml = dmin * static_cast<float>(k >> 4);
          const int q = (qs[32 * h + l] >> (2 * s)) & 3;
          y[128 * h + 32 * s + l] = dl * static_cast<float>(q) - ml;
        }
  }
}

// Q3_K, 256 elements in 110 bytes: u8 hmask[32], u8 qs[64], u8 scales[12], f16 d.
// Element 128 h + 32 s + l: low two bits (qs[32 h + l] >> 2 s) & 3 as Q2_K, and
// bit 4 h + s of hmask[l] set means +0, clear means -4 (codes -4..3).
// Sub-block k = 8 h + 2 s + l / 16 has a 6-bit scale: low four bits from
// scales[k] (k < 8) or scales[k - 8] >> 4, high two bits from
// scales[8 + k % 4] >> 2 (k / 4); it is stored plus 32. x = (d (sc - 32)) q.
int q3k_scale(const uint8_t* s, int k) {
  const int lo = k < 8 ? (s[k] & 15) : (s[k - 8] >> 4);
  const int hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
  return (lo | (hi << 4)) - 32;
}
void dq_q3_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 110, y += 256) {
    const uint8_t* hmask = b;
    const uint8_t* qs = b + 32;
    const uint8_t* sc = b + 96;
    const float d = f16_at(b + 108);
    for (int h = 0; h < 2; ++h)
      for (int s = 0; s < 4; ++s)
        for (int l = 0; l < 32; ++l) {
          const float dl = d * static_cast<float>(q3k_scale(sc, 8 * h + 2 * s + l / 16));
          const int low = (qs[32 * h + l] >> (2 * s)) & 3;
          const int q = low - (((hmask[l] >> (4 * h + s)) & 1) ? 0 : 4);
          y[128 * h + 32 * s + l] = dl * static_cast<float>(q);
        }
  }
}

// The 6-bit scale and min of sub-block k < 8 of Q4_K / Q5_K, packed in 12
// bytes: k < 4: low six bits of s[k] and s[k + 4]; k >= 4: the nibbles of
// s[k + 4] (scale low, min high) with the top two bits of s[k - 4] (scale) and
// s[k] (min) above them.
void k4_scale_min(const uint8_t* s, int k, int& sc, int& mn) {
  if (k < 4) {
    sc = s[k] & 63;
    mn = s[k + 4] & 63;
  } else {
    sc = (s[k + 4] & 15) | ((s[k - 4] >> 6) << 4);
    mn = (s[k + 4] >> 4) | ((s[k] >> 6) << 4);
  }
}

// Q4_K, 256 elements in 144 bytes: f16 d, f16 dmin, u8 scales[12], u8 qs[128].
// Four chunks c of 64: element 64 c + l (l < 32) is the low nibble of
// qs[32 c + l] in sub-block 2 c, element 64 c + 32 + l its high nibble in
// sub-block 2 c + 1. x = (d sc) q - dmin mn.
void dq_q4_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 144, y += 256) {
    const float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t* sc = b + 4;
    const uint8_t* qs = b + 16;
    for (int c = 0; c < 4; ++c) {
      int s0, m0, s1, m1;
      k4_scale_min(sc, 2 * c, s0, m0);
      k4_scale_min(sc, 2 * c + 1, s1, m1);
      const float d0 = d * static_cast<float>(s0), n0 = dmin * static_cast<float>(m0);
      const float d1 = d * static_cast<float>(s1), n1 = dmin * static_cast<float>(m1);
      for (int l = 0; l < 32; ++l) {
        y[64 * c + l] = d0 * static_cast<float>(qs[32 * c + l] & 15) - n0;
        y[64 * c + 32 + l] = d1 * static_cast<float>(qs[32 * c + l] >> 4) - n1;
      }
    }
  }
}

// Q5_K, 256 elements in 176 bytes: f16 d, f16 dmin, u8 scales[12], u8 qh[32],
// u8 qs[128]. As Q4_K, plus a fifth bit (+16): bit 2 c of qh[l] for element
// 64 c + l, bit 2 c + 1 for element 64 c + 32 + l.
void dq_q5_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 176, y += 256) {
    const float d = f16_at(b), dmin = f16_at(b + 2);
    const uint8_t* sc = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48;
    for (int c = 0; c < 4; ++c) {
      int s0, m0, s1, m1;
      k4_scale_min(sc, 2 * c, s0, m0);
      k4_scale_min(sc, 2 * c + 1, s1, m1);
      const float d0 = d * static_cast<float>(s0), n0 = dmin * static_cast<float>(m0);
      const float d1 = d * static_cast<float>(s1), n1 = dmin * static_cast<float>(m1);
      for (int l = 0; l < 32; ++l) {
        const int lo = (qs[32 * c + l] & 15) + (((qh[l] >> (2 * c)) & 1) << 4);
        const int up = (qs[32 * c + l] >> 4) + (((qh[l] >> (2 * c + 1)) & 1) << 4);
        y[64 * c + l] = d0 * static_cast<float>(lo) - n0;
        y[64 * c + 32 + l] = d1 * static_cast<float>(up) - n1;
      }
    }
  }
}

// Q6_K, 256 elements in 210 bytes: u8 ql[128], u8 qh[64], i8 scales[16], f16 d.
// Two halves h of 128; with L = ql + 64 h, H = qh + 32 h, for l < 32 and
// r < 4 element 128 h + 32 r + l has the low nibble of L[l + 32 (r % 2)]
// (r < 2) or its high nibble (r >= 2), topped by bits 2 r, 2 r + 1 of H[l];
// sub-block scale scales[8 h + 2 r + l / 16]. x = (d sc) (q - 32).
void dq_q6_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 210, y += 256) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    const float d = f16_at(b + 208);
    for (int h = 0; h < 2; ++h)
      for (int r = 0; r < 4; ++r)
        for (int l = 0; l < 32; ++l) {
          const uint8_t lbyte = ql[64 * h + l + 32 * (r % 2)];
          const int low = r < 2 ? (lbyte & 15) : (lbyte >> 4);
          const int q = (low | (((qh[32 * h + l] >> (2 * r)) & 3) << 4)) - 32;
          y[128 * h + 32 * r + l] = d * static_cast<float>(sc[8 * h + 2 * r + l / 16]) * static_cast<float>(q);
        }
  }
}

// Q8_K, 256 elements in 292 bytes: f32 d, 256 int8 codes, 16 i16 block sums
// (only used by ggml's dot products). x = d q.
void dq_q8_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 292, y += 256) {
    float d;
    std::memcpy(&d, b, 4);
    for (int j = 0; j < 256; ++j) y[j] = d * static_cast<float>(static_cast<int8_t>(b[4 + j]));
  }
}

using Decoder = void (*)(const uint8_t*, float*, int64_t);

struct TypeRow {
  uint32_t id;
  std::string_view name;
  int64_t block;
  size_t bytes;
  Decoder decode;  // null: known, not decoded
};
// Sizes from ggml's block structs (ggml-common.h).
constexpr TypeRow kTypes[] = {
    {0, "F32", 1, 4, dq_f32},        {1, "F16", 1, 2, dq_f16},         {2, "Q4_0", 32, 18, dq_q4_0},
    {3, "Q4_1", 32, 20, dq_q4_1},    {6, "Q5_0", 32, 22, dq_q5_0},     {7, "Q5_1", 32, 24, dq_q5_1},
    {8, "Q8_0", 32, 34, dq_q8_0},    {10, "Q2_K", 256, 84, dq_q2_k},   {11, "Q3_K", 256, 110, dq_q3_k},
    {12, "Q4_K", 256, 144, dq_q4_k}, {13, "Q5_K", 256, 176, dq_q5_k},  {14, "Q6_K", 256, 210, dq_q6_k},
    {15, "Q8_K", 256, 292, dq_q8_k}, {16, "IQ2_XXS", 256, 66, nullptr}, {17, "IQ2_XS", 256, 74, nullptr},
    {18, "IQ3_XXS", 256, 98, nullptr}, {19, "IQ1_S", 256, 50, nullptr}, {20, "IQ4_NL", 32, 18, nullptr},
    {21, "IQ3_S", 256, 110, nullptr}, {22, "IQ2_S", 256, 82, nullptr}, {23, "IQ4_XS", 256, 136, nullptr},
    {24, "I8", 1, 1, nullptr},       {25, "I16", 1, 2, nullptr},       {26, "I32", 1, 4, nullptr},
    {27, "I64", 1, 8, nullptr},      {28, "F64", 1, 8, nullptr},       {29, "IQ1_M", 256, 56, nullptr},
    {30, "BF16", 1, 2, dq_bf16},     {34, "TQ1_0", 256, 54, nullptr},  {35, "TQ2_0", 256, 66, nullptr},
    {39, "MXFP4", 32, 17, nullptr},
};

const TypeRow* type_row(uint32_t id) {
  for (const TypeRow& r : kTypes)
    if (r.id == id) return &r;
  return nullptr;
}

// Blocks decoded per task: ~64K elements, so a thread's scratch stays in cache.
int64_t chunk_blocks(const TypeRow& r) { return std::max<int64_t>(1, 65536 / r.block); }

}  // namespace

std::optional<GgmlTypeInfo> ggml_type_info(uint32_t type) {
  const TypeRow* r = type_row(type);
  if (!r) return std::nullopt;
  return GgmlTypeInfo{r->name, r->block, r->bytes, r->decode != nullptr};
}

std::string ggml_type_name(uint32_t type) {
  const TypeRow* r = type_row(type);
  return r ? std::string(r->name) : "type " + std::to_string(type);
}

std::string ggml_dequantizable_types() {
  std::string out;
  for (const TypeRow& r : kTypes)
    if (r.decode) out += (out.empty() ? "" : ", ") + std::string(r.name);
  return out;
}

void dequantize(GgmlType type, const void* src, float* dst, int64_t n) {
  const TypeRow* r = type_row(static_cast<uint32_t>(type));
  HALO_CHECK(r && r->decode, "dequantize: ", ggml_type_name(static_cast<uint32_t>(type)),
             " is not supported (supported: ", ggml_dequantizable_types(), ")");
  HALO_CHECK(n >= 0 && n % r->block == 0, "dequantize: ", n, " elements of ", r->name,
             " are not a whole number of ", r->block, "-element blocks");
  const int64_t nb = n / r->block, per = chunk_blocks(*r);
  const int64_t chunks = (nb + per - 1) / per;
  const auto* in = static_cast<const uint8_t*>(src);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b0 = c * per, count = std::min(per, nb - b0);
    r->decode(in + b0 * static_cast<int64_t>(r->bytes), dst + b0 * r->block, count);
  }
}

// ---- metadata values ---------------------------------------------------------------------

namespace {

constexpr std::string_view kValueTypeNames[] = {"u8", "i8",     "u16",   "i16", "u32", "i32", "f32",
                                                "bool", "string", "array", "u64", "i64", "f64"};

bool valid_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::f64); }

// Bytes of one element of a fixed-size type; 0 for string and array.
uint64_t value_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::u8: case GgufValueType::i8: case GgufValueType::boolean: return 1;
    case GgufValueType::u16: case GgufValueType::i16: return 2;
    case GgufValueType::u32: case GgufValueType::i32: case GgufValueType::f32: return 4;
    case GgufValueType::u64: case GgufValueType::i64: case GgufValueType::f64: return 8;
    default: return 0;
  }
}

bool is_integer(GgufValueType t) {
  return t != GgufValueType::f32 && t != GgufValueType::f64 && t != GgufValueType::boolean &&
         t != GgufValueType::string && t != GgufValueType::array;
}
bool is_real(GgufValueType t) { return t == GgufValueType::f32 || t == GgufValueType::f64; }

// An f32 as the decimal its writer most likely meant: the shortest one that
// reads back as the same f32.
double f32_as_written(float f) {
  if (!std::isfinite(f)) return f;
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, f);
  double v = f;
  std::from_chars(buf, r.ptr, v);
  return v;
}

}  // namespace

std::string gguf_value_type_name(GgufValueType t) {
  const auto i = static_cast<uint32_t>(t);
  return valid_value_type(i) ? std::string(kValueTypeNames[i]) : "type " + std::to_string(i);
}

size_t GgufValue::size() const {
  if (!is_array()) return 1;
  if (elem == GgufValueType::string) return strings.size();
  return is_real(elem) ? floats.size() : ints.size();
}

GgufValue GgufValue::integer(GgufValueType t, int64_t v) {
  HALO_CHECK(is_integer(t), "GgufValue::integer: ", gguf_value_type_name(t), " is not an integer type");
  GgufValue out;
  out.type = t;
  out.ints = {v};
  return out;
}
GgufValue GgufValue::real(GgufValueType t, double v) {
  HALO_CHECK(is_real(t), "GgufValue::real: ", gguf_value_type_name(t), " is not f32 or f64");
  GgufValue out;
  out.type = t;
  out.floats = {t == GgufValueType::f32 ? f32_as_written(static_cast<float>(v)) : v};
  return out;
}
GgufValue GgufValue::boolean(bool v) {
  GgufValue out;
  out.type = GgufValueType::boolean;
  out.ints = {v ? 1 : 0};
  return out;
}
GgufValue GgufValue::string(std::string v) {
  GgufValue out;
  out.type = GgufValueType::string;
  out.strings = {std::move(v)};
  return out;
}
GgufValue GgufValue::integers(GgufValueType elem, std::vector<int64_t> v) {
  HALO_CHECK(is_integer(elem) || elem == GgufValueType::boolean, "GgufValue::integers: ",
             gguf_value_type_name(elem), " is not an integer type");
  GgufValue out;
  out.type = GgufValueType::array;
  out.elem = elem;
  out.ints = std::move(v);
  return out;
}
GgufValue GgufValue::reals(GgufValueType elem, std::vector<double> v) {
  HALO_CHECK(is_real(elem), "GgufValue::reals: ", gguf_value_type_name(elem), " is not f32 or f64");
  GgufValue out;
  out.type = GgufValueType::array;
  out.elem = elem;
  if (elem == GgufValueType::f32)
    for (double& x : v) x = f32_as_written(static_cast<float>(x));
  out.floats = std::move(v);
  return out;
}
GgufValue GgufValue::strings_of(std::vector<std::string> v) {
  GgufValue out;
  out.type = GgufValueType::array;
  out.elem = GgufValueType::string;
  out.strings = std::move(v);
  return out;
}

// ---- reading -----------------------------------------------------------------------------

struct GgufReader::Mapping {
  const std::byte* base = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (base) ::munmap(const_cast<std::byte*>(base), size);
  }
};

namespace {

// Reads the header front to back; every read is bounds-checked, and a failure
// names the file, what was being read (`what()`, built only on failure) and
// the offset.
class Cursor {
 public:
  Cursor(const std::string& path, const std::byte* base, uint64_t size) : path_(path), base_(base), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  template <class What>
  void need(uint64_t n, const What& what) const {
    if (n > left())
      HALO_FAIL(path_, ": ", what(), ": needs ", n, " bytes at offset ", pos_, " but the file has ", left(),
                " left (truncated?)");
  }
  template <class T, class What>
  T get(const What& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  template <class What>
  std::string str(const What& what) {
    const uint64_t n = get<uint64_t>(what);
    need(n, [&] { return what() + " (a string of " + std::to_string(n) + " bytes)"; });
    std::string s(reinterpret_cast<const char*>(base_ + pos_), static_cast<size_t>(n));
    pos_ += n;
    return s;
  }

 private:
  const std::string& path_;
  const std::byte* base_;
  uint64_t size_, pos_ = 0;
};

template <class What>
void read_element(Cursor& c, GgufValueType t, GgufValue& v, const What& what, const std::string& path) {
  switch (t) {
    case GgufValueType::u8: v.ints.push_back(c.get<uint8_t>(what)); break;
    case GgufValueType::i8: v.ints.push_back(c.get<int8_t>(what)); break;
    case GgufValueType::u16: v.ints.push_back(c.get<uint16_t>(what)); break;
    case GgufValueType::i16: v.ints.push_back(c.get<int16_t>(what)); break;
    case GgufValueType::u32: v.ints.push_back(c.get<uint32_t>(what)); break;
    case GgufValueType::i32: v.ints.push_back(c.get<int32_t>(what)); break;
    case GgufValueType::u64: v.ints.push_back(static_cast<int64_t>(c.get<uint64_t>(what))); break;
    case GgufValueType::i64: v.ints.push_back(c.get<int64_t>(what)); break;
    case GgufValueType::f32: v.floats.push_back(f32_as_written(c.get<float>(what))); break;
    case GgufValueType::f64: v.floats.push_back(c.get<double>(what)); break;
    case GgufValueType::boolean: {
      const uint8_t b = c.get<uint8_t>(what);
      HALO_CHECK(b <= 1, path, ": ", what(), ": bool value ", int{b}, " is neither 0 nor 1");
      v.ints.push_back(b);
      break;
    }
    case GgufValueType::string: v.strings.push_back(c.str(what)); break;
    case GgufValueType::array: HALO_FAIL(path, ": ", what(), ": nested array (unreachable)");
  }
}

GgufValue read_value(Cursor& c, const std::string& path, const std::string& key) {
  const auto what = [&] { return "metadata key '" + key + "'"; };
  const uint32_t t = c.get<uint32_t>([&] { return what() + " value type"; });
  HALO_CHECK(valid_value_type(t), path, ": ", what(), ": unknown value type ", t, " (0..12 are defined)");
  GgufValue v;
  v.type = static_cast<GgufValueType>(t);
  if (v.type != GgufValueType::array) {
    read_element(c, v.type, v, what, path);
    return v;
  }
  const uint32_t et = c.get<uint32_t>([&] { return what() + " array element type"; });
  HALO_CHECK(valid_value_type(et), path, ": ", what(), ": array of unknown value type ", et);
  v.elem = static_cast<GgufValueType>(et);
  HALO_CHECK(v.elem != GgufValueType::array, path, ": ", what(), ": arrays of arrays are not supported");
  const uint64_t n = c.get<uint64_t>([&] { return what() + " array length"; });
  // Every element takes at least its fixed size (a string: its 8-byte length),
  // so a count the rest of the file cannot hold is refused before allocating.
  const uint64_t min_size = v.elem == GgufValueType::string ? 8 : value_size(v.elem);
  HALO_CHECK(n <= c.left() / min_size, path, ": ", what(), ": array of ", n, " ", gguf_value_type_name(v.elem),
             " cannot fit in the ", c.left(), " bytes left in the file (truncated or corrupt)");
  if (v.elem == GgufValueType::string)
    v.strings.reserve(n);
  else if (is_real(v.elem))
    v.floats.reserve(n);
  else
    v.ints.reserve(n);
  for (uint64_t i = 0; i < n; ++i)
    read_element(c, v.elem, v, [&] { return what() + " element " + std::to_string(i); }, path);
  return v;
}

}  // namespace

GgufReader::~GgufReader() = default;
GgufReader::GgufReader(GgufReader&&) noexcept = default;
GgufReader& GgufReader::operator=(GgufReader&&) noexcept = default;

GgufReader::GgufReader(const std::string& path) : path_(path), map_(std::make_unique<Mapping>()) {
  const MappedBytes mapped = map_file_readonly(path, 24, "a GGUF header (24 bytes; truncated?)");
  map_->base = mapped.base;
  map_->size = mapped.size;
  const uint64_t size = mapped.size;

  Cursor c(path, map_->base, size);
  const uint32_t magic = c.get<uint32_t>([] { return std::string("magic"); });
  if (magic != kMagic) {
    char m[5] = {};
    std::memcpy(m, &magic, 4);
    for (char& ch : m)
      if (ch && (ch < 32 || ch > 126)) ch = '?';
    HALO_FAIL(path, ": not a GGUF file (magic '", m, "', expected 'GGUF')");
  }
  version_ = c.get<uint32_t>([] { return std::string("version"); });
  HALO_CHECK(version_ != 1, path, ": GGUF version 1 is not supported (versions 2 and 3 are; re-convert the model)");
  HALO_CHECK(!((version_ & 0xffff) == 0 && (__builtin_bswap32(version_) == 2 || __builtin_bswap32(version_) == 3)),
             path, ": big-endian GGUF files are not supported");
  HALO_CHECK(version_ == 2 || version_ == 3, path, ": GGUF version ", version_,
             " is not supported (versions 2 and 3 are)");
  const uint64_t n_tensors = c.get<uint64_t>([] { return std::string("tensor count"); });
  const uint64_t n_kv = c.get<uint64_t>([] { return std::string("metadata count"); });
  // A key/value takes at least 13 bytes (8-byte key length, 4-byte type, a
  // u8), a tensor info at least 24 (name length, n_dims, type, offset).
  HALO_CHECK(n_kv <= c.left() / 13, path, ": metadata count ", n_kv, " cannot fit in the file's ", size,
             " bytes (corrupt header)");
  HALO_CHECK(n_tensors <= c.left() / 24, path, ": tensor count ", n_tensors, " cannot fit in the file's ", size,
             " bytes (corrupt header)");

  kv_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.str([&] { return "metadata key " + std::to_string(i); });
    HALO_CHECK(!key.empty(), path, ": metadata key ", i, " is empty");
    HALO_CHECK(!kv_index_.count(key), path, ": metadata key '", key, "' appears twice");
    GgufValue v = read_value(c, path, key);
    kv_index_.emplace(key, kv_.size());
    kv_.emplace_back(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    HALO_CHECK(!a->is_array() && is_integer(a->type), path, ": metadata key 'general.alignment' must be a u32, got ",
               gguf_value_type_name(a->type));
    const int64_t al = a->ints[0];
    HALO_CHECK(al > 0 && al <= (int64_t{1} << 30) && std::has_single_bit(static_cast<uint64_t>(al)), path,
               ": metadata key 'general.alignment' is ", al, ", not a power of two up to 2^30");
    alignment_ = static_cast<uint64_t>(al);
  } else {
    alignment_ = kDefaultAlignment;
  }

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.str([&] { return "tensor info " + std::to_string(i) + " name"; });
    const auto what = [&] { return "tensor '" + t.name + "'"; };
    HALO_CHECK(!t.name.empty(), path, ": tensor info ", i, " has an empty name");
    HALO_CHECK(!index_.count(t.name), path, ": tensor '", t.name, "' appears twice");
    const uint32_t n_dims = c.get<uint32_t>([&] { return what() + " n_dims"; });
    HALO_CHECK(n_dims <= kMaxDims, path, ": tensor '", t.name, "': n_dims ", n_dims, " is above ggml's ",
               kMaxDims);
    uint64_t numel = 1;
    bool overflow = false;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t n = c.get<uint64_t>([&] { return what() + " dimension " + std::to_string(d); });
      HALO_CHECK(n <= uint64_t{INT64_MAX}, path, ": tensor '", t.name, "': dimension ", d, " is ", n,
                 ", above 2^63");
      t.ne.push_back(static_cast<int64_t>(n));
      overflow |= __builtin_mul_overflow(numel, n, &numel);
    }
    HALO_CHECK(!overflow && numel <= uint64_t{INT64_MAX}, path, ": tensor '", t.name,
               "': element count overflows (dimensions ", shape_str(t.ne), ")");
    t.numel = static_cast<int64_t>(numel);
    t.shape.assign(t.ne.rbegin(), t.ne.rend());
    t.type = c.get<uint32_t>([&] { return what() + " type"; });
    t.offset = c.get<uint64_t>([&] { return what() + " offset"; });
    index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t header_end = c.pos();
  data_offset_ = (header_end + alignment_ - 1) / alignment_ * alignment_;  // header_end <= size: no overflow
  HALO_CHECK(tensors_.empty() || data_offset_ <= size, path, ": data section would start at ", data_offset_,
             ", past the end of the file (", size, " bytes; truncated?)");
  const uint64_t data_size = data_offset_ <= size ? size - data_offset_ : 0;
  for (GgufTensorInfo& t : tensors_) {
    const auto info = ggml_type_info(t.type);
    HALO_CHECK(info, path, ": tensor '", t.name, "' has unknown ggml type ", t.type);
    const int64_t row = t.ne.empty() ? 1 : t.ne[0];
    HALO_CHECK(row % info->block == 0, path, ": tensor '", t.name, "': ", info->name, " stores rows in blocks of ",
               info->block, " but its first dimension is ", row);
    uint64_t nbytes = 0;
    HALO_CHECK(!__builtin_mul_overflow(static_cast<uint64_t>(t.numel / info->block), uint64_t{info->bytes}, &nbytes),
               path, ": tensor '", t.name, "': byte size overflows");
    HALO_CHECK(t.offset % alignment_ == 0, path, ": tensor '", t.name, "': offset ", t.offset,
               " is not a multiple of the alignment ", alignment_);
    HALO_CHECK(t.offset <= data_size && nbytes <= data_size - t.offset, path, ": tensor '", t.name, "' (",
               info->name, shape_str(t.shape), ", ", nbytes, " bytes at data offset ", t.offset,
               ") runs past the end of the file (data section of ", data_size, " bytes; truncated?)");
    t.nbytes = static_cast<size_t>(nbytes);
    t.data = map_->base + data_offset_ + t.offset;
  }

  // No two tensors may share bytes.
  std::vector<const GgufTensorInfo*> by_start;
  for (const GgufTensorInfo& t : tensors_)
    if (t.nbytes) by_start.push_back(&t);
  std::sort(by_start.begin(), by_start.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_start.size(); ++i) {
    const GgufTensorInfo &prev = *by_start[i - 1], &cur = *by_start[i];
    HALO_CHECK(cur.offset >= prev.offset + prev.nbytes, path, ": tensor '", cur.name, "' (data offset ",
               cur.offset, ") overlaps tensor '", prev.name, "' (data offsets [", prev.offset, ", ",
               prev.offset + prev.nbytes, "))");
  }
}

const GgufValue* GgufReader::find(const std::string& key) const {
  const auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {
[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const char* expected,
                             const GgufValue& v) {
  const std::string got =
      v.is_array() ? "array of " + gguf_value_type_name(v.elem) : gguf_value_type_name(v.type);
  HALO_FAIL(path, ": metadata key '", key, "' must be ", expected, ", got ", got);
}
}  // namespace

std::optional<int64_t> GgufReader::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_array() || !is_integer(v->type)) wrong_type(path_, key, "an integer", *v);
  HALO_CHECK(v->type != GgufValueType::u64 || v->ints[0] >= 0, path_, ": metadata key '", key,
             "' is above 2^63");
  return v->ints[0];
}

std::optional<double> GgufReader::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array() && is_real(v->type)) return v->floats[0];
  if (!v->is_array() && is_integer(v->type)) return static_cast<double>(*get_int(key));
  wrong_type(path_, key, "a number", *v);
}

std::optional<bool> GgufReader::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::boolean) wrong_type(path_, key, "a bool", *v);
  return v->ints[0] != 0;
}

std::optional<std::string> GgufReader::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::string) wrong_type(path_, key, "a string", *v);
  return v->strings[0];
}

const std::vector<std::string>* GgufReader::get_strings(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return nullptr;
  if (!v->is_array() || v->elem != GgufValueType::string) wrong_type(path_, key, "an array of strings", *v);
  return &v->strings;
}

const std::vector<int64_t>* GgufReader::get_ints(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return nullptr;
  if (!v->is_array() || !is_integer(v->elem)) wrong_type(path_, key, "an array of integers", *v);
  return &v->ints;
}

const GgufTensorInfo& GgufReader::tensor(const std::string& name) const {
  const auto it = index_.find(name);
  HALO_CHECK(it != index_.end(), path_, ": no tensor '", name, "' (", tensors_.size(), " tensors)");
  return tensors_[it->second];
}

Tensor GgufReader::read(const std::string& name, DType dtype) const {
  const GgufTensorInfo& t = tensor(name);
  const TypeRow* r = type_row(t.type);
  HALO_CHECK(r && r->decode, path_, ": tensor '", name, "' has type ", ggml_type_name(t.type),
             ", which cannot be decoded (supported: ", ggml_dequantizable_types(), ")");
  HALO_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::f16, path_, ": tensor '", name,
             "': cannot decode to ", dtype_name(dtype), " (f32, bf16 or f16)");
  Tensor out = Tensor::empty(t.shape, dtype);
  const auto* src = reinterpret_cast<const uint8_t*>(t.data);
  if (dtype == DType::f32) {
    dequantize(static_cast<GgmlType>(t.type), src, out.data_as<float>(), t.numel);
    return out;
  }
  // Through f32, a chunk of blocks per task.
  const int64_t nb = t.numel / r->block, per = chunk_blocks(*r);
  const int64_t chunks = (nb + per - 1) / per;
  void* dst = out.data();
#pragma omp parallel if (chunks > 1)
  {
    std::vector<float> buf(static_cast<size_t>(per * r->block));
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t b0 = c * per, count = std::min(per, nb - b0);
      r->decode(src + b0 * static_cast<int64_t>(r->bytes), buf.data(), count);
      const int64_t e0 = b0 * r->block;
      for (int64_t i = 0; i < count * r->block; ++i) store_float(dst, dtype, e0 + i, buf[static_cast<size_t>(i)]);
    }
  }
  return out;
}

// ---- writing -----------------------------------------------------------------------------

namespace {

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_str(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_element(std::string& out, GgufValueType t, const GgufValue& v, size_t i) {
  switch (t) {
    case GgufValueType::u8: put<uint8_t>(out, static_cast<uint8_t>(v.ints.at(i))); break;
    case GgufValueType::i8: put<int8_t>(out, static_cast<int8_t>(v.ints.at(i))); break;
    case GgufValueType::u16: put<uint16_t>(out, static_cast<uint16_t>(v.ints.at(i))); break;
    case GgufValueType::i16: put<int16_t>(out, static_cast<int16_t>(v.ints.at(i))); break;
    case GgufValueType::u32: put<uint32_t>(out, static_cast<uint32_t>(v.ints.at(i))); break;
    case GgufValueType::i32: put<int32_t>(out, static_cast<int32_t>(v.ints.at(i))); break;
    case GgufValueType::u64: put<uint64_t>(out, static_cast<uint64_t>(v.ints.at(i))); break;
    case GgufValueType::i64: put<int64_t>(out, v.ints.at(i)); break;
    case GgufValueType::boolean: put<uint8_t>(out, v.ints.at(i) ? 1 : 0); break;
    case GgufValueType::f32: put<float>(out, static_cast<float>(v.floats.at(i))); break;
    case GgufValueType::f64: put<double>(out, v.floats.at(i)); break;
    case GgufValueType::string: put_str(out, v.strings.at(i)); break;
    case GgufValueType::array: HALO_FAIL("GgufWriter: arrays of arrays are not supported");
  }
}

}  // namespace

void GgufWriter::set(const std::string& key, GgufValue value) {
  for (auto& [k, v] : kv_)
    if (k == key) {
      v = std::move(value);
      return;
    }
  kv_.emplace_back(key, std::move(value));
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, std::vector<int64_t> ne, std::string bytes) {
  const auto info = ggml_type_info(static_cast<uint32_t>(type));
  HALO_CHECK(info, "GgufWriter: tensor '", name, "': unknown type ", static_cast<uint32_t>(type));
  int64_t numel = 1;
  for (int64_t d : ne) numel *= d;
  HALO_CHECK((ne.empty() ? 1 : ne[0]) % info->block == 0, "GgufWriter: tensor '", name, "': first dimension ",
             ne.empty() ? 1 : ne[0], " is not a multiple of ", info->name, "'s block of ", info->block);
  HALO_CHECK(bytes.size() == static_cast<size_t>(numel / info->block) * info->bytes, "GgufWriter: tensor '", name,
             "': ", bytes.size(), " bytes, but ", info->name, shape_str(ne), " needs ",
             static_cast<size_t>(numel / info->block) * info->bytes);
  tensors_.push_back({name, type, std::move(ne), std::move(bytes)});
}

void GgufWriter::add_tensor(const std::string& name, const Tensor& t) {
  GgmlType type;
  switch (t.dtype()) {
    case DType::f32: type = GgmlType::F32; break;
    case DType::f16: type = GgmlType::F16; break;
    case DType::bf16: type = GgmlType::BF16; break;
    default: HALO_FAIL("GgufWriter: tensor '", name, "': dtype ", dtype_name(t.dtype()), " has no GGUF type here");
  }
  const Tensor h = t.to(Device::cpu);
  add_tensor(name, type, std::vector<int64_t>(t.shape().rbegin(), t.shape().rend()),
             std::string(static_cast<const char*>(h.data()), h.nbytes()));
}

std::string GgufWriter::bytes(uint32_t version) const {
  HALO_CHECK(version == 2 || version == 3, "GgufWriter: version ", version, " (2 or 3)");
  uint64_t alignment = kDefaultAlignment;
  for (const auto& [k, v] : kv_)
    if (k == "general.alignment" && !v.ints.empty()) alignment = static_cast<uint64_t>(v.ints[0]);
  HALO_CHECK(alignment > 0, "GgufWriter: general.alignment must be positive");
  const auto pad = [&](std::string& s) { s.append((alignment - s.size() % alignment) % alignment, '\0'); };

  std::string out;
  put<uint32_t>(out, kMagic);
  put<uint32_t>(out, version);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kv_.size());
  for (const auto& [k, v] : kv_) {
    put_str(out, k);
    put<uint32_t>(out, static_cast<uint32_t>(v.type));
    if (v.is_array()) {
      put<uint32_t>(out, static_cast<uint32_t>(v.elem));
      put<uint64_t>(out, v.size());
      for (size_t i = 0; i < v.size(); ++i) put_element(out, v.elem, v, i);
    } else {
      put_element(out, v.type, v, 0);
    }
  }
  uint64_t offset = 0;
  for (const Entry& e : tensors_) {
    put_str(out, e.name);
    put<uint32_t>(out, static_cast<uint32_t>(e.ne.size()));
    for (int64_t d : e.ne) put<uint64_t>(out, static_cast<uint64_t>(d));
    put<uint32_t>(out, static_cast<uint32_t>(e.type));
    put<uint64_t>(out, offset);
    offset += (e.data.size() + alignment - 1) / alignment * alignment;
  }
  pad(out);
  for (const Entry& e : tensors_) {
    out += e.data;
    pad(out);
  }
  return out;
}

void GgufWriter::write(const std::string& path, uint32_t version) const {
  write_file_atomic(path, bytes(version));
}

}  // namespace halo
