#include "text/pretokenize.h"

#include <algorithm>

#include "core/error.h"
#include "text/unicode.h"

namespace halo::text {

namespace {

constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The classes the patterns test: letter, number, white space, or none of them ("other").
enum : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

struct AsciiClasses {
  uint8_t cls[128];
  constexpr AsciiClasses() : cls() {
    for (int c = 0; c < 128; ++c) {
      cls[c] = ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) ? kLetter
               : (c >= '0' && c <= '9')                           ? kNumber
               : ((c >= 9 && c <= 13) || c == ' ')                ? kSpace
                                                                  : kOther;
    }
  }
};
constexpr AsciiClasses kAscii;

// A scanner over one text: the class and length of the code point at a position.
class Scanner {
 public:
  explicit Scanner(std::string_view s) : s_(s), table_(UnicodeTable::get()) {}
  size_t size() const { return s_.size(); }
  // Class of the code point at i (i < size); *len receives its byte length.
  uint8_t cls(size_t i, int* len, uint32_t* cp = nullptr) const {
    const unsigned char b = static_cast<unsigned char>(s_[i]);
    if (b < 0x80) {
      *len = 1;
      if (cp) *cp = b;
      return kAscii.cls[b];
    }
    uint32_t c;
    *len = utf8_decode(s_, i, &c);
    if (cp) *cp = c;
    const Category cat = table_.category(c);
    if (is_letter(cat)) return kLetter;
    if (is_number(cat)) return kNumber;
    if (is_whitespace(c, cat)) return kSpace;
    return kOther;
  }
  // End of the run of class `c` starting at i.
  size_t run_end(size_t i, uint8_t c) const {
    int len;
    while (i < s_.size() && cls(i, &len) == c) i += len;
    return i;
  }
  unsigned char byte(size_t i) const { return i < s_.size() ? static_cast<unsigned char>(s_[i]) : 0; }

 private:
  std::string_view s_;
  const UnicodeTable& table_;
};

// 's 't 're 've 'm 'll 'd at pos (s[pos] == '\''), case-insensitively when `fold`
// (Oniguruma's (?i) also takes U+017F LATIN SMALL LETTER LONG S for s).
size_t contraction(const Scanner& sc, std::string_view s, size_t pos, bool fold) {
  auto letter = [&](size_t i, int* len) -> char {
    if (i >= s.size()) return 0;
    const unsigned char b = static_cast<unsigned char>(s[i]);
    *len = 1;
    if (fold && b == 0xC5 && sc.byte(i + 1) == 0xBF) {
      *len = 2;
      return 's';
    }
    if (fold && b >= 'A' && b <= 'Z') return static_cast<char>(b - 'A' + 'a');
    return static_cast<char>(b);
  };
  int l1 = 0, l2 = 0;
  const char c1 = letter(pos + 1, &l1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 1 + l1;
  if (c1 == 'r' || c1 == 'v' || c1 == 'l') {
    const char c2 = letter(pos + 1 + l1, &l2);
    if ((c1 != 'l' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 1 + l1 + l2;
  }
  return 0;
}

// \s+(?!\S)|\s+ (and \s*[\r\n]+ first when `newlines`) at a white-space position.
size_t whitespace(const Scanner& sc, size_t pos, bool newlines) {
  size_t i = pos, last = pos, after_newline = 0;
  int len;
  while (i < sc.size() && sc.cls(i, &len) == kSpace) {
    last = i;
    i += len;
    if (sc.byte(last) == '\r' || sc.byte(last) == '\n') after_newline = i;
  }
  if (newlines && after_newline) return after_newline - pos;  // \s*[\r\n]+
  if (i == sc.size() || last == pos) return i - pos;          // \s+(?!\S) to the end, or \s+
  return last - pos;                                          // \s+(?!\S): all but the last
}

size_t gpt2_match(const Scanner& sc, std::string_view s, size_t pos) {
  if (s[pos] == '\'') {
    if (const size_t n = contraction(sc, s, pos, false)) return n;
  }
  int len;
  uint8_t c = sc.cls(pos, &len);
  size_t i = pos;
  if (s[pos] == ' ' && pos + 1 < s.size()) {  // ' ?' before a letter, number or other
    int len1;
    const uint8_t c1 = sc.cls(pos + 1, &len1);
    if (c1 != kSpace) {
      i = pos + 1;
      c = c1;
    }
  }
  if (c != kSpace) return sc.run_end(i, c) - pos;
  return whitespace(sc, pos, false);
}

size_t llama3_match(const Scanner& sc, std::string_view s, size_t pos, int max_digits) {
  if (s[pos] == '\'') {
    if (const size_t n = contraction(sc, s, pos, true)) return n;
  }
  int len0;
  const uint8_t c0 = sc.cls(pos, &len0);
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c0 == kLetter) return sc.run_end(pos, kLetter) - pos;
  const bool newline = s[pos] == '\r' || s[pos] == '\n';
  if (c0 != kNumber && !newline && pos + len0 < s.size()) {
    int len1;
    if (sc.cls(pos + len0, &len1) == kLetter) return sc.run_end(pos + len0, kLetter) - pos;
  }
  // \p{N}{1,max}
  if (c0 == kNumber) {
    size_t i = pos + len0;
    int len;
    for (int n = 1; n < max_digits && i < s.size() && sc.cls(i, &len) == kNumber; ++n) i += len;
    return i - pos;
  }
  // ' '?[^\s\p{L}\p{N}]+[\r\n]*
  size_t i = pos;
  uint8_t c = c0;
  if (s[pos] == ' ' && pos + 1 < s.size()) {
    int len1;
    if (sc.cls(pos + 1, &len1) == kOther) {
      i = pos + 1;
      c = kOther;
    }
  }
  if (c == kOther) {
    size_t end = sc.run_end(i, kOther);
    while (end < s.size() && (s[end] == '\r' || s[end] == '\n')) ++end;
    return end - pos;
  }
  return whitespace(sc, pos, true);
}

size_t match_one(const Scanner& sc, SplitPattern pattern, std::string_view s, size_t pos) {
  switch (pattern) {
    case SplitPattern::gpt2:
      return gpt2_match(sc, s, pos);
    case SplitPattern::llama3:
      return llama3_match(sc, s, pos, 3);
    case SplitPattern::qwen2:
      return llama3_match(sc, s, pos, 1);
  }
  return 1;
}

// Matches (or not) covering a piece: [begin, end) and whether it matched.
struct Match {
  uint32_t begin, end;
  bool matched;
};

void find_regex(SplitPattern pattern, std::string_view text, uint32_t begin, uint32_t end, std::vector<Match>& out) {
  const std::string_view s = text.substr(0, end);
  const Scanner sc(s);
  for (uint32_t pos = begin; pos < end;) {
    const auto n = static_cast<uint32_t>(match_one(sc, pattern, s, pos));
    out.push_back({pos, pos + n, true});
    pos += n;
  }
}

void find_string(std::string_view literal, std::string_view text, uint32_t begin, uint32_t end,
                 std::vector<Match>& out) {
  const std::string_view s = text.substr(begin, end - begin);
  uint32_t prev = 0;
  if (!literal.empty()) {
    for (size_t at = s.find(literal); at != std::string_view::npos; at = s.find(literal, at + literal.size())) {
      if (prev < at) out.push_back({begin + prev, begin + static_cast<uint32_t>(at), false});
      out.push_back({begin + static_cast<uint32_t>(at), begin + static_cast<uint32_t>(at + literal.size()), true});
      prev = static_cast<uint32_t>(at + literal.size());
    }
  }
  if (prev < s.size()) out.push_back({begin + prev, end, false});
}

void find_digits(std::string_view text, uint32_t begin, uint32_t end, std::vector<Match>& out) {
  const UnicodeTable& table = UnicodeTable::get();
  uint32_t prev = begin;
  for (uint32_t i = begin; i < end;) {
    uint32_t cp;
    const int len = utf8_decode(text, i, &cp);
    if (is_number(table.category(cp))) {
      if (prev < i) out.push_back({prev, i, false});
      out.push_back({i, i + len, true});
      prev = i + len;
    }
    i += len;
  }
  if (prev < end) out.push_back({prev, end, false});
}

// Turns the matches of one piece into pieces, as Hugging Face's NormalizedString::split.
void apply_behavior(std::vector<Match>& matches, SplitBehavior behavior, bool invert, bool at_start,
                    uint32_t piece_begin, std::vector<Piece>& out) {
  if (invert)
    for (Match& m : matches) m.matched = !m.matched;
  auto emit = [&](uint32_t b, uint32_t e) {
    if (b < e) out.push_back({b, e, at_start && b == piece_begin});
  };
  switch (behavior) {
    case SplitBehavior::isolated:
      for (const Match& m : matches) emit(m.begin, m.end);
      break;
    case SplitBehavior::removed:
      for (const Match& m : matches)
        if (!m.matched) emit(m.begin, m.end);
      break;
    case SplitBehavior::contiguous: {
      size_t i = 0;
      while (i < matches.size()) {
        size_t j = i + 1;
        while (j < matches.size() && matches[j].matched == matches[i].matched) ++j;
        emit(matches[i].begin, matches[j - 1].end);
        i = j;
      }
      break;
    }
    case SplitBehavior::merged_with_previous: {
      std::vector<Match> merged;
      bool previous_match = false;
      for (const Match& m : matches) {
        if (m.matched && !previous_match && !merged.empty()) {
          merged.back().end = m.end;
        } else {
          merged.push_back(m);
        }
        previous_match = m.matched;
      }
      for (const Match& m : merged) emit(m.begin, m.end);
      break;
    }
    case SplitBehavior::merged_with_next: {
      std::vector<Match> merged;
      bool previous_match = false;
      for (size_t k = matches.size(); k-- > 0;) {
        const Match& m = matches[k];
        if (m.matched && !previous_match && !merged.empty()) {
          merged.back().begin = m.begin;
        } else {
          merged.push_back(m);
        }
        previous_match = m.matched;
      }
      for (size_t k = merged.size(); k-- > 0;) emit(merged[k].begin, merged[k].end);
      break;
    }
  }
}

// Rewrites each piece with `rewrite(piece text, piece, out string)` into the other buffer.
template <class Rewrite>
void rewrite_pieces(PreTokenized& pt, Rewrite rewrite) {
  std::string& buffer = pt.buffers[1 - pt.buffer];
  buffer.clear();
  pt.scratch.clear();
  for (const Piece& p : pt.pieces) {
    const auto begin = static_cast<uint32_t>(buffer.size());
    rewrite(pt.text.substr(p.begin, p.end - p.begin), p, buffer);
    if (buffer.size() > begin) pt.scratch.push_back({begin, static_cast<uint32_t>(buffer.size()), p.at_start});
  }
  HALO_CHECK(buffer.size() < UINT32_MAX, "pre-tokenizer: text of ", buffer.size(), " bytes is too long");
  pt.buffer = 1 - pt.buffer;
  pt.text = buffer;
  pt.pieces.swap(pt.scratch);
}

template <class Find>
void split_pieces(PreTokenized& pt, SplitBehavior behavior, bool invert, Find find) {
  pt.scratch.clear();
  std::vector<Match> matches;
  for (const Piece& p : pt.pieces) {
    matches.clear();
    find(p, matches);
    apply_behavior(matches, behavior, invert, p.at_start, p.begin, pt.scratch);
  }
  pt.pieces.swap(pt.scratch);
}

void split_regex_isolated(PreTokenized& pt, SplitPattern pattern) {
  pt.scratch.clear();
  for (const Piece& p : pt.pieces) {
    const std::string_view s = pt.text.substr(0, p.end);
    const Scanner sc(s);
    for (uint32_t pos = p.begin; pos < p.end;) {
      const auto n = static_cast<uint32_t>(match_one(sc, pattern, s, pos));
      pt.scratch.push_back({pos, pos + n, p.at_start && pos == p.begin});
      pos += n;
    }
  }
  pt.pieces.swap(pt.scratch);
}

void apply(const PreTokenizerStep& step, PreTokenized& pt) {
  using Kind = PreTokenizerStep::Kind;
  switch (step.kind) {
    case Kind::split_regex:
      if (step.behavior == SplitBehavior::isolated && !step.invert) {
        split_regex_isolated(pt, step.pattern);
      } else {
        split_pieces(pt, step.behavior, step.invert, [&](const Piece& p, std::vector<Match>& m) {
          find_regex(step.pattern, pt.text, p.begin, p.end, m);
        });
      }
      break;
    case Kind::split_string:
      split_pieces(pt, step.behavior, step.invert, [&](const Piece& p, std::vector<Match>& m) {
        find_string(step.literal, pt.text, p.begin, p.end, m);
      });
      break;
    case Kind::digits:
      split_pieces(pt, step.individual_digits ? SplitBehavior::isolated : SplitBehavior::contiguous, false,
                   [&](const Piece& p, std::vector<Match>& m) { find_digits(pt.text, p.begin, p.end, m); });
      break;
    case Kind::byte_level:
      if (step.add_prefix_space) {
        const bool needed =
            std::any_of(pt.pieces.begin(), pt.pieces.end(), [&](const Piece& p) { return pt.text[p.begin] != ' '; });
        if (needed) {
          rewrite_pieces(pt, [](std::string_view s, const Piece&, std::string& out) {
            if (s[0] != ' ') out.push_back(' ');
            out.append(s);
          });
        }
      }
      if (step.use_regex) split_regex_isolated(pt, SplitPattern::gpt2);
      break;
    case Kind::metaspace:
      rewrite_pieces(pt, [&](std::string_view s, const Piece& p, std::string& out) {
        const size_t begin = out.size();
        for (char ch : s) {
          if (ch == ' ') {
            out += step.replacement;
          } else {
            out.push_back(ch);
          }
        }
        const bool starts = std::string_view(out).substr(begin).starts_with(step.replacement);
        const bool prepend = !starts && (step.prepend == PreTokenizerStep::Prepend::always ||
                                         (step.prepend == PreTokenizerStep::Prepend::first && p.at_start));
        if (prepend) out.insert(begin, step.replacement);
      });
      if (step.split) {
        split_pieces(pt, SplitBehavior::merged_with_next, false, [&](const Piece& p, std::vector<Match>& m) {
          find_string(step.replacement, pt.text, p.begin, p.end, m);
        });
      }
      break;
  }
}

}  // namespace

std::optional<SplitPattern> known_split_pattern(std::string_view regex) {
  if (regex == kGpt2Pattern) return SplitPattern::gpt2;
  if (regex == kLlama3Pattern) return SplitPattern::llama3;
  if (regex == kQwen2Pattern) return SplitPattern::qwen2;
  return std::nullopt;
}

const char* split_pattern_name(SplitPattern pattern) {
  switch (pattern) {
    case SplitPattern::gpt2:
      return "gpt2";
    case SplitPattern::llama3:
      return "llama3";
    case SplitPattern::qwen2:
      return "qwen2";
  }
  return "?";
}

size_t split_match_length(SplitPattern pattern, std::string_view text, size_t pos) {
  return match_one(Scanner(text), pattern, text, pos);
}

std::vector<std::string_view> split_matches(SplitPattern pattern, std::string_view text) {
  std::vector<std::string_view> out;
  const Scanner sc(text);
  for (size_t pos = 0; pos < text.size();) {
    const size_t n = match_one(sc, pattern, text, pos);
    out.push_back(text.substr(pos, n));
    pos += n;
  }
  return out;
}

PreTokenizer::PreTokenizer(std::vector<PreTokenizerStep> steps) : steps_(std::move(steps)) {
  for (size_t i = 0; i < steps_.size(); ++i) {
    if (steps_[i].kind != PreTokenizerStep::Kind::byte_level) continue;
    // Later steps would see byte-level characters, which halo does not materialize.
    HALO_CHECK(i + 1 == steps_.size(), "pre-tokenizer: a ByteLevel step must be the last one (step ", i + 1, " of ",
               steps_.size(), ")");
    byte_level_ = true;
  }
}

void PreTokenizer::run(std::string_view text, bool at_start, PreTokenized& out) const {
  HALO_CHECK(text.size() < UINT32_MAX, "pre-tokenizer: text of ", text.size(), " bytes is too long");
  out.text = text;
  out.pieces.clear();
  if (text.empty()) return;
  out.pieces.push_back({0, static_cast<uint32_t>(text.size()), at_start});
  for (const PreTokenizerStep& step : steps_) apply(step, out);
}

std::string PreTokenizer::describe() const {
  if (steps_.empty()) return "none";
  std::string out;
  for (const PreTokenizerStep& s : steps_) {
    if (!out.empty()) out += " + ";
    switch (s.kind) {
      case PreTokenizerStep::Kind::split_regex:
        out += std::string("Split(") + split_pattern_name(s.pattern) + ")";
        break;
      case PreTokenizerStep::Kind::split_string:
        out += "Split(\"" + s.literal + "\")";
        break;
      case PreTokenizerStep::Kind::byte_level:
        out += s.use_regex ? "ByteLevel(gpt2)" : "ByteLevel";
        break;
      case PreTokenizerStep::Kind::digits:
        out += s.individual_digits ? "Digits(individual)" : "Digits";
        break;
      case PreTokenizerStep::Kind::metaspace:
        out += "Metaspace";
        break;
    }
  }
  return out;
}

}  // namespace halo::text
