// The shape of a Llama-family model, read from and written to a Hugging Face
// config.json. Supported: model_type llama (Llama 2/3, SmolLM/SmolLM2, ...),
// mistral and qwen2; all use RMSNorm, RoPE, grouped-query attention and a
// SwiGLU MLP and differ only in the fields below.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace halo {

// RoPE frequency scaling ("rope_scaling" in config.json).
struct RopeScaling {
  std::string rope_type;  // "llama3" (Llama 3.1/3.2) or "linear"
  double factor = 1.0;
  // llama3 only: wavelengths above original_max / low_freq_factor are slowed by
  // `factor`, below original_max / high_freq_factor kept, interpolated between.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
  bool operator==(const RopeScaling&) const = default;
};

struct ModelConfig {
  std::string model_type = "llama";  // llama, mistral or qwen2
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // config default: num_attention_heads
  int64_t head_dim = 0;             // config default: hidden_size / num_attention_heads
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;  // none: plain RoPE
  bool tie_word_embeddings = false;         // lm_head shares embed_tokens' weight
  // Biases. llama: attention_bias puts one on q, k, v and o, mlp_bias on the
  // MLP; qwen2: always on q, k, v, never on o; mistral: none.
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  std::optional<int64_t> sliding_window;  // mistral's attention window; none: full causal
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // config.json's eos_token_id: an int or a list
  std::optional<int64_t> pad_token_id;
  std::string torch_dtype;  // the checkpoint's dtype, e.g. "bfloat16"; empty if absent

  bool operator==(const ModelConfig&) const = default;
};

// Parses a config.json document; `source` names it in errors, which also name
// the key: a missing required key, a wrong type, an unsupported model type or
// RoPE scaling, inconsistent sizes.
ModelConfig parse_config(const nlohmann::json& j, const std::string& source = "config.json");
// Reads `path`: a config.json, or a directory holding one.
ModelConfig load_config(const std::string& path);
// Throws if the sizes are not a model we can build (parse_config calls it; a
// config made in code should too).
void check_config(const ModelConfig& c, const std::string& source = "config");

// A config.json transformers loads into the matching *ForCausalLM.
nlohmann::json to_json(const ModelConfig& c);
void save_config(const ModelConfig& c, const std::string& path);  // atomic

// RoPE inverse frequencies, head_dim / 2 of them: theta^(-2i / head_dim),
// then rope_scaling applied. (transformers computes these in float32; these
// are exact to double precision.)
std::vector<double> rope_inv_freq(const ModelConfig& c);

// A tensor of the Hugging Face checkpoint, by its name there.
struct TensorSpec {
  std::string name;
  Shape shape;
};
// Every tensor the checkpoint holds, in the order transformers creates them:
// embed_tokens, each layer (q, k, v, o, gate, up, down, the two norms), norm,
// lm_head (absent when tied).
std::vector<TensorSpec> hf_tensors(const ModelConfig& c);

// Parameter counts (tied embeddings count once). Non-embedding excludes
// embed_tokens and an untied lm_head: the count scaling laws use.
int64_t count_parameters(const ModelConfig& c);
int64_t count_non_embedding_parameters(const ModelConfig& c);

}  // namespace halo
