// The BPE model of a tokenizer.json ("model": {"type": "BPE"}): a word (one piece of
// the pre-tokenizer) starts as one symbol per character (per byte for byte-level
// vocabularies), then the adjacent pair of lowest merge rank is merged, leftmost
// first, until no pair of the merge list is left; the symbols' ids are the result.
// As Hugging Face's BPE: byte_fallback (<0xXX> tokens for characters not in the
// vocabulary), unk_token with fuse_unk, ignore_merges (a word in the vocabulary is one
// token), continuing_subword_prefix / end_of_word_suffix.
//
// The merge loop keeps the symbols in a linked list and the candidate pairs in a
// binary heap: O(n log n) in the word's length n (a SentencePiece-style vocabulary
// with no pre-tokenizer encodes a whole line as one word); words of up to 16 symbols
// scan their pairs instead. Results of words up to 256 bytes are cached per BpeCache.
#pragma once
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace halo::text {

uint64_t hash_bytes(std::string_view s);

// Open-addressing hash map from byte strings to V; the keys live in one arena.
template <class V>
class StringMap {
 public:
  const V* find(std::string_view key) const {
    if (slots_.empty()) return nullptr;
    const uint64_t h = hash_bytes(key);
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.length == kEmpty) return nullptr;
      if (s.tag == tag && s.length == key.size() && std::memcmp(keys_.data() + s.offset, key.data(), key.size()) == 0)
        return &s.value;
    }
  }
  // Inserts key, or overwrites its value.
  void insert(std::string_view key, const V& value) {
    if ((size_ + 1) * 2 > slots_.size()) grow();
    const uint64_t h = hash_bytes(key);
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.length == kEmpty) {
        s = {tag, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(key.size()), value};
        keys_.append(key);
        ++size_;
        return;
      }
      if (s.tag == tag && s.length == key.size() && std::memcmp(keys_.data() + s.offset, key.data(), key.size()) == 0) {
        s.value = value;
        return;
      }
    }
  }
  size_t size() const { return size_; }
  size_t key_bytes() const { return keys_.size(); }
  void clear() {
    for (Slot& s : slots_) s.length = kEmpty;
    keys_.clear();
    size_ = 0;
  }

 private:
  static constexpr uint32_t kEmpty = UINT32_MAX;
  struct Slot {
    uint32_t tag, offset, length;
    V value;
  };
  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(old.empty() ? 64 : old.size() * 2, Slot{0, 0, kEmpty, V{}});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.length == kEmpty) continue;
      const uint64_t h = hash_bytes(std::string_view(keys_.data() + s.offset, s.length));
      size_t i = h & mask_;
      while (slots_[i].length != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::string keys_;
  size_t size_ = 0, mask_ = 0;
};

struct BpeOptions {
  bool byte_level = false;  // symbols are bytes (the vocabulary's keys are bytes, not byte-level strings)
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::optional<uint32_t> unk_id;
  std::string continuing_subword_prefix, end_of_word_suffix;
  // A separator no token spans (SentencePiece's "▁": no token has it after another
  // character): a word is cut before each separator that follows another character
  // and the parts are encoded on their own, which gives the same ids (no merge can
  // join across the cut) and lets long words (a whole line, with no pre-tokenizer)
  // use the cache. Empty: none. Set by the tokenizer when the vocabulary allows it.
  std::string separator;
};

struct BpeMerge {
  uint32_t left, right, merged;  // ids
};

// Results of recent words, and the buffers of the merge loop. One per thread.
class BpeCache {
 public:
  explicit BpeCache(size_t max_words = 1 << 18) : max_words_(max_words) {}
  void clear() {
    words_.clear();
    ids_.clear();
  }

 private:
  friend class BpeModel;
  struct Span {
    uint32_t offset, count;
  };
  struct Symbol {
    uint32_t id;
    int32_t prev, next;
  };
  struct Candidate {
    uint32_t rank, pos, merged;
  };
  size_t max_words_;
  StringMap<Span> words_;
  std::vector<uint32_t> ids_;
  std::vector<Symbol> symbols_;
  std::vector<Candidate> heap_;
  std::string key_;
};

class BpeModel {
 public:
  BpeModel() : BpeModel({}, {}, {}) {}  // empty: every word is unknown
  // vocab: (key, id) with keys as the model compares them (bytes for byte-level);
  // merges in rank order (a repeated pair takes its last rank, as in Hugging Face).
  BpeModel(BpeOptions options, const std::vector<std::pair<std::string, uint32_t>>& vocab,
           const std::vector<BpeMerge>& merges);

  // Appends the ids of one word (not empty).
  void encode_word(std::string_view word, std::vector<uint32_t>& out, BpeCache& cache) const;
  std::optional<uint32_t> find(std::string_view key) const {
    const uint32_t* id = vocab_.find(key);
    return id ? std::optional<uint32_t>(*id) : std::nullopt;
  }
  const BpeOptions& options() const { return options_; }
  size_t merge_count() const { return merge_count_; }

 private:
  struct MergeSlot {
    uint64_t key;  // left << 32 | right; kNoPair: empty
    uint32_t rank, merged;
  };
  static constexpr uint64_t kNoPair = UINT64_MAX;
  const MergeSlot* find_merge(uint32_t left, uint32_t right) const {
    const uint64_t key = (static_cast<uint64_t>(left) << 32) | right;
    for (size_t i = (key * 0x9E3779B97F4A7C15ull) >> merge_shift_;; i = (i + 1) & merge_mask_) {
      const MergeSlot& s = merges_[i];
      if (s.key == key) return &s;
      if (s.key == kNoPair) return nullptr;
    }
  }
  void encode_part(std::string_view word, std::vector<uint32_t>& out, BpeCache& cache) const;
  void initial_symbols(std::string_view word, BpeCache& cache) const;
  void merge_all(BpeCache& cache) const;

  BpeOptions options_;
  StringMap<uint32_t> vocab_;
  int32_t byte_ids_[256];      // byte-level: the id of each byte's token, or -1
  int32_t fallback_ids_[256];  // byte_fallback: the id of <0xXX>, or -1
  std::vector<MergeSlot> merges_;
  size_t merge_mask_ = 0, merge_count_ = 0;
  int merge_shift_ = 64;
};

}  // namespace halo::text
