// Pre-tokenization: the text between added tokens is cut into pieces ("words") that
// the BPE model then encodes one by one, as the `pre_tokenizer` of a Hugging Face
// tokenizer.json says: Split (by a regex or a string), ByteLevel, Digits, Metaspace,
// or a Sequence of them.
//
// The regexes are not run by a regex engine: the ones Llama-family tokenizers use are
// recognized by their pattern string and scanned by hand (exactly what Oniguruma's
// leftmost-first backtracking matches, checked against Hugging Face tokenizers):
//   gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//           (GPT-2, SmolLM, and every ByteLevel pre-tokenizer with use_regex)
//   llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
//           | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+      (Llama 3, GPT-4 cl100k)
//   qwen2   the same with \p{N} for \p{N}{1,3}                     (Qwen2, Qwen2.5)
// Another pattern is refused when the tokenizer is loaded, naming it.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace halo::text {

enum class SplitPattern { gpt2, llama3, qwen2 };

// The known pattern `regex` is, or nullopt.
std::optional<SplitPattern> known_split_pattern(std::string_view regex);
const char* split_pattern_name(SplitPattern pattern);
// Byte length of the pattern's match at text[pos] (pos < text.size()): these patterns
// match at every position, at least one code point.
size_t split_match_length(SplitPattern pattern, std::string_view text, size_t pos);
// The matches of the pattern in `text`, in order; together they cover it.
std::vector<std::string_view> split_matches(SplitPattern pattern, std::string_view text);

// What a Split does with the matches of its pattern (Hugging Face's SplitDelimiterBehavior).
enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

// One pre-tokenizer of a tokenizer.json.
struct PreTokenizerStep {
  enum class Kind { split_regex, split_string, byte_level, digits, metaspace };
  enum class Prepend { always, first, never };
  Kind kind = Kind::split_regex;
  // split_regex / split_string
  SplitPattern pattern = SplitPattern::gpt2;
  std::string literal;
  SplitBehavior behavior = SplitBehavior::isolated;
  bool invert = false;
  // byte_level
  bool add_prefix_space = false;
  bool use_regex = true;
  // digits
  bool individual_digits = false;
  // metaspace
  std::string replacement = "\xE2\x96\x81";  // U+2581
  Prepend prepend = Prepend::always;
  bool split = true;
};

// A piece: bytes [begin, end) of PreTokenized::text. `at_start` when it begins at the
// start of the encoded text (Metaspace's "first" prepend scheme).
struct Piece {
  uint32_t begin, end;
  bool at_start;
};

// The pieces of one text, and the buffers that rewritten text lives in (reused).
struct PreTokenized {
  std::string_view text;
  std::vector<Piece> pieces;
  std::string buffers[2];
  std::vector<Piece> scratch;
  int buffer = 0;
};

class PreTokenizer {
 public:
  PreTokenizer() = default;  // no pre-tokenizer: the whole text is one piece
  explicit PreTokenizer(std::vector<PreTokenizerStep> steps);

  // Cuts `text` into out.pieces (bytes of out.text). Empty pieces are dropped.
  // `at_start`: `text` begins the encoded text.
  void run(std::string_view text, bool at_start, PreTokenized& out) const;
  // Whether a ByteLevel step maps the pieces to bytes: then the model's vocabulary is
  // of byte-level strings, which halo stores as the bytes they stand for.
  bool byte_level() const { return byte_level_; }
  const std::vector<PreTokenizerStep>& steps() const { return steps_; }
  std::string describe() const;

 private:
  std::vector<PreTokenizerStep> steps_;
  bool byte_level_ = false;
};

}  // namespace halo::text
