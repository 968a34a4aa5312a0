// halo generate: text from a model directory (config.json, safetensors,
// tokenizer.json) with a key/value cache (model/generate.h).
//
// A prompt is rendered with the model's chat template as one user turn with
// the assistant's turn opened (text/chat_template.h; --template names one),
// and generation stops at the template's end-of-turn tokens or the EOS. With
// --raw the text is encoded as it is (with the tokenizer's post-processor
// tokens, e.g. a BOS) and generation stops at the EOS.
//
// --prompt TEXT: the completion on stdout, streamed token by token when stdout
// is a terminal. --input FILE.jsonl: one record per line, {"prompt": TEXT} or
// {"messages": [{"role": ..., "content": ...}, ...]} (not with --raw); the
// output, on stdout or in --output, is one line per record: its "prompt" (or
// "messages") and the "completion". Records run --batch at a time. Counts
// and tokens/s go to stderr.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/allocator.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "model/generate.h"
#include "model/llama.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace halo::cli {

namespace {

float parse_float(const Args& args, const std::string& name, float fallback) {
  if (!args.has(name)) return fallback;
  const std::string v = args.get(name, "");
  char* end = nullptr;
  const float x = std::strtof(v.c_str(), &end);
  HALO_CHECK(!v.empty() && end && *end == 0 && std::isfinite(x), "option --", name, ": expected a number, got '", v,
             "'");
  return x;
}

struct Record {
  nlohmann::ordered_json echo;  // {"prompt": ...} or {"messages": [...]}, as given
  std::vector<uint32_t> ids;
};

// The text decoded so far of one streamed sequence; prints what is new once
// it no longer ends inside a multi-byte character (decoded as U+FFFD).
class Streamer {
 public:
  explicit Streamer(const Tokenizer& tok) : tok_(tok) {}
  void add(uint32_t id) {
    ids_.push_back(id);
    const std::string text = tok_.decode(ids_, /*skip_special_tokens=*/true);
    if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return;  // wait for the rest
    if (text.size() > printed_) {
      std::fwrite(text.data() + printed_, 1, text.size() - printed_, stdout);
      std::fflush(stdout);
      printed_ = text.size();
    }
  }

 private:
  const Tokenizer& tok_;
  std::vector<uint32_t> ids_;
  size_t printed_ = 0;
};

}  // namespace

int generate(const std::vector<std::string>& argv) {
  Args args(argv, {"raw"});
  const std::string model_dir = args.get("model", ""), input = args.get("input", ""), output = args.get("output", "");
  const bool has_prompt = args.has("prompt");
  const std::string prompt = args.get("prompt", "");
  const std::string device = args.get("device", cuda_available() ? "cuda" : "cpu");
  const std::string template_name = args.get("template", "");
  const bool raw = args.has("raw");
  GenerateOptions opt;
  opt.max_new_tokens = args.get_int("max-new-tokens", 256);
  opt.temperature = parse_float(args, "temperature", 0.0f);
  opt.top_p = parse_float(args, "top-p", 1.0f);
  opt.seed = static_cast<uint64_t>(args.get_int("seed", 0));
  const long long batch = args.get_int("batch", 16);
  args.check_all_used({"model", "prompt", "input", "output", "max-new-tokens", "temperature", "top-p", "seed", "device",
                       "raw", "template", "batch"});
  HALO_CHECK(!model_dir.empty() && has_prompt != !input.empty(),
             "generate: usage: halo generate --model DIR (--prompt TEXT | --input FILE.jsonl) [--max-new-tokens N] "
             "[--temperature T] [--top-p P] [--seed S] [--device cpu|cuda] [--raw] [--template NAME] "
             "[--output FILE.jsonl] [--batch N]");
  HALO_CHECK(device == "cpu" || device == "cuda", "generate: --device must be cpu or cuda, got '", device, "'");
  HALO_CHECK(device == "cpu" || cuda_available(), "generate: --device cuda, but no CUDA device is available");
  HALO_CHECK(opt.max_new_tokens >= 0, "generate: --max-new-tokens must be >= 0, got ", opt.max_new_tokens);
  HALO_CHECK(opt.temperature >= 0.0f, "generate: --temperature must be >= 0, got ", opt.temperature);
  HALO_CHECK(opt.top_p > 0.0f && opt.top_p <= 1.0f, "generate: --top-p must be in (0, 1], got ", opt.top_p);
  HALO_CHECK(batch >= 1, "generate: --batch must be >= 1, got ", batch);
  HALO_CHECK(!raw || template_name.empty(), "generate: --raw and --template exclude each other");

  const Tokenizer tok = Tokenizer::load(model_dir);
  const ModelConfig config = load_config(model_dir);
  ChatTemplate chat{};
  if (!raw) chat = template_name.empty() ? detect_chat_template(tok, model_dir) : parse_chat_template(template_name);
  // Stop at the end of a turn (chat) and at any EOS the tokenizer or config.json names.
  if (!raw) opt.stop_ids = end_of_turn_ids(tok, chat);
  if (tok.eos_id()) opt.stop_ids.push_back(*tok.eos_id());
  for (int64_t id : config.eos_token_ids)
    if (id >= 0 && id < config.vocab_size) opt.stop_ids.push_back(static_cast<uint32_t>(id));

  EncodeOptions enc;
  enc.add_special_tokens = true;  // as Hugging Face's tokenizer(text): e.g. Llama's BOS
  const auto user_prompt = [&](const std::string& text) {
    return raw ? tok.encode(text, enc) : render_chat(tok, chat, {{"user", text}}, /*add_generation_prompt=*/true).ids;
  };
  std::vector<Record> records;
  if (has_prompt) {
    records.push_back({nlohmann::ordered_json{{"prompt", prompt}}, user_prompt(prompt)});
  } else {
    std::ifstream in(input);
    HALO_CHECK(in, "generate: cannot open --input ", input);
    std::string line;
    for (int64_t n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = input + ":" + std::to_string(n);
      nlohmann::ordered_json j;
      try {
        j = nlohmann::ordered_json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        HALO_FAIL("generate: ", where, ": not JSON: ", e.what());
      }
      HALO_CHECK(j.is_object() && (j.contains("prompt") != j.contains("messages")), "generate: ", where,
                 ": expected an object with \"prompt\" (a string) or \"messages\" (a list)");
      if (j.contains("prompt")) {
        HALO_CHECK(j["prompt"].is_string(), "generate: ", where, ": \"prompt\" must be a string");
        records.push_back({nlohmann::ordered_json{{"prompt", j["prompt"]}}, user_prompt(j["prompt"].get<std::string>())});
        continue;
      }
      HALO_CHECK(!raw, "generate: ", where, ": \"messages\" need the chat template (drop --raw)");
      HALO_CHECK(j["messages"].is_array() && !j["messages"].empty(), "generate: ", where,
                 ": \"messages\" must be a non-empty list");
      std::vector<ChatMessage> messages;
      for (const auto& m : j["messages"]) {
        HALO_CHECK(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                       m["content"].is_string(),
                   "generate: ", where, ": each message needs a string \"role\" and \"content\"");
        messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      }
      records.push_back({nlohmann::ordered_json{{"messages", j["messages"]}},
                         render_chat(tok, chat, messages, /*add_generation_prompt=*/true).ids});
    }
  }
  for (size_t i = 0; i < records.size(); ++i)
    HALO_CHECK(!records[i].ids.empty(), "generate: record ", i + 1, " encodes to no tokens");

  ModelOptions mo;
  mo.device = device == "cuda" ? Device::cuda : Device::cpu;
  mo.dtype = device == "cuda" ? DType::bf16 : DType::f32;
  LlamaModel model(config, mo);
  model.load(model_dir);

  const bool stream = has_prompt && output.empty() && isatty(STDOUT_FILENO);
  Streamer streamer(tok);
  std::vector<std::string> completions(records.size());
  GenerateStats total;
  for (size_t first = 0; first < records.size(); first += static_cast<size_t>(batch)) {
    const size_t count = std::min(records.size() - first, static_cast<size_t>(batch));
    std::vector<std::vector<uint32_t>> prompts;
    for (size_t i = 0; i < count; ++i) prompts.push_back(records[first + i].ids);
    GenerateStats st;
    TokenCallback on_token;
    if (stream) on_token = [&](size_t, uint32_t id) { streamer.add(id); };
    const auto out = halo::generate(model, prompts, opt, on_token, &st);
    for (size_t i = 0; i < count; ++i) completions[first + i] = tok.decode(out[i], /*skip_special_tokens=*/true);
    total.prompt_tokens += st.prompt_tokens;
    total.new_tokens += st.new_tokens;
    total.prefill_seconds += st.prefill_seconds;
    total.decode_seconds += st.decode_seconds;
  }

  std::string lines;
  for (size_t i = 0; i < records.size(); ++i) {
    nlohmann::ordered_json j = records[i].echo;
    j["completion"] = completions[i];
    lines += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  if (!output.empty()) {
    write_file_atomic(output, lines);
  } else if (stream) {
    std::printf("\n");
  } else if (has_prompt) {
    std::printf("%s\n", completions[0].c_str());
  } else {
    std::fwrite(lines.data(), 1, lines.size(), stdout);
  }
  const int64_t decoded = total.new_tokens - static_cast<int64_t>(records.size());  // after each first token
  std::fprintf(stderr,
               "halo generate: %zu prompt%s, %lld prompt tokens, %lld new tokens (%s); prefill %.2f s (%.1f tokens/s), "
               "decode %.2f s (%.1f tokens/s)\n",
               records.size(), records.size() == 1 ? "" : "s", static_cast<long long>(total.prompt_tokens),
               static_cast<long long>(total.new_tokens), device.c_str(), total.prefill_seconds,
               total.prefill_seconds > 0 ? total.prompt_tokens / total.prefill_seconds : 0.0, total.decode_seconds,
               total.decode_seconds > 0 && decoded > 0 ? decoded / total.decode_seconds : 0.0);
  return 0;
}

}  // namespace halo::cli
