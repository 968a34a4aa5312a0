// Text generation with a key/value cache, on the CPU or one GPU: batched
// prompts of different lengths, greedy or sampled (temperature, top-p),
// stopping at given tokens.
//
// The model's weights are read as plain tensors (LlamaModel::weights()) and
// every matmul runs in the model's dtype (f32 on the CPU, bf16 on the GPU),
// not in its training recipe's 8-bit formats. Per layer the cache holds the
// keys (after RoPE) and values of every sequence, [S, Tmax, Hkv, D].
//
// generate(): all prompts are prefilled (packed into one pass per ~4096
// tokens, as documents of one row: the existing attention forward), then every
// unfinished sequence advances one token per step (decode_attention over its
// cache). Each token is chosen on the host from its row of logits, except for
// greedy decoding, where the argmax runs on the model's device.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "core/tensor.h"

namespace halo {

class LlamaModel;

struct GenerateOptions {
  int64_t max_new_tokens = 256;
  float temperature = 0.0f;       // 0: greedy (argmax)
  float top_p = 1.0f;             // nucleus sampling when temperature > 0
  uint64_t seed = 0;              // sampling: the same seed gives the same tokens
  std::vector<uint32_t> stop_ids; // a sequence ends after producing one of these (it is kept)
};

// Counts and wall-clock times of one generate() call.
struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;
  double prefill_seconds = 0.0;  // the prompts, up to and including the choice of each first new token
  double decode_seconds = 0.0;   // every later step
};

// Called as each new token of prompt `index` is chosen (for streaming output).
using TokenCallback = std::function<void(size_t index, uint32_t token)>;

// The new tokens of each prompt (prompt tokens not included), at most
// max_new_tokens each; a sequence also ends at max_position_embeddings tokens,
// its prompt included (at one new token where the longest prompt is that long
// already). The model is only read (inference in its dtype).
// Prompts must be non-empty, with ids below the vocabulary size. Sampling:
// token k of prompt i draws uniform01(seed, i, k) (core/rng.h), so a seed
// reproduces the output on one device whatever the batching around it.
std::vector<std::vector<uint32_t>> generate(LlamaModel& model, const std::vector<std::vector<uint32_t>>& prompts,
                                            const GenerateOptions& options, const TokenCallback& on_token = {},
                                            GenerateStats* stats = nullptr);

// The choice of one token from its logits (f32, host). temperature <= 0:
// the argmax (ties: the lowest id; NaN as -inf). Otherwise p_j ~ exp((l_j -
// max) / temperature) (in f64), the kept set is the fewest most probable
// tokens (ties: lower id first) whose p sum to >= top_p of the total (at
// least one), and with u = uniform01(seed, stream, index) the token is the
// first of the kept ones, in ascending id, whose cumulative p exceeds u times
// their sum.
uint32_t sample_token(std::span<const float> logits, float temperature, float top_p, uint64_t seed, uint64_t stream,
                      uint64_t index);

// Incremental inference with a key/value cache: what generate() runs, open
// for tests and other decoding loops.
class KvDecoder {
 public:
  // Caches for `sequences` sequences of up to `max_len` tokens each, allocated
  // at once on the model's device (2 L sequences max_len Hkv D elements).
  KvDecoder(LlamaModel& model, int64_t sequences, int64_t max_len);
  ~KvDecoder();
  KvDecoder(const KvDecoder&) = delete;
  KvDecoder& operator=(const KvDecoder&) = delete;

  // Appends tokens[k] (non-empty) to sequence seqs[k] (distinct, in [0,
  // sequences)) and runs them through the model, attending to what each
  // sequence holds already. Returns logits in the model's dtype on its
  // device: [seqs.size(), V], each sequence's last new token, or with
  // every_position [all new tokens, V] in the order given. When every listed
  // sequence is empty this is a prefill (the attention forward over the
  // prompts packed as documents); otherwise decode_attention over the cache.
  Tensor append(const std::vector<int64_t>& seqs, const std::vector<std::vector<uint32_t>>& tokens,
                bool every_position = false);

  int64_t length(int64_t seq) const;  // tokens held
  void reset(int64_t seq);            // empties one sequence (its slot can take a new prompt)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace halo
