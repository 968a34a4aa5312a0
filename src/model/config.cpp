#include "model/config.h"

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numbers>

#include "core/error.h"
#include "io/atomic_file.h"

namespace halo {

using json = nlohmann::json;

namespace {

// The keys of one JSON object, read with errors that name the file and the
// key ("rope_scaling.factor" for nested ones). A null value counts as absent,
// as transformers treats it.
struct Fields {
  const json& obj;
  const std::string& source;
  std::string prefix;

  [[noreturn]] void wrong_type(const char* key, const char* expected, const json& v) const {
    HALO_FAIL(source, ": key '", prefix, key, "' must be ", expected, ", got ", v.dump());
  }
  [[noreturn]] void missing(const char* key) const {
    HALO_FAIL(source, ": missing required key '", prefix, key, "'");
  }
  const json* find(const char* key) const {
    const auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  std::optional<int64_t> integer_opt(const char* key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number_integer() || (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t{INT64_MAX}))
      wrong_type(key, "an integer", *v);
    return v->get<int64_t>();
  }
  int64_t integer(const char* key) const {
    const auto v = integer_opt(key);
    if (!v) missing(key);
    return *v;
  }
  std::optional<double> number_opt(const char* key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) wrong_type(key, "a number", *v);
    return v->get<double>();
  }
  double number(const char* key) const {
    const auto v = number_opt(key);
    if (!v) missing(key);
    return *v;
  }
  bool boolean(const char* key, bool fallback) const {
    const json* v = find(key);
    if (!v) return fallback;
    if (!v->is_boolean()) wrong_type(key, "true or false", *v);
    return v->get<bool>();
  }
  std::optional<std::string> string(const char* key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) wrong_type(key, "a string", *v);
    return v->get<std::string>();
  }
};

bool supported_type(const std::string& t) { return t == "llama" || t == "mistral" || t == "qwen2"; }

// "rope_scaling" (or transformers 5's "rope_parameters", which also holds rope_theta).
std::optional<RopeScaling> parse_rope_scaling(const Fields& f, const std::string& key) {
  const json* v = f.find(key.c_str());
  if (!v) return std::nullopt;
  if (!v->is_object()) f.wrong_type(key.c_str(), "an object or null", *v);
  const Fields r{*v, f.source, key + "."};
  // Older configs spell it "type".
  auto type = r.string("rope_type");
  if (!type) type = r.string("type");
  HALO_CHECK(type, f.source, ": key '", key, "' has no 'rope_type'");
  RopeScaling s;
  s.rope_type = *type;
  if (*type == "default") return std::nullopt;
  if (*type == "linear") {
    s.factor = r.number("factor");
  } else if (*type == "llama3") {
    s.factor = r.number("factor");
    s.low_freq_factor = r.number("low_freq_factor");
    s.high_freq_factor = r.number("high_freq_factor");
    s.original_max_position_embeddings = r.integer("original_max_position_embeddings");
  } else {
    HALO_FAIL(f.source, ": key '", key, "' has rope_type '", *type,
              "', which is not supported (supported: llama3, linear, default, or null)");
  }
  return s;
}

const char* architecture(const std::string& model_type) {
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  if (model_type == "mistral") return "MistralForCausalLM";
  return "LlamaForCausalLM";
}

}  // namespace

ModelConfig parse_config(const json& j, const std::string& source) {
  HALO_CHECK(j.is_object(), source, ": must be a JSON object, got ", j.type_name());
  const Fields f{j, source, ""};
  ModelConfig c;

  // SmolLM and SmolLM2 say "llama"; SmolLM3 ("smollm3") drops RoPE in some layers.
  const auto type = f.string("model_type");
  if (!type) f.missing("model_type");
  HALO_CHECK(supported_type(*type), source, ": model_type '", *type,
             "' is not supported (supported: llama, mistral, qwen2)");
  c.model_type = *type;
  if (const auto act = f.string("hidden_act"))
    HALO_CHECK(*act == "silu", source, ": hidden_act '", *act,
               "' is not supported (the Llama family uses silu)");

  c.hidden_size = f.integer("hidden_size");
  c.intermediate_size = f.integer("intermediate_size");
  c.num_hidden_layers = f.integer("num_hidden_layers");
  c.num_attention_heads = f.integer("num_attention_heads");
  c.vocab_size = f.integer("vocab_size");
  HALO_CHECK(c.num_attention_heads > 0, source, ": key 'num_attention_heads' must be positive, got ",
             c.num_attention_heads);
  c.num_key_value_heads = f.integer_opt("num_key_value_heads").value_or(c.num_attention_heads);
  if (const auto hd = f.integer_opt("head_dim")) {
    c.head_dim = *hd;  // may differ from hidden / heads (Mistral Nemo: 5120 / 32 with head_dim 128)
  } else {
    HALO_CHECK(c.hidden_size % c.num_attention_heads == 0, source, ": hidden_size ", c.hidden_size,
               " is not divisible by num_attention_heads ", c.num_attention_heads,
               " (and no head_dim is given)");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  // transformers' defaults for the keys a config may leave out.
  const int64_t default_max_pos = c.model_type == "qwen2" ? 32768 : c.model_type == "mistral" ? 131072 : 2048;
  c.max_position_embeddings = f.integer_opt("max_position_embeddings").value_or(default_max_pos);
  c.rms_norm_eps = f.number_opt("rms_norm_eps").value_or(1e-6);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);

  c.rope_theta = f.number_opt("rope_theta").value_or(10000.0);
  if (f.find("rope_scaling")) {
    c.rope_scaling = parse_rope_scaling(f, "rope_scaling");
  } else if (const json* p = f.find("rope_parameters")) {
    c.rope_scaling = parse_rope_scaling(f, "rope_parameters");
    if (p->is_object()) {
      const Fields r{*p, source, "rope_parameters."};
      if (const auto theta = r.number_opt("rope_theta")) c.rope_theta = *theta;
    }
  }

  // Biases follow the model type, as the transformers classes hard-code them
  // (qwen2 and mistral ignore attention_bias).
  if (c.model_type == "llama") {
    c.qkv_bias = c.o_bias = f.boolean("attention_bias", false);
    c.mlp_bias = f.boolean("mlp_bias", false);
  } else if (c.model_type == "qwen2") {
    c.qkv_bias = true;
  }

  if (c.model_type == "mistral") c.sliding_window = f.integer_opt("sliding_window");
  // Qwen2's window applies only to layers from max_window_layers on; no
  // released Qwen2/2.5 checkpoint turns it on.
  if (c.model_type == "qwen2")
    HALO_CHECK(!f.boolean("use_sliding_window", false), source,
               ": key 'use_sliding_window' is true, which is not supported for qwen2");

  c.bos_token_id = f.integer_opt("bos_token_id");
  if (const json* eos = f.find("eos_token_id")) {
    if (eos->is_array()) {
      for (const json& e : *eos) {
        if (!e.is_number_integer()) f.wrong_type("eos_token_id", "an integer or a list of integers", *eos);
        c.eos_token_ids.push_back(e.get<int64_t>());
      }
    } else {
      c.eos_token_ids.push_back(*f.integer_opt("eos_token_id"));  // throws unless an integer
    }
  }
  c.pad_token_id = f.integer_opt("pad_token_id");
  // transformers 4.56+ writes "dtype" in place of "torch_dtype".
  c.torch_dtype = f.string("torch_dtype").value_or(f.string("dtype").value_or(""));

  check_config(c, source);
  return c;
}

void check_config(const ModelConfig& c, const std::string& source) {
  HALO_CHECK(supported_type(c.model_type), source, ": model_type '", c.model_type,
             "' is not supported (supported: llama, mistral, qwen2)");
  const auto positive = [&](const char* key, int64_t v) {
    HALO_CHECK(v > 0, source, ": key '", key, "' must be positive, got ", v);
  };
  positive("hidden_size", c.hidden_size);
  positive("intermediate_size", c.intermediate_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("num_attention_heads", c.num_attention_heads);
  positive("num_key_value_heads", c.num_key_value_heads);
  positive("head_dim", c.head_dim);
  positive("vocab_size", c.vocab_size);
  positive("max_position_embeddings", c.max_position_embeddings);
  HALO_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, source, ": num_attention_heads ",
             c.num_attention_heads, " is not a multiple of num_key_value_heads ", c.num_key_value_heads);
  HALO_CHECK(c.head_dim % 2 == 0, source, ": head_dim ", c.head_dim, " must be even (RoPE rotates pairs)");
  HALO_CHECK(std::isfinite(c.rms_norm_eps) && c.rms_norm_eps > 0, source,
             ": key 'rms_norm_eps' must be positive, got ", c.rms_norm_eps);
  HALO_CHECK(std::isfinite(c.rope_theta) && c.rope_theta > 0, source,
             ": key 'rope_theta' must be positive, got ", c.rope_theta);
  if (c.rope_scaling) {
    const RopeScaling& s = *c.rope_scaling;
    HALO_CHECK(s.rope_type == "llama3" || s.rope_type == "linear", source, ": rope_scaling type '",
               s.rope_type, "' is not supported (supported: llama3, linear)");
    HALO_CHECK(std::isfinite(s.factor) && s.factor > 0, source,
               ": key 'rope_scaling.factor' must be positive, got ", s.factor);
    if (s.rope_type == "llama3") {
      HALO_CHECK(s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor, source,
                 ": rope_scaling needs 0 < low_freq_factor < high_freq_factor, got ", s.low_freq_factor,
                 " and ", s.high_freq_factor);
      positive("rope_scaling.original_max_position_embeddings", s.original_max_position_embeddings);
    }
  }
  const bool llama_bias = c.model_type == "llama" && c.qkv_bias == c.o_bias;
  const bool qwen2_bias = c.model_type == "qwen2" && c.qkv_bias && !c.o_bias && !c.mlp_bias;
  const bool no_bias = c.model_type == "mistral" && !c.qkv_bias && !c.o_bias && !c.mlp_bias;
  const auto yn = [](bool b) { return b ? "yes" : "no"; };
  HALO_CHECK(llama_bias || qwen2_bias || no_bias, source, ": biases (q/k/v ", yn(c.qkv_bias), ", o ",
             yn(c.o_bias), ", mlp ", yn(c.mlp_bias), ") are not a layout model_type ", c.model_type, " has");
  if (c.sliding_window) positive("sliding_window", *c.sliding_window);
  HALO_CHECK(!c.sliding_window || c.model_type == "mistral", source,
             ": sliding_window is supported for mistral only");
  if (c.bos_token_id) HALO_CHECK(*c.bos_token_id >= 0, source, ": key 'bos_token_id' is negative");
  if (c.pad_token_id) HALO_CHECK(*c.pad_token_id >= 0, source, ": key 'pad_token_id' is negative");
  for (int64_t e : c.eos_token_ids)
    HALO_CHECK(e >= 0, source, ": key 'eos_token_id' holds a negative id ", e);
}

ModelConfig load_config(const std::string& path) {
  const std::string file =
      std::filesystem::is_directory(path) ? (std::filesystem::path(path) / "config.json").string() : path;
  json j;
  try {
    j = json::parse(read_file(file));
  } catch (const json::exception& e) {
    HALO_FAIL(file, ": not valid JSON: ", e.what());
  }
  return parse_config(j, file);
}

json to_json(const ModelConfig& c) {
  check_config(c);
  json j = {
      {"architectures", {architecture(c.model_type)}},
      {"model_type", c.model_type},
      {"hidden_act", "silu"},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"vocab_size", c.vocab_size},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", c.rms_norm_eps},
      {"rope_theta", c.rope_theta},
      {"rope_scaling", nullptr},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"bos_token_id", nullptr},
      {"eos_token_id", nullptr},
  };
  if (c.rope_scaling) {
    const RopeScaling& s = *c.rope_scaling;
    j["rope_scaling"] = {{"rope_type", s.rope_type}, {"factor", s.factor}};
    if (s.rope_type == "llama3") {
      j["rope_scaling"]["low_freq_factor"] = s.low_freq_factor;
      j["rope_scaling"]["high_freq_factor"] = s.high_freq_factor;
      j["rope_scaling"]["original_max_position_embeddings"] = s.original_max_position_embeddings;
    }
  }
  if (c.model_type == "llama") {
    j["attention_bias"] = c.qkv_bias;
    j["mlp_bias"] = c.mlp_bias;
  }
  if (c.model_type == "mistral")
    j["sliding_window"] = c.sliding_window ? json(*c.sliding_window) : json(nullptr);
  if (c.model_type == "qwen2") {
    j["use_sliding_window"] = false;
    j["sliding_window"] = nullptr;
  }
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  if (c.eos_token_ids.size() > 1) j["eos_token_id"] = c.eos_token_ids;
  if (c.pad_token_id) j["pad_token_id"] = *c.pad_token_id;
  if (!c.torch_dtype.empty()) j["torch_dtype"] = c.torch_dtype;
  return j;
}

void save_config(const ModelConfig& c, const std::string& path) {
  write_file_atomic(path, to_json(c).dump(2) + "\n");
}

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  std::vector<double> inv(static_cast<size_t>(c.head_dim / 2));
  for (size_t i = 0; i < inv.size(); ++i)
    inv[i] = std::pow(c.rope_theta, -static_cast<double>(2 * i) / static_cast<double>(c.head_dim));
  if (!c.rope_scaling) return inv;
  const RopeScaling& s = *c.rope_scaling;
  if (s.rope_type == "linear") {
    for (double& f : inv) f /= s.factor;  // positions divided by factor
    return inv;
  }
  // llama3: long wavelengths (low frequencies, which saw few full turns in
  // training) are slowed by `factor`, short ones kept, interpolated between.
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_wavelen = old_len / s.low_freq_factor, high_wavelen = old_len / s.high_freq_factor;
  for (double& f : inv) {
    const double wavelen = 2 * std::numbers::pi / f;
    if (wavelen < high_wavelen) continue;
    if (wavelen > low_wavelen) {
      f /= s.factor;
    } else {
      const double smooth =
          (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      f = (1 - smooth) * f / s.factor + smooth * f;
    }
  }
  return inv;
}

std::vector<TensorSpec> hf_tensors(const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim, m = c.intermediate_size;
  std::vector<TensorSpec> out;
  const auto add = [&](std::string name, Shape shape) { out.push_back({std::move(name), std::move(shape)}); };
  const auto linear = [&](const std::string& name, int64_t out_dim, int64_t in_dim, bool bias) {
    add(name + ".weight", {out_dim, in_dim});  // [out, in]: torch.nn.Linear's layout
    if (bias) add(name + ".bias", {out_dim});
  };
  add("model.embed_tokens.weight", {c.vocab_size, h});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    linear(p + "self_attn.q_proj", q, h, c.qkv_bias);
    linear(p + "self_attn.k_proj", kv, h, c.qkv_bias);
    linear(p + "self_attn.v_proj", kv, h, c.qkv_bias);
    linear(p + "self_attn.o_proj", h, q, c.o_bias);
    linear(p + "mlp.gate_proj", m, h, c.mlp_bias);
    linear(p + "mlp.up_proj", m, h, c.mlp_bias);
    linear(p + "mlp.down_proj", h, m, c.mlp_bias);
    add(p + "input_layernorm.weight", {h});
    add(p + "post_attention_layernorm.weight", {h});
  }
  add("model.norm.weight", {h});
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, h});
  return out;
}

int64_t count_parameters(const ModelConfig& c) {
  int64_t n = 0;
  for (const TensorSpec& t : hf_tensors(c)) {
    int64_t k = 1;
    for (int64_t d : t.shape) k *= d;
    n += k;
  }
  return n;
}

int64_t count_non_embedding_parameters(const ModelConfig& c) {
  const int64_t embed = c.vocab_size * c.hidden_size;
  return count_parameters(c) - embed * (c.tie_word_embeddings ? 1 : 2);
}

}  // namespace halo
