// Tokenized training data: a binary file of documents, the train/validation
// split, and the batcher that packs documents into micro-batches.
//
// ---- The token file (".tok"), all integers little-endian ---------------------------
//   offset 0   magic      8 bytes "HALOTOK1"
//          8   version    uint32, 1 or 2
//         12   vocab_size uint32: every token id is < vocab_size
//         16   n_docs     uint64
//         24   n_tokens   uint64
//         32   offsets    uint64[n_docs + 1]: document i is tokens[offsets[i], offsets[i+1]);
//                         offsets[0] = 0, strictly increasing (no empty documents),
//                         offsets[n_docs] = n_tokens
//         40 + 8 n_docs   tokens uint32[n_tokens]
//   version 2 only:
//         40 + 8 n_docs + 4 n_tokens
//                         mask   uint8[n_tokens]: 1 where the token is a training target
//                         (the loss counts predicting it from the tokens before it),
//                         0 where it is not (a prompt, a chat template's headers); each
//                         0 or 1. A document's first token is never a target (nothing
//                         before it predicts it), whatever its mask says.
// and nothing after. A version 1 file has no mask: every token is a target.
// numpy writes version 1 as (scripts/write_tokens.py does, and version 2 with masks):
//   header = b"HALOTOK1" + np.array([1, vocab], "<u4").tobytes() + np.array([n_docs, n_tokens], "<u8").tobytes()
//   file = header + offsets.astype("<u8").tobytes() + tokens.astype("<u4").tobytes()
//
// ---- Packing (Batcher) -----------------------------------------------------------------
// The documents of a split, in a per-epoch shuffled order, are laid end to end
// and cut into rows of seq_len tokens; `rows` rows make a micro-batch. A
// document longer than what is left of a row continues at the start of the
// next row (or the next batch). In each row:
//   input_ids  the tokens
//   targets    the next token of the same document (also across a row or batch
//              boundary) where the file's mask counts it; -100 where it does
//              not, on each document's last token and on padding
//   positions  0, 1, 2, ... restarting at each document start and at each row start
//   doc_ids    0, 1, 2, ... numbering the pieces of documents in the row (the
//              padding after the last document is one more piece)
// so every token of the split is an input exactly once per epoch, and every
// counted token but a document's first is a target exactly once. Only the last
// batch of an epoch is padded (input 0, target -100); the next epoch starts a
// new batch.
//
// Packing::pad instead starts every document at the start of a row: the rest
// of the row after a document's end is padding. A document longer than a row
// is not cut: it continues at the start of the next row (the positions restart
// there, as in packing), so every token is still an input once per epoch and
// no target is lost; the batches per epoch are ceil(rows needed / rows).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/batch.h"

namespace halo {

inline constexpr int32_t kIgnoreTarget = -100;

// Writes a token file atomically. Documents must be non-empty, tokens < vocab_size.
// Without masks: version 1 (every token a target).
void write_token_file(const std::string& path, const std::vector<std::vector<uint32_t>>& docs,
                      uint32_t vocab_size);
// With masks (version 2): masks[d][i] is 1 where token i of document d is a
// target, 0 where not; one mask per document, of its length, each value 0 or 1.
void write_token_file(const std::string& path, const std::vector<std::vector<uint32_t>>& docs,
                      const std::vector<std::vector<uint8_t>>& masks, uint32_t vocab_size);

// A token file mapped read-only and validated on open: errors name the file and
// what is wrong (bad magic or version, truncated or trailing bytes, offsets
// not increasing, a token >= vocab_size with its document, a mask value other
// than 0 or 1). Move-only.
class TokenFile {
 public:
  explicit TokenFile(const std::string& path);
  // The token file of `docs` (and `masks`, as write_token_file takes them;
  // nullptr: none) held in memory, e.g. a JSONL file tokenized for a run;
  // `name` stands for it in errors.
  static TokenFile from_documents(const std::string& name, const std::vector<std::vector<uint32_t>>& docs,
                                  const std::vector<std::vector<uint8_t>>* masks, uint32_t vocab_size);
  ~TokenFile();
  TokenFile(TokenFile&&) noexcept;
  TokenFile& operator=(TokenFile&&) noexcept;

  const std::string& path() const { return path_; }
  uint32_t vocab_size() const { return vocab_size_; }
  int64_t num_docs() const { return n_docs_; }
  int64_t num_tokens() const { return n_tokens_; }
  int64_t doc_length(int64_t doc) const;
  std::span<const uint32_t> doc(int64_t doc) const;
  // Version 2: the document's mask (1: a target); version 1: empty (all are).
  bool has_mask() const { return mask_ != nullptr; }
  std::span<const uint8_t> doc_mask(int64_t doc) const;
  // The targets a Batcher makes of document `doc`: its tokens after the first
  // that the mask counts.
  int64_t doc_targets(int64_t doc) const;

 private:
  TokenFile() = default;
  // Validates the file's bytes and points offsets_, tokens_, mask_ into them.
  void parse(const unsigned char* bytes, size_t size);

  std::string path_;
  void* map_ = nullptr;  // the mapped file (or null: in memory / empty)
  size_t map_bytes_ = 0;
  std::vector<unsigned char> memory_;  // the bytes of an in-memory file
  uint32_t vocab_size_ = 0;
  int64_t n_docs_ = 0, n_tokens_ = 0;
  const uint64_t* offsets_ = nullptr;
  const uint32_t* tokens_ = nullptr;
  const uint8_t* mask_ = nullptr;  // version 2 only
};

// Documents of a file split into training and validation sets: val_fraction of
// them (rounded, at least 1 when the fraction is > 0, at most n_docs - 1),
// drawn by `seed`; each list sorted, the two disjoint, together all documents.
struct DocumentSplit {
  std::vector<int64_t> train, val;
};
DocumentSplit split_documents(int64_t n_docs, double val_fraction, uint64_t seed);
std::vector<int64_t> all_documents(const TokenFile& file);  // 0 .. n_docs - 1

// Where the next batch starts: document `index` of epoch `epoch`'s order,
// `offset` tokens into it. Saved with checkpoints to resume the same batches.
struct DataPosition {
  int64_t epoch = 0;
  int64_t index = 0;
  int64_t offset = 0;
  bool operator==(const DataPosition&) const = default;
};

// How documents are laid into rows (see the top of this file).
enum class Packing { pack, pad };
Packing parse_packing(std::string_view name);  // "pack" | "pad"; throws naming them

// Packs the documents `docs` of `file` into micro-batches of rows x seq_len
// (see the top of this file). With shuffle, epoch e visits them in an order
// drawn from (seed, e); without, in the order given. The file must outlive
// the batcher.
class Batcher {
 public:
  Batcher(const TokenFile& file, std::vector<int64_t> docs, int64_t rows, int64_t seq_len, bool shuffle,
          uint64_t seed, Packing packing = Packing::pack);

  // The next micro-batch (host int32 tensors), advancing the position; after
  // an epoch's last (padded) batch the position is {epoch + 1, 0, 0}.
  Batch next();

  const DataPosition& position() const { return pos_; }
  void set_position(const DataPosition& pos);  // throws when it lies outside the data

  int64_t num_tokens() const { return total_tokens_; }    // of the split, per epoch
  int64_t num_targets() const { return total_targets_; }  // counted targets of the split, per epoch
  // pack: ceil(tokens / (rows * seq_len)); pad: ceil(rows the documents fill / rows).
  int64_t batches_per_epoch() const;
  // The documents of epoch `epoch`, in the order they are packed.
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  const TokenFile* file_;
  std::vector<int64_t> docs_;
  int64_t rows_, seq_len_;
  bool shuffle_;
  uint64_t seed_;
  Packing packing_;
  int64_t total_tokens_ = 0, total_targets_ = 0;
  int64_t total_rows_ = 0;  // rows the documents fill with Packing::pad
  DataPosition pos_;
  int64_t order_epoch_ = -1;     // the epoch `order_` belongs to
  std::vector<int64_t> order_;
};

}  // namespace halo
