// A llama.cpp GGUF model as a Hugging Face model directory: config.json from
// the metadata, the tensors dequantized under their Hugging Face names
// (model.safetensors), and the embedded tokenizer as tokenizer.json and
// tokenizer_config.json.
//
// Architectures: "llama" (Llama 2/3, SmolLM/SmolLM2, Mistral as llama.cpp
// converts it) and "qwen2". Metadata keys read, for ARCH the architecture:
//   ARCH.context_length            -> max_position_embeddings
//   ARCH.embedding_length          -> hidden_size
//   ARCH.block_count               -> num_hidden_layers
//   ARCH.feed_forward_length       -> intermediate_size
//   ARCH.attention.head_count      -> num_attention_heads
//   ARCH.attention.head_count_kv   -> num_key_value_heads (default: head_count)
//   ARCH.attention.key_length      -> head_dim (default: embedding_length / head_count)
//   ARCH.attention.layer_norm_rms_epsilon -> rms_norm_eps
//   ARCH.rope.freq_base            -> rope_theta (default 10000)
//   ARCH.rope.dimension_count      must equal head_dim (no partial rotary)
//   ARCH.rope.scaling.type/.factor -> rope_scaling "linear"; a rope_freqs.weight
//                                     tensor -> "llama3" (its factors checked)
//   ARCH.vocab_size, else the length of tokenizer.ggml.tokens -> vocab_size
//   tokenizer.ggml.{bos,eos,padding}_token_id -> bos/eos/pad_token_id
//   no output.weight tensor        -> tie_word_embeddings
// Tensors: token_embd, output_norm, output, and per block N attn_norm, attn_q,
// attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down (.weight,
// .bias) map one to one onto model.embed_tokens, model.norm, lm_head and
// model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
// post_attention_layernorm, mlp.{gate,up,down}_proj}.
//
// llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute) reorders
// the rows of the llama q and k projections (weights and biases) for its RoPE,
// which rotates adjacent pairs (x[2i], x[2i+1]) where Hugging Face's
// rotate_half rotates the halves (x[i], x[i + D/2]). Within each head of D
// rows, Hugging Face's row s * D/2 + i (s = 0, 1; i < D/2) is GGUF's row
// 2 i + s. The import undoes it (k uses the key/value head count); qwen2
// files are not permuted.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace halo {

// The model's shape from the metadata; errors name the file and the key.
ModelConfig gguf_model_config(const GgufReader& g);

// "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"; "" for a
// name with no Hugging Face counterpart.
std::string gguf_to_hf_name(const std::string& gguf_name);

// Rows of w ([heads * D, ...] or [heads * D]) reordered per head as llama.cpp's
// converter does (permute: Hugging Face -> GGUF), and back (unpermute).
Tensor gguf_permute_qk(const Tensor& w, int64_t heads);
Tensor gguf_unpermute_qk(const Tensor& w, int64_t heads);

// Progress: a tensor finished (index from 1, of total), with its GGUF name.
using GgufProgress = std::function<void(size_t done, size_t total, const std::string& name)>;

// Every tensor of the model under its Hugging Face name, decoded to `dtype`
// (f32 or bf16) and un-permuted. Errors name the file and the tensor: no
// counterpart, a shape other than the config implies, missing, undecodable type.
NamedTensors gguf_hf_tensors(const GgufReader& g, const ModelConfig& c, DType dtype,
                             const GgufProgress& progress = {});

// tokenizer.json and tokenizer_config.json for the embedded tokenizer:
// tokenizer.ggml.model "gpt2" (byte-level BPE) with tokenizer.ggml.pre one of
// gpt2, smollm, llama-bpe, qwen2. Throws naming the reason otherwise.
struct HfTokenizerFiles {
  nlohmann::json tokenizer;
  nlohmann::json tokenizer_config;
};
HfTokenizerFiles gguf_hf_tokenizer(const GgufReader& g);

struct GgufConvertOptions {
  DType dtype = DType::bf16;  // of model.safetensors: bf16 or f32
  std::function<void(const std::string&)> log;  // progress lines; none: quiet
};
struct GgufConvertResult {
  ModelConfig config;
  std::vector<std::string> files;  // written into the directory
  std::string tokenizer_note;      // why no tokenizer was written; empty when one was
};
// Writes config.json, model.safetensors (or shards) and, when the file's
// tokenizer can be expressed, tokenizer.json and tokenizer_config.json into
// out_dir (created if missing).
GgufConvertResult convert_gguf(const std::string& gguf_path, const std::string& out_dir,
                               const GgufConvertOptions& options = {});

}  // namespace halo
