// The Llama-family model (llama.h): weights, the explicit forward and
// backward of each block, the LM head with cross-entropy in chunks of tokens,
// and Hugging Face checkpoints in and out.
//
// Names below: N = rows * T tokens, d = hidden_size, Hq / Hkv query / kv
// heads of D = head_dim, F = intermediate_size, V = vocab_size, QKV = (Hq +
// 2 Hkv) D. "act" is the activation dtype (options.dtype: f32 on the CPU, bf16
// on the GPU); gradients of parameters are f32 (ModelOptions::grad_dtype: the
// linears' weight gradients may be bf16 on the GPU).
#include "model/llama.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <utility>

#include "core/allocator.h"
#include "core/error.h"
#include "core/rng.h"
#include "halo/linear.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "kernels/attention.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"

namespace halo {

namespace {

std::string layer_prefix(int64_t l) { return "model.layers." + std::to_string(l) + "."; }

// A distinct Philox key per linear layer (splitmix64 of seed and id), for
// the stochastic rounding of its gradients.
uint64_t mix_seed(uint64_t seed, uint64_t id) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (id + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// s with the first `from` replaced by `to` (which must occur).
std::string replace_once(std::string s, const std::string& from, const std::string& to) {
  s.replace(s.find(from), from.size(), to);
  return s;
}

std::string torch_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::bf16: return "bfloat16";
    case DType::f16: return "float16";
    default: HALO_FAIL("save: checkpoints are written in f32, bf16 or f16, not ", dtype_name(t));
  }
}

// A 1-D tensor of `value` (host), e.g. norm weights.
Tensor filled(int64_t n, float value, DType dtype) {
  Tensor t = Tensor::empty({n}, dtype);
  for (int64_t i = 0; i < n; ++i) store_float(t.data(), dtype, i, value);
  return t;
}

}  // namespace

// ideal-int8 too: its casts share no scale, but it keeps the GEMM shapes of the
// INT8 recipes it is the speed ceiling for.
bool separate_qkv(const Recipe& recipe) {
  return recipe.quantized() && recipe.grad_format == DType::i8 && recipe.granularity == Granularity::tensor;
}

std::vector<HfSlice> hf_slices(const ModelConfig& c) { return hf_slices(c, Recipe{}); }

std::vector<HfSlice> hf_slices(const ModelConfig& c, const Recipe& recipe) {
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  const int64_t F = c.intermediate_size;
  const bool fused_qkv = !separate_qkv(recipe);
  std::vector<HfSlice> out;
  for (const TensorSpec& t : hf_tensors(c)) {
    HfSlice s{t.name, t.name, 0, t.shape};
    const auto fused = [&](const char* part, const char* whole, int64_t row) {
      if (t.name.find(part) == std::string::npos) return false;
      s.param = replace_once(t.name, part, whole);
      s.row = row;
      return true;
    };
    (fused_qkv && (fused(".q_proj.", ".qkv_proj.", 0) || fused(".k_proj.", ".qkv_proj.", q) ||
                   fused(".v_proj.", ".qkv_proj.", q + kv))) ||
        fused(".gate_proj.", ".gate_up_proj.", 0) || fused(".up_proj.", ".gate_up_proj.", F);
    out.push_back(std::move(s));
  }
  return out;
}

// ---- the model's state ---------------------------------------------------------

namespace {

// The q, k and v projections of a block, with RoPE on q and k: one fused
// linear [QKV, d] (+ bias [QKV]; q rows, then k, then v: one quantization of
// their shared input and one GEMM per product), or three where
// separate_qkv(recipe). Either way forward yields q and k rotated and v, and
// backward takes their gradients. Fused, RoPE reads q and k from the fused
// output (and writes their gradients into the fused gradient): only v is copied.
struct QkvProjection {
  std::vector<std::unique_ptr<HaloLinear>> linears;  // {q|k|v} or {q, k, v}
  std::vector<std::string> names;                    // their Parameter names, without ".weight"
  std::array<int64_t, 3> widths{};                   // of q, k, v: Hq D, Hkv D, Hkv D

  // a [N, d] -> q, k (rotated by RoPE at positions), v act [N, width]; saved:
  // null, or one entry per linear.
  std::array<Tensor, 3> forward(const Tensor& a, const Tensor& positions, const Tensor& inv_freq,
                                std::array<LinearSaved, 3>* saved) {
    std::array<Tensor, 3> out;
    if (linears.size() == 3) {
      for (size_t i = 0; i < 3; ++i) out[i] = linears[i]->forward(a, saved ? &(*saved)[i] : nullptr);
      for (size_t i = 0; i < 2; ++i) rope_forward(out[i], 0, out[i], 0, widths[i], positions, inv_freq);
      return out;
    }
    const Tensor qkv = linears[0]->forward(a, saved ? &(*saved)[0] : nullptr);  // [N, QKV]
    int64_t col = 0;
    for (size_t i = 0; i < 3; ++i) {
      out[i] = Tensor::empty({a.size(0), widths[i]}, qkv.dtype(), qkv.device());
      if (i < 2) rope_forward(qkv, col, out[i], 0, widths[i], positions, inv_freq);
      else copy_columns(qkv, col, out[i], 0, widths[i]);
      col += widths[i];
    }
    return out;
  }

  // The gradients of the rotated q, k and of v [N, width] -> that of a, as one
  // term per linear (the gradient is their sum), each handed to `take` as soon
  // as it exists. The separate linears' q and k gradients are rotated in place.
  void backward(std::array<Tensor, 3> grads, const Tensor& positions, const Tensor& inv_freq,
                std::array<LinearSaved, 3>& saved, const std::function<void(Tensor)>& take) {
    if (linears.size() == 3) {
      for (size_t i = 0; i < 2; ++i) rope_backward(grads[i], 0, grads[i], 0, widths[i], positions, inv_freq);
      for (size_t i = 0; i < 3; ++i) take(linears[i]->backward(grads[i], saved[i]));
      return;
    }
    Tensor dqkv = Tensor::empty({grads[0].size(0), widths[0] + widths[1] + widths[2]}, grads[0].dtype(),
                                grads[0].device());
    int64_t col = 0;
    for (size_t i = 0; i < 3; ++i) {
      if (i < 2) rope_backward(grads[i], 0, dqkv, col, widths[i], positions, inv_freq);
      else copy_columns(grads[i], 0, dqkv, col, widths[i]);
      col += widths[i];
    }
    take(linears[0]->backward(dqkv, saved[0]));
  }
};

struct Layer {
  Tensor ln1, ln2;            // input_layernorm, post_attention_layernorm: act [d]
  Tensor ln1_grad, ln2_grad;  // f32 [d]
  QkvProjection qkv;
  std::unique_ptr<HaloLinear> o;        // [d, Hq D]
  std::unique_ptr<HaloLinear> gate_up;  // [2F, d]: gate rows, then up
  std::unique_ptr<HaloLinear> down;     // [d, F]
};

// What one block's forward keeps for its backward.
struct BlockSaved {
  Tensor x, rstd1;  // the block input (the residual stream) act [N, d]; f32 [N] of its norm
  std::array<LinearSaved, 3> qkv;  // one per q/k/v linear
  LinearSaved o, gate_up, down;
  Tensor q, k, v;      // after RoPE: act [N, Hq, D], [N, Hkv, D], [N, Hkv, D]
  Tensor attn, lse;    // attention output act [N, Hq, D]; f32 [N, Hq]
  Tensor x_mid, rstd2;  // x + attention branch act [N, d]; f32 [N] of its norm
  Tensor gate_up_out;   // act [N, 2F], the SwiGLU input (its gradient is written over it)
};

// The residual stream between blocks: x act [N, d], a = rmsnorm(x) * w act
// [N, d] (w: the next block's input_layernorm, or the final norm), rstd f32 [N].
struct Hidden {
  Tensor x, a, rstd;
};

// One batch as the blocks read it.
struct Step {
  int64_t rows = 0, T = 0, N = 0;
  Tensor ids, targets, positions;  // int32 [N] on the model's device
  AttentionOptions attn;           // rows and doc_ids
};

}  // namespace

struct LlamaModel::Impl {
  ModelConfig c;
  ModelOptions opt;
  int64_t d, Hq, Hkv, D, F, V, L, QKV;
  float eps;
  DType act;
  Device dev;

  Tensor embed;       // act [V, d]
  Tensor embed_grad;  // f32 [V, d]; undefined when tied (the LM head's gradient holds it)
  Tensor embed_rows;  // i8 [V] with embed_grad: the rows the backward wrote since zero_grad()
  std::vector<Layer> layers;
  Tensor norm, norm_grad;  // act [d]; f32 [d]
  std::unique_ptr<HaloLinear> lm_head;  // [V, d]; its weight is `embed` when tied
  uint64_t backward_passes = 0;         // forward_backward calls (stochastic-rounding streams)
  Tensor inv_freq;                      // f32 [D / 2] on the device
  std::map<std::string, Tensor> values;  // Parameter name -> the tensor the forward reads

  Impl(const ModelConfig& config, const ModelOptions& options);

  std::vector<HaloLinear*> linears() const;  // every HALO linear of the blocks, then the LM head
  Tensor slot(const HfSlice& s) const;  // the view of the parameters a checkpoint tensor fills

  Step make_step(const Batch& b, bool need_targets) const;
  std::pair<Tensor, Tensor> block_forward(int64_t l, const Step& s, const Tensor& x, const Tensor& a,
                                          const Tensor& rstd1, BlockSaved* saved);
  Tensor block_backward(int64_t l, const Step& s, BlockSaved& sv, const Tensor& dx_out);
  Hidden forward_blocks(const Step& s, std::vector<BlockSaved>* saved);
  int64_t chunk_tokens(int64_t N) const;
};

LlamaModel::Impl::Impl(const ModelConfig& config, const ModelOptions& options) : c(config), opt(options) {
  check_config(c);
  d = c.hidden_size, Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim;
  F = c.intermediate_size, V = c.vocab_size, L = c.num_hidden_layers, QKV = (Hq + 2 * Hkv) * D;
  eps = static_cast<float>(c.rms_norm_eps);
  act = opt.dtype;
  dev = opt.device;
  HALO_CHECK(act == DType::f32 || act == DType::bf16, "LlamaModel: dtype must be f32 or bf16, got ",
             dtype_name(act));
  HALO_CHECK(!(c.tie_word_embeddings && opt.lm_head_recipe.rotates()), "LlamaModel: the LM head recipe '",
             opt.lm_head_recipe.name(),
             "' rotates its weight, which a tied embedding cannot share (use bf16 or a halo0 recipe)");

  embed = Tensor::empty({V, d}, act, dev);
  values["model.embed_tokens.weight"] = embed;
  const auto linear = [&](int64_t in, int64_t out, bool bias, const Recipe& r, uint64_t id) {
    return std::make_unique<HaloLinear>(in, out, bias, r, dev, act, mix_seed(opt.seed, id), /*init=*/false);
  };
  for (int64_t l = 0; l < L; ++l) {
    Layer y;
    y.ln1 = Tensor::empty({d}, act, dev);
    y.ln2 = Tensor::empty({d}, act, dev);
    y.ln1_grad = Tensor::zeros({d}, DType::f32, dev);
    y.ln2_grad = Tensor::zeros({d}, DType::f32, dev);
    const std::string p = layer_prefix(l);
    // Stochastic-rounding ids: 4 l + 0..3 for q|k|v (or q), o, gate|up, down, 4 L
    // for the LM head, then k and v of separate projections.
    y.qkv.widths = {Hq * D, Hkv * D, Hkv * D};
    if (separate_qkv(opt.recipe)) {
      const uint64_t ids[3] = {static_cast<uint64_t>(4 * l), static_cast<uint64_t>(4 * L + 1 + 2 * l),
                               static_cast<uint64_t>(4 * L + 2 + 2 * l)};
      for (size_t i = 0; i < 3; ++i)
        y.qkv.linears.push_back(linear(d, y.qkv.widths[i], c.qkv_bias, opt.recipe, ids[i]));
      y.qkv.names = {p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"};
    } else {
      y.qkv.linears.push_back(linear(d, QKV, c.qkv_bias, opt.recipe, 4 * l));
      y.qkv.names = {p + "self_attn.qkv_proj"};
    }
    y.o = linear(Hq * D, d, c.o_bias, opt.recipe, 4 * l + 1);
    y.gate_up = linear(d, 2 * F, c.mlp_bias, opt.recipe, 4 * l + 2);
    y.down = linear(F, d, c.mlp_bias, opt.recipe, 4 * l + 3);
    values[p + "input_layernorm.weight"] = y.ln1;
    values[p + "post_attention_layernorm.weight"] = y.ln2;
    const auto add = [&](const std::string& name, HaloLinear& lin) {
      values[name + ".weight"] = lin.weight;
      if (lin.bias.defined()) values[name + ".bias"] = lin.bias;
    };
    for (size_t i = 0; i < y.qkv.linears.size(); ++i) add(y.qkv.names[i], *y.qkv.linears[i]);
    add(p + "self_attn.o_proj", *y.o);
    add(p + "mlp.gate_up_proj", *y.gate_up);
    add(p + "mlp.down_proj", *y.down);
    layers.push_back(std::move(y));
  }
  norm = Tensor::empty({d}, act, dev);
  norm_grad = Tensor::zeros({d}, DType::f32, dev);
  values["model.norm.weight"] = norm;
  lm_head = linear(d, V, false, opt.lm_head_recipe, 4 * L);
  if (c.tie_word_embeddings) {
    lm_head->weight = embed;  // shared storage: one Parameter
  } else {
    embed_grad = Tensor::zeros({V, d}, DType::f32, dev);
    embed_rows = Tensor::zeros({V}, DType::i8, dev);
    values["lm_head.weight"] = lm_head->weight;
  }
  if (opt.grad_dtype != DType::f32)  // HaloLinear refuses what it cannot hold
    for (HaloLinear* lin : linears())
      if (lin != lm_head.get() || !c.tie_word_embeddings) lin->set_weight_grad_dtype(opt.grad_dtype);
  const std::vector<double> f = rope_inv_freq(c);
  Tensor h = Tensor::empty({D / 2}, DType::f32);
  for (int64_t i = 0; i < D / 2; ++i) h.data_as<float>()[i] = static_cast<float>(f[i]);
  inv_freq = h.to(dev);
}

std::vector<HaloLinear*> LlamaModel::Impl::linears() const {
  std::vector<HaloLinear*> out;
  for (const Layer& y : layers) {
    for (const auto& lin : y.qkv.linears) out.push_back(lin.get());
    for (HaloLinear* lin : {y.o.get(), y.gate_up.get(), y.down.get()}) out.push_back(lin);
  }
  out.push_back(lm_head.get());
  return out;
}

Tensor LlamaModel::Impl::slot(const HfSlice& s) const {
  const auto it = values.find(s.param);
  HALO_CHECK(it != values.end(), "LlamaModel: no parameter '", s.param, "' for tensor '", s.hf_name, "'");
  Tensor t = it->second.rows(s.row, s.shape[0]);
  check_shape(t, s.shape, s.hf_name.c_str());
  return t;
}

LlamaModel::LlamaModel(const ModelConfig& config, const ModelOptions& options)
    : impl_(std::make_unique<Impl>(config, options)) {}
LlamaModel::~LlamaModel() = default;

const ModelConfig& LlamaModel::config() const { return impl_->c; }
const ModelOptions& LlamaModel::options() const { return impl_->opt; }

// ---- weights in and out ----------------------------------------------------------

void LlamaModel::init_weights(uint64_t seed) {
  Impl& m = *impl_;
  const std::vector<HfSlice> slices = hf_slices(m.c, m.opt.recipe);
  // Stream i of the generator belongs to the i-th checkpoint tensor, so the
  // values do not depend on how the model fuses them, nor on the device.
  for (size_t i = 0; i < slices.size(); ++i) {
    const HfSlice& s = slices[i];
    Tensor h;
    if (ends_with(s.hf_name, "norm.weight")) {
      h = filled(s.shape[0], 1.0f, m.act);
    } else if (ends_with(s.hf_name, ".bias")) {
      h = filled(s.shape[0], 0.0f, m.act);
    } else {
      h = Tensor::empty(s.shape, m.act);
      const int64_t n = h.numel();
#pragma omp parallel for schedule(static) if (n >= (1 << 16))
      for (int64_t j = 0; j < n; ++j) store_float(h.data(), m.act, j, 0.02f * normal01(seed, i, j));
      // nn.Embedding(padding_idx=pad_token_id): transformers zeroes that row.
      if (s.hf_name == "model.embed_tokens.weight" && m.c.pad_token_id && *m.c.pad_token_id < m.V)
        for (int64_t j = 0; j < m.d; ++j) store_float(h.data(), m.act, *m.c.pad_token_id * m.d + j, 0.0f);
    }
    m.slot(s).copy_from(h);
  }
  for (HaloLinear* lin : m.linears()) lin->weight_updated();
}

void LlamaModel::load(const std::string& dir) {
  Impl& m = *impl_;
  const SafetensorsReader r(dir);
  const std::vector<HfSlice> slices = hf_slices(m.c, m.opt.recipe);
  // Everything is checked before anything is copied: a bad checkpoint leaves the model as it was.
  std::set<std::string> expected;
  for (const HfSlice& s : slices) {
    HALO_CHECK(r.contains(s.hf_name), r.path(), ": missing tensor '", s.hf_name, "' (expected ",
               shape_str(s.shape), " for this config)");
    const SafetensorsEntry& e = r.entry(s.hf_name);
    HALO_CHECK(e.shape == s.shape, e.file, ": tensor '", s.hf_name, "' has shape ", shape_str(e.shape),
               ", expected ", shape_str(s.shape), " for this config");
    const auto dt = dtype_from_safetensors(e.dtype);
    HALO_CHECK(dt && (*dt == DType::f32 || *dt == DType::bf16 || *dt == DType::f16), e.file, ": tensor '",
               s.hf_name, "' has dtype ", e.dtype, ", which is not supported (F32, BF16 or F16)");
    expected.insert(s.hf_name);
  }
  for (const std::string& name : r.names()) {
    if (expected.count(name) || ends_with(name, "rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && m.c.tie_word_embeddings) continue;  // some tied checkpoints store it
    HALO_FAIL(r.entry(name).file, ": unexpected tensor '", name,
              "': the config does not describe this checkpoint");
  }
  for (const HfSlice& s : slices) m.slot(s).copy_from(r.read(s.hf_name, m.act));
  for (HaloLinear* lin : m.linears()) lin->weight_updated();
}

void LlamaModel::save(const std::string& dir, DType dtype) const {
  const Impl& m = *impl_;
  ModelConfig config = m.c;
  config.torch_dtype = torch_dtype_name(dtype);
  NamedTensors tensors;
  for (const HfSlice& s : hf_slices(m.c, m.opt.recipe)) {
    const Tensor t = m.slot(s);
    tensors[s.hf_name] = t.device() == Device::cpu && t.dtype() == dtype ? t : t.to(Device::cpu).to(dtype);
  }
  make_directories(dir);
  write_safetensors_checkpoint(dir, tensors);
  save_config(config, (std::filesystem::path(dir) / "config.json").string());
}

// ---- parameters --------------------------------------------------------------------

std::vector<Parameter> LlamaModel::parameters() {
  Impl& m = *impl_;
  std::vector<Parameter> out;
  // rows: optional, Parameter::grad_rows of the gradient.
  const auto tensor = [&](const std::string& name, const Tensor& grad, bool decay, const Tensor& rows = Tensor()) {
    std::function<Tensor()> grad_rows;
    if (rows.defined()) grad_rows = [rows] { return rows; };
    out.push_back({name, m.values.at(name), [grad] { return grad; }, {}, decay, {}, grad_rows});
  };
  const auto linear = [&](const std::string& name, HaloLinear* lin) {
    std::function<Tensor()> rotated;  // the optimizer turns a rotating recipe's gradient back itself
    if (lin->recipe().rotates()) rotated = [lin] { return lin->rotated_weight_grad(); };
    out.push_back({name + ".weight", lin->weight, [lin] { return lin->weight_grad(); },
                   [lin] { lin->weight_updated(); }, true, rotated, {}});
    if (lin->bias.defined())
      out.push_back({name + ".bias", lin->bias, [lin] { return lin->bias_grad(); }, {}, false, {}, {}});
  };
  if (m.c.tie_word_embeddings) {
    HaloLinear* head = m.lm_head.get();
    out.push_back({"model.embed_tokens.weight", m.embed, [head] { return head->weight_grad(); },
                   [head] { head->weight_updated(); }, true, {}, {}});
  } else {  // only the rows of this step's tokens can be nonzero
    tensor("model.embed_tokens.weight", m.embed_grad, true, m.embed_rows);
  }
  for (int64_t l = 0; l < m.L; ++l) {
    Layer& y = m.layers[l];
    const std::string p = layer_prefix(l);
    tensor(p + "input_layernorm.weight", y.ln1_grad, false);
    for (size_t i = 0; i < y.qkv.linears.size(); ++i) linear(y.qkv.names[i], y.qkv.linears[i].get());
    linear(p + "self_attn.o_proj", y.o.get());
    tensor(p + "post_attention_layernorm.weight", y.ln2_grad, false);
    linear(p + "mlp.gate_up_proj", y.gate_up.get());
    linear(p + "mlp.down_proj", y.down.get());
  }
  tensor("model.norm.weight", m.norm_grad, false);
  if (!m.c.tie_word_embeddings) linear("lm_head", m.lm_head.get());
  return out;
}

void LlamaModel::zero_grad() {
  Impl& m = *impl_;
  for (HaloLinear* lin : m.linears()) lin->zero_grad();  // the tied embedding's gradient too
  for (Layer& y : m.layers) {
    y.ln1_grad.fill_zero();
    y.ln2_grad.fill_zero();
  }
  m.norm_grad.fill_zero();
  if (m.embed_grad.defined()) embedding_grad_clear(m.embed_grad, m.embed_rows);  // the rows written, not 2 GB
}

// ---- forward and backward ------------------------------------------------------------

Step LlamaModel::Impl::make_step(const Batch& b, bool need_targets) const {
  HALO_CHECK(b.rows > 0 && b.seq_len > 0, "LlamaModel: empty batch (", b.rows, " rows of ", b.seq_len, ")");
  HALO_CHECK(act == (dev == Device::cpu ? DType::f32 : DType::bf16), "LlamaModel: runs in ",
             dev == Device::cpu ? "f32 on the CPU" : "bf16 on the GPU", ", got dtype ", dtype_name(act));
  HALO_CHECK(!c.sliding_window || *c.sliding_window >= b.seq_len, "LlamaModel: sliding_window ",
             c.sliding_window.value_or(0), " is shorter than the sequence length ", b.seq_len,
             ": sliding-window attention is not supported");
  Step s;
  s.rows = b.rows, s.T = b.seq_len, s.N = b.rows * b.seq_len;
  const auto check = [&](const Tensor& t, const char* what) {
    HALO_CHECK(t.defined(), "LlamaModel: the batch has no ", what);
    HALO_CHECK(t.dtype() == DType::i32 && t.numel() == s.N && t.device() == dev, "LlamaModel: batch ", what,
               " must be int32 [", s.N, "] on ", device_name(dev), ", got ", t.describe());
    return t.view({s.N});
  };
  s.ids = check(b.input_ids, "input_ids");
  if (need_targets) s.targets = check(b.targets, "targets");
  if (b.positions.defined()) {
    s.positions = check(b.positions, "positions");
  } else {  // one document per row
    Tensor p = Tensor::empty({s.N}, DType::i32);
    for (int64_t i = 0; i < s.N; ++i) p.data_as<int32_t>()[i] = static_cast<int32_t>(i % s.T);
    s.positions = p.to(dev);
  }
  s.attn.batch = s.rows;
  if (b.doc_ids.defined()) s.attn.doc_ids = check(b.doc_ids, "doc_ids");
  return s;
}

// x: the block input, a = rmsnorm(x) * ln1, rstd1 its f32 [N]. Returns x_mid
// (x + the attention branch) and z (the MLP branch; the block output is
// x_mid + z, added by the caller together with the next norm).
std::pair<Tensor, Tensor> LlamaModel::Impl::block_forward(int64_t l, const Step& s, const Tensor& x, const Tensor& a,
                                                          const Tensor& rstd1, BlockSaved* sv) {
  Layer& y = layers[l];
  const int64_t N = s.N;
  const auto [q2, k2, v2] = y.qkv.forward(a, s.positions, inv_freq, sv ? &sv->qkv : nullptr);
  Tensor q = q2.view({N, Hq, D}), k = k2.view({N, Hkv, D}), v = v2.view({N, Hkv, D});
  Tensor attn = Tensor::empty({N, Hq, D}, act, dev), lse = Tensor::empty({N, Hq}, DType::f32, dev);
  attention_forward(q, k, v, s.attn, attn, lse);
  Tensor branch = y.o->forward(attn.view({N, Hq * D}), sv ? &sv->o : nullptr);  // [N, d]
  Tensor x_mid = Tensor::empty({N, d}, act, dev), rstd2 = Tensor::empty({N}, DType::f32, dev);
  residual_rmsnorm_forward(x, branch, y.ln2, eps, x_mid, branch, rstd2);  // branch := rmsnorm(x_mid) * ln2
  Tensor gu = y.gate_up->forward(branch, sv ? &sv->gate_up : nullptr);  // [N, 2F]
  Tensor h = Tensor::empty({N, F}, act, dev);
  swiglu_forward_fused(gu, h);
  Tensor z = y.down->forward(h, sv ? &sv->down : nullptr);  // [N, d]
  if (sv) {
    sv->x = x, sv->rstd1 = rstd1;
    sv->q = q, sv->k = k, sv->v = v, sv->attn = attn, sv->lse = lse;
    sv->x_mid = x_mid, sv->rstd2 = rstd2, sv->gate_up_out = gu;
  }
  return {x_mid, z};
}

// dx_out: the gradient of the block output act [N, d]; returns that of its input.
// Consumes sv (the gate|up output is overwritten by its gradient).
Tensor LlamaModel::Impl::block_backward(int64_t l, const Step& s, BlockSaved& sv, const Tensor& dx_out) {
  Layer& y = layers[l];
  const int64_t N = s.N;
  const Tensor dh = y.down->backward(dx_out, sv.down);  // [N, F]
  swiglu_backward_fused(dh, sv.gate_up_out, sv.gate_up_out);
  Tensor dx_mid = y.gate_up->backward(sv.gate_up_out, sv.gate_up);  // d(rmsnorm(x_mid) * ln2) [N, d]
  rmsnorm_backward(dx_mid, sv.x_mid, y.ln2, sv.rstd2, &dx_out, dx_mid, y.ln2_grad);  // + the residual path
  const Tensor dattn = y.o->backward(dx_mid, sv.o).view({N, Hq, D});
  Tensor dq = Tensor::empty({N, Hq, D}, act, dev), dk = Tensor::empty({N, Hkv, D}, act, dev),
         dv = Tensor::empty({N, Hkv, D}, act, dev);
  attention_backward(sv.q, sv.k, sv.v, sv.attn, sv.lse, dattn, s.attn, dq, dk, dv);
  // d(rmsnorm(x) * ln1) [N, d] is the sum of one term per q/k/v linear; the norm's
  // backward is linear in it, so each term goes through it in turn, onto the
  // residual path's gradient and the terms before it (no separate sum).
  Tensor dx = dx_mid;
  y.qkv.backward({dq.view({N, Hq * D}), dk.view({N, Hkv * D}), dv.view({N, Hkv * D})}, s.positions, inv_freq, sv.qkv,
                 [&](Tensor da) {
    rmsnorm_backward(da, sv.x, y.ln1, sv.rstd1, &dx, da, y.ln1_grad);
    dx = da;
  });
  return dx;
}

// Embedding and every block. saved: null (no backward follows), or one entry
// per block: everything its backward needs, or with recompute only its input x.
// Returns the last residual stream with the final norm applied.
Hidden LlamaModel::Impl::forward_blocks(const Step& s, std::vector<BlockSaved>* saved) {
  Hidden h{Tensor::empty({s.N, d}, act, dev), Tensor::empty({s.N, d}, act, dev),
           Tensor::empty({s.N}, DType::f32, dev)};
  embedding_forward(s.ids, embed, h.x);
  rmsnorm_forward(h.x, L ? layers[0].ln1 : norm, eps, h.a, h.rstd);
  if (saved) saved->assign(static_cast<size_t>(L), BlockSaved{});
  for (int64_t l = 0; l < L; ++l) {
    BlockSaved* sv = saved && !opt.recompute ? &(*saved)[l] : nullptr;
    if (saved && opt.recompute) (*saved)[l].x = h.x;
    auto [x_mid, z] = block_forward(l, s, h.x, h.a, h.rstd, sv);
    const Tensor& w = l + 1 < L ? layers[l + 1].ln1 : norm;
    // x_mid is kept for the backward when saving; otherwise overwritten in place.
    Tensor x_next = sv ? Tensor::empty({s.N, d}, act, dev) : x_mid;
    Tensor rstd = Tensor::empty({s.N}, DType::f32, dev);
    residual_rmsnorm_forward(x_mid, z, w, eps, x_next, z, rstd);  // z := the normed next input
    h = Hidden{x_next, z, rstd};
  }
  return h;
}

int64_t LlamaModel::Impl::chunk_tokens(int64_t N) const {
  int64_t chunk = opt.lm_head_chunk;
  if (chunk <= 0) {
    // About 128 MiB of logits, a multiple of 128 tokens, and at least 4096
    // tokens: each chunk adds its LM-head weight gradient into the f32 [V, d]
    // gradient (read and written once per chunk), a GEMM of 2 chunk V d FLOPs
    // over 8 V d bytes that stays compute-bound only from about 1000-1500
    // tokens on Hopper (512-token chunks of a 128k vocabulary ran it at 40%;
    // on the 8B-block shape 4096-token chunks gave 1% shorter steps than 2048).
    const int64_t bytes = int64_t{128} << 20;
    chunk = std::max<int64_t>(4096, bytes / (V * static_cast<int64_t>(dtype_size(act))) / 128 * 128);
  }
  return std::min(chunk, N);
}

uint64_t LlamaModel::backward_passes() const { return impl_->backward_passes; }
void LlamaModel::set_backward_passes(uint64_t n) { impl_->backward_passes = n; }

void LlamaModel::forward_backward(const Batch& batch, float loss_scale, Tensor& loss_sum) {
  Impl& m = *impl_;
  const Step s = m.make_step(batch, true);
  ++m.backward_passes;
  for (HaloLinear* lin : m.linears()) lin->begin_pass(m.backward_passes);
  check_shape(loss_sum, {1}, "forward_backward loss_sum");
  std::vector<BlockSaved> saved;
  const Hidden h = m.forward_blocks(s, &saved);

  // LM head and cross-entropy, chunk by chunk: the logits' gradient is
  // written over them and taken back through the head at once.
  Tensor losses = Tensor::empty({s.N}, DType::f32, m.dev);
  Tensor da = Tensor::empty({s.N, m.d}, m.act, m.dev);  // d(final normed hidden)
  const int64_t chunk = m.chunk_tokens(s.N);
  for (int64_t t0 = 0; t0 < s.N; t0 += chunk) {
    const int64_t n = std::min(chunk, s.N - t0);
    LinearSaved ls;
    Tensor logits = m.lm_head->forward(h.a.rows(t0, n), &ls);  // act [n, V]
    Tensor part = losses.rows(t0, n);
    cross_entropy_forward_backward(logits, s.targets.rows(t0, n), part, loss_scale);
    da.rows(t0, n).copy_from(m.lm_head->backward(logits, ls));
  }
  sum_losses(losses, loss_sum, /*accumulate=*/true);

  Tensor dx = da;
  rmsnorm_backward(da, h.x, m.norm, h.rstd, nullptr, dx, m.norm_grad);
  for (int64_t l = m.L - 1; l >= 0; --l) {
    BlockSaved& sv = saved[l];
    if (m.opt.recompute) {  // the block's forward again, from its input, saving everything this time
      const Tensor x = sv.x;
      Tensor a = Tensor::empty({s.N, m.d}, m.act, m.dev), rstd = Tensor::empty({s.N}, DType::f32, m.dev);
      rmsnorm_forward(x, m.layers[l].ln1, m.eps, a, rstd);  // what the fused form computed, exactly
      m.block_forward(l, s, x, a, rstd, &sv);
    }
    dx = m.block_backward(l, s, sv, dx);
    sv = BlockSaved{};  // frees this block's activations
  }
  // Tied: the head's gradient (not rotated: checked at construction) is the embedding's too.
  if (m.c.tie_word_embeddings) {
    Tensor dtable = m.lm_head->weight_grad();
    embedding_backward(s.ids, dx, dtable);
  } else {
    embedding_backward(s.ids, dx, m.embed_grad, &m.embed_rows);
  }
}

void LlamaModel::forward_loss(const Batch& batch, Tensor& loss_sum) {
  Impl& m = *impl_;
  const Step s = m.make_step(batch, true);
  check_shape(loss_sum, {1}, "forward_loss loss_sum");
  const Hidden h = m.forward_blocks(s, nullptr);
  Tensor losses = Tensor::empty({s.N}, DType::f32, m.dev);
  const int64_t chunk = m.chunk_tokens(s.N);
  for (int64_t t0 = 0; t0 < s.N; t0 += chunk) {
    const int64_t n = std::min(chunk, s.N - t0);
    const Tensor logits = m.lm_head->forward(h.a.rows(t0, n), nullptr);
    Tensor part = losses.rows(t0, n);
    cross_entropy_loss(logits, s.targets.rows(t0, n), part);
  }
  sum_losses(losses, loss_sum, /*accumulate=*/true);
}

Tensor LlamaModel::logits(const Batch& batch) {
  Impl& m = *impl_;
  const Step s = m.make_step(batch, false);
  const Hidden h = m.forward_blocks(s, nullptr);
  Tensor out = Tensor::empty({s.N, m.V}, DType::f32);  // host; on the device at the end
  const int64_t chunk = m.chunk_tokens(s.N);
  for (int64_t t0 = 0; t0 < s.N; t0 += chunk) {
    const int64_t n = std::min(chunk, s.N - t0);
    out.rows(t0, n).copy_from(m.lm_head->forward(h.a.rows(t0, n), nullptr).to(Device::cpu).to(DType::f32));
  }
  return out.to(m.dev);
}

// ---- inference access --------------------------------------------------------------------

LlamaWeights LlamaModel::weights() const {
  const Impl& m = *impl_;
  LlamaWeights w;
  w.embed = m.embed;
  for (const Layer& y : m.layers) {
    LlamaLayerWeights lw;
    lw.ln1 = y.ln1, lw.ln2 = y.ln2;
    for (const auto& lin : y.qkv.linears) {
      lw.qkv_weight.push_back(lin->weight);
      lw.qkv_bias.push_back(lin->bias);
    }
    lw.o_weight = y.o->weight, lw.o_bias = y.o->bias;
    lw.gate_up_weight = y.gate_up->weight, lw.gate_up_bias = y.gate_up->bias;
    lw.down_weight = y.down->weight, lw.down_bias = y.down->bias;
    w.layers.push_back(std::move(lw));
  }
  w.norm = m.norm;
  w.lm_head = m.lm_head->weight;
  w.inv_freq = m.inv_freq;
  return w;
}

// ---- sizes -------------------------------------------------------------------------------

// Bytes, from the shapes (a = bytes per activation element; N = rows * T):
//   weights      every parameter in `dtype`, plus for each 8-bit linear its cached
//                Q(W~) and Q(W~)^T (one byte per element each, scales neglected)
//   gradients    4 bytes per parameter element (a tied embedding counts once), 2 for
//                the weights of linears with bf16 gradients
//   activations  per block, what BlockSaved holds:
//                  x, x_mid: 2 N d a;   q, k, v: N QKV a;   attention out: N Hq D a;
//                  gate|up out: 2 N F a;   rstd1, rstd2: 8 N;   lse: 4 N Hq;
//                  the linears' saved inputs: a (bf16 recipe) or 1 (8-bit) bytes per
//                  element of N d (qkv; three times with separate q, k, v), N Hq D
//                  (o: with bf16 it is the attention output already counted), N d
//                  (gate|up), N F (down)
//                all L blocks; with recompute L N d a (the inputs) plus one block's
//                set; plus the final x and normed hidden 2 N d a
//   workspace    the larger of: the LM head (one chunk's logits chunk V a, the
//                losses 4 N, the hidden's gradient N d a) and a block's backward
//                (dh N F a, dq/dk/dv N QKV a and their fused copy dqkv N QKV a
//                where q|k|v is one linear, two N d a gradients)
ModelMemory LlamaModel::memory(int64_t rows, int64_t seq_len) const {
  const Impl& m = *impl_;
  const int64_t N = rows * seq_len, a = static_cast<int64_t>(dtype_size(m.act));
  ModelMemory mem;
  const auto held = [&](int64_t bytes) {  // the allocator rounds device blocks up
    return static_cast<int64_t>(held_bytes(static_cast<size_t>(bytes), m.dev));
  };
  for (const auto& [name, t] : m.values) {
    mem.weights += held(t.numel() * a);
    mem.gradients += held(t.numel() * 4);
  }
  for (const HaloLinear* lin : m.linears()) {
    const int64_t n = lin->weight.numel();
    if (lin->recipe().quantized()) mem.weights += 2 * held(n);
    if (lin->weight_grad_dtype() == DType::bf16) mem.gradients -= held(n * 4) - held(n * 2);
  }

  const bool q8 = m.opt.recipe.quantized(), split = separate_qkv(m.opt.recipe);
  const int64_t saved_in = q8 ? 1 : a;
  const int64_t linear_inputs = (split ? 3 : 1) * N * m.d * saved_in + (q8 ? N * m.Hq * m.D : 0) +
                                N * m.d * saved_in + N * m.F * saved_in;
  const int64_t block = 2 * N * m.d * a + N * m.QKV * a + N * m.Hq * m.D * a + 2 * N * m.F * a + 8 * N +
                        4 * N * m.Hq + linear_inputs;
  const int64_t final_hidden = 2 * N * m.d * a;
  mem.activations = (m.opt.recompute ? m.L * N * m.d * a + block : m.L * block) + final_hidden;

  const int64_t chunk = m.chunk_tokens(N);
  const int64_t head = chunk * m.V * a + 4 * N + N * m.d * a;
  const int64_t back = N * m.F * a + (split ? 1 : 2) * N * m.QKV * a + 2 * N * m.d * a;
  mem.workspace = std::max(head, back);
  return mem;
}

// 6 FLOPs per weight per token (forward 2, backward 4) for the block linears
// (plus norms and biases: count_non_embedding_parameters) and the LM head
// (V d, also when tied); attention: its forward FLOPs per token from
// attention_forward_flops (causal, one row of seq_len tokens) times 3 per
// layer (the backward's two products per forward one; the flash-style
// recomputation of the scores is not counted, as is usual for MFU).
double LlamaModel::train_flops_per_token(int64_t seq_len) const {
  const Impl& m = *impl_;
  HALO_CHECK(seq_len > 0, "train_flops_per_token: seq_len must be positive, got ", seq_len);
  const double dense = 6.0 * static_cast<double>(count_non_embedding_parameters(m.c) + m.V * m.d);
  const double attn = 3.0 * static_cast<double>(m.L) * attention_forward_flops(1, seq_len, m.Hq, m.D) /
                      static_cast<double>(seq_len);
  return dense + attn;
}

}  // namespace halo
