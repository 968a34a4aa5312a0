// Training data from a JSONL file: each line one record, tokenized into one
// document of a token file (data/token_data.h) with its loss mask.
//
// Record shapes (blank lines are skipped; other keys, e.g. "id", are ignored):
//   {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
//       rendered with the chat template (text/chat_template.h); counted: each
//       assistant answer and its end-of-turn token
//   {"prompt": "...", "completion": "..."}
//       a user turn and an assistant turn through the chat template; with no
//       template ("none", or "auto" finding none) the tokens of prompt +
//       completion as the tokenizer encodes a text (see "text"), counted: the
//       completion and the EOS token
//   {"text": "..."}
//       the text's tokens as Hugging Face's tokenizer(text) gives them (the
//       BOS token where the tokenizer's post-processor adds one), then the EOS
//       token of tokenizer_config.json (when it has one); all counted
// With LossOn::all every token is counted, whatever the shape. A document's
// first token is never a target (its mask is 0); a record that leaves no
// target is left out (counted as skipped).
//
// A malformed record is an error naming the file, the line and what is wrong.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "text/chat_template.h"
#include "text/tokenizer.h"

namespace halo {

enum class LossOn { assistant, all };
LossOn parse_loss_on(std::string_view name);  // "assistant" | "all"; throws naming them
std::string_view loss_on_name(LossOn loss);

// The template a JSONL file is rendered with: "auto" (from the tokenizer:
// text/chat_template.h's find_chat_template; none found: no template), "none"
// (messages records are refused, prompt / completion concatenated), or a
// template's name. Throws naming the accepted values.
void check_template_choice(std::string_view choice);

struct JsonlOptions {
  std::string chat_template = "auto";  // see check_template_choice
  LossOn loss = LossOn::assistant;
};

struct JsonlDocuments {
  std::vector<std::vector<uint32_t>> docs;  // one per record kept, in file order
  std::vector<std::vector<uint8_t>> masks;  // per token: 1 = a training target
  int64_t records = 0;                      // non-blank lines read
  int64_t skipped = 0;                      // records left out: no target
  int64_t tokens = 0;                       // of the documents kept
  int64_t targets = 0;                      // counted tokens (targets) of the documents kept
  std::string chat_template;                // the template used: its name, or "none"
  std::vector<int64_t> lines;               // the line each document came from (1-based)
};

// Reads and tokenizes the records of `path` (on all OpenMP threads). Throws
// on a file that cannot be read and on the first malformed record
// ("FILE:LINE: what is wrong").
JsonlDocuments read_jsonl_documents(const std::string& path, const Tokenizer& tokenizer,
                                    const JsonlOptions& options = {});

// One parsed record's tokens and mask (counted = the mask), as above; `t` is
// the template (nullopt: none). Throws (without the file and line) on a
// malformed record.
RenderedChat tokenize_record(const nlohmann::json& record, const Tokenizer& tokenizer, std::optional<ChatTemplate> t,
                             LossOn loss);

// "1200 records (3 without a target left out), 345.6k tokens, 120.3k counted
// (34.8%), template chatml".
std::string describe(const JsonlDocuments& d);

}  // namespace halo
