#include "text/tokenizer.h"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "text/bpe.h"
#include "text/pretokenize.h"
#include "text/unicode.h"

namespace halo {

using nlohmann::json;
using namespace text;

namespace {

// ---- JSON with errors that name the file and the key ----------------------------------

class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(file_ + ": " + key + ": " + what);
  }
  // obj[key], which must be there.
  const json& at(const json& obj, const std::string& path, const char* key) const {
    if (!obj.is_object()) fail(path, "expected an object");
    auto it = obj.find(key);
    if (it == obj.end()) fail(join(path, key), "missing");
    return *it;
  }
  // obj[key] or nullptr when absent or null.
  const json* find(const json& obj, const std::string& path, const char* key) const {
    if (!obj.is_object()) fail(path, "expected an object");
    auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  std::string string(const json& v, const std::string& path) const {
    if (!v.is_string()) fail(path, "expected a string, got " + kind(v));
    return v.get<std::string>();
  }
  std::string string(const json& obj, const std::string& path, const char* key) const {
    return string(at(obj, path, key), join(path, key));
  }
  std::string string_or(const json& obj, const std::string& path, const char* key, const std::string& fallback) const {
    const json* v = find(obj, path, key);
    return v ? string(*v, join(path, key)) : fallback;
  }
  bool boolean(const json& obj, const std::string& path, const char* key, bool fallback) const {
    const json* v = find(obj, path, key);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(join(path, key), "expected true or false, got " + kind(*v));
    return v->get<bool>();
  }
  uint32_t id(const json& v, const std::string& path) const {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= (int64_t{1} << 31))
      fail(path, "expected a token id (an integer in [0, 2^31)), got " + v.dump());
    return static_cast<uint32_t>(v.get<int64_t>());
  }
  size_t count(const json& obj, const std::string& path, const char* key, size_t fallback) const {
    const json* v = find(obj, path, key);
    if (!v) return fallback;
    if (!v->is_number_integer() || v->get<int64_t>() < 0) fail(join(path, key), "expected a count, got " + v->dump());
    return static_cast<size_t>(v->get<int64_t>());
  }
  const json& array(const json& obj, const std::string& path, const char* key) const {
    const json& v = at(obj, path, key);
    if (!v.is_array()) fail(join(path, key), "expected a list, got " + kind(v));
    return v;
  }
  static std::string join(const std::string& path, const char* key) { return path.empty() ? key : path + "." + key; }
  static std::string index(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }
  static std::string kind(const json& v) {
    return v.is_null()      ? "null"
           : v.is_string()  ? "a string"
           : v.is_number()  ? "a number"
           : v.is_boolean() ? "a boolean"
           : v.is_array()   ? "a list"
                            : "an object";
  }
 private:
  std::string file_;
};

// A Split / Replace pattern: {"String": "..."} or {"Regex": "..."}.
struct Pattern {
  bool regex = false;
  std::string text;
};
Pattern read_pattern(const Reader& r, const json& obj, const std::string& path) {
  const json& p = r.at(obj, path, "pattern");
  const std::string where = Reader::join(path, "pattern");
  if (const json* s = r.find(p, where, "String")) return {false, r.string(*s, where + ".String")};
  if (const json* s = r.find(p, where, "Regex")) return {true, r.string(*s, where + ".Regex")};
  r.fail(where, "expected {\"String\": ...} or {\"Regex\": ...}");
}

// ---- byte-level strings ---------------------------------------------------------------

// GPT-2's map of the 256 bytes to printable characters, and back.
struct ByteLevelTable {
  uint32_t to_char[256];
  int16_t to_byte[324];  // by code point (all below 324), -1 if none
  ByteLevelTable() {
    std::fill(std::begin(to_byte), std::end(to_byte), int16_t{-1});
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = printable ? static_cast<uint32_t>(b) : next++;
      to_byte[to_char[b]] = static_cast<int16_t>(b);
    }
  }
  // The bytes a byte-level string stands for, or nullopt if a character is not one.
  std::optional<std::string> decode(std::string_view s) const {
    std::string out;
    for (size_t i = 0; i < s.size();) {
      uint32_t cp;
      i += utf8_decode(s, i, &cp);
      if (cp >= 324 || to_byte[cp] < 0) return std::nullopt;
      out.push_back(static_cast<char>(to_byte[cp]));
    }
    return out;
  }
};
const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable table;
  return table;
}

// ---- normalizers ----------------------------------------------------------------------

struct NormalizerStep {
  enum class Kind { nfc, nfd, prepend, replace, strip };
  Kind kind;
  std::string a, b;  // prepend: a; replace: a -> b
  bool left = false, right = false;
};

void read_normalizer(const Reader& r, const json& n, const std::string& path, std::vector<NormalizerStep>& out) {
  const std::string type = r.string(n, path, "type");
  if (type == "Sequence") {
    const json& list = r.array(n, path, "normalizers");
    for (size_t i = 0; i < list.size(); ++i) read_normalizer(r, list[i], Reader::index(path + ".normalizers", i), out);
  } else if (type == "NFC") {
    out.push_back({NormalizerStep::Kind::nfc, "", ""});
  } else if (type == "NFD") {
    out.push_back({NormalizerStep::Kind::nfd, "", ""});
  } else if (type == "Prepend") {
    out.push_back({NormalizerStep::Kind::prepend, r.string(n, path, "prepend"), ""});
  } else if (type == "Replace") {
    const Pattern p = read_pattern(r, n, path);
    if (p.regex) r.fail(path + ".pattern", "Replace with a Regex pattern is not supported (a String pattern is)");
    out.push_back({NormalizerStep::Kind::replace, p.text, r.string(n, path, "content")});
  } else if (type == "Strip") {
    NormalizerStep s{NormalizerStep::Kind::strip, "", ""};
    s.left = r.boolean(n, path, "strip_left", true);
    s.right = r.boolean(n, path, "strip_right", true);
    out.push_back(s);
  } else {
    r.fail(Reader::join(path, "type"),
           "normalizer '" + type + "' is not supported (supported: Sequence, NFC, NFD, Prepend, Replace, Strip)");
  }
}

void replace_all(std::string_view s, std::string_view from, std::string_view to, std::string& out) {
  out.clear();
  size_t prev = 0;
  for (size_t at = s.find(from); at != std::string_view::npos; at = s.find(from, at + from.size())) {
    out.append(s.substr(prev, at - prev));
    out.append(to);
    prev = at + from.size();
  }
  out.append(s.substr(prev));
}

// Runs the normalizers on s. Returns the text: s itself, or one of the two buffers.
std::string_view run_normalizers(const std::vector<NormalizerStep>& steps, std::string_view s, std::string* buffers) {
  std::string_view cur = s;
  int next = 0;
  for (const NormalizerStep& step : steps) {
    std::string& out = buffers[next];
    switch (step.kind) {
      case NormalizerStep::Kind::nfc:
      case NormalizerStep::Kind::nfd:
        if (!normalize(cur, step.kind == NormalizerStep::Kind::nfc ? NormalForm::nfc : NormalForm::nfd, &out)) continue;
        break;
      case NormalizerStep::Kind::prepend:
        if (cur.empty()) continue;
        out.assign(step.a);
        out.append(cur);
        break;
      case NormalizerStep::Kind::replace:
        if (step.a.empty() || cur.find(step.a) == std::string_view::npos) continue;
        replace_all(cur, step.a, step.b, out);
        break;
      case NormalizerStep::Kind::strip: {
        const UnicodeTable& t = UnicodeTable::get();
        size_t begin = 0, end = cur.size();
        auto space_at = [&](size_t i, int* len) {
          uint32_t cp;
          *len = utf8_decode(cur, i, &cp);
          return is_whitespace(cp, t.category(cp));
        };
        int len = 0;
        while (step.left && begin < end && space_at(begin, &len)) begin += len;
        if (step.right) {
          // Back over trailing white space, a code point at a time.
          while (end > begin) {
            size_t start = end - 1;
            while (start > begin && (static_cast<unsigned char>(cur[start]) & 0xC0) == 0x80) --start;
            if (!space_at(start, &len) || start + len != end) break;
            end = start;
          }
        }
        if (begin == 0 && end == cur.size()) continue;
        out.assign(cur.substr(begin, end - begin));
        break;
      }
    }
    cur = out;
    next = 1 - next;
  }
  return cur;
}

// ---- pre-tokenizers -------------------------------------------------------------------

void read_pre_tokenizer(const Reader& r, const json& p, const std::string& path, std::vector<PreTokenizerStep>& out) {
  const std::string type = r.string(p, path, "type");
  PreTokenizerStep s;
  if (type == "Sequence") {
    const json& list = r.array(p, path, "pretokenizers");
    for (size_t i = 0; i < list.size(); ++i)
      read_pre_tokenizer(r, list[i], Reader::index(path + ".pretokenizers", i), out);
    return;
  }
  if (type == "Split") {
    const Pattern pattern = read_pattern(r, p, path);
    if (pattern.regex) {
      const auto known = known_split_pattern(pattern.text);
      if (!known)
        r.fail(path + ".pattern.Regex",
               "unknown pre-tokenizer regex '" + pattern.text +
                   "' (halo scans the GPT-2, Llama 3 / cl100k and Qwen2 patterns; see src/text/pretokenize.h)");
      s.kind = PreTokenizerStep::Kind::split_regex;
      s.pattern = *known;
    } else {
      s.kind = PreTokenizerStep::Kind::split_string;
      s.literal = pattern.text;
    }
    const std::string behavior = r.string(p, path, "behavior");
    if (behavior == "Removed")
      s.behavior = SplitBehavior::removed;
    else if (behavior == "Isolated")
      s.behavior = SplitBehavior::isolated;
    else if (behavior == "MergedWithPrevious")
      s.behavior = SplitBehavior::merged_with_previous;
    else if (behavior == "MergedWithNext")
      s.behavior = SplitBehavior::merged_with_next;
    else if (behavior == "Contiguous")
      s.behavior = SplitBehavior::contiguous;
    else
      r.fail(path + ".behavior", "unknown behavior '" + behavior + "'");
    s.invert = r.boolean(p, path, "invert", false);
  } else if (type == "ByteLevel") {
    s.kind = PreTokenizerStep::Kind::byte_level;
    s.add_prefix_space = r.boolean(p, path, "add_prefix_space", true);
    s.use_regex = r.boolean(p, path, "use_regex", true);
  } else if (type == "Digits") {
    s.kind = PreTokenizerStep::Kind::digits;
    s.individual_digits = r.boolean(p, path, "individual_digits", false);
  } else if (type == "Metaspace") {
    s.kind = PreTokenizerStep::Kind::metaspace;
    s.replacement = r.string_or(p, path, "replacement", "\xE2\x96\x81");
    uint32_t cp;
    if (s.replacement.empty() || utf8_decode(s.replacement, 0, &cp) != static_cast<int>(s.replacement.size()))
      r.fail(path + ".replacement", "expected one character");
    s.split = r.boolean(p, path, "split", true);
    if (const json* scheme = r.find(p, path, "prepend_scheme")) {
      const std::string v = r.string(*scheme, path + ".prepend_scheme");
      if (v == "always")
        s.prepend = PreTokenizerStep::Prepend::always;
      else if (v == "first")
        s.prepend = PreTokenizerStep::Prepend::first;
      else if (v == "never")
        s.prepend = PreTokenizerStep::Prepend::never;
      else
        r.fail(path + ".prepend_scheme", "expected always, first or never, got '" + v + "'");
    } else {
      s.prepend = r.boolean(p, path, "add_prefix_space", true) ? PreTokenizerStep::Prepend::always
                                                               : PreTokenizerStep::Prepend::never;
    }
  } else {
    r.fail(Reader::join(path, "type"),
           "pre-tokenizer '" + type + "' is not supported (supported: Sequence, Split, ByteLevel, Digits, Metaspace)");
  }
  out.push_back(std::move(s));
}

// ---- decoders -------------------------------------------------------------------------

struct DecoderStep {
  enum class Kind { byte_level, metaspace, replace, byte_fallback, fuse, strip };
  Kind kind;
  std::string a, b;           // replace: a -> b; metaspace: a = replacement
  bool prepend_first = true;  // metaspace: drop the replacement in the first token
  uint32_t content = ' ';     // strip
  size_t start = 0, stop = 0;
};

void read_decoder(const Reader& r, const json& d, const std::string& path, std::vector<DecoderStep>& out) {
  const std::string type = r.string(d, path, "type");
  if (type == "Sequence") {
    const json& list = r.array(d, path, "decoders");
    for (size_t i = 0; i < list.size(); ++i) read_decoder(r, list[i], Reader::index(path + ".decoders", i), out);
  } else if (type == "ByteLevel") {
    out.push_back({DecoderStep::Kind::byte_level, "", ""});
  } else if (type == "Metaspace") {
    DecoderStep s{DecoderStep::Kind::metaspace, r.string_or(d, path, "replacement", "\xE2\x96\x81"), ""};
    if (const json* scheme = r.find(d, path, "prepend_scheme")) {
      s.prepend_first = r.string(*scheme, path + ".prepend_scheme") != "never";
    } else {
      s.prepend_first = r.boolean(d, path, "add_prefix_space", true);
    }
    out.push_back(s);
  } else if (type == "Replace") {
    const Pattern p = read_pattern(r, d, path);
    if (p.regex) r.fail(path + ".pattern", "Replace with a Regex pattern is not supported (a String pattern is)");
    out.push_back({DecoderStep::Kind::replace, p.text, r.string(d, path, "content")});
  } else if (type == "ByteFallback") {
    out.push_back({DecoderStep::Kind::byte_fallback, "", ""});
  } else if (type == "Fuse") {
    out.push_back({DecoderStep::Kind::fuse, "", ""});
  } else if (type == "Strip") {
    DecoderStep s{DecoderStep::Kind::strip, "", ""};
    const std::string content = r.string(d, path, "content");
    int len = content.empty() ? 0 : utf8_decode(content, 0, &s.content);
    if (len == 0 || len != static_cast<int>(content.size())) r.fail(path + ".content", "expected one character");
    s.start = r.count(d, path, "start", 0);
    s.stop = r.count(d, path, "stop", 0);
    out.push_back(s);
  } else {
    r.fail(Reader::join(path, "type"), "decoder '" + type +
                                           "' is not supported (supported: Sequence, ByteLevel, Metaspace, Replace, "
                                           "ByteFallback, Fuse, Strip)");
  }
}

std::vector<uint32_t> code_points(std::string_view s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    const int len = utf8_decode(s, i, &cp);
    out.push_back(cp == kInvalidCodePoint ? 0xFFFD : cp);
    i += len;
  }
  return out;
}

// One decoder's decode_chain, as Hugging Face's.
void run_decoder(const DecoderStep& step, std::vector<std::string>& tokens) {
  switch (step.kind) {
    case DecoderStep::Kind::byte_level: {
      std::string bytes;
      for (const std::string& t : tokens) {
        if (auto b = byte_level_table().decode(t)) {
          bytes += *b;
        } else {
          bytes += t;
        }
      }
      tokens.assign(1, utf8_lossy(bytes));
      break;
    }
    case DecoderStep::Kind::metaspace:
      for (size_t i = 0; i < tokens.size(); ++i) {
        std::string out;
        replace_all(tokens[i], step.a, i == 0 && step.prepend_first ? "" : " ", out);
        tokens[i] = std::move(out);
      }
      break;
    case DecoderStep::Kind::replace:
      for (std::string& t : tokens) {
        if (step.a.empty()) continue;
        std::string out;
        replace_all(t, step.a, step.b, out);
        t = std::move(out);
      }
      break;
    case DecoderStep::Kind::byte_fallback: {
      std::vector<std::string> out;
      std::string pending;
      size_t pending_count = 0;
      auto flush = [&] {
        if (!pending_count) return;
        if (utf8_valid(pending)) {
          out.push_back(pending);
        } else {
          for (size_t i = 0; i < pending_count; ++i) out.push_back("\xEF\xBF\xBD");
        }
        pending.clear();
        pending_count = 0;
      };
      for (std::string& t : tokens) {
        auto hex = [](char c) {
          return (c >= '0' && c <= '9')   ? c - '0'
                 : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                 : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                          : -1;
        };
        if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && hex(t[3]) >= 0 && hex(t[4]) >= 0) {
          pending.push_back(static_cast<char>(hex(t[3]) * 16 + hex(t[4])));
          ++pending_count;
        } else {
          flush();
          out.push_back(std::move(t));
        }
      }
      flush();
      tokens = std::move(out);
      break;
    }
    case DecoderStep::Kind::fuse: {
      std::string all;
      for (const std::string& t : tokens) all += t;
      tokens.assign(1, std::move(all));
      break;
    }
    case DecoderStep::Kind::strip:
      for (std::string& t : tokens) {
        const std::vector<uint32_t> cps = code_points(t);
        size_t begin = 0, end = cps.size();
        while (begin < step.start && begin < cps.size() && cps[begin] == step.content) ++begin;
        for (size_t i = 0; i < step.stop && end > begin && cps[end - 1] == step.content; ++i) --end;
        if (begin == 0 && end == cps.size()) continue;
        std::string out;
        for (size_t i = begin; i < end; ++i) utf8_append(out, cps[i]);
        t = std::move(out);
      }
      break;
  }
}

// ---- added tokens ---------------------------------------------------------------------

// The added tokens' contents in a byte trie, for the leftmost-longest match.
class AddedTrie {
 public:
  void add(std::string_view content, uint32_t token) {
    if (content.empty()) return;
    if (nodes_.empty()) nodes_.emplace_back();
    uint32_t node = 0;
    for (char ch : content) {
      const auto b = static_cast<uint8_t>(ch);
      auto& kids = nodes_[node].children;
      auto it = std::lower_bound(kids.begin(), kids.end(), std::pair<uint8_t, uint32_t>{b, 0});
      if (it != kids.end() && it->first == b) {
        node = it->second;
      } else {
        const auto child = static_cast<uint32_t>(nodes_.size());
        kids.insert(it, {b, child});
        nodes_.emplace_back();
        node = child;
      }
    }
    nodes_[node].token = static_cast<int32_t>(token);
    first_[static_cast<uint8_t>(content[0])] = true;
  }
  bool empty() const { return nodes_.empty(); }
  bool may_start(char ch) const { return first_[static_cast<uint8_t>(ch)]; }
  // The longest token starting at pos: its length (0 if none) and index.
  size_t longest(std::string_view s, size_t pos, uint32_t* token) const {
    uint32_t node = 0;
    size_t best = 0;
    for (size_t i = pos; i < s.size(); ++i) {
      const auto& kids = nodes_[node].children;
      const auto b = static_cast<uint8_t>(s[i]);
      auto it = std::lower_bound(kids.begin(), kids.end(), std::pair<uint8_t, uint32_t>{b, 0});
      if (it == kids.end() || it->first != b) break;
      node = it->second;
      if (nodes_[node].token >= 0) {
        best = i + 1 - pos;
        *token = static_cast<uint32_t>(nodes_[node].token);
      }
    }
    return best;
  }

 private:
  struct Node {
    int32_t token = -1;
    std::vector<std::pair<uint8_t, uint32_t>> children;
  };
  std::vector<Node> nodes_;
  bool first_[256] = {};
};

// A part of the text: plain text, or an added token (index into the added tokens).
struct Segment {
  uint32_t begin, end;
  int32_t token;
};

// Per-thread state of encode(): the BPE cache and the buffers.
struct EncodeState {
  BpeCache cache;
  PreTokenized pre;
  std::string norm[2];
  std::vector<Segment> segments, sub_segments;
};

}  // namespace

// ---- the tokenizer --------------------------------------------------------------------

struct Tokenizer::Impl {
  std::string name;
  std::vector<NormalizerStep> normalizers;
  PreTokenizer pre_tokenizer;
  BpeModel model;
  size_t model_vocab = 0;
  std::vector<DecoderStep> decoders;
  bool byte_level_decoder_only = false;
  std::vector<uint32_t> prefix_ids, suffix_ids;  // the post-processor's, around one sequence
  std::string post_processor;

  std::vector<AddedToken> added;
  AddedTrie raw_trie, normalized_trie;
  std::unordered_map<std::string, uint32_t> token_ids;  // tokenizer.json strings
  std::vector<std::string> tokens;                      // by id ("" if none)
  std::vector<uint8_t> has_token, skip_when_special;
  std::vector<std::string> token_bytes;  // byte-level decoding of each token

  std::string chat_template, bos_token, eos_token;

  mutable std::mutex pool_mutex;
  mutable std::vector<std::unique_ptr<EncodeState>> pool;

  std::unique_ptr<EncodeState> acquire() const {
    {
      std::lock_guard<std::mutex> lock(pool_mutex);
      if (!pool.empty()) {
        auto s = std::move(pool.back());
        pool.pop_back();
        return s;
      }
    }
    return std::make_unique<EncodeState>();
  }
  void release(std::unique_ptr<EncodeState> s) const {
    std::lock_guard<std::mutex> lock(pool_mutex);
    if (pool.size() < 64) pool.push_back(std::move(s));
  }

  // Splits s at the added tokens of `trie`, as Hugging Face's AddedVocabulary::find_matches.
  void split_added(std::string_view s, const AddedTrie& trie, bool parse_special, std::vector<Segment>& out) const {
    out.clear();
    const UnicodeTable& table = UnicodeTable::get();
    auto word_before = [&](size_t at) {
      size_t i = at - 1;
      while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
      uint32_t cp;
      utf8_decode(s, i, &cp);
      return is_word_char(cp, table.category(cp));
    };
    auto word_after = [&](size_t at) {
      uint32_t cp;
      utf8_decode(s, at, &cp);
      return is_word_char(cp, table.category(cp));
    };
    auto space_at = [&](size_t i, int* len) {
      uint32_t cp;
      *len = utf8_decode(s, i, &cp);
      return is_whitespace(cp, table.category(cp));
    };
    size_t start_offset = 0;
    for (size_t pos = 0; pos < s.size();) {
      uint32_t index = 0;
      const size_t len = trie.may_start(s[pos]) ? trie.longest(s, pos, &index) : 0;
      if (len == 0) {
        ++pos;
        continue;
      }
      size_t start = pos, stop = pos + len;
      pos = stop;
      const AddedToken& tok = added[index];
      if (tok.special && !parse_special) continue;
      if (tok.single_word) {
        const bool start_space = start == 0 || !word_before(start);
        const bool stop_space = stop == s.size() || !word_after(stop);
        if (!start_space || !stop_space) continue;
      }
      if (tok.lstrip) {
        size_t new_start = start;
        while (new_start > 0) {
          size_t i = new_start - 1;
          while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
          int l;
          if (!space_at(i, &l) || i + l != new_start) break;
          new_start = i;
        }
        start = std::max(new_start, start_offset);
      }
      if (tok.rstrip) {
        int l;
        while (stop < s.size() && space_at(stop, &l)) stop += l;
      }
      if (start_offset < start) out.push_back({static_cast<uint32_t>(start_offset), static_cast<uint32_t>(start), -1});
      out.push_back({static_cast<uint32_t>(start), static_cast<uint32_t>(stop), static_cast<int32_t>(index)});
      start_offset = stop;
    }
    if (start_offset < s.size())
      out.push_back({static_cast<uint32_t>(start_offset), static_cast<uint32_t>(s.size()), -1});
  }

  // Pre-tokenizes and encodes normalized text.
  void encode_words(std::string_view s, bool at_start, std::vector<uint32_t>& out, EncodeState& st) const {
    pre_tokenizer.run(s, at_start, st.pre);
    for (const Piece& p : st.pre.pieces) model.encode_word(st.pre.text.substr(p.begin, p.end - p.begin), out, st.cache);
  }

  // Text between raw-matched added tokens: normalized, then split at normalized added tokens.
  void encode_text(std::string_view s, bool at_start, std::vector<uint32_t>& out, EncodeState& st,
                   bool parse_special) const {
    const std::string_view norm = normalizers.empty() ? s : run_normalizers(normalizers, s, st.norm);
    if (normalized_trie.empty()) {
      encode_words(norm, at_start, out, st);
      return;
    }
    split_added(norm, normalized_trie, parse_special, st.sub_segments);
    for (const Segment& seg : st.sub_segments) {
      if (seg.token >= 0) {
        out.push_back(added[seg.token].id);
      } else {
        encode_words(norm.substr(seg.begin, seg.end - seg.begin), at_start && seg.begin == 0, out, st);
      }
    }
  }

  void encode(std::string_view text, std::vector<uint32_t>& out, const EncodeOptions& options, EncodeState& st) const {
    HALO_CHECK(text.size() < UINT32_MAX, "tokenizer: text of ", text.size(), " bytes is too long (split it)");
    if (options.add_special_tokens) out.insert(out.end(), prefix_ids.begin(), prefix_ids.end());
    if (raw_trie.empty()) {
      if (!text.empty()) encode_text(text, true, out, st, options.parse_special);
    } else {
      split_added(text, raw_trie, options.parse_special, st.segments);
      for (const Segment& seg : st.segments) {
        if (seg.token >= 0) {
          out.push_back(added[seg.token].id);
        } else {
          encode_text(text.substr(seg.begin, seg.end - seg.begin), seg.begin == 0, out, st, options.parse_special);
        }
      }
    }
    if (options.add_special_tokens) out.insert(out.end(), suffix_ids.begin(), suffix_ids.end());
  }
};

namespace {

// The BPE model: vocabulary, merges and options.
std::unordered_map<std::string, uint32_t> read_model(const Reader& r, const json& root, Tokenizer::Impl& t) {
  const json& m = r.at(root, "", "model");
  const std::string type = r.string_or(m, "model", "type", "BPE");
  if (type != "BPE") r.fail("model.type", "model '" + type + "' is not supported (halo reads BPE models)");
  if (const json* dropout = r.find(m, "model", "dropout");
      dropout && !(dropout->is_number() && dropout->get<double>() == 0))
    r.fail("model.dropout", "BPE dropout is not supported (it makes encoding random)");
  const json& vocab = r.at(m, "model", "vocab");
  if (!vocab.is_object()) r.fail("model.vocab", "expected an object of token: id, got " + Reader::kind(vocab));

  BpeOptions options;
  options.byte_level = t.pre_tokenizer.byte_level();
  options.byte_fallback = r.boolean(m, "model", "byte_fallback", false);
  options.fuse_unk = r.boolean(m, "model", "fuse_unk", false);
  options.ignore_merges = r.boolean(m, "model", "ignore_merges", false);
  options.continuing_subword_prefix = r.string_or(m, "model", "continuing_subword_prefix", "");
  options.end_of_word_suffix = r.string_or(m, "model", "end_of_word_suffix", "");

  std::unordered_map<std::string, uint32_t> ids;  // tokenizer.json strings
  ids.reserve(vocab.size());
  uint32_t max_id = 0;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const uint32_t id = r.id(it.value(), "model.vocab[\"" + it.key() + "\"]");
    ids.emplace(it.key(), id);
    max_id = std::max(max_id, id);
  }
  if (const json* unk = r.find(m, "model", "unk_token")) {
    const std::string u = r.string(*unk, "model.unk_token");
    auto it = ids.find(u);
    if (it == ids.end()) r.fail("model.unk_token", "'" + u + "' is not in model.vocab");
    options.unk_id = it->second;
  }

  // SentencePiece's "▁" as a separator no token spans (see BpeOptions::separator).
  const std::string sep = "\xE2\x96\x81";
  if (!options.byte_level && !options.ignore_merges && options.continuing_subword_prefix.empty() &&
      options.end_of_word_suffix.empty() && ids.count(sep)) {
    const bool spans = std::any_of(ids.begin(), ids.end(), [&](const auto& entry) {
      const std::string& token = entry.first;
      for (size_t at = token.find(sep, 1); at != std::string::npos; at = token.find(sep, at + 1))
        if (at < sep.size() || token.compare(at - sep.size(), sep.size(), sep) != 0) return true;
      return false;
    });
    if (!spans) options.separator = sep;
  }

  // Keys as the model compares them: the bytes a byte-level string stands for.
  const ByteLevelTable& bl = byte_level_table();
  auto raw = [&](const std::string& s) -> std::optional<std::string> {
    return options.byte_level ? bl.decode(s) : std::optional<std::string>(s);
  };
  if (options.byte_level) {
    options.continuing_subword_prefix =
        raw(options.continuing_subword_prefix).value_or(options.continuing_subword_prefix);
    options.end_of_word_suffix = raw(options.end_of_word_suffix).value_or(options.end_of_word_suffix);
  }
  std::vector<std::pair<std::string, uint32_t>> keys;
  keys.reserve(ids.size());
  t.tokens.assign(size_t{max_id} + 1, std::string());
  t.has_token.assign(size_t{max_id} + 1, 0);
  for (const auto& [token, id] : ids) {
    if (auto key = raw(token)) keys.emplace_back(std::move(*key), id);
    t.tokens[id] = token;
    t.has_token[id] = 1;
  }

  const json& merges = r.array(m, "model", "merges");
  std::vector<BpeMerge> list;
  list.reserve(merges.size());
  const std::string prefix = r.string_or(m, "model", "continuing_subword_prefix", "");
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string where = Reader::index("model.merges", i);
    const json& e = merges[i];
    std::string a, b;
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        r.fail(where, "expected \"left right\" (one space), got \"" + s + "\"");
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      r.fail(where, "expected \"left right\" or [left, right], got " + e.dump());
    }
    auto ia = ids.find(a), ib = ids.find(b);
    if (ia == ids.end()) r.fail(where, "'" + a + "' is not in model.vocab");
    if (ib == ids.end()) r.fail(where, "'" + b + "' is not in model.vocab");
    const std::string merged = a + (!prefix.empty() && b.rfind(prefix, 0) == 0 ? b.substr(prefix.size()) : b);
    auto im = ids.find(merged);
    if (im == ids.end()) r.fail(where, "the merged token '" + merged + "' is not in model.vocab");
    list.push_back({ia->second, ib->second, im->second});
  }
  t.model_vocab = ids.size();
  t.model = BpeModel(std::move(options), keys, list);
  return ids;
}

// The added tokens. Their ids are assigned as Hugging Face does on load (the file's
// ids are not read back): a token in the model's vocabulary keeps its id there, a new
// one gets the next id after the model's (vocabulary size) or after the last added.
// For the files the libraries write, these are the file's ids.
void read_added_tokens(const Reader& r, const json& root, Tokenizer::Impl& t,
                       const std::unordered_map<std::string, uint32_t>& model_ids) {
  const json* list = r.find(root, "", "added_tokens");
  if (!list) return;
  if (!list->is_array()) r.fail("added_tokens", "expected a list, got " + Reader::kind(*list));
  std::unordered_map<std::string, uint32_t> added_ids;
  std::optional<uint32_t> max_added;
  const auto model_size = static_cast<uint32_t>(model_ids.size());
  for (size_t i = 0; i < list->size(); ++i) {
    const std::string path = Reader::index("added_tokens", i);
    const json& e = (*list)[i];
    AddedToken a;
    r.id(r.at(e, path, "id"), path + ".id");
    a.content = r.string(e, path, "content");
    if (a.content.empty()) r.fail(path + ".content", "empty");
    a.special = r.boolean(e, path, "special", false);
    a.single_word = r.boolean(e, path, "single_word", false);
    a.lstrip = r.boolean(e, path, "lstrip", false);
    a.rstrip = r.boolean(e, path, "rstrip", false);
    a.normalized = r.boolean(e, path, "normalized", !a.special);
    if (auto it = added_ids.find(a.content); it != added_ids.end()) {
      a.id = it->second;
    } else if (auto m = model_ids.find(a.content); m != model_ids.end()) {
      a.id = m->second;
    } else if (!max_added) {
      a.id = model_size;
    } else {
      a.id = *max_added >= model_size || model_size == 0 ? *max_added + 1 : model_size;
    }
    added_ids[a.content] = a.id;
    max_added = std::max(max_added.value_or(0), a.id);
    t.added.push_back(std::move(a));
  }
}

// The post-processor's tokens around a single sequence.
void read_post_processor(const Reader& r, const json& p, const std::string& path, Tokenizer::Impl& t) {
  const std::string type = r.string(p, path, "type");
  if (type != "Sequence") t.post_processor += (t.post_processor.empty() ? "" : " + ") + type;
  if (type == "Sequence") {
    const json& list = r.array(p, path, "processors");
    for (size_t i = 0; i < list.size(); ++i) read_post_processor(r, list[i], Reader::index(path + ".processors", i), t);
  } else if (type == "ByteLevel") {
    // Offsets only.
  } else if (type == "TemplateProcessing") {
    const json& single = r.array(p, path, "single");
    const json& specials = r.at(p, path, "special_tokens");
    bool seen_sequence = false;
    for (size_t i = 0; i < single.size(); ++i) {
      const std::string where = Reader::index(path + ".single", i);
      if (r.find(single[i], where, "Sequence")) {
        if (seen_sequence) r.fail(where, "a second sequence in the single template");
        seen_sequence = true;
        continue;
      }
      const json* special = r.find(single[i], where, "SpecialToken");
      if (!special) r.fail(where, "expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      const std::string name = r.string(*special, where + ".SpecialToken", "id");
      const json& entry = r.at(specials, path + ".special_tokens", name.c_str());
      const json& ids = r.array(entry, path + ".special_tokens." + name, "ids");
      auto& dest = seen_sequence ? t.suffix_ids : t.prefix_ids;
      for (size_t k = 0; k < ids.size(); ++k)
        dest.push_back(r.id(ids[k], Reader::index(path + ".special_tokens." + name + ".ids", k)));
    }
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    for (const char* key : {"cls", "sep"}) {
      const json& v = r.at(p, path, key);
      if (!v.is_array() || v.size() != 2) r.fail(Reader::join(path, key), "expected [token, id]");
      (std::string(key) == "cls" ? t.prefix_ids : t.suffix_ids).push_back(r.id(v[1], Reader::join(path, key) + "[1]"));
    }
  } else {
    r.fail(Reader::join(path, "type"), "post-processor '" + type +
                                           "' is not supported (supported: TemplateProcessing, ByteLevel, "
                                           "RobertaProcessing, BertProcessing, Sequence)");
  }
}

// bos_token / eos_token of tokenizer_config.json: a string, {"content": ...} or null.
std::string config_token(const Reader& r, const json& config, const char* key) {
  const json* v = r.find(config, "", key);
  if (!v) return "";
  if (v->is_string()) return v->get<std::string>();
  if (v->is_object()) return r.string(*v, key, "content");
  r.fail(key, "expected a string or {\"content\": ...}, got " + Reader::kind(*v));
}

void read_config(const Reader& r, const json& config, Tokenizer::Impl& t) {
  if (!config.is_object()) r.fail("(top level)", "expected an object");
  t.bos_token = config_token(r, config, "bos_token");
  t.eos_token = config_token(r, config, "eos_token");
  if (const json* tpl = r.find(config, "", "chat_template")) {
    if (tpl->is_string()) {
      t.chat_template = tpl->get<std::string>();
    } else if (tpl->is_array()) {
      // [{"name": "default", "template": ...}, ...]: the default one, else the first.
      for (size_t i = 0; i < tpl->size(); ++i) {
        const std::string path = Reader::index("chat_template", i);
        const std::string name = r.string((*tpl)[i], path, "name");
        if (i == 0 || name == "default") t.chat_template = r.string((*tpl)[i], path, "template");
      }
    } else {
      r.fail("chat_template", "expected a string or a list of {name, template}");
    }
  }
}

json parse_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  HALO_CHECK(in, "tokenizer: cannot open ", path);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::parse_error& e) {
    throw Error(path + ": not valid JSON: " + e.what());
  }
}

}  // namespace

Tokenizer Tokenizer::from_json(const json& root, const std::string& name, const json* config,
                               const std::string& config_name) {
  auto t = std::make_shared<Impl>();
  t->name = name;
  const Reader r(name);
  if (!root.is_object()) r.fail("(top level)", "expected an object");
  if (const json* n = r.find(root, "", "normalizer")) read_normalizer(r, *n, "normalizer", t->normalizers);
  if (const json* p = r.find(root, "", "pre_tokenizer")) {
    std::vector<PreTokenizerStep> steps;
    read_pre_tokenizer(r, *p, "pre_tokenizer", steps);
    try {
      t->pre_tokenizer = PreTokenizer(std::move(steps));
    } catch (const Error& e) {
      r.fail("pre_tokenizer", e.what());
    }
  }
  read_added_tokens(r, root, *t, read_model(r, root, *t));
  if (const json* d = r.find(root, "", "decoder")) read_decoder(r, *d, "decoder", t->decoders);
  if (const json* p = r.find(root, "", "post_processor")) read_post_processor(r, *p, "post_processor", *t);

  // Added tokens over the model's ids; their matching tries.
  uint32_t max_id = t->tokens.empty() ? 0 : static_cast<uint32_t>(t->tokens.size() - 1);
  for (const AddedToken& a : t->added) max_id = std::max(max_id, a.id);
  t->tokens.resize(size_t{max_id} + 1);
  t->has_token.resize(size_t{max_id} + 1, 0);
  for (uint32_t id = 0; id < t->tokens.size(); ++id)
    if (t->has_token[id]) t->token_ids.emplace(t->tokens[id], id);
  std::vector<std::string> special_contents;
  for (size_t i = 0; i < t->added.size(); ++i) {
    const AddedToken& a = t->added[i];
    t->tokens[a.id] = a.content;
    t->has_token[a.id] = 1;
    t->token_ids[a.content] = a.id;
    if (a.special) special_contents.push_back(a.content);
    if (a.normalized && !t->normalizers.empty()) {
      std::string buffers[2];
      t->normalized_trie.add(run_normalizers(t->normalizers, a.content, buffers), static_cast<uint32_t>(i));
    } else {
      (a.normalized ? t->normalized_trie : t->raw_trie).add(a.content, static_cast<uint32_t>(i));
    }
  }
  for (uint32_t id : t->prefix_ids)
    if (id > max_id || !t->has_token[id])
      r.fail("post_processor", "token id " + std::to_string(id) + " is not in the vocabulary");
  for (uint32_t id : t->suffix_ids)
    if (id > max_id || !t->has_token[id])
      r.fail("post_processor", "token id " + std::to_string(id) + " is not in the vocabulary");
  // decode(skip_special_tokens) drops every token whose string is a special token's.
  t->skip_when_special.assign(t->tokens.size(), 0);
  for (uint32_t id = 0; id < t->tokens.size(); ++id)
    t->skip_when_special[id] = t->has_token[id] && std::find(special_contents.begin(), special_contents.end(),
                                                             t->tokens[id]) != special_contents.end();
  t->byte_level_decoder_only = t->decoders.size() == 1 && t->decoders[0].kind == DecoderStep::Kind::byte_level;
  if (t->byte_level_decoder_only) {
    t->token_bytes.resize(t->tokens.size());
    for (uint32_t id = 0; id < t->tokens.size(); ++id)
      t->token_bytes[id] = byte_level_table().decode(t->tokens[id]).value_or(t->tokens[id]);
  }
  if (config) read_config(Reader(config_name), *config, *t);
  return Tokenizer(std::move(t));
}

Tokenizer Tokenizer::from_json_text(std::string_view text, const std::string& name) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(name + ": not valid JSON: " + e.what());
  }
  return from_json(root, name);
}

Tokenizer Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path file = path;
  if (fs::is_directory(file)) file /= "tokenizer.json";
  HALO_CHECK(fs::exists(file), "tokenizer: ", file.string(), " does not exist",
             fs::is_directory(path) ? " (the directory has no tokenizer.json)" : "");
  const json root = parse_file(file.string());
  const fs::path config_path = file.parent_path() / "tokenizer_config.json";
  if (fs::exists(config_path)) {
    const json config = parse_file(config_path.string());
    return from_json(root, file.string(), &config, config_path.string());
  }
  return from_json(root, file.string());
}

std::vector<uint32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<uint32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode_append(text, out, options);
  return out;
}

void Tokenizer::encode_append(std::string_view text, std::vector<uint32_t>& out, const EncodeOptions& options) const {
  auto state = impl_->acquire();
  impl_->encode(text, out, options, *state);
  impl_->release(std::move(state));
}

std::vector<std::vector<uint32_t>> Tokenizer::encode_batch(std::span<const std::string_view> texts,
                                                           const EncodeOptions& options, int threads) const {
  std::vector<std::vector<uint32_t>> out(texts.size());
  const int n = static_cast<int>(texts.size());
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel num_threads(threads > 0 ? threads : omp_get_max_threads())
  {
    auto state = impl_->acquire();
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < n; ++i) {
      try {
        out[i].reserve(texts[i].size() / 3 + 4);
        impl_->encode(texts[i], out[i], options, *state);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
    impl_->release(std::move(state));
  }
  if (error) std::rethrow_exception(error);
  return out;
}

std::string Tokenizer::decode(std::span<const uint32_t> ids, bool skip_special_tokens) const {
  const Impl& t = *impl_;
  auto keep = [&](uint32_t id) {
    return id < t.tokens.size() && t.has_token[id] && !(skip_special_tokens && t.skip_when_special[id]);
  };
  if (t.byte_level_decoder_only) {
    std::string bytes;
    for (uint32_t id : ids)
      if (keep(id)) bytes += t.token_bytes[id];
    return utf8_lossy(bytes);
  }
  std::vector<std::string> tokens;
  for (uint32_t id : ids)
    if (keep(id)) tokens.push_back(t.tokens[id]);
  if (t.decoders.empty()) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const DecoderStep& step : t.decoders) run_decoder(step, tokens);
  std::string out;
  for (const std::string& s : tokens) out += s;
  return out;
}

uint32_t Tokenizer::vocab_size() const { return static_cast<uint32_t>(impl_->tokens.size()); }

std::optional<uint32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->token_ids.find(std::string(token));
  return it == impl_->token_ids.end() ? std::nullopt : std::optional<uint32_t>(it->second);
}

std::string_view Tokenizer::id_to_token(uint32_t id) const {
  return id < impl_->tokens.size() ? std::string_view(impl_->tokens[id]) : std::string_view();
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }

bool Tokenizer::is_special(uint32_t id) const {
  for (const AddedToken& a : impl_->added)
    if (a.id == id) return a.special;
  return false;
}

const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }
const std::string& Tokenizer::bos_token() const { return impl_->bos_token; }
const std::string& Tokenizer::eos_token() const { return impl_->eos_token; }
std::optional<uint32_t> Tokenizer::bos_id() const {
  return impl_->bos_token.empty() ? std::nullopt : token_to_id(impl_->bos_token);
}
std::optional<uint32_t> Tokenizer::eos_id() const {
  return impl_->eos_token.empty() ? std::nullopt : token_to_id(impl_->eos_token);
}

std::string Tokenizer::describe() const {
  const Impl& t = *impl_;
  std::ostringstream os;
  os << (t.pre_tokenizer.byte_level()      ? "byte-level BPE"
         : t.model.options().byte_fallback ? "BPE with byte fallback"
                                           : "BPE")
     << ", " << t.model_vocab << " tokens, " << t.model.merge_count() << " merges, " << t.added.size()
     << " added tokens; normalizer: ";
  if (t.normalizers.empty()) os << "none";
  for (size_t i = 0; i < t.normalizers.size(); ++i) {
    static const char* names[] = {"NFC", "NFD", "Prepend", "Replace", "Strip"};
    os << (i ? " + " : "") << names[static_cast<int>(t.normalizers[i].kind)];
  }
  os << "; pre-tokenizer: " << t.pre_tokenizer.describe();
  os << "; post-processor: " << (t.post_processor.empty() ? "none" : t.post_processor);
  return os.str();
}

}  // namespace halo
