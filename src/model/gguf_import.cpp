#include "model/gguf_import.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"

namespace halo {

using json = nlohmann::json;

namespace {

struct Arch {
  const char* gguf;        // general.architecture
  const char* model_type;  // config.json's
  bool permuted_qk;        // llama.cpp's converter permuted q and k
};
constexpr Arch kArchs[] = {{"llama", "llama", true}, {"qwen2", "qwen2", false}};

const Arch& find_arch(const GgufReader& g) {
  const auto name = g.get_string("general.architecture");
  HALO_CHECK(name, g.path(), ": missing metadata key 'general.architecture'");
  for (const Arch& a : kArchs)
    if (*name == a.gguf) return a;
  HALO_FAIL(g.path(), ": general.architecture '", *name, "' is not supported (supported: llama, qwen2)");
}

// llama3 RoPE scaling, as Llama 3.1/3.2 ship it; llama.cpp keeps only the
// resulting per-frequency factors (rope_freqs.weight), so the parameters are
// taken as these and checked against the factors.
constexpr double kLlama3Low = 1.0, kLlama3High = 4.0;
constexpr int64_t kLlama3OriginalContext = 8192;

void read_rope_freqs(const GgufReader& g, ModelConfig& c) {
  const GgufTensorInfo& info = g.tensor("rope_freqs.weight");
  HALO_CHECK(info.numel == c.head_dim / 2, g.path(), ": tensor 'rope_freqs.weight' has ", info.numel,
             " elements, expected head_dim / 2 = ", c.head_dim / 2);
  const std::vector<float> f = g.read("rope_freqs.weight").to_floats();
  const double factor = *std::max_element(f.begin(), f.end());
  HALO_CHECK(std::isfinite(factor) && factor >= 1, g.path(), ": tensor 'rope_freqs.weight' has largest factor ",
             factor, ", not a RoPE slow-down");
  c.rope_scaling = RopeScaling{"llama3", factor, kLlama3Low, kLlama3High, kLlama3OriginalContext};
  const std::vector<double> scaled = rope_inv_freq(c);
  ModelConfig plain = c;
  plain.rope_scaling.reset();
  const std::vector<double> base = rope_inv_freq(plain);
  for (size_t i = 0; i < f.size(); ++i) {
    const double expected = base[i] / scaled[i];
    HALO_CHECK(std::abs(f[i] - expected) <= 1e-3 * expected, g.path(), ": tensor 'rope_freqs.weight' element ", i,
               " is ", f[i], " but llama3 RoPE scaling (factor ", factor, ", low_freq_factor ", kLlama3Low,
               ", high_freq_factor ", kLlama3High, ", original context ", kLlama3OriginalContext, ") gives ",
               expected, ": this RoPE scaling is not supported");
  }
}

}  // namespace

ModelConfig gguf_model_config(const GgufReader& g) {
  const Arch& arch = find_arch(g);
  const std::string& path = g.path();
  const std::string p = std::string(arch.gguf) + ".";
  const auto required_int = [&](const char* key) {
    const auto v = g.get_int(p + key);
    HALO_CHECK(v, path, ": missing metadata key '", p, key, "'");
    return *v;
  };
  ModelConfig c;
  c.model_type = arch.model_type;
  c.hidden_size = required_int("embedding_length");
  c.num_hidden_layers = required_int("block_count");
  c.intermediate_size = required_int("feed_forward_length");
  c.num_attention_heads = required_int("attention.head_count");
  c.max_position_embeddings = required_int("context_length");
  HALO_CHECK(c.num_attention_heads > 0, path, ": metadata key '", p, "attention.head_count' must be positive");
  c.num_key_value_heads = g.get_int(p + "attention.head_count_kv").value_or(c.num_attention_heads);
  if (const auto kl = g.get_int(p + "attention.key_length")) {
    c.head_dim = *kl;
  } else {
    HALO_CHECK(c.hidden_size % c.num_attention_heads == 0, path, ": embedding_length ", c.hidden_size,
               " is not divisible by attention.head_count ", c.num_attention_heads, " (and no key_length)");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (const auto vl = g.get_int(p + "attention.value_length"))
    HALO_CHECK(*vl == c.head_dim, path, ": metadata key '", p, "attention.value_length' is ", *vl,
               ", not the key length ", c.head_dim, " (not supported)");
  if (const auto rd = g.get_int(p + "rope.dimension_count"))
    HALO_CHECK(*rd == c.head_dim, path, ": metadata key '", p, "rope.dimension_count' is ", *rd,
               " but the head dimension is ", c.head_dim, " (partial RoPE is not supported)");
  const auto eps = g.get_float(p + "attention.layer_norm_rms_epsilon");
  HALO_CHECK(eps, path, ": missing metadata key '", p, "attention.layer_norm_rms_epsilon'");
  c.rms_norm_eps = *eps;
  c.rope_theta = g.get_float(p + "rope.freq_base").value_or(10000.0);

  const std::string scaling = g.get_string(p + "rope.scaling.type").value_or("none");
  if (scaling == "linear") {
    const auto factor = g.get_float(p + "rope.scaling.factor");
    HALO_CHECK(factor, path, ": rope.scaling.type is linear but '", p, "rope.scaling.factor' is missing");
    c.rope_scaling = RopeScaling{"linear", *factor};
  } else if (const auto old = g.get_float(p + "rope.scale_linear"); old && *old != 1.0) {
    c.rope_scaling = RopeScaling{"linear", *old};
  } else {
    HALO_CHECK(scaling == "none", path, ": metadata key '", p, "rope.scaling.type' is '", scaling,
               "' (supported: none, linear, and llama3 through rope_freqs.weight)");
  }
  if (g.contains("rope_freqs.weight")) {
    HALO_CHECK(!c.rope_scaling, path, ": both rope.scaling.type and rope_freqs.weight are set");
    read_rope_freqs(g, c);
  }

  HALO_CHECK(g.contains("token_embd.weight"), path, ": no tensor 'token_embd.weight'");
  const GgufTensorInfo& embd = g.tensor("token_embd.weight");
  const std::vector<std::string>* tokens = g.get_strings("tokenizer.ggml.tokens");
  if (const auto v = g.get_int(p + "vocab_size"))
    c.vocab_size = *v;
  else if (tokens)
    c.vocab_size = static_cast<int64_t>(tokens->size());
  else
    c.vocab_size = embd.shape.empty() ? 0 : embd.shape[0];
  HALO_CHECK(embd.shape.size() == 2 && embd.shape[0] == c.vocab_size, path, ": tensor 'token_embd.weight' is ",
             shape_str(embd.shape), " but the vocabulary has ", c.vocab_size, " tokens");
  HALO_CHECK(!tokens || static_cast<int64_t>(tokens->size()) == c.vocab_size, path, ": tokenizer.ggml.tokens has ",
             tokens ? tokens->size() : 0, " tokens but the vocabulary size is ", c.vocab_size);
  c.tie_word_embeddings = !g.contains("output.weight");

  if (c.model_type == "llama") {
    c.qkv_bias = g.contains("blk.0.attn_q.bias");
    c.o_bias = g.contains("blk.0.attn_output.bias");
    c.mlp_bias = g.contains("blk.0.ffn_up.bias");
  } else {  // qwen2: biases on q, k, v only
    c.qkv_bias = true;
  }

  const auto token_id = [&](const char* key) -> std::optional<int64_t> {
    const auto v = g.get_int(key);
    if (v) HALO_CHECK(*v >= 0 && *v < c.vocab_size, path, ": metadata key '", key, "' is ", *v,
                      ", outside the vocabulary of ", c.vocab_size);
    return v;
  };
  c.bos_token_id = token_id("tokenizer.ggml.bos_token_id");
  if (const auto eos = token_id("tokenizer.ggml.eos_token_id")) c.eos_token_ids = {*eos};
  c.pad_token_id = token_id("tokenizer.ggml.padding_token_id");
  check_config(c, path);
  return c;
}

std::string gguf_to_hf_name(const std::string& n) {
  static const std::map<std::string, std::string> kTop = {{"token_embd.weight", "model.embed_tokens.weight"},
                                                          {"output_norm.weight", "model.norm.weight"},
                                                          {"output.weight", "lm_head.weight"}};
  static const std::map<std::string, std::string> kBlock = {
      {"attn_norm", "input_layernorm"},      {"ffn_norm", "post_attention_layernorm"},
      {"attn_q", "self_attn.q_proj"},        {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},        {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},         {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"}};
  if (const auto it = kTop.find(n); it != kTop.end()) return it->second;
  // blk.<layer>.<part>.<weight|bias>
  if (!n.starts_with("blk.")) return "";
  size_t i = 4, j = i;
  while (j < n.size() && n[j] >= '0' && n[j] <= '9') ++j;
  if (j == i || j - i > 9 || j >= n.size() || n[j] != '.' || (n[i] == '0' && j - i > 1)) return "";
  const std::string layer = n.substr(i, j - i), rest = n.substr(j + 1);
  const size_t dot = rest.rfind('.');
  if (dot == std::string::npos) return "";
  const std::string part = rest.substr(0, dot), suffix = rest.substr(dot + 1);
  const auto it = kBlock.find(part);
  if (it == kBlock.end() || (suffix != "weight" && suffix != "bias")) return "";
  return "model.layers." + layer + "." + it->second + "." + suffix;
}

namespace {

// Row r of the result is row from(r) of w, rows grouped in heads of D.
template <class From>
Tensor reorder_rows(const Tensor& w, int64_t heads, const char* what, From from) {
  HALO_CHECK(w.defined() && w.ndim() >= 1 && heads > 0, what, ": expected a tensor with rows and heads > 0");
  const int64_t rows = w.size(0);
  HALO_CHECK(rows % (2 * heads) == 0, what, ": ", rows, " rows are not ", heads, " heads of an even size");
  const int64_t D = rows / heads;
  const size_t row_bytes = w.nbytes() / static_cast<size_t>(rows);
  const Tensor src = w.to(Device::cpu);
  Tensor out = Tensor::empty(w.shape(), w.dtype());
  const auto* s = static_cast<const char*>(src.data());
  auto* d = static_cast<char*>(out.data());
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t r = 0; r < D; ++r)
      std::memcpy(d + (h * D + r) * row_bytes, s + (h * D + from(r, D)) * row_bytes, row_bytes);
  return out;
}

}  // namespace

// GGUF row 2 i + s holds Hugging Face row s D/2 + i.
Tensor gguf_permute_qk(const Tensor& w, int64_t heads) {
  return reorder_rows(w, heads, "gguf_permute_qk", [](int64_t r, int64_t D) { return (r % 2) * (D / 2) + r / 2; });
}
Tensor gguf_unpermute_qk(const Tensor& w, int64_t heads) {
  return reorder_rows(w, heads, "gguf_unpermute_qk", [](int64_t r, int64_t D) {
    const int64_t s = r / (D / 2), i = r % (D / 2);
    return 2 * i + s;
  });
}

NamedTensors gguf_hf_tensors(const GgufReader& g, const ModelConfig& c, DType dtype, const GgufProgress& progress) {
  HALO_CHECK(dtype == DType::f32 || dtype == DType::bf16, g.path(), ": tensors can be written as f32 or bf16, not ",
             dtype_name(dtype));
  const bool permuted = find_arch(g).permuted_qk;
  std::map<std::string, Shape> expected;
  for (const TensorSpec& s : hf_tensors(c)) expected.emplace(s.name, s.shape);

  std::vector<std::pair<const GgufTensorInfo*, std::string>> todo;  // file order
  std::map<std::string, std::string> source;                         // hf name -> gguf name
  for (const GgufTensorInfo& t : g.tensors()) {
    if (t.name == "rope_freqs.weight") continue;  // read into the config's rope_scaling
    const std::string hf = gguf_to_hf_name(t.name);
    HALO_CHECK(!hf.empty(), g.path(), ": tensor '", t.name, "' has no counterpart in a ", c.model_type,
               " model (not supported)");
    const auto it = expected.find(hf);
    HALO_CHECK(it != expected.end(), g.path(), ": tensor '", t.name, "' (", hf,
               ") is not part of the model the metadata describes (", c.num_hidden_layers, " layers, biases: q/k/v ",
               c.qkv_bias ? "yes" : "no", ", o ", c.o_bias ? "yes" : "no", ", mlp ", c.mlp_bias ? "yes" : "no", ")");
    HALO_CHECK(t.shape == it->second, g.path(), ": tensor '", t.name, "' is ", ggml_type_name(t.type),
               shape_str(t.shape), " but ", hf, " must be ", shape_str(it->second));
    source.emplace(hf, t.name);
    todo.emplace_back(&t, hf);
  }
  for (const auto& [hf, shape] : expected)
    HALO_CHECK(source.count(hf), g.path(), ": no tensor for ", hf, shape_str(shape));

  NamedTensors out;
  size_t done = 0;
  for (const auto& [t, hf] : todo) {
    Tensor w = g.read(t->name, dtype);
    if (permuted) {
      if (hf.find(".self_attn.q_proj.") != std::string::npos) w = gguf_unpermute_qk(w, c.num_attention_heads);
      if (hf.find(".self_attn.k_proj.") != std::string::npos) w = gguf_unpermute_qk(w, c.num_key_value_heads);
    }
    out.emplace(hf, std::move(w));
    if (progress) progress(++done, todo.size(), t->name);
  }
  return out;
}

// ---- tokenizer -------------------------------------------------------------------------------

namespace {

// llama.cpp's token types (tokenizer.ggml.token_type).
enum TokenType : int64_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// The pre-tokenizer regexes Hugging Face's tokenizer.json files use.
constexpr const char* kLlama3Regex =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr const char* kQwen2Regex =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

json byte_level(bool trim_offsets, bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", trim_offsets}, {"use_regex", use_regex}};
}
json split(const char* regex) {
  return {{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
}

// tokenizer.ggml.pre -> (normalizer, pre_tokenizer, ignore_merges), as the
// model's own tokenizer.json has them.
struct PreTokenizer {
  json normalizer, pre_tokenizer;
  bool ignore_merges = false;
};
PreTokenizer pre_tokenizer(const std::string& path, const std::string& pre) {
  if (pre == "gpt2") return {nullptr, byte_level(true, true)};
  if (pre == "smollm")
    return {nullptr,
            {{"type", "Sequence"},
             {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true, true)}}}};
  if (pre == "llama-bpe" || pre == "llama3")
    return {nullptr, {{"type", "Sequence"}, {"pretokenizers", {split(kLlama3Regex), byte_level(true, false)}}}, true};
  if (pre == "qwen2")
    return {{{"type", "NFC"}},
            {{"type", "Sequence"}, {"pretokenizers", {split(kQwen2Regex), byte_level(false, false)}}}};
  HALO_FAIL(path, ": tokenizer.ggml.pre '", pre, "' is not supported (supported: gpt2, smollm, llama-bpe, qwen2)");
}

json special_piece(const std::string& token, int type_id) {
  return {{"SpecialToken", {{"id", token}, {"type_id", type_id}}}};
}
json sequence_piece(const char* id, int type_id) { return {{"Sequence", {{"id", id}, {"type_id", type_id}}}}; }

}  // namespace

HfTokenizerFiles gguf_hf_tokenizer(const GgufReader& g) {
  const std::string& path = g.path();
  const auto model = g.get_string("tokenizer.ggml.model");
  HALO_CHECK(model, path, ": no embedded tokenizer (metadata key 'tokenizer.ggml.model' is missing)");
  HALO_CHECK(*model == "gpt2", path, ": tokenizer.ggml.model '", *model,
             "' is not supported (supported: gpt2, byte-level BPE)");
  const auto pre_name = g.get_string("tokenizer.ggml.pre");
  HALO_CHECK(pre_name, path, ": metadata key 'tokenizer.ggml.pre' is missing (the pre-tokenizer is unknown)");
  const PreTokenizer pre = pre_tokenizer(path, *pre_name);

  const std::vector<std::string>* tokens = g.get_strings("tokenizer.ggml.tokens");
  HALO_CHECK(tokens && !tokens->empty(), path, ": metadata key 'tokenizer.ggml.tokens' is missing or empty");
  const std::vector<std::string>* merges = g.get_strings("tokenizer.ggml.merges");
  HALO_CHECK(merges, path, ": metadata key 'tokenizer.ggml.merges' is missing (a BPE tokenizer needs it)");
  const std::vector<int64_t>* types = g.get_ints("tokenizer.ggml.token_type");
  HALO_CHECK(!types || types->size() == tokens->size(), path, ": tokenizer.ggml.token_type has ",
             types ? types->size() : 0, " entries for ", tokens->size(), " tokens");
  const int64_t n = static_cast<int64_t>(tokens->size());

  const auto token_of = [&](const char* key) -> std::optional<std::string> {
    const auto id = g.get_int(key);
    if (!id) return std::nullopt;
    HALO_CHECK(*id >= 0 && *id < n, path, ": metadata key '", key, "' is ", *id, ", outside the ", n, " tokens");
    return (*tokens)[static_cast<size_t>(*id)];
  };
  const auto bos = token_of("tokenizer.ggml.bos_token_id"), eos = token_of("tokenizer.ggml.eos_token_id"),
             unk = token_of("tokenizer.ggml.unknown_token_id"), pad = token_of("tokenizer.ggml.padding_token_id");
  const bool add_bos = g.get_bool("tokenizer.ggml.add_bos_token").value_or(false);
  const bool add_eos = g.get_bool("tokenizer.ggml.add_eos_token").value_or(false);

  json vocab = json::object();
  json added = json::array(), added_decoder = json::object();
  for (int64_t id = 0; id < n; ++id) {
    const std::string& t = (*tokens)[static_cast<size_t>(id)];
    vocab.emplace(t, id);  // a repeated string keeps its first id, as Hugging Face's map would
    const int64_t type = types ? (*types)[static_cast<size_t>(id)] : kNormal;
    if (type != kControl && type != kUserDefined && type != kUnknown) continue;
    const bool special = type != kUserDefined;
    const json entry = {{"content", t},     {"single_word", false}, {"lstrip", false},
                        {"rstrip", false},  {"normalized", !special}, {"special", special}};
    json with_id = entry;
    with_id["id"] = id;
    added.push_back(with_id);
    added_decoder[std::to_string(id)] = entry;
  }

  json post;
  if (add_bos || add_eos) {
    HALO_CHECK(!add_bos || bos, path, ": tokenizer.ggml.add_bos_token is set but there is no bos_token_id");
    HALO_CHECK(!add_eos || eos, path, ": tokenizer.ggml.add_eos_token is set but there is no eos_token_id");
    json single = json::array(), pair = json::array(), specials = json::object();
    const auto add_special = [&](const std::string& t, const char* key) {
      specials[t] = {{"id", t}, {"ids", {*g.get_int(key)}}, {"tokens", {t}}};
    };
    if (add_bos) add_special(*bos, "tokenizer.ggml.bos_token_id");
    if (add_eos) add_special(*eos, "tokenizer.ggml.eos_token_id");
    for (int seq = 0; seq < 2; ++seq) {
      json& out = seq == 0 ? single : pair;
      for (int part = 0; part <= seq; ++part) {
        if (add_bos) out.push_back(special_piece(*bos, part));
        out.push_back(sequence_piece(part == 0 ? "A" : "B", part));
        if (add_eos) out.push_back(special_piece(*eos, part));
      }
    }
    post = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
  } else {
    post = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  }

  HfTokenizerFiles f;
  f.tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", pre.normalizer},
      {"pre_tokenizer", pre.pre_tokenizer},
      {"post_processor", post},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", unk ? json(*unk) : json(nullptr)},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", pre.ignore_merges},
        {"vocab", std::move(vocab)},
        {"merges", *merges}}},
  };

  json& tc = f.tokenizer_config;
  tc = {{"tokenizer_class", "PreTrainedTokenizerFast"},
        {"clean_up_tokenization_spaces", false},
        {"add_bos_token", add_bos},
        {"add_eos_token", add_eos},
        {"added_tokens_decoder", added_decoder}};
  if (const auto ctx = g.get_int(std::string(find_arch(g).gguf) + ".context_length")) tc["model_max_length"] = *ctx;
  if (bos) tc["bos_token"] = *bos;
  if (eos) tc["eos_token"] = *eos;
  if (unk) tc["unk_token"] = *unk;
  if (pad) tc["pad_token"] = *pad;
  if (const auto tmpl = g.get_string("tokenizer.chat_template")) tc["chat_template"] = *tmpl;
  return f;
}

// ---- the whole conversion -----------------------------------------------------------------------

GgufConvertResult convert_gguf(const std::string& gguf_path, const std::string& out_dir,
                               const GgufConvertOptions& o) {
  const auto log = [&](const std::string& line) {
    if (o.log) o.log(line);
  };
  const auto t0 = std::chrono::steady_clock::now();
  const auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const GgufReader g(gguf_path);
  std::map<std::string, int> types;
  uint64_t bytes = 0;
  for (const GgufTensorInfo& t : g.tensors()) {
    ++types[ggml_type_name(t.type)];
    bytes += t.nbytes;
  }
  std::ostringstream summary;
  summary << gguf_path << ": GGUF v" << g.version() << ", " << g.metadata().size() << " metadata keys, "
          << g.tensors().size() << " tensors (";
  bool first = true;
  for (const auto& [name, count] : types) {
    summary << (first ? "" : ", ") << count << " " << name;
    first = false;
  }
  summary << "), " << bytes / 1e6 << " MB";
  if (const auto name = g.get_string("general.name")) summary << ", \"" << *name << "\"";
  log(summary.str());

  GgufConvertResult r;
  r.config = gguf_model_config(g);
  r.config.torch_dtype = o.dtype == DType::bf16 ? "bfloat16" : "float32";
  const ModelConfig& c = r.config;
  std::ostringstream shape;
  shape << "model: " << c.model_type << ", hidden " << c.hidden_size << ", " << c.num_hidden_layers << " layers, "
        << c.num_attention_heads << " heads (" << c.num_key_value_heads << " kv, dim " << c.head_dim << "), mlp "
        << c.intermediate_size << ", vocab " << c.vocab_size << (c.tie_word_embeddings ? ", tied embeddings" : "")
        << ", " << count_parameters(c) << " parameters";
  log(shape.str());

  const NamedTensors tensors =
      gguf_hf_tensors(g, c, o.dtype, [&](size_t done, size_t total, const std::string& name) {
        const size_t step = std::max<size_t>(1, total / 10);
        if (done % step == 0 || done == total) {
          char line[160];
          std::snprintf(line, sizeof line, "  decoded %zu/%zu tensors (%3.0f%%), %s, %.1f s", done, total,
                        100.0 * static_cast<double>(done) / static_cast<double>(total), name.c_str(), seconds());
          log(line);
        }
      });
  make_directories(out_dir);
  r.files = write_safetensors_checkpoint(out_dir, tensors);
  const std::filesystem::path dir(out_dir);
  save_config(c, (dir / "config.json").string());
  r.files.push_back("config.json");

  try {
    const HfTokenizerFiles tok = gguf_hf_tokenizer(g);
    std::string text, config_text;
    try {
      text = tok.tokenizer.dump();
      config_text = tok.tokenizer_config.dump(2);
    } catch (const json::exception& e) {
      HALO_FAIL(gguf_path, ": the tokenizer holds text that is not UTF-8: ", e.what());
    }
    write_file_atomic((dir / "tokenizer.json").string(), text + "\n");
    write_file_atomic((dir / "tokenizer_config.json").string(), config_text + "\n");
    r.files.push_back("tokenizer.json");
    r.files.push_back("tokenizer_config.json");
  } catch (const Error& e) {
    r.tokenizer_note = e.what();
  }
  char line[160];
  std::snprintf(line, sizeof line, "wrote %zu files in %.1f s", r.files.size(), seconds());
  log(std::string(line) + (r.tokenizer_note.empty() ? "" : " (no tokenizer: " + r.tokenizer_note + ")"));
  return r;
}

}  // namespace halo
