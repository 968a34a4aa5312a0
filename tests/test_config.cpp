#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>

#include "core/error.h"
#include "model/config.h"
#include "testing.h"

namespace halo {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// config.json files as the Hugging Face Hub has them (abridged of keys we ignore).
const char* kLlama32_1B = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";

const char* kQwen2_05B = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 131072, "max_window_layers": 24,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936})";

const char* kMistral7B = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000})";

const char* kSmolLM2_135M = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "silu", "hidden_size": 576,
  "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": true,
  "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 9,
  "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 49152})";

class ConfigTest : public testing::TempDirTest {
 protected:
  // Writes text as <dir>/<name>/config.json and returns that path.
  std::string write(const std::string& name, const std::string& text) {
    fs::create_directories(dir_ / name);
    const std::string p = (dir_ / name / "config.json").string();
    std::ofstream(p) << text;
    return p;
  }
};

template <class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << *parts.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// kLlama32_1B with `patch` merged in (a null value removes the key).
json llama_with(const json& patch) {
  json j = json::parse(kLlama32_1B);
  j.merge_patch(patch);
  return j;
}

const TensorSpec* find(const std::vector<TensorSpec>& specs, const std::string& name) {
  for (const TensorSpec& s : specs)
    if (s.name == name) return &s;
  return nullptr;
}

TEST_F(ConfigTest, Llama32_1B) {
  const std::string path = write("llama", kLlama32_1B);
  const ModelConfig c = load_config(fs::path(path).parent_path().string());  // the directory works too
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 8192);
  EXPECT_EQ(c.num_hidden_layers, 16);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_theta, 500000.0);
  ASSERT_TRUE(c.rope_scaling);
  EXPECT_EQ(c.rope_scaling->rope_type, "llama3");
  EXPECT_EQ(c.rope_scaling->factor, 32.0);
  EXPECT_EQ(c.rope_scaling->low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_scaling->high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{128001});
  EXPECT_EQ(c.pad_token_id, std::nullopt);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.sliding_window, std::nullopt);
  // Published size: 1.24B.
  EXPECT_EQ(count_parameters(c), 1'235'814'400);
  EXPECT_EQ(count_non_embedding_parameters(c), 1'235'814'400 - 128256 * 2048);

  const auto specs = hf_tensors(c);
  EXPECT_EQ(specs.size(), 1u + 16 * 9 + 1);  // tied: no lm_head
  EXPECT_EQ(specs.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(specs.front().shape, (Shape{128256, 2048}));
  EXPECT_EQ(specs[1].name, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(find(specs, "model.layers.15.self_attn.k_proj.weight")->shape, (Shape{512, 2048}));
  EXPECT_EQ(find(specs, "model.layers.3.self_attn.o_proj.weight")->shape, (Shape{2048, 2048}));
  EXPECT_EQ(find(specs, "model.layers.0.mlp.gate_proj.weight")->shape, (Shape{8192, 2048}));
  EXPECT_EQ(find(specs, "model.layers.0.mlp.down_proj.weight")->shape, (Shape{2048, 8192}));
  EXPECT_EQ(find(specs, "model.layers.0.post_attention_layernorm.weight")->shape, (Shape{2048}));
  EXPECT_EQ(specs.back().name, "model.norm.weight");
  EXPECT_EQ(find(specs, "lm_head.weight"), nullptr);
  EXPECT_EQ(find(specs, "model.layers.0.self_attn.q_proj.bias"), nullptr);

  // The Instruct model lists three end tokens.
  const ModelConfig instruct = parse_config(llama_with({{"eos_token_id", {128001, 128008, 128009}}}));
  EXPECT_EQ(instruct.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
}

TEST_F(ConfigTest, Qwen2_05B) {
  const ModelConfig c = load_config(write("qwen", kQwen2_05B));
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_EQ(c.head_dim, 64);  // 896 / 14
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_FALSE(c.rope_scaling);
  EXPECT_EQ(c.sliding_window, std::nullopt);  // use_sliding_window is false
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(count_parameters(c), 494'032'768);  // model.num_parameters() of Qwen2-0.5B
  const auto specs = hf_tensors(c);
  EXPECT_EQ(specs.size(), 1u + 24 * 12 + 1);
  EXPECT_EQ(find(specs, "model.layers.0.self_attn.q_proj.bias")->shape, (Shape{896}));
  EXPECT_EQ(find(specs, "model.layers.23.self_attn.k_proj.bias")->shape, (Shape{128}));
  EXPECT_EQ(find(specs, "model.layers.23.self_attn.v_proj.bias")->shape, (Shape{128}));
  EXPECT_EQ(find(specs, "model.layers.0.self_attn.o_proj.bias"), nullptr);
  EXPECT_EQ(find(specs, "model.layers.0.mlp.up_proj.bias"), nullptr);
  EXPECT_EQ(specs[1].name, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(specs[2].name, "model.layers.0.self_attn.q_proj.bias");
  EXPECT_EQ(find(specs, "lm_head.weight"), nullptr);
}

TEST_F(ConfigTest, Mistral7B) {
  const ModelConfig c = parse_config(json::parse(kMistral7B));
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
  EXPECT_EQ(count_parameters(c), 7'241'732'096);
  EXPECT_EQ(count_non_embedding_parameters(c), 7'241'732'096 - 2 * 32000 * 4096);
  const auto specs = hf_tensors(c);
  EXPECT_EQ(specs.back().name, "lm_head.weight");
  EXPECT_EQ(specs.back().shape, (Shape{32000, 4096}));
  // Mistral Nemo: head_dim given, not hidden / heads.
  const ModelConfig nemo = parse_config(
      json::parse(kMistral7B).patch(json::parse(R"([{"op": "replace", "path": "/hidden_size", "value": 5120},
                      {"op": "add", "path": "/head_dim", "value": 128}])")));
  EXPECT_EQ(nemo.head_dim, 128);
  EXPECT_EQ(find(hf_tensors(nemo), "model.layers.0.self_attn.q_proj.weight")->shape, (Shape{4096, 5120}));
  EXPECT_EQ(find(hf_tensors(nemo), "model.layers.0.self_attn.o_proj.weight")->shape, (Shape{5120, 4096}));
}

TEST_F(ConfigTest, SmolLM2_135M) {
  const ModelConfig c = parse_config(json::parse(kSmolLM2_135M));
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_key_value_heads, 3);
  EXPECT_EQ(c.rope_theta, 100000.0);  // an integer in the file
  EXPECT_FALSE(c.rope_scaling);       // null
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_EQ(count_parameters(c), 134'515'008);
}

TEST_F(ConfigTest, RopeInverseFrequencies) {
  // Plain RoPE: theta^(-2i/d), here as exp(-2i/d * ln theta).
  const ModelConfig smol = parse_config(json::parse(kSmolLM2_135M));
  const auto plain = rope_inv_freq(smol);
  ASSERT_EQ(plain.size(), 32u);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(plain[i], std::exp(-i / 32.0 * std::log(100000.0)), 1e-15) << i;
  EXPECT_EQ(plain[0], 1.0);

  // llama3: written here as one interpolation with the weight clamped to
  // [0, 1]: s = (L / wavelength - low) / (high - low); f * ((1 - s) / factor + s).
  const ModelConfig c = parse_config(json::parse(kLlama32_1B));
  const auto inv = rope_inv_freq(c);
  ASSERT_EQ(inv.size(), 32u);
  int kept = 0, slowed = 0, between = 0;
  for (int i = 0; i < 32; ++i) {
    const double f = std::pow(500000.0, -i / 32.0);
    const double s = std::clamp((8192.0 * f / (2 * std::numbers::pi) - 1.0) / (4.0 - 1.0), 0.0, 1.0);
    EXPECT_NEAR(inv[i], f * ((1 - s) / 32.0 + s), 1e-12 * f) << i;
    kept += s == 1.0;
    slowed += s == 0.0;
    between += s > 0 && s < 1;
  }
  EXPECT_EQ(kept, 15);
  EXPECT_EQ(between, 3);
  EXPECT_EQ(slowed, 14);
  // Values computed separately (Python, float64, transformers' formula).
  EXPECT_NEAR(inv[14], 0.003211445994752591, 1e-17);
  EXPECT_NEAR(inv[15], 0.001290547928209264, 1e-17);
  EXPECT_NEAR(inv[16], 0.00042955679655936815, 1e-18);
  EXPECT_NEAR(inv[17], 9.70828780262767e-05, 1e-19);
  EXPECT_NEAR(inv[18], 1.9461638184831125e-05, 1e-20);
  EXPECT_NEAR(inv[31], 9.41830672543491e-08, 1e-22);

  ModelConfig linear = smol;
  linear.rope_scaling = RopeScaling{"linear", 4.0};
  const auto lin = rope_inv_freq(linear);
  for (int i = 0; i < 32; ++i) EXPECT_DOUBLE_EQ(lin[i], plain[i] / 4.0);
}

TEST_F(ConfigTest, AcceptedVariants) {
  // Older spelling "type"; "default" is plain RoPE; transformers 5's rope_parameters; "dtype".
  EXPECT_EQ(parse_config(llama_with({{"rope_scaling", {{"rope_type", nullptr}, {"type", "llama3"}}}}))
                .rope_scaling->rope_type,
            "llama3");
  EXPECT_FALSE(parse_config(llama_with({{"rope_scaling", {{"rope_type", "default"}}}})).rope_scaling);
  json v5 = llama_with(
      {{"rope_scaling", nullptr}, {"rope_theta", nullptr}, {"torch_dtype", nullptr}, {"dtype", "float32"}});
  v5["rope_parameters"] = json::parse(kLlama32_1B)["rope_scaling"];
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  const ModelConfig c5 = parse_config(v5);
  EXPECT_EQ(c5.rope_theta, 500000.0);
  EXPECT_EQ(c5, parse_config(llama_with({{"torch_dtype", "float32"}})));
  // Defaults: kv heads = heads, head_dim = hidden / heads, no eos.
  const ModelConfig d = parse_config(llama_with({{"num_key_value_heads", nullptr},
                                                 {"head_dim", nullptr},
                                                 {"eos_token_id", nullptr},
                                                 {"max_position_embeddings", nullptr}}));
  EXPECT_EQ(d.num_key_value_heads, 32);
  EXPECT_EQ(d.head_dim, 64);
  EXPECT_TRUE(d.eos_token_ids.empty());
  EXPECT_EQ(d.max_position_embeddings, 2048);
  // Llama with attention_bias: all four projections.
  const ModelConfig b = parse_config(llama_with({{"attention_bias", true}, {"mlp_bias", true}}));
  EXPECT_TRUE(b.qkv_bias && b.o_bias && b.mlp_bias);
  EXPECT_NE(find(hf_tensors(b), "model.layers.0.self_attn.o_proj.bias"), nullptr);
  EXPECT_EQ(find(hf_tensors(b), "model.layers.0.mlp.down_proj.bias")->shape, (Shape{2048}));
}

TEST_F(ConfigTest, ErrorsNameFileAndKey) {
  const auto bad = [&](const json& patch, std::initializer_list<std::string> parts) {
    SCOPED_TRACE(patch.dump());
    const std::string path = write("bad", llama_with(patch).dump());
    expect_error([&] { load_config(path); }, parts);
    expect_error([&] { load_config(path); }, {path});
  };
  bad({{"hidden_size", nullptr}}, {"missing required key 'hidden_size'"});
  bad({{"model_type", nullptr}}, {"missing required key 'model_type'"});
  bad({{"vocab_size", nullptr}}, {"missing required key 'vocab_size'"});
  bad({{"hidden_size", "2048"}}, {"key 'hidden_size' must be an integer, got \"2048\""});
  bad({{"num_hidden_layers", 16.5}}, {"key 'num_hidden_layers' must be an integer"});
  bad({{"tie_word_embeddings", "yes"}}, {"key 'tie_word_embeddings' must be true or false"});
  bad({{"rms_norm_eps", "small"}}, {"key 'rms_norm_eps' must be a number"});
  bad({{"model_type", 7}}, {"key 'model_type' must be a string"});
  bad({{"model_type", "gpt2"}}, {"model_type 'gpt2' is not supported"});
  bad({{"model_type", "smollm3"}}, {"model_type 'smollm3' is not supported"});
  bad({{"hidden_act", "gelu"}}, {"hidden_act 'gelu' is not supported"});
  bad({{"hidden_size", 2050}, {"head_dim", nullptr}},
      {"hidden_size 2050 is not divisible by num_attention_heads 32"});
  bad({{"num_key_value_heads", 5}}, {"num_attention_heads 32 is not a multiple of num_key_value_heads 5"});
  bad({{"num_attention_heads", 0}}, {"key 'num_attention_heads' must be positive"});
  bad({{"vocab_size", -1}}, {"key 'vocab_size' must be positive, got -1"});
  bad({{"head_dim", 63}, {"num_attention_heads", 1}, {"num_key_value_heads", 1}},
      {"head_dim 63 must be even"});
  bad({{"rms_norm_eps", 0}}, {"key 'rms_norm_eps' must be positive"});
  bad({{"rope_theta", -1}}, {"key 'rope_theta' must be positive"});
  bad({{"rope_scaling", {{"rope_type", "yarn"}}}}, {"rope_type 'yarn'", "not supported"});
  bad({{"rope_scaling", {{"rope_type", nullptr}}}}, {"key 'rope_scaling' has no 'rope_type'"});
  bad({{"rope_scaling", {{"factor", nullptr}}}}, {"missing required key 'rope_scaling.factor'"});
  bad({{"rope_scaling", {{"factor", "big"}}}}, {"key 'rope_scaling.factor' must be a number"});
  bad({{"rope_scaling", {{"original_max_position_embeddings", nullptr}}}},
      {"missing required key 'rope_scaling.original_max_position_embeddings'"});
  bad({{"rope_scaling", {{"high_freq_factor", 1.0}}}}, {"low_freq_factor < high_freq_factor"});
  bad({{"rope_scaling", {{"factor", -2.0}}}}, {"rope_scaling.factor' must be positive"});
  bad({{"rope_scaling", 3}}, {"key 'rope_scaling' must be an object or null, got 3"});
  bad({{"eos_token_id", "2"}}, {"key 'eos_token_id' must be an integer"});
  bad({{"eos_token_id", {1, "x"}}}, {"key 'eos_token_id' must be an integer or a list of integers"});
  bad({{"bos_token_id", -3}}, {"bos_token_id"});

  json qwen = json::parse(kQwen2_05B);
  qwen["use_sliding_window"] = true;
  expect_error([&] { parse_config(qwen, "qwen/config.json"); },
               {"qwen/config.json", "key 'use_sliding_window' is true, which is not supported"});
  expect_error([&] { parse_config(json::array({1, 2}), "x.json"); }, {"x.json", "must be a JSON object"});
  const std::string broken = write("broken", R"({"model_type": "llama",)");
  expect_error([&] { load_config(broken); }, {broken, "not valid JSON"});
  expect_error([&] { load_config((dir_ / "absent").string()); }, {"absent", "No such file"});

  // A config made in code is checked the same way.
  ModelConfig c = parse_config(json::parse(kMistral7B));
  c.qkv_bias = true;
  expect_error([&] { check_config(c, "mine"); }, {"mine", "biases", "model_type mistral"});
  expect_error([&] { to_json(c); }, {"model_type mistral"});
}

TEST_F(ConfigTest, ToJsonRoundTrip) {
  for (const char* text : {kLlama32_1B, kQwen2_05B, kMistral7B, kSmolLM2_135M}) {
    const json original = json::parse(text);
    const ModelConfig c = parse_config(original);
    const json out = to_json(c);
    SCOPED_TRACE(out.dump());
    EXPECT_EQ(parse_config(out), c);
    // What transformers keys on, as in the original file.
    EXPECT_EQ(out["architectures"], original["architectures"]);
    for (const char* key :
         {"model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta",
          "tie_word_embeddings", "bos_token_id", "eos_token_id", "torch_dtype", "hidden_act"})
      EXPECT_EQ(out[key], original[key]) << key;
    EXPECT_EQ(out["head_dim"], c.head_dim);
    // Saved and loaded through a file.
    const std::string path = (dir_ / "saved.json").string();
    save_config(c, path);
    EXPECT_EQ(load_config(path), c);
  }
  const json llama = to_json(parse_config(json::parse(kLlama32_1B)));
  EXPECT_EQ(llama["rope_scaling"], json::parse(kLlama32_1B)["rope_scaling"]);
  EXPECT_EQ(llama["attention_bias"], false);
  EXPECT_EQ(llama["mlp_bias"], false);
  const json qwen = to_json(parse_config(json::parse(kQwen2_05B)));
  EXPECT_FALSE(qwen.contains("attention_bias"));  // qwen2's q/k/v bias is implied by its type
  EXPECT_EQ(qwen["use_sliding_window"], false);
  EXPECT_EQ(to_json(parse_config(json::parse(kMistral7B)))["sliding_window"], 4096);
  EXPECT_TRUE(to_json(parse_config(json::parse(kSmolLM2_135M)))["rope_scaling"].is_null());
  const ModelConfig instruct = parse_config(llama_with({{"eos_token_id", {128001, 128008, 128009}}}));
  EXPECT_EQ(to_json(instruct)["eos_token_id"], json({128001, 128008, 128009}));
  EXPECT_EQ(parse_config(to_json(instruct)), instruct);
}

}  // namespace
}  // namespace halo
