#include "eval/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/tensor.h"
#include "data/jsonl.h"
#include "io/atomic_file.h"
#include "model/batch.h"
#include "model/generate.h"
#include "model/llama.h"

namespace halo {

namespace {

EvalRecord parse_record(const std::string& line, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::parse_error& e) {
    HALO_FAIL(where, ": not a JSON object: ", e.what());
  }
  HALO_CHECK(j.is_object(), where, ": expected a JSON object");
  EvalRecord r;
  if (j.contains("prompt") || j.contains("completion")) {
    HALO_CHECK(j.contains("prompt") && j["prompt"].is_string() && j.contains("completion") &&
                   j["completion"].is_string(),
               where, ": a prompt / completion record needs both as strings");
    r.prompt.push_back({"user", j["prompt"].get<std::string>()});
    r.reference = j["completion"].get<std::string>();
    return r;
  }
  HALO_CHECK(j.contains("messages") && j["messages"].is_array(), where,
             ": expected {\"messages\": [{\"role\": ..., \"content\": ...}, ...]} or {\"prompt\": ..., "
             "\"completion\": ...} (a record with a reference answer)");
  for (const auto& m : j["messages"]) {
    HALO_CHECK(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                   m["content"].is_string(),
               where, ": message ", r.prompt.size(), " needs string \"role\" and \"content\"");
    r.prompt.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  HALO_CHECK(r.prompt.size() >= 2 && r.prompt.back().role == "assistant", where,
             ": the last message must be the assistant's (the reference answer), after at least one other");
  r.reference = r.prompt.back().content;
  r.prompt.pop_back();
  return r;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<EvalRecord> read_eval_records(const std::string& path, int64_t limit) {
  std::ifstream in(path);
  HALO_CHECK(in, "cannot open ", path);
  std::vector<EvalRecord> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    out.push_back(parse_record(line, path + ":" + std::to_string(n)));
    if (limit > 0 && static_cast<int64_t>(out.size()) >= limit) break;
  }
  HALO_CHECK(!out.empty(), path, ": no records");
  return out;
}

LossResult evaluate_loss(LlamaModel& model, const JsonlDocuments& documents, int64_t limit, int64_t batch) {
  HALO_CHECK(batch > 0, "evaluate_loss: batch must be positive, got ", batch);
  const Device device = model.options().device;
  const size_t n_docs = limit > 0 ? std::min(documents.docs.size(), static_cast<size_t>(limit)) : documents.docs.size();
  LossResult r;
  Tensor loss_sum = Tensor::zeros({1}, DType::f32, device);
  for (size_t start = 0; start < n_docs; start += static_cast<size_t>(batch)) {
    const size_t end = std::min(n_docs, start + static_cast<size_t>(batch));
    int64_t T = 1;
    for (size_t i = start; i < end; ++i) T = std::max<int64_t>(T, static_cast<int64_t>(documents.docs[i].size()));
    const int64_t rows = static_cast<int64_t>(end - start);
    Batch b;
    b.rows = rows;
    b.seq_len = T;
    b.input_ids = Tensor::zeros({rows * T}, DType::i32);
    b.targets = Tensor::empty({rows * T}, DType::i32);
    b.positions = Tensor::zeros({rows * T}, DType::i32);
    b.doc_ids = Tensor::empty({rows * T}, DType::i32);
    for (int64_t row = 0; row < rows; ++row) {
      const std::vector<uint32_t>& ids = documents.docs[start + static_cast<size_t>(row)];
      const std::vector<uint8_t>& mask = documents.masks[start + static_cast<size_t>(row)];
      const int64_t n = static_cast<int64_t>(ids.size());
      for (int64_t t = 0; t < T; ++t) {
        const int64_t k = row * T + t;
        int32_t target = -100;  // position t predicts token t + 1 where the mask counts it
        if (t + 1 < n && mask[static_cast<size_t>(t + 1)]) {
          target = static_cast<int32_t>(ids[static_cast<size_t>(t + 1)]);
          ++b.counted;
        }
        b.input_ids.data_as<int32_t>()[k] = t < n ? static_cast<int32_t>(ids[static_cast<size_t>(t)]) : 0;
        b.targets.data_as<int32_t>()[k] = target;
        b.positions.data_as<int32_t>()[k] = t < n ? static_cast<int32_t>(t) : 0;
        b.doc_ids.data_as<int32_t>()[k] = t < n ? 0 : 1;  // padding is a document of its own
      }
    }
    r.tokens += b.counted;
    if (b.counted > 0) model.forward_loss(b.to(device), loss_sum);
  }
  r.records = static_cast<int64_t>(n_docs);
  HALO_CHECK(r.tokens > 0, "evaluate_loss: no counted tokens in ", n_docs, " records");
  r.loss = static_cast<double>(loss_sum.to_floats()[0]) / static_cast<double>(r.tokens);
  r.perplexity = std::exp(r.loss);
  return r;
}

GenerationResult evaluate_generation(LlamaModel& model, const Tokenizer& tokenizer, ChatTemplate chat_template,
                                     const std::vector<EvalRecord>& records, const GenerationSettings& settings) {
  HALO_CHECK(settings.batch > 0 && settings.max_new_tokens > 0,
             "evaluate_generation: batch and max_new_tokens must be positive, got ", settings.batch, " and ",
             settings.max_new_tokens);
  GenerateOptions options;
  options.max_new_tokens = settings.max_new_tokens;
  options.temperature = 0.0f;
  options.stop_ids = end_of_turn_ids(tokenizer, chat_template);
  const auto is_stop = [&](uint32_t id) {
    return std::find(options.stop_ids.begin(), options.stop_ids.end(), id) != options.stop_ids.end();
  };

  GenerationResult result;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t start = 0; start < records.size(); start += static_cast<size_t>(settings.batch)) {
    const size_t end = std::min(records.size(), start + static_cast<size_t>(settings.batch));
    std::vector<std::vector<uint32_t>> prompts;
    for (size_t i = start; i < end; ++i) prompts.push_back(render_chat(tokenizer, chat_template, records[i].prompt, true).ids);
    const std::vector<std::vector<uint32_t>> answers = generate(model, prompts, options);
    HALO_CHECK(answers.size() == prompts.size(), "generate returned ", answers.size(), " answers for ",
               prompts.size(), " prompts");
    for (size_t i = start; i < end; ++i) {
      std::vector<uint32_t> ids = answers[i - start];
      GenerationRecord g;
      g.index = static_cast<int64_t>(i);
      g.new_tokens = static_cast<int64_t>(ids.size());
      while (!ids.empty() && is_stop(ids.back())) ids.pop_back();
      g.prompt = records[i].prompt.back().content;
      g.reference = records[i].reference;
      g.prediction = tokenizer.decode(ids, /*skip_special_tokens=*/true);
      g.correct = score_prediction(settings.metric, g.prediction, g.reference);
      result.correct += g.correct ? 1 : 0;
      result.new_tokens += g.new_tokens;
      result.records.push_back(std::move(g));
    }
    result.seconds = seconds_since(t0);
    result.accuracy = static_cast<double>(result.correct) / static_cast<double>(result.records.size());
    if (settings.on_batch) settings.on_batch(static_cast<int64_t>(end), static_cast<int64_t>(records.size()), result);
  }
  return result;
}

void write_generation_records(const std::string& path, const std::vector<GenerationRecord>& records) {
  std::string text;
  for (const GenerationRecord& r : records) {
    nlohmann::ordered_json j;
    j["index"] = r.index;
    j["prompt"] = r.prompt;
    j["reference"] = r.reference;
    j["prediction"] = r.prediction;
    j["correct"] = r.correct;
    text += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  if (const auto parent = std::filesystem::path(path).parent_path(); !parent.empty())
    std::filesystem::create_directories(parent);
  write_file_atomic(path, text);
}

}  // namespace halo
