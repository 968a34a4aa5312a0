// A learnable synthetic corpus, for trying the trainer and testing it without
// a tokenizer or a dataset (`halo data synth` writes it to a token file).
// Each document is one of two patterns, drawn from (seed, document index):
//   counting  a, a + d, a + 2d, ... (mod vocab), a random, d in 1..4
//   motif     m random tokens (m in 2..8) repeated to the document's length
// Only a document's first tokens (its start, or its motif) are random; the
// rest follow from them, so a model's loss can fall far below ln(vocab).
#pragma once
#include <cstdint>
#include <vector>

namespace halo {

// n_docs documents of lengths uniform in [min_len, max_len] (min_len >= 2),
// token ids in [0, vocab) (vocab >= 16). The same documents for a seed.
std::vector<std::vector<uint32_t>> synthetic_documents(int64_t n_docs, int64_t vocab, uint64_t seed,
                                                       int64_t min_len = 16, int64_t max_len = 128);

}  // namespace halo
