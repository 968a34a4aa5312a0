#include "text/unicode.h"

#include <algorithm>
#include <map>
#include <vector>

#include "text/unicode_tables.h"

namespace halo::text {

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool utf8_valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    i += utf8_decode(s, i, &cp);
    if (cp == kInvalidCodePoint) return false;
  }
  return true;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  auto at = [&](size_t i) -> unsigned { return i < n ? b[i] : 0; };
  auto cont = [&](size_t i) { return i < n && (b[i] & 0xC0) == 0x80; };
  size_t i = 0;
  while (i < n) {
    const size_t start = i;
    const unsigned c = b[i++];
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      continue;
    }
    // The longest prefix of a valid sequence is one error (Rust's Utf8Chunks).
    bool ok = false;
    if (c >= 0xC2 && c <= 0xDF) {
      if (cont(i)) ++i, ok = true;
    } else if (c >= 0xE0 && c <= 0xEF) {
      const unsigned c1 = at(i);
      const bool second = (c == 0xE0 && c1 >= 0xA0 && c1 <= 0xBF) || (c >= 0xE1 && c <= 0xEC && cont(i)) ||
                          (c == 0xED && c1 >= 0x80 && c1 <= 0x9F) || (c >= 0xEE && cont(i));
      if (second) {
        ++i;
        if (cont(i)) ++i, ok = true;
      }
    } else if (c >= 0xF0 && c <= 0xF4) {
      const unsigned c1 = at(i);
      const bool second = (c == 0xF0 && c1 >= 0x90 && c1 <= 0xBF) || (c >= 0xF1 && c <= 0xF3 && cont(i)) ||
                          (c == 0xF4 && c1 >= 0x80 && c1 <= 0x8F);
      if (second) {
        ++i;
        if (cont(i)) {
          ++i;
          if (cont(i)) ++i, ok = true;
        }
      }
    }
    if (ok) {
      out.append(bytes.substr(start, i - start));
    } else {
      out += "\xEF\xBF\xBD";
    }
  }
  return out;
}

const UnicodeTable& UnicodeTable::get() {
  static const UnicodeTable table;
  return table;
}

UnicodeTable::UnicodeTable() {
  std::vector<uint8_t> flat(0x110000);
  for (size_t r = 0; r < tables::kCategoryRunCount; ++r) {
    const uint32_t first = tables::kCategoryRuns[r] >> 5;
    const uint32_t end = r + 1 < tables::kCategoryRunCount ? tables::kCategoryRuns[r + 1] >> 5 : 0x110000;
    std::fill(flat.begin() + first, flat.begin() + end, static_cast<uint8_t>(tables::kCategoryRuns[r] & 0x1F));
  }
  for (size_t r = 0; r < tables::kNfcMaybeRangeCount; ++r)
    for (uint32_t cp = tables::kNfcMaybeRanges[r][0]; cp <= tables::kNfcMaybeRanges[r][1]; ++cp) flat[cp] |= 0x20;
  // Two levels: equal blocks of 128 code points are stored once.
  std::map<std::basic_string<uint8_t>, uint16_t> seen;
  const size_t block = size_t{1} << kShift;
  for (size_t b = 0; b < (0x110000 >> kShift); ++b) {
    std::basic_string<uint8_t> key(flat.data() + b * block, block);
    auto [it, inserted] = seen.emplace(key, static_cast<uint16_t>(seen.size()));
    if (inserted) blocks_ += key;
    index_[b] = it->second;
  }
}

uint8_t combining_class(uint32_t cp) {
  const uint32_t* runs = tables::kCombiningRuns;
  const uint32_t* it = std::upper_bound(runs, runs + tables::kCombiningRunCount, (cp << 8) | 0xFF);
  return it == runs ? 0 : static_cast<uint8_t>(it[-1] & 0xFF);
}

namespace {

constexpr uint32_t kHangulFirst = 0xAC00, kHangulCount = 11172;
constexpr uint32_t kJamoL = 0x1100, kJamoV = 0x1161, kJamoT = 0x11A7;
constexpr uint32_t kJamoVCount = 21, kJamoTCount = 28;
// Invalid UTF-8 bytes ride through normalization as this flag | the byte.
constexpr uint32_t kRawByte = 0x80000000u;

uint8_t ccc_of(uint32_t cp) { return (cp & kRawByte) ? 0 : combining_class(cp); }

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kHangulFirst && cp < kHangulFirst + kHangulCount) {
    const uint32_t s = cp - kHangulFirst;
    out.push_back(kJamoL + s / (kJamoVCount * kJamoTCount));
    out.push_back(kJamoV + (s % (kJamoVCount * kJamoTCount)) / kJamoTCount);
    if (s % kJamoTCount) out.push_back(kJamoT + s % kJamoTCount);
    return;
  }
  const tables::Decomposition* begin = tables::kDecompositions;
  const tables::Decomposition* end = begin + tables::kDecompositionCount;
  const auto* it =
      std::lower_bound(begin, end, cp, [](const tables::Decomposition& d, uint32_t c) { return d.code_point < c; });
  if (it != end && it->code_point == cp) {
    out.insert(out.end(), tables::kDecompositionData + it->offset,
               tables::kDecompositionData + it->offset + it->length);
  } else {
    out.push_back(cp);
  }
}

// The primary composite of a + b, or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kJamoL && a < kJamoL + 19 && b >= kJamoV && b < kJamoV + kJamoVCount)
    return kHangulFirst + ((a - kJamoL) * kJamoVCount + (b - kJamoV)) * kJamoTCount;
  if (a >= kHangulFirst && a < kHangulFirst + kHangulCount && (a - kHangulFirst) % kJamoTCount == 0 && b > kJamoT &&
      b < kJamoT + kJamoTCount)
    return a + (b - kJamoT);
  const tables::Composition* begin = tables::kCompositions;
  const tables::Composition* end = begin + tables::kCompositionCount;
  const auto* it = std::lower_bound(begin, end, std::pair{a, b}, [](const tables::Composition& c, auto key) {
    return c.first < key.first || (c.first == key.first && c.second < key.second);
  });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

void normalize_code_points(std::string_view s, NormalForm form, std::string& out) {
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    const int len = utf8_decode(s, i, &cp);
    if (cp == kInvalidCodePoint) {
      cps.push_back(kRawByte | static_cast<unsigned char>(s[i]));
    } else {
      decompose(cp, cps);
    }
    i += len;
  }
  // Canonical ordering: a stable sort of each run of non-starters by combining class.
  std::vector<uint8_t> cc(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) cc[i] = ccc_of(cps[i]);
  for (size_t i = 1; i < cps.size(); ++i) {
    for (size_t j = i; j > 0 && cc[j] != 0 && cc[j - 1] > cc[j]; --j) {
      std::swap(cps[j], cps[j - 1]);
      std::swap(cc[j], cc[j - 1]);
    }
  }
  if (form == NormalForm::nfc) {
    // Canonical composition: a character joins the last starter unless blocked.
    size_t n = 0, starter = SIZE_MAX;
    uint8_t last_cc = 0;
    for (size_t i = 0; i < cps.size(); ++i) {
      const uint32_t cp = cps[i];
      const uint8_t c = cc[i];
      if (starter != SIZE_MAX && !(cp & kRawByte) && !(cps[starter] & kRawByte) &&
          (starter == n - 1 || (last_cc != 0 && last_cc < c))) {
        if (const uint32_t composed = compose(cps[starter], cp)) {
          cps[starter] = composed;
          continue;
        }
      }
      if (c == 0) starter = n;
      last_cc = c;
      cps[n++] = cp;
    }
    cps.resize(n);
  }
  for (uint32_t cp : cps) {
    if (cp & kRawByte) {
      out.push_back(static_cast<char>(cp & 0xFF));
    } else {
      utf8_append(out, cp);
    }
  }
}

}  // namespace

bool normalize(std::string_view s, NormalForm form, std::string* out) {
  const UnicodeTable& table = UnicodeTable::get();
  // A character NFC leaves alone and that composes with nothing before it (quick check
  // Yes, combining class 0) starts a stable region: only the stretches from the last
  // such character before a "maybe" one to the next such character are normalized.
  auto maybe = [&](uint32_t cp) {
    return cp != kInvalidCodePoint && (form == NormalForm::nfc ? table.nfc_maybe(cp) : cp >= 0xC0);
  };
  std::string result;
  size_t copied = 0, boundary = 0, i = 0;
  bool changed = false;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      boundary = i++;
      continue;
    }
    uint32_t cp;
    int len = utf8_decode(s, i, &cp);
    if (!maybe(cp)) {
      boundary = i;
      i += len;
      continue;
    }
    size_t end = i + len;  // the stretch runs to the next stable character
    while (end < s.size()) {
      len = utf8_decode(s, end, &cp);
      if (static_cast<unsigned char>(s[end]) < 0x80 || !maybe(cp)) break;
      end += len;
    }
    result.append(s.substr(copied, boundary - copied));
    const size_t at = result.size();
    normalize_code_points(s.substr(boundary, end - boundary), form, result);
    changed = changed || std::string_view(result).substr(at) != s.substr(boundary, end - boundary);
    copied = boundary = i = end;
  }
  if (!changed) return false;
  result.append(s.substr(copied));
  *out = std::move(result);
  return true;
}

}  // namespace halo::text
