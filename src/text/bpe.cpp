#include "text/bpe.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "text/unicode.h"

namespace halo::text {

uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0xFF51AFD7ED558CCDull);
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    p += 8;
    n -= 8;
  }
  if (n) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * 0x94D049BB133111EBull;
    h ^= h >> 29;
  }
  h *= 0x9E3779B97F4A7C15ull;
  return h ^ (h >> 32);
}

BpeModel::BpeModel(BpeOptions options, const std::vector<std::pair<std::string, uint32_t>>& vocab,
                   const std::vector<BpeMerge>& merges)
    : options_(std::move(options)) {
  for (const auto& [key, id] : vocab) vocab_.insert(key, id);
  for (int b = 0; b < 256; ++b) {
    const char byte = static_cast<char>(b);
    const uint32_t* id = vocab_.find(std::string_view(&byte, 1));
    byte_ids_[b] = id ? static_cast<int32_t>(*id) : -1;
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    id = vocab_.find(name);
    fallback_ids_[b] = id ? static_cast<int32_t>(*id) : -1;
  }
  size_t capacity = 2;
  int bits = 1;
  while (capacity < merges.size() * 2) capacity *= 2, ++bits;
  merges_.assign(capacity, MergeSlot{kNoPair, 0, 0});
  merge_mask_ = capacity - 1;
  merge_shift_ = 64 - bits;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const BpeMerge& m = merges[rank];
    const uint64_t key = (static_cast<uint64_t>(m.left) << 32) | m.right;
    size_t i = (key * 0x9E3779B97F4A7C15ull) >> merge_shift_;
    while (merges_[i].key != kNoPair && merges_[i].key != key) i = (i + 1) & merge_mask_;
    // A repeated pair takes its last rank, as Hugging Face's merge map (a hash map
    // collected from the list in order).
    if (merges_[i].key != key) ++merge_count_;
    merges_[i] = {key, static_cast<uint32_t>(rank), m.merged};
  }
}

void BpeModel::initial_symbols(std::string_view word, BpeCache& cache) const {
  auto& symbols = cache.symbols_;
  symbols.clear();
  auto push = [&](uint32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1});
  };
  // A pending unknown token (fused over adjacent unknown characters with fuse_unk).
  bool unk_pending = false;
  auto unknown = [&](std::string_view what) {
    HALO_CHECK(options_.unk_id, "tokenizer: no token for '", what, "' and no unk_token in the BPE model");
    if (unk_pending && !options_.fuse_unk) push(*options_.unk_id);
    unk_pending = true;
  };
  const bool affixes = !options_.continuing_subword_prefix.empty() || !options_.end_of_word_suffix.empty();
  if (options_.byte_level && !affixes) {
    for (char ch : word) {
      const int32_t id = byte_ids_[static_cast<unsigned char>(ch)];
      if (id >= 0) {
        if (unk_pending) push(*options_.unk_id), unk_pending = false;
        push(static_cast<uint32_t>(id));
      } else {
        unknown(std::string_view(&ch, 1));
      }
    }
  } else {
    std::string& key = cache.key_;
    for (size_t i = 0; i < word.size();) {
      int len = 1;
      if (!options_.byte_level) {
        uint32_t cp;
        len = utf8_decode(word, i, &cp);
      }
      const std::string_view ch = word.substr(i, len);
      std::string_view lookup = ch;
      if (affixes) {
        key.clear();
        if (i > 0) key += options_.continuing_subword_prefix;
        key += ch;
        if (i + len == word.size()) key += options_.end_of_word_suffix;
        lookup = key;
      }
      i += len;
      if (const uint32_t* id = vocab_.find(lookup)) {
        if (unk_pending) push(*options_.unk_id), unk_pending = false;
        push(*id);
        continue;
      }
      if (options_.byte_fallback) {
        bool all = true;
        for (char b : lookup) all = all && fallback_ids_[static_cast<unsigned char>(b)] >= 0;
        if (all) {
          // As Hugging Face: a pending unknown token stays pending across byte pieces.
          for (char b : lookup) push(static_cast<uint32_t>(fallback_ids_[static_cast<unsigned char>(b)]));
          continue;
        }
      }
      unknown(lookup);
    }
  }
  if (unk_pending) push(*options_.unk_id);
  if (!symbols.empty()) symbols.back().next = -1;
}

void BpeModel::merge_all(BpeCache& cache) const {
  auto& symbols = cache.symbols_;
  if (symbols.size() <= 16) {
    // Short words: scan the pairs for the lowest rank (leftmost first) each round.
    uint32_t ids[16], ranks[16], merged[16];
    size_t n = symbols.size();
    auto pair = [&](size_t i) {
      const MergeSlot* m = find_merge(ids[i], ids[i + 1]);
      ranks[i] = m ? m->rank : UINT32_MAX;
      merged[i] = m ? m->merged : 0;
    };
    for (size_t i = 0; i < n; ++i) ids[i] = symbols[i].id;
    for (size_t i = 0; i + 1 < n; ++i) pair(i);
    while (n > 1) {
      size_t best = 0;
      for (size_t i = 1; i + 1 < n; ++i)
        if (ranks[i] < ranks[best]) best = i;
      if (ranks[best] == UINT32_MAX) break;
      ids[best] = merged[best];
      for (size_t i = best + 1; i + 1 < n; ++i) {
        ids[i] = ids[i + 1];
        ranks[i] = ranks[i + 1];
        merged[i] = merged[i + 1];
      }
      --n;
      if (best > 0) pair(best - 1);
      if (best + 1 < n) pair(best);
    }
    for (size_t i = 0; i < n; ++i)
      symbols[i] = {ids[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
    symbols.resize(n);
    return;
  }
  auto& heap = cache.heap_;
  heap.clear();
  // Lowest rank first, then leftmost.
  auto later = [](const BpeCache::Candidate& a, const BpeCache::Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeSlot* m = find_merge(symbols[i].id, symbols[i + 1].id))
      heap.push_back({m->rank, static_cast<uint32_t>(i), m->merged});
  }
  std::make_heap(heap.begin(), heap.end(), later);
  constexpr uint32_t kGone = UINT32_MAX;
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const BpeCache::Candidate top = heap.back();
    heap.pop_back();
    BpeCache::Symbol& left = symbols[top.pos];
    if (left.id == kGone || left.next < 0) continue;
    const BpeCache::Symbol& right = symbols[left.next];
    const MergeSlot* m = find_merge(left.id, right.id);
    if (!m || m->merged != top.merged) continue;  // stale: the pair changed since
    const int32_t gone = left.next;
    left.id = top.merged;
    left.next = right.next;
    symbols[gone].id = kGone;
    if (left.next >= 0) symbols[left.next].prev = static_cast<int32_t>(top.pos);
    if (left.prev >= 0) {
      if (const MergeSlot* p = find_merge(symbols[left.prev].id, left.id)) {
        heap.push_back({p->rank, static_cast<uint32_t>(left.prev), p->merged});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
    if (left.next >= 0) {
      if (const MergeSlot* n = find_merge(left.id, symbols[left.next].id)) {
        heap.push_back({n->rank, top.pos, n->merged});
        std::push_heap(heap.begin(), heap.end(), later);
      }
    }
  }
}

void BpeModel::encode_word(std::string_view word, std::vector<uint32_t>& out, BpeCache& cache) const {
  const std::string_view sep = options_.separator;
  if (sep.empty() || word.size() <= 64) {
    encode_part(word, out, cache);
    return;
  }
  size_t begin = 0;
  for (size_t at = word.find(sep, 1); at != std::string_view::npos; at = word.find(sep, at + sep.size())) {
    if (at >= sep.size() && word.substr(at - sep.size(), sep.size()) == sep) continue;  // a run of separators
    if (at > begin) encode_part(word.substr(begin, at - begin), out, cache);
    begin = at;
  }
  encode_part(word.substr(begin), out, cache);
}

void BpeModel::encode_part(std::string_view word, std::vector<uint32_t>& out, BpeCache& cache) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (const uint32_t* id = vocab_.find(word)) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() <= 256;
  if (cacheable) {
    if (const BpeCache::Span* hit = cache.words_.find(word)) {
      out.insert(out.end(), cache.ids_.begin() + hit->offset, cache.ids_.begin() + hit->offset + hit->count);
      return;
    }
  }
  initial_symbols(word, cache);
  if (cache.symbols_.size() > 1) merge_all(cache);
  const size_t first = out.size();
  for (int32_t i = cache.symbols_.empty() ? -1 : 0; i >= 0; i = cache.symbols_[i].next)
    out.push_back(cache.symbols_[i].id);
  if (cacheable) {
    if (cache.words_.size() >= cache.max_words_ || cache.ids_.size() > (size_t{1} << 24)) cache.clear();
    const auto count = static_cast<uint32_t>(out.size() - first);
    cache.words_.insert(word, {static_cast<uint32_t>(cache.ids_.size()), count});
    cache.ids_.insert(cache.ids_.end(), out.begin() + first, out.end());
  }
}

}  // namespace halo::text
