#include "data/synthetic.h"

#include <algorithm>

#include "core/error.h"
#include "core/rng.h"

namespace halo {

namespace {

// Uniform integer in [lo, hi] from (seed, doc, index) of the counter-based RNG.
int64_t draw(uint64_t seed, int64_t doc, uint64_t index, int64_t lo, int64_t hi) {
  const int64_t n = hi - lo + 1;
  const auto u = static_cast<double>(uniform01(seed, static_cast<uint64_t>(doc), index));
  return lo + std::min<int64_t>(n - 1, static_cast<int64_t>(u * static_cast<double>(n)));
}

}  // namespace

std::vector<std::vector<uint32_t>> synthetic_documents(int64_t n_docs, int64_t vocab, uint64_t seed, int64_t min_len,
                                                       int64_t max_len) {
  HALO_CHECK(n_docs > 0, "synthetic_documents: the document count must be positive, got ", n_docs);
  HALO_CHECK(vocab >= 16 && vocab <= (int64_t{1} << 31), "synthetic_documents: vocab must lie in [16, 2^31], got ",
             vocab);
  HALO_CHECK(min_len >= 2 && max_len >= min_len, "synthetic_documents: need 2 <= min_len <= max_len, got ", min_len,
             " and ", max_len);
  std::vector<std::vector<uint32_t>> docs(static_cast<size_t>(n_docs));
  for (int64_t d = 0; d < n_docs; ++d) {
    std::vector<uint32_t>& out = docs[static_cast<size_t>(d)];
    out.resize(static_cast<size_t>(draw(seed, d, 0, min_len, max_len)));
    const auto len = static_cast<int64_t>(out.size());
    if (draw(seed, d, 1, 0, 1) == 0) {  // counting
      const int64_t start = draw(seed, d, 2, 0, vocab - 1), stride = draw(seed, d, 3, 1, 4);
      for (int64_t t = 0; t < len; ++t) out[t] = static_cast<uint32_t>((start + t * stride) % vocab);
    } else {  // a motif, repeated
      const int64_t m = draw(seed, d, 2, 2, 8);
      for (int64_t t = 0; t < len; ++t)
        out[t] = t < m ? static_cast<uint32_t>(draw(seed, d, 16 + static_cast<uint64_t>(t), 0, vocab - 1)) : out[t - m];
    }
  }
  return docs;
}

}  // namespace halo
