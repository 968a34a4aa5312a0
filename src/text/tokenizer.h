// Tokenizers of Llama-family models, read from a Hugging Face tokenizer.json, giving
// the ids Hugging Face `tokenizers` gives:
//   - byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM): a Split regex and/or ByteLevel
//     pre-tokenizer (text/pretokenize.h), merges as "a b" strings or [a, b] lists;
//   - SentencePiece-style BPE (Llama 2, Mistral): byte_fallback, "▁" for spaces by the
//     normalizers Prepend + Replace or the Metaspace pre-tokenizer (prepend schemes).
// Encoding: added tokens are matched in the text first (leftmost, longest; single_word,
// lstrip, rstrip, normalized as Hugging Face), the rest is normalized (NFC, NFD,
// Prepend, Replace, Strip), pre-tokenized and encoded word by word (text/bpe.h); the
// post-processor (TemplateProcessing, Roberta/Bert) adds its tokens on request.
// Decoding runs the decoder chain (ByteLevel, Metaspace, Replace, ByteFallback, Fuse,
// Strip). Another kind of model, normalizer, pre-tokenizer (or regex), decoder or
// post-processor is refused on load, naming the file and key; truncation and padding
// settings are ignored.
//
// tokenizer_config.json beside it, when present, gives the chat template and the
// BOS / EOS tokens.
//
// A Tokenizer is immutable after loading, cheap to copy (shared state) and safe to
// use from several threads at once.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace halo {

struct AddedToken {
  uint32_t id = 0;
  std::string content;
  bool special = false;      // skipped by decode(skip_special_tokens); not matched when !parse_special
  bool single_word = false;  // matches only between non-word characters
  bool lstrip = false;       // takes the white space on its left
  bool rstrip = false;       // takes the white space on its right
  bool normalized = false;   // matched in the normalized text
};

struct EncodeOptions {
  // Match special added tokens in the text (false: "<|endoftext|>" is encoded as plain
  // text, as Hugging Face's encode_special_tokens = True). Non-special added tokens
  // are matched either way.
  bool parse_special = true;
  // Add the post-processor's tokens (a BOS for Llama 2), as add_special_tokens = True.
  bool add_special_tokens = false;
};

class Tokenizer {
 public:
  // A tokenizer.json file, or a directory holding tokenizer.json (and optionally
  // tokenizer_config.json). Errors name the file and the key at fault.
  static Tokenizer load(const std::string& path);
  // A parsed tokenizer.json (and tokenizer_config.json); the names stand for the files
  // in errors.
  static Tokenizer from_json(const nlohmann::json& tokenizer_json, const std::string& name,
                             const nlohmann::json* tokenizer_config = nullptr,
                             const std::string& config_name = "tokenizer_config.json");
  static Tokenizer from_json_text(std::string_view tokenizer_json, const std::string& name = "tokenizer.json");

  std::vector<uint32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;
  // Appends the ids of `text` to `out`.
  void encode_append(std::string_view text, std::vector<uint32_t>& out, const EncodeOptions& options = {}) const;
  // Each text encoded on its own, on `threads` OpenMP threads (0: all).
  std::vector<std::vector<uint32_t>> encode_batch(std::span<const std::string_view> texts,
                                                  const EncodeOptions& options = {}, int threads = 0) const;
  // Ids not in the vocabulary are skipped (as Hugging Face does).
  std::string decode(std::span<const uint32_t> ids, bool skip_special_tokens = false) const;

  // One past the largest id (model vocabulary and added tokens).
  uint32_t vocab_size() const;
  std::optional<uint32_t> token_to_id(std::string_view token) const;
  // The token's string as in tokenizer.json ("Ġthe", "▁the", "<|eot_id|>"); empty if none.
  std::string_view id_to_token(uint32_t id) const;
  const std::vector<AddedToken>& added_tokens() const;
  bool is_special(uint32_t id) const;

  // From tokenizer_config.json (empty / nullopt without it).
  const std::string& chat_template() const;
  const std::string& bos_token() const;
  const std::string& eos_token() const;
  std::optional<uint32_t> bos_id() const;
  std::optional<uint32_t> eos_id() const;

  // One line: model kind, vocabulary, normalizer, pre-tokenizer, decoder.
  std::string describe() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace halo
