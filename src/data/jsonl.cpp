#include "data/jsonl.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"

namespace halo {

using nlohmann::json;

namespace {

// A JSON value's kind for messages: "a string", "null", "a list", ...
std::string kind(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "a list";
    case json::value_t::string:
      return "a string";
    case json::value_t::boolean:
      return "a boolean";
    default:
      return "a number";
  }
}

const std::string& string_at(const json& obj, const char* key, const std::string& where) {
  const json& v = obj.at(key);
  HALO_CHECK(v.is_string(), where, "'", key, "' must be a string, got ", kind(v));
  return v.get_ref<const std::string&>();
}

std::vector<ChatMessage> messages_of(const json& record) {
  const json& list = record.at("messages");
  HALO_CHECK(list.is_array(), "'messages' must be a list of {\"role\", \"content\"} objects, got ", kind(list));
  HALO_CHECK(!list.empty(), "'messages' is empty");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = "message " + std::to_string(i) + ": ";
    const json& m = list[i];
    HALO_CHECK(m.is_object(), where, "must be an object {\"role\", \"content\"}, got ", kind(m));
    HALO_CHECK(m.contains("role"), where, "has no 'role'");
    HALO_CHECK(m.contains("content"), where, "has no 'content'");
    out.push_back({string_at(m, "role", where), string_at(m, "content", where)});
  }
  return out;
}

// The ids of `text` as the tokenizer encodes a whole text (the post-processor's
// tokens, e.g. a BOS, included), with the EOS token after them.
std::vector<uint32_t> encode_document(const Tokenizer& tok, const std::string& text) {
  EncodeOptions o;
  o.add_special_tokens = true;
  std::vector<uint32_t> ids = tok.encode(text, o);
  if (const auto eos = tok.eos_id(); eos && (ids.empty() || ids.back() != *eos)) ids.push_back(*eos);
  return ids;
}

RenderedChat plain_prompt_completion(const Tokenizer& tok, const std::string& prompt, const std::string& completion) {
  RenderedChat r;
  r.ids = encode_document(tok, prompt + completion);
  EncodeOptions o;
  o.add_special_tokens = true;
  const std::vector<uint32_t> head = tok.encode(prompt, o);
  // Counted from the first token that differs from the prompt's own encoding.
  const size_t same =
      static_cast<size_t>(std::mismatch(head.begin(), head.end(), r.ids.begin(), r.ids.end()).first - head.begin());
  r.counted.assign(r.ids.size(), 1);
  std::fill(r.counted.begin(), r.counted.begin() + static_cast<std::ptrdiff_t>(std::min(same, r.ids.size())), 0);
  return r;
}

}  // namespace

LossOn parse_loss_on(std::string_view name) {
  if (name == "assistant") return LossOn::assistant;
  if (name == "all") return LossOn::all;
  HALO_FAIL("unknown loss choice '", name, "' (assistant: the answers' tokens only; all: every token)");
}

std::string_view loss_on_name(LossOn loss) { return loss == LossOn::all ? "all" : "assistant"; }

void check_template_choice(std::string_view choice) {
  if (choice == "auto" || choice == "none") return;
  try {
    parse_chat_template(choice);
  } catch (const Error&) {
    HALO_FAIL("unknown chat template '", choice, "' (auto, none, llama3, chatml, llama2, mistral)");
  }
}

RenderedChat tokenize_record(const json& record, const Tokenizer& tok, std::optional<ChatTemplate> t, LossOn loss) {
  HALO_CHECK(record.is_object(), "expected a JSON object, got ", kind(record));
  const bool messages = record.contains("messages"), text = record.contains("text");
  const bool prompt = record.contains("prompt"), completion = record.contains("completion");
  HALO_CHECK(messages + text + (prompt || completion) <= 1,
             "holds more than one of 'messages', 'text' and 'prompt' / 'completion' (one shape per record)");
  RenderedChat r;
  if (messages) {
    HALO_CHECK(t,
               "a 'messages' record needs a chat template, and none is set (the tokenizer has no known one; "
               "name one: llama3, chatml, llama2, mistral)");
    r = render_chat(tok, *t, messages_of(record), false);
  } else if (prompt || completion) {
    HALO_CHECK(prompt, "has 'completion' but no 'prompt'");
    HALO_CHECK(completion, "has 'prompt' but no 'completion'");
    const std::string& p = string_at(record, "prompt", "");
    const std::string& c = string_at(record, "completion", "");
    if (t)
      r = render_chat(tok, *t, {{"user", p}, {"assistant", c}}, false);
    else
      r = plain_prompt_completion(tok, p, c);
  } else if (text) {
    r.ids = encode_document(tok, string_at(record, "text", ""));
    r.counted.assign(r.ids.size(), 1);
  } else {
    HALO_FAIL("has none of 'messages', 'prompt' + 'completion' and 'text'");
  }
  if (loss == LossOn::all) std::fill(r.counted.begin(), r.counted.end(), 1);
  if (!r.counted.empty()) r.counted[0] = 0;  // nothing predicts a document's first token
  return r;
}

JsonlDocuments read_jsonl_documents(const std::string& path, const Tokenizer& tok, const JsonlOptions& options) {
  check_template_choice(options.chat_template);
  std::optional<ChatTemplate> t;
  if (options.chat_template == "auto")
    t = find_chat_template(tok);
  else if (options.chat_template != "none")
    t = parse_chat_template(options.chat_template);

  const std::string content = read_file(path);
  struct Line {
    int64_t number;
    std::string_view text;
  };
  std::vector<Line> lines;
  int64_t number = 0;
  for (size_t at = 0; at < content.size();) {
    size_t end = content.find('\n', at);
    if (end == std::string::npos) end = content.size();
    std::string_view line(content.data() + at, end - at);
    ++number;
    at = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") != std::string_view::npos) lines.push_back({number, line});
  }

  // Each record on its own (the tokenizer is thread-safe); errors kept per
  // record, the first one in the file reported.
  const int64_t n = static_cast<int64_t>(lines.size());
  std::vector<RenderedChat> out(static_cast<size_t>(n));
  std::vector<std::string> errors(static_cast<size_t>(n));
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < n; ++i) {
    try {
      json record;
      try {
        record = json::parse(lines[i].text);
      } catch (const json::parse_error& e) {
        errors[i] = std::string("not valid JSON (") + e.what() + ")";
        continue;
      }
      out[i] = tokenize_record(record, tok, t, options.loss);
    } catch (const std::exception& e) {
      errors[i] = e.what();
    }
  }
  JsonlDocuments d;
  d.chat_template = t ? std::string(chat_template_name(*t)) : "none";
  d.records = n;
  for (int64_t i = 0; i < n; ++i) {
    HALO_CHECK(errors[i].empty(), path, ":", lines[i].number, ": ", errors[i]);
    RenderedChat& r = out[i];
    int64_t targets = 0;
    for (const uint8_t k : r.counted) targets += k;
    if (targets == 0) {
      ++d.skipped;
      continue;
    }
    d.tokens += static_cast<int64_t>(r.ids.size());
    d.targets += targets;
    d.lines.push_back(lines[i].number);
    d.docs.push_back(std::move(r.ids));
    d.masks.push_back(std::move(r.counted));
  }
  return d;
}

std::string describe(const JsonlDocuments& d) {
  char buf[256];
  const double rate = d.tokens > 0 ? 100.0 * static_cast<double>(d.targets) / static_cast<double>(d.tokens) : 0.0;
  std::snprintf(buf, sizeof buf,
                "%lld records (%lld without a target left out), %lld tokens, %lld counted (%.1f%%), "
                "template %s",
                static_cast<long long>(d.records), static_cast<long long>(d.skipped), static_cast<long long>(d.tokens),
                static_cast<long long>(d.targets), rate, d.chat_template.c_str());
  return buf;
}

}  // namespace halo
