// Unicode for the tokenizers: UTF-8 decoding and encoding, general categories and the
// character classes of the pre-tokenizer regexes, NFC / NFD normalization.
//
// The data follow Hugging Face tokenizers, whose ids halo must reproduce: general
// categories of Unicode 16.0 (Oniguruma 6.9.10 runs its regexes), normalization data
// of Unicode 9.0 (its NFC / NFD); see scripts/gen_unicode_tables.py.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace halo::text {

// General categories, in the order of the generated tables.
// clang-format off
enum class Category : uint8_t {
  Lu, Ll, Lt, Lm, Lo, Mn, Mc, Me, Nd, Nl, No, Pc, Pd, Ps, Pe, Pi, Pf, Po,
  Sm, Sc, Sk, So, Zs, Zl, Zp, Cc, Cf, Cs, Co, Cn
};
// clang-format on

// What a byte that starts no valid UTF-8 sequence decodes to: not a letter, number or
// space (the regexes treat it as punctuation), one byte long.
inline constexpr uint32_t kInvalidCodePoint = 0x110000;

// Decodes the code point starting at s[i] (i < s.size()) into *cp; returns its length
// in bytes, 1 to 4. A byte that starts no valid, shortest-form sequence gives
// kInvalidCodePoint and length 1.
inline int utf8_decode(std::string_view s, size_t i, uint32_t* cp) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const size_t left = s.size() - i;
  const unsigned b0 = p[0];
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  *cp = kInvalidCodePoint;
  if (b0 < 0xC2) return 1;
  if (b0 < 0xE0) {
    if (left < 2 || (p[1] & 0xC0) != 0x80) return 1;
    *cp = ((b0 & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    return 2;
  }
  if (b0 < 0xF0) {
    if (left < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 1;
    const uint32_t c = ((b0 & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    if (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF)) return 1;
    *cp = c;
    return 3;
  }
  if (b0 < 0xF5) {
    if (left < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 1;
    const uint32_t c = ((b0 & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
    if (c < 0x10000 || c > 0x10FFFF) return 1;
    *cp = c;
    return 4;
  }
  return 1;
}

void utf8_append(std::string& out, uint32_t cp);
bool utf8_valid(std::string_view s);
// `bytes` with each invalid sequence replaced by U+FFFD, as Rust's String::from_utf8_lossy
// (one replacement per maximal invalid subpart).
std::string utf8_lossy(std::string_view bytes);

// Per code point: the general category (bits 0-4) and whether NFC may change text
// holding it (bit 5: NFC_Quick_Check not Yes, or a non-zero combining class).
class UnicodeTable {
 public:
  static const UnicodeTable& get();
  uint8_t props(uint32_t cp) const {
    if (cp >= 0x110000) return static_cast<uint8_t>(Category::Cn);
    return blocks_[(static_cast<uint32_t>(index_[cp >> kShift]) << kShift) | (cp & ((1u << kShift) - 1))];
  }
  Category category(uint32_t cp) const { return static_cast<Category>(props(cp) & 0x1F); }
  bool nfc_maybe(uint32_t cp) const { return props(cp) & 0x20; }

 private:
  UnicodeTable();
  static constexpr int kShift = 7;
  uint16_t index_[0x110000 >> kShift];
  std::basic_string<uint8_t> blocks_;
};

inline bool is_letter(Category c) { return c <= Category::Lo; }
inline bool is_number(Category c) { return c >= Category::Nd && c <= Category::No; }
inline bool is_mark(Category c) { return c >= Category::Mn && c <= Category::Me; }
// White_Space: Oniguruma's \s with Unicode, and Rust's char::is_whitespace.
inline bool is_whitespace(uint32_t cp, Category c) {
  return (cp >= 9 && cp <= 13) || cp == 0x85 || c == Category::Zs || c == Category::Zl || c == Category::Zp;
}
// Rust regex's \w (used by added tokens' single_word): letters, marks, decimal and
// letter numbers, connector punctuation, the joiners. (Other_Alphabetic symbols such
// as circled letters are left out.)
inline bool is_word_char(uint32_t cp, Category c) {
  return is_letter(c) || is_mark(c) || c == Category::Nd || c == Category::Nl || c == Category::Pc || cp == 0x200C ||
         cp == 0x200D;
}

uint8_t combining_class(uint32_t cp);

enum class NormalForm { nfc, nfd };
// Normalizes `s` (invalid UTF-8 bytes pass through unchanged). Returns false when
// `s` is already in the form (out untouched), else writes the result to *out.
bool normalize(std::string_view s, NormalForm form, std::string* out);

}  // namespace halo::text
