// halo eval: a model directory on a chat JSONL file (eval/evaluate.h): the
// loss over the assistant's tokens, or greedy answers scored by a metric
// (eval/metrics.h), with one JSON line per example written to --output.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/args.h"
#include "cli/commands.h"
#include "core/allocator.h"
#include "core/error.h"
#include "data/jsonl.h"
#include "eval/evaluate.h"
#include "model/config.h"
#include "model/llama.h"

namespace halo::cli {

namespace {

const char* kEvalUsage =
    "usage: halo eval --model DIR --data FILE.jsonl --metric loss|exact|sql|gsm8k|viggo\n"
    "                 [--max-new-tokens N] [--limit N] [--output results.jsonl] [--device cpu|cuda]\n"
    "                 [--batch N] [--tokenizer DIR] [--template auto|llama3|chatml|llama2|mistral] [--json]\n"
    "  records: {\"messages\": [...]} (the last one the assistant's) or {\"prompt\", \"completion\"}.\n"
    "  loss: mean cross-entropy and perplexity over the assistant tokens, tokenized as halo train does.\n"
    "  exact|sql|gsm8k|viggo: the answer to each record (its messages but the last, with the\n"
    "  generation prompt) generated greedily and compared with the last message (src/eval/metrics.h);\n"
    "  prints the accuracy, and writes {index, prompt, reference, prediction, correct} per record to\n"
    "  --output. The tokenizer is read from --tokenizer (default: the model directory).\n";

bool has_tokenizer(const std::string& dir) {
  return std::filesystem::is_regular_file(dir) || std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json");
}

}  // namespace

int eval(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
    std::fputs(kEvalUsage, argv.empty() ? stderr : stdout);
    return argv.empty() ? 2 : 0;
  }
  Args args(argv, {"json"});
  const std::string model_dir = args.get("model", ""), data = args.get("data", ""),
                    metric_name_arg = args.get("metric", ""), output = args.get("output", "");
  const std::string tokenizer_path = args.get("tokenizer", model_dir), template_name = args.get("template", "");
  const std::string device_arg = args.get("device", cuda_available() ? "cuda" : "cpu");
  const bool gpu = device_arg == "cuda";
  const long long max_new = args.get_int("max-new-tokens", 128), limit = args.get_int("limit", 0),
                  batch = args.get_int("batch", gpu ? 64 : 16);
  const bool json = args.has("json");
  args.check_all_used({"model", "data", "metric", "output", "tokenizer", "template", "device", "max-new-tokens",
                       "limit", "batch", "json"});
  HALO_CHECK(!model_dir.empty() && !data.empty() && !metric_name_arg.empty(),
             "eval: --model DIR, --data FILE.jsonl and --metric are required\n", kEvalUsage);
  HALO_CHECK(device_arg == "cpu" || device_arg == "cuda", "eval: --device must be cpu or cuda, got '", device_arg,
             "'");
  HALO_CHECK(!gpu || cuda_available(), "eval: --device cuda: no usable CUDA device");
  HALO_CHECK(max_new > 0 && batch > 0 && limit >= 0,
             "eval: --max-new-tokens and --batch must be positive and --limit non-negative");
  const bool loss_metric = metric_name_arg == "loss";
  const Metric metric = loss_metric ? Metric::exact : parse_metric(metric_name_arg);
  HALO_CHECK(!loss_metric || output.empty(), "eval: --output is for the generation metrics (per-example "
             "answers); --metric loss prints one figure");
  HALO_CHECK(has_tokenizer(tokenizer_path), "eval: no tokenizer.json in ", tokenizer_path,
             " (give --tokenizer DIR, e.g. the model the run was fine-tuned from)");

  const Tokenizer tokenizer = Tokenizer::load(tokenizer_path);
  const ModelConfig config = load_config(model_dir);
  ModelOptions mo;
  mo.device = gpu ? Device::cuda : Device::cpu;
  mo.dtype = gpu ? DType::bf16 : DType::f32;
  const auto t0 = std::chrono::steady_clock::now();

  if (loss_metric) {
    // The records tokenized as `halo train` does (data/jsonl.h), the loss on the assistant tokens.
    JsonlOptions jo;
    jo.chat_template = template_name.empty() ? "auto" : template_name;
    const JsonlDocuments docs = read_jsonl_documents(data, tokenizer, jo);
    LlamaModel model(config, mo);
    model.load(model_dir);
    if (!json)
      std::printf("halo eval: %s on %s (%s, %s), metric loss\n", model_dir.c_str(), data.c_str(), describe(docs).c_str(),
                  device_arg.c_str());
    const LossResult r = evaluate_loss(model, docs, limit, batch);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (json) {
      nlohmann::ordered_json j{{"metric", "loss"}, {"model", model_dir}, {"data", data}, {"records", r.records},
                               {"tokens", r.tokens}, {"loss", r.loss}, {"perplexity", r.perplexity},
                               {"seconds", secs}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("loss %.4f  perplexity %.3f  over %lld assistant tokens of %lld records (%.1fs)\n", r.loss,
                  r.perplexity, static_cast<long long>(r.tokens), static_cast<long long>(r.records), secs);
    }
    return 0;
  }

  const ChatTemplate chat_template =
      template_name.empty() || template_name == "auto" ? detect_chat_template(tokenizer)
                                                       : parse_chat_template(template_name);
  const std::vector<EvalRecord> records = read_eval_records(data, limit);
  LlamaModel model(config, mo);
  model.load(model_dir);
  if (!json)
    std::printf("halo eval: %s on %s (%zu records, %s template, %s), metric %s\n", model_dir.c_str(), data.c_str(),
                records.size(), std::string(chat_template_name(chat_template)).c_str(), device_arg.c_str(),
                metric_name_arg.c_str());

  GenerationSettings settings;
  settings.metric = metric;
  settings.max_new_tokens = max_new;
  settings.batch = batch;
  if (!json)
    settings.on_batch = [](int64_t done, int64_t total, const GenerationResult& so_far) {
      std::printf("  %lld/%lld  correct %lld (%.1f%%)  %.1f new tokens/s\n", static_cast<long long>(done),
                  static_cast<long long>(total), static_cast<long long>(so_far.correct), 100.0 * so_far.accuracy,
                  so_far.seconds > 0 ? static_cast<double>(so_far.new_tokens) / so_far.seconds : 0.0);
    };
  const GenerationResult r = evaluate_generation(model, tokenizer, chat_template, records, settings);
  if (!output.empty()) write_generation_records(output, r.records);
  const int64_t n = static_cast<int64_t>(r.records.size());
  if (json) {
    nlohmann::ordered_json j{{"metric", metric_name(metric)}, {"model", model_dir}, {"data", data},
                             {"records", n}, {"correct", r.correct}, {"accuracy", r.accuracy},
                             {"new_tokens", r.new_tokens}, {"seconds", r.seconds}};
    if (!output.empty()) j["output"] = output;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("accuracy %.1f%% (%lld/%lld, metric %s) in %.1fs%s%s\n", 100.0 * r.accuracy,
                static_cast<long long>(r.correct), static_cast<long long>(n), std::string(metric_name(metric)).c_str(),
                r.seconds, output.empty() ? "" : ", answers in ", output.c_str());
  }
  return 0;
}

}  // namespace halo::cli
