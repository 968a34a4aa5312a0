// A Llama-family causal language model (Llama 2/3, Mistral, Qwen2, SmolLM)
// with explicit forward and backward, on the CPU (f32) or one GPU (bf16).
//
// Block l (x: the residual stream [rows * T, hidden]):
//   a   = rmsnorm(x) * input_layernorm
//   q, k, v = split(a [Wq; Wk; Wv]^T (+ b)),  RoPE on q and k
//   x  += attention(q, k, v) Wo^T (+ b)        causal, GQA, within documents
//   m   = rmsnorm(x) * post_attention_layernorm
//   x  += swiglu(m [Wg; Wu]^T) Wd^T
// then logits = rmsnorm(x) * norm  W_lm^T, cross-entropy against the targets.
// q/k/v and gate/up are each one HaloLinear (one quantization of their shared
// input); load() and save() split and join them in Hugging Face names. Recipes
// with INT8 gradients under one scale per tensor keep q, k and v as three
// linears instead (separate_qkv), so that q and k do not share v's scale. The
// seven block linears use ModelOptions::recipe; the LM head its own recipe
// (bf16 by default), run over chunks of tokens so the full logits never sit in
// memory.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "halo/recipe.h"
#include "model/batch.h"
#include "model/config.h"
#include "model/parameter.h"

namespace halo {

struct ModelOptions {
  Recipe recipe;           // the block linears
  Recipe lm_head_recipe;   // bf16 unless asked otherwise
  Device device = Device::cpu;
  DType dtype = DType::f32;  // weights and activations the forward reads: f32 (CPU) or bf16
  bool recompute = false;    // keep only each block's input; recompute the rest in backward
  int64_t lm_head_chunk = 0; // tokens per LM-head chunk; 0: chosen from the vocabulary size
  uint64_t seed = 0;         // stochastic rounding streams of the HALO linears
  // The linears' weight gradients (block linears and an untied LM head): f32, or
  // bf16 on the GPU (as PyTorch keeps them with bf16 weights). Norm weights,
  // biases and the embedding keep f32 gradients.
  DType grad_dtype = DType::f32;
};

// Device memory the model itself holds during a training step, in bytes.
struct ModelMemory {
  int64_t weights = 0;      // what the forward reads (incl. the cached 8-bit weights)
  int64_t gradients = 0;    // gradients (f32; bf16 where ModelOptions::grad_dtype says)
  int64_t activations = 0;  // saved for the backward, at the peak (all blocks, or one with recompute)
  int64_t workspace = 0;    // transient buffers at the peak (LM-head chunk, GEMM scratch)
};

// Where each Hugging Face tensor of a checkpoint lives among the model's
// parameters: rows [row, row + shape[0]) of the Parameter named `param`
// (q, k, v in "...self_attn.qkv_proj.*", gate, up in "...mlp.gate_up_proj.*";
// every other tensor is a whole Parameter of its own name, row 0). In
// hf_tensors() order; tied models have no lm_head.weight.
struct HfSlice {
  std::string hf_name;
  std::string param;
  int64_t row = 0;
  Shape shape;
};
std::vector<HfSlice> hf_slices(const ModelConfig& c);  // the fused q|k|v layout

// Whether a model whose block linears run `recipe` keeps q, k and v as three
// linears, with Parameters of their Hugging Face names ("...self_attn.q_proj.*"
// etc.), instead of one fused q|k|v: for INT8 gradients with one scale per
// tensor. The gradient of a fused q|k|v output would share one INT8 scale, set
// by v's gradients, which can be orders of magnitude larger than q's and k's
// (near-uniform attention): theirs would round to zero.
bool separate_qkv(const Recipe& recipe);
// The slices of a model whose block linears run `recipe` (the fused q|k|v
// layout, or separate q, k, v Parameters where separate_qkv(recipe)).
std::vector<HfSlice> hf_slices(const ModelConfig& c, const Recipe& recipe);

// The tensors the forward reads, for inference code outside the model
// (model/generate.cpp runs them with a key/value cache): views of the model's
// own storage (they follow later optimizer updates), in the model's dtype, on
// its device. Hugging Face layouts: a weight is [out, in]; biases undefined
// where the config has none.
struct LlamaLayerWeights {
  Tensor ln1, ln2;                 // input_layernorm, post_attention_layernorm [d]
  std::vector<Tensor> qkv_weight;  // {q|k|v [(Hq + 2 Hkv) D, d]} fused, or {q, k, v} (separate_qkv)
  std::vector<Tensor> qkv_bias;    // one per qkv_weight entry (each undefined without bias)
  Tensor o_weight, o_bias;              // [d, Hq D]
  Tensor gate_up_weight, gate_up_bias;  // [2F, d]: gate rows, then up
  Tensor down_weight, down_bias;        // [d, F]
};
struct LlamaWeights {
  Tensor embed;  // [V, d]
  std::vector<LlamaLayerWeights> layers;
  Tensor norm;      // [d]
  Tensor lm_head;   // [V, d] (the embedding itself when tied)
  Tensor inv_freq;  // f32 [D / 2]: RoPE inverse frequencies (rope.h)
};

class LlamaModel {
 public:
  // Weights are allocated, not initialized: call init_weights() or load().
  LlamaModel(const ModelConfig& config, const ModelOptions& options);
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const;
  const ModelOptions& options() const;

  // Hugging Face's initialization: linears and embeddings normal(0, 0.02),
  // norms 1, biases 0; the same values on every device for a seed.
  void init_weights(uint64_t seed);
  // A Hugging Face model directory (model.safetensors, or shards with
  // model.safetensors.index.json; bf16, f16 or f32). Errors name the file and
  // the tensor: missing, unexpected shape, unsupported dtype.
  void load(const std::string& dir);
  // config.json and model.safetensors (tensors in `dtype`, Hugging Face names),
  // each written atomically; transformers loads the directory unchanged.
  void save(const std::string& dir, DType dtype) const;

  std::vector<Parameter> parameters();
  void zero_grad();

  // Forward and backward of one micro-batch (on the model's device): adds the
  // gradient of loss_scale * (sum of the counted tokens' losses) to every
  // parameter's gradient, and the unscaled sum of losses to loss_sum (f32 [1]
  // on the device). No host synchronisation.
  void forward_backward(const Batch& batch, float loss_scale, Tensor& loss_sum);
  // forward_backward calls so far: they number the stochastic-rounding streams
  // of the linears' gradients (HaloLinear::begin_pass). A checkpoint saves it and
  // a resume sets it back, so that the continued run rounds the same way.
  uint64_t backward_passes() const;
  void set_backward_passes(uint64_t n);
  // Evaluation: adds the sum of losses to loss_sum; no gradients, nothing saved.
  void forward_loss(const Batch& batch, Tensor& loss_sum);
  // Full logits, f32 [rows * T, vocab], for tests and small models.
  Tensor logits(const Batch& batch);

  // The weights as plain tensors (see LlamaWeights), for inference.
  LlamaWeights weights() const;

  ModelMemory memory(int64_t rows, int64_t seq_len) const;
  // Training FLOPs per token (forward + backward) at this sequence length:
  // 6 * (non-embedding params + LM head) + causal attention, for MFU.
  double train_flops_per_token(int64_t seq_len) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace halo
