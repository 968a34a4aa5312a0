// Evaluating a model on chat records (`halo eval`): the loss over the
// assistant's tokens, or generated answers scored against the references.
//
// A record is one line of a JSONL file, as training reads them (data/jsonl.h):
// {"messages": [{"role": ..., "content": ...}, ...]} or {"prompt": ...,
// "completion": ...} (and for the loss also {"text": ...}).
//
//   loss        the records tokenized as training does (data/jsonl.h: the chat
//               template, the loss mask) and run through
//               LlamaModel::forward_loss; the loss is the mean cross-entropy
//               over the counted (assistant) tokens of all records, the
//               perplexity exp(loss).
//   generation  the prompt is the record's messages minus the last, which must
//               be the assistant's (or the user turn of "prompt"), rendered with
//               the generation prompt (the opening of an assistant turn); the
//               answer is generated greedily (model/generate.h) until an
//               end-of-turn token or max_new_tokens, decoded without special
//               tokens, and scored against the last message (or "completion")
//               with eval/metrics.h.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/metrics.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace halo {

class LlamaModel;

struct JsonlDocuments;

// A record to answer: the conversation up to the answer, and the reference.
struct EvalRecord {
  std::vector<ChatMessage> prompt;
  std::string reference;
};

// The records of a JSONL file (blank lines skipped), at most `limit` (0: all).
// Errors name FILE:LINE and what is wrong: not JSON, neither "messages" nor
// "prompt" / "completion", a message without string "role" / "content", a
// last message that is not the assistant's.
std::vector<EvalRecord> read_eval_records(const std::string& path, int64_t limit = 0);

struct LossResult {
  double loss = 0.0;        // mean over counted tokens (nats)
  double perplexity = 0.0;  // exp(loss)
  int64_t tokens = 0;       // counted tokens
  int64_t records = 0;
};

// Tokenized records (data/jsonl.h's read_jsonl_documents), the first `limit`
// (0: all), `batch` per forward (each one row, padded to the longest).
LossResult evaluate_loss(LlamaModel& model, const JsonlDocuments& documents, int64_t limit, int64_t batch);

struct GenerationRecord {
  int64_t index = 0;       // the record's position in the file (0-based)
  std::string prompt;      // the content of the last message before the answer (the question)
  std::string reference;   // the record's last (assistant) message
  std::string prediction;  // the decoded answer
  bool correct = false;
  int64_t new_tokens = 0;  // generated, the end-of-turn token included
};

struct GenerationResult {
  std::vector<GenerationRecord> records;
  int64_t correct = 0;
  double accuracy = 0.0;  // correct / records
  int64_t new_tokens = 0;
  double seconds = 0.0;   // generation time
};

struct GenerationSettings {
  Metric metric = Metric::exact;
  int64_t max_new_tokens = 128;
  int64_t batch = 16;  // prompts generated together
  // Called after each batch with the records done so far and the total.
  std::function<void(int64_t done, int64_t total, const GenerationResult& so_far)> on_batch;
};

GenerationResult evaluate_generation(LlamaModel& model, const Tokenizer& tokenizer, ChatTemplate chat_template,
                                     const std::vector<EvalRecord>& records, const GenerationSettings& settings);

// Writes the records to `path` atomically (its folder made if missing), one
// JSON line each: {"index", "prompt", "reference", "prediction", "correct"}.
void write_generation_records(const std::string& path, const std::vector<GenerationRecord>& records);

}  // namespace halo
