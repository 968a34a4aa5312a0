#include "data/token_data.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <utility>

#include "core/error.h"
#include "core/rng.h"
#include "io/atomic_file.h"
#include "io/mapped_file.h"

namespace halo {

static_assert(std::endian::native == std::endian::little, "token files are little-endian");

namespace {

constexpr char kMagic[8] = {'H', 'A', 'L', 'O', 'T', 'O', 'K', '1'};
constexpr uint32_t kVersionPlain = 1;   // no mask
constexpr uint32_t kVersionMasked = 2;  // a mask byte per token after the tokens
constexpr size_t kHeaderBytes = 32;

// Streams of the counter-based RNG (core/rng.h) used here, apart from every other use.
constexpr uint64_t kSplitStream = 0x53504c4954000000ull;    // "SPLIT"
constexpr uint64_t kShuffleStream = 0x5348554600000000ull;  // "SHUF" + epoch

uint64_t random64(uint64_t seed, uint64_t stream, uint64_t i) {
  const Philox4 r = philox4x32(seed, i, stream);
  return static_cast<uint64_t>(r.v[0]) | (static_cast<uint64_t>(r.v[1]) << 32);
}

// Fisher-Yates with the counter-based RNG: the same order on every platform.
void shuffle(std::vector<int64_t>& a, uint64_t seed, uint64_t stream) {
  for (size_t i = a.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(random64(seed, stream, i - 1) % i);
    std::swap(a[i - 1], a[j]);
  }
}

}  // namespace

// ---- writing --------------------------------------------------------------------------

namespace {

// Checks documents (and masks, when given) and passes the bytes of their token
// file to `write`; `path` names it in errors.
void serialize(const std::string& path, const std::vector<std::vector<uint32_t>>& docs,
               const std::vector<std::vector<uint8_t>>* masks, uint32_t vocab_size, const WriteBytes& write) {
  HALO_CHECK(vocab_size > 0 && vocab_size <= 0x7fffffffu, path, ": vocab_size must lie in [1, 2^31), got ", vocab_size);
  if (masks)
    HALO_CHECK(masks->size() == docs.size(), path, ": ", masks->size(), " masks for ", docs.size(), " documents");
  std::vector<uint64_t> offsets{0};
  for (size_t d = 0; d < docs.size(); ++d) {
    HALO_CHECK(!docs[d].empty(), path, ": document ", d, " is empty (token files hold no empty documents)");
    for (const uint32_t t : docs[d])
      HALO_CHECK(t < vocab_size, path, ": document ", d, " holds token ", t, " >= vocab_size ", vocab_size);
    if (masks) {
      const auto& m = (*masks)[d];
      HALO_CHECK(m.size() == docs[d].size(), path, ": the mask of document ", d, " has ", m.size(),
                 " values for its ", docs[d].size(), " tokens");
      for (const uint8_t v : m) HALO_CHECK(v <= 1, path, ": the mask of document ", d, " holds ", int(v), " (0 or 1)");
    }
    offsets.push_back(offsets.back() + docs[d].size());
  }
  const uint32_t head32[2] = {masks ? kVersionMasked : kVersionPlain, vocab_size};
  const uint64_t head64[2] = {docs.size(), offsets.back()};
  write(kMagic, sizeof kMagic);
  write(head32, sizeof head32);
  write(head64, sizeof head64);
  write(offsets.data(), offsets.size() * sizeof(uint64_t));
  for (const auto& doc : docs) write(doc.data(), doc.size() * sizeof(uint32_t));
  if (masks)
    for (const auto& m : *masks) write(m.data(), m.size());
}

}  // namespace

void write_token_file(const std::string& path, const std::vector<std::vector<uint32_t>>& docs,
                      uint32_t vocab_size) {
  write_file_atomic(path, [&](const WriteBytes& write) { serialize(path, docs, nullptr, vocab_size, write); });
}

void write_token_file(const std::string& path, const std::vector<std::vector<uint32_t>>& docs,
                      const std::vector<std::vector<uint8_t>>& masks, uint32_t vocab_size) {
  write_file_atomic(path, [&](const WriteBytes& write) { serialize(path, docs, &masks, vocab_size, write); });
}

// ---- reading --------------------------------------------------------------------------

TokenFile::TokenFile(const std::string& path) : path_(path) {
  const MappedBytes m = map_file_readonly(path, 0, "a token file");  // parse() checks the header
  map_ = const_cast<std::byte*>(m.base);
  map_bytes_ = static_cast<size_t>(m.size);
  // From here on, a failed check must unmap: the destructor does not run for a throwing constructor.
  try {
    parse(static_cast<const unsigned char*>(map_), map_bytes_);
  } catch (...) {
    if (map_) ::munmap(map_, map_bytes_);
    throw;
  }
}

TokenFile TokenFile::from_documents(const std::string& name, const std::vector<std::vector<uint32_t>>& docs,
                                    const std::vector<std::vector<uint8_t>>* masks, uint32_t vocab_size) {
  TokenFile f;
  f.path_ = name;
  serialize(name, docs, masks, vocab_size, [&](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    f.memory_.insert(f.memory_.end(), p, p + n);
  });
  f.parse(f.memory_.data(), f.memory_.size());
  return f;
}

void TokenFile::parse(const unsigned char* bytes, size_t size) {
  const std::string& path = path_;
  HALO_CHECK(size >= kHeaderBytes, path, ": truncated: ", size,
             " bytes, shorter than the 32-byte header of a token file");
  HALO_CHECK(std::memcmp(bytes, kMagic, 8) == 0, path, ": bad magic (not a HALOTOK1 token file)");
  uint32_t version;
  uint64_t n_docs, n_tokens;
  std::memcpy(&version, bytes + 8, 4);
  std::memcpy(&vocab_size_, bytes + 12, 4);
  std::memcpy(&n_docs, bytes + 16, 8);
  std::memcpy(&n_tokens, bytes + 24, 8);
  HALO_CHECK(version == kVersionPlain || version == kVersionMasked, path, ": token file version ", version,
             " (this build reads versions 1 and 2)");
  HALO_CHECK(vocab_size_ > 0 && vocab_size_ <= 0x7fffffffu, path, ": bad vocab_size ", vocab_size_);
  // Sizes in 128-bit arithmetic so a hostile header cannot overflow the check.
  const unsigned __int128 per_token = version == kVersionMasked ? 5 : 4;
  const unsigned __int128 expected = static_cast<unsigned __int128>(kHeaderBytes) +
                                     static_cast<unsigned __int128>(n_docs + static_cast<unsigned __int128>(1)) * 8 +
                                     static_cast<unsigned __int128>(n_tokens) * per_token;
  HALO_CHECK(expected <= size, path, ": truncated: the header promises ", n_docs, " documents and ", n_tokens,
             " tokens", version == kVersionMasked ? " with their mask" : "", " (", static_cast<double>(expected),
             " bytes), the file has ", size, " bytes");
  HALO_CHECK(expected == size, path, ": ", size - static_cast<size_t>(expected),
             " unexpected bytes after the ", version == kVersionMasked ? "mask" : "tokens");
  n_docs_ = static_cast<int64_t>(n_docs);
  n_tokens_ = static_cast<int64_t>(n_tokens);
  offsets_ = reinterpret_cast<const uint64_t*>(bytes + kHeaderBytes);
  tokens_ = reinterpret_cast<const uint32_t*>(bytes + kHeaderBytes + (n_docs + 1) * 8);
  mask_ = version == kVersionMasked ? bytes + kHeaderBytes + (n_docs + 1) * 8 + n_tokens * 4 : nullptr;
  HALO_CHECK(offsets_[0] == 0, path, ": offsets[0] is ", offsets_[0], ", must be 0");
  for (int64_t d = 0; d < n_docs_; ++d)
    HALO_CHECK(offsets_[d + 1] > offsets_[d], path, ": offsets not increasing at document ", d, " (", offsets_[d],
               " then ", offsets_[d + 1], "; documents may not be empty)");
  HALO_CHECK(offsets_[n_docs_] == n_tokens, path, ": the last offset is ", offsets_[n_docs_],
             ", must equal n_tokens ", n_tokens);
  const auto doc_of = [&](int64_t i) {
    return std::upper_bound(offsets_, offsets_ + n_docs_ + 1, static_cast<uint64_t>(i)) - offsets_ - 1;
  };
  uint32_t max_token = 0;
  uint8_t max_mask = 0;
#pragma omp parallel for reduction(max : max_token, max_mask) schedule(static)
  for (int64_t i = 0; i < n_tokens_; ++i) {
    max_token = std::max(max_token, tokens_[i]);
    if (mask_) max_mask = std::max(max_mask, mask_[i]);
  }
  if (max_token >= vocab_size_) {
    const int64_t i =
        std::find_if(tokens_, tokens_ + n_tokens_, [&](uint32_t t) { return t >= vocab_size_; }) - tokens_;
    HALO_FAIL(path, ": token ", tokens_[i], " at position ", i, " (document ", doc_of(i), ") is >= vocab_size ",
              vocab_size_);
  }
  if (max_mask > 1) {
    const int64_t i = std::find_if(mask_, mask_ + n_tokens_, [](uint8_t m) { return m > 1; }) - mask_;
    HALO_FAIL(path, ": mask value ", int(mask_[i]), " at position ", i, " (document ", doc_of(i),
              ") is neither 0 nor 1");
  }
}

TokenFile::~TokenFile() {
  if (map_) ::munmap(map_, map_bytes_);
}

TokenFile::TokenFile(TokenFile&& o) noexcept
    : path_(std::move(o.path_)),
      map_(std::exchange(o.map_, nullptr)),
      map_bytes_(std::exchange(o.map_bytes_, 0)),
      memory_(std::move(o.memory_)),  // the buffer moves: the pointers into it stay valid
      vocab_size_(o.vocab_size_),
      n_docs_(o.n_docs_),
      n_tokens_(o.n_tokens_),
      offsets_(o.offsets_),
      tokens_(o.tokens_),
      mask_(o.mask_) {}

TokenFile& TokenFile::operator=(TokenFile&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_bytes_);
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_bytes_ = std::exchange(o.map_bytes_, 0);
    memory_ = std::move(o.memory_);
    vocab_size_ = o.vocab_size_;
    n_docs_ = o.n_docs_;
    n_tokens_ = o.n_tokens_;
    offsets_ = o.offsets_;
    tokens_ = o.tokens_;
    mask_ = o.mask_;
  }
  return *this;
}

int64_t TokenFile::doc_length(int64_t doc) const {
  HALO_CHECK(doc >= 0 && doc < n_docs_, path_, ": document ", doc, " out of range (", n_docs_, " documents)");
  return static_cast<int64_t>(offsets_[doc + 1] - offsets_[doc]);
}

std::span<const uint32_t> TokenFile::doc(int64_t doc) const {
  const int64_t n = doc_length(doc);
  return {tokens_ + offsets_[doc], static_cast<size_t>(n)};
}

std::span<const uint8_t> TokenFile::doc_mask(int64_t doc) const {
  const int64_t n = doc_length(doc);
  if (!mask_) return {};
  return {mask_ + offsets_[doc], static_cast<size_t>(n)};
}

int64_t TokenFile::doc_targets(int64_t doc) const {
  const int64_t n = doc_length(doc);
  if (!mask_) return n - 1;
  int64_t count = 0;
  for (int64_t i = 1; i < n; ++i) count += mask_[offsets_[doc] + i];
  return count;
}

// ---- splits ---------------------------------------------------------------------------

DocumentSplit split_documents(int64_t n_docs, double val_fraction, uint64_t seed) {
  HALO_CHECK(n_docs >= 0, "split_documents: bad document count ", n_docs);
  HALO_CHECK(std::isfinite(val_fraction) && val_fraction >= 0.0 && val_fraction < 1.0,
             "split_documents: val_fraction must lie in [0, 1), got ", val_fraction);
  int64_t n_val = static_cast<int64_t>(std::llround(val_fraction * static_cast<double>(n_docs)));
  if (val_fraction > 0.0) {
    HALO_CHECK(n_docs >= 2, "split_documents: cannot hold out a validation set from ", n_docs,
               " document(s); give val_data or set val_fraction = 0");
    n_val = std::clamp<int64_t>(n_val, 1, n_docs - 1);
  }
  std::vector<int64_t> order(static_cast<size_t>(n_docs));
  for (int64_t i = 0; i < n_docs; ++i) order[i] = i;
  shuffle(order, seed, kSplitStream);
  DocumentSplit s;
  s.val.assign(order.begin(), order.begin() + n_val);
  s.train.assign(order.begin() + n_val, order.end());
  std::sort(s.val.begin(), s.val.end());
  std::sort(s.train.begin(), s.train.end());
  return s;
}

std::vector<int64_t> all_documents(const TokenFile& file) {
  std::vector<int64_t> out(static_cast<size_t>(file.num_docs()));
  for (int64_t i = 0; i < file.num_docs(); ++i) out[i] = i;
  return out;
}

// ---- batcher --------------------------------------------------------------------------

Packing parse_packing(std::string_view name) {
  if (name == "pack") return Packing::pack;
  if (name == "pad") return Packing::pad;
  HALO_FAIL("unknown packing '", name, "' (pack: documents laid end to end; pad: each document starts a row)");
}

Batcher::Batcher(const TokenFile& file, std::vector<int64_t> docs, int64_t rows, int64_t seq_len, bool shuffle,
                 uint64_t seed, Packing packing)
    : file_(&file),
      docs_(std::move(docs)),
      rows_(rows),
      seq_len_(seq_len),
      shuffle_(shuffle),
      seed_(seed),
      packing_(packing) {
  HALO_CHECK(rows >= 1 && seq_len >= 1, file.path(), ": batches need rows >= 1 and seq_len >= 1, got ", rows,
             " x ", seq_len);
  for (const int64_t d : docs_) {
    const int64_t len = file.doc_length(d);  // also checks the range
    total_tokens_ += len;
    total_targets_ += file.doc_targets(d);
    total_rows_ += (len + seq_len - 1) / seq_len;
  }
  HALO_CHECK(total_tokens_ > 0, file.path(), ": no tokens to make batches of (", docs_.size(), " documents)");
}

std::vector<int64_t> Batcher::epoch_order(int64_t epoch) const {
  std::vector<int64_t> order = docs_;
  if (shuffle_) shuffle(order, seed_, kShuffleStream + static_cast<uint64_t>(epoch));
  return order;
}

int64_t Batcher::batches_per_epoch() const {
  if (packing_ == Packing::pad) return (total_rows_ + rows_ - 1) / rows_;
  const int64_t per_batch = rows_ * seq_len_;
  return (total_tokens_ + per_batch - 1) / per_batch;
}

void Batcher::set_position(const DataPosition& pos) {
  HALO_CHECK(pos.epoch >= 0 && pos.index >= 0 && pos.index < static_cast<int64_t>(docs_.size()), file_->path(),
             ": data position (epoch ", pos.epoch, ", document ", pos.index, ") lies outside the ", docs_.size(),
             " documents");
  const int64_t len = file_->doc_length(epoch_order(pos.epoch)[pos.index]);
  HALO_CHECK(pos.offset >= 0 && pos.offset < len, file_->path(), ": data position offset ", pos.offset,
             " lies outside document ", pos.index, " of epoch ", pos.epoch, " (", len, " tokens)");
  pos_ = pos;
}

Batch Batcher::next() {
  if (order_epoch_ != pos_.epoch) {
    order_ = epoch_order(pos_.epoch);
    order_epoch_ = pos_.epoch;
  }
  const int64_t n = rows_ * seq_len_;
  Batch b;
  b.rows = rows_;
  b.seq_len = seq_len_;
  b.input_ids = Tensor::empty({n}, DType::i32);
  b.targets = Tensor::empty({n}, DType::i32);
  b.positions = Tensor::empty({n}, DType::i32);
  b.doc_ids = Tensor::empty({n}, DType::i32);
  int32_t* ids = b.input_ids.data_as<int32_t>();
  int32_t* tgt = b.targets.data_as<int32_t>();
  int32_t* pos = b.positions.data_as<int32_t>();
  int32_t* did = b.doc_ids.data_as<int32_t>();
  const int64_t n_docs = static_cast<int64_t>(order_.size());

  for (int64_t r = 0; r < rows_; ++r) {
    int32_t piece = 0;         // doc_id of the current piece in this row
    int64_t piece_start = 0;   // where it began in the row
    bool padding = false;      // the rest of the row is padding
    bool row_closed = false;   // Packing::pad: a document ended in this row
    for (int64_t t = 0; t < seq_len_; ++t) {
      const int64_t i = r * seq_len_ + t;
      if (pos_.index >= n_docs || row_closed) {  // the epoch's documents are used up, or pad to the row's end
        if (!padding && t > 0) ++piece, piece_start = t;
        padding = true;
        ids[i] = 0;
        tgt[i] = kIgnoreTarget;
      } else {
        const int64_t d = order_[pos_.index];
        const std::span<const uint32_t> doc = file_->doc(d);
        const std::span<const uint8_t> mask = file_->doc_mask(d);
        if (pos_.offset == 0 && t > 0) ++piece, piece_start = t;
        const int64_t k = pos_.offset;
        const bool target = k + 1 < static_cast<int64_t>(doc.size()) && (mask.empty() || mask[k + 1]);
        ids[i] = static_cast<int32_t>(doc[k]);
        tgt[i] = target ? static_cast<int32_t>(doc[k + 1]) : kIgnoreTarget;
        if (++pos_.offset == static_cast<int64_t>(doc.size())) {
          ++pos_.index, pos_.offset = 0;
          row_closed = packing_ == Packing::pad;
        }
      }
      pos[i] = static_cast<int32_t>(t - piece_start);
      did[i] = piece;
      if (tgt[i] >= 0) ++b.counted;
    }
  }
  if (pos_.index >= n_docs) pos_ = {pos_.epoch + 1, 0, 0};
  return b;
}

}  // namespace halo
