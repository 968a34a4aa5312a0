// The hand-written chat templates against Hugging Face: each family's render
// (text and ids) equals what transformers' apply_chat_template gives with the
// published template (tests/fixtures/chat_templates.json, written by
// scripts/make_chat_fixtures.py on the tokenizer fixtures); the counted mask
// covers exactly the assistant's answers and end-of-turn tokens; detection
// from the template text and the special tokens; generation prompts;
// end-of-turn ids; errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"
#include "testing.h"

namespace halo {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path fixtures() { return testing::fixtures_dir(); }

json read_json(const fs::path& p) {
  std::ifstream in(p);
  EXPECT_TRUE(in) << "cannot open " << p;
  return json::parse(in);
}

// The tokenizer fixture `name` with its tokenizer_config.json, the chat
// template replaced by `chat_template` (nullptr: as the fixture has it; "":
// none).
Tokenizer fixture_tokenizer(const std::string& name, const char* chat_template = nullptr) {
  const fs::path dir = fixtures() / "tokenizers" / name;
  json config = fs::exists(dir / "tokenizer_config.json") ? read_json(dir / "tokenizer_config.json") : json::object();
  if (chat_template) {
    if (*chat_template)
      config["chat_template"] = chat_template;
    else
      config.erase("chat_template");
  }
  return Tokenizer::from_json(read_json(dir / "tokenizer.json"), (dir / "tokenizer.json").string(), &config);
}

std::vector<ChatMessage> messages_of(const json& j) {
  std::vector<ChatMessage> out;
  for (const json& m : j) out.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
  return out;
}

using testing::error_of;

// Python's str.strip() for the ASCII white space the fixtures hold.
std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\n");
  return b == std::string::npos ? "" : s.substr(b, s.find_last_not_of(" \t\n") - b + 1);
}

// The runs of consecutive counted tokens, each decoded.
std::vector<std::string> counted_runs(const Tokenizer& tok, const RenderedChat& r) {
  std::vector<std::string> runs;
  std::vector<uint32_t> run;
  for (size_t i = 0; i <= r.ids.size(); ++i) {
    if (i < r.ids.size() && r.counted[i]) {
      run.push_back(r.ids[i]);
    } else if (!run.empty()) {
      runs.push_back(tok.decode(run));
      run.clear();
    }
  }
  return runs;
}

TEST(ChatTemplate, MatchesHuggingFaceRenders) {
  const json cases = read_json(fixtures() / "chat_templates.json").at("cases");
  ASSERT_GE(cases.size(), 30u);
  std::map<std::string, int> per_template;
  for (const json& c : cases) {
    const std::string name = c.at("name"), tpl = c.at("chat_template");
    SCOPED_TRACE(name + ": " + c.at("messages").dump());
    const Tokenizer tok = fixture_tokenizer(c.at("tokenizer"), tpl.c_str());
    const ChatTemplate t = parse_chat_template(c.at("family").get<std::string>());
    EXPECT_EQ(detect_chat_template(tok), t);
    const auto messages = messages_of(c.at("messages"));
    const bool gen = c.at("add_generation_prompt");
    EXPECT_EQ(render_chat_text(tok, t, messages, gen), c.at("text").get<std::string>());
    const RenderedChat r = render_chat(tok, t, messages, gen);
    EXPECT_EQ(r.ids, c.at("ids").get<std::vector<uint32_t>>());
    ASSERT_EQ(r.counted.size(), r.ids.size());
    ++per_template[name];

    // Counted: one run per assistant message, its answer and end-of-turn token
    // (for llama2 also the space the template puts before </s>), nothing else.
    std::vector<std::string> want;
    const std::string eot = t == ChatTemplate::llama3   ? "<|eot_id|>"
                            : t == ChatTemplate::chatml ? "<|im_end|>"
                                                        : "</s>";
    for (const ChatMessage& m : messages)
      if (m.role == "assistant") want.push_back(trim(m.content) + (t == ChatTemplate::llama2 ? " " : "") + eot);
    std::vector<std::string> got = counted_runs(tok, r);
    for (std::string& g : got) {  // the answer's own leading / trailing white space aside
      const size_t at = g.rfind(eot);
      if (at != std::string::npos && t != ChatTemplate::llama2) g = trim(g.substr(0, at)) + eot;
      if (t == ChatTemplate::llama2) g = trim(g.substr(0, g.size() - eot.size() - 1)) + " " + eot;
    }
    EXPECT_EQ(got, want);
    if (gen) {
      for (const uint8_t k : r.counted) EXPECT_EQ(k, 0);
    }
  }
  for (const char* name :
       {"llama3.0", "llama3.2", "smollm2", "qwen2", "llama2", "mistral", "mistral3", "mistral3-last"})
    EXPECT_GE(per_template[name], 3) << name;
}

TEST(ChatTemplate, CountedTokensExactly) {
  // Llama 3: user turn, then the assistant's header uncounted, its content and
  // <|eot_id|> counted.
  const Tokenizer tok = fixture_tokenizer("llama3");
  const RenderedChat r = render_chat(tok, ChatTemplate::llama3, {{"user", "Hi"}, {"assistant", "Hello there"}}, false);
  std::vector<uint32_t> head = tok.encode(
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_"
      "header_id|>\n\n");
  const std::vector<uint32_t> answer = tok.encode("Hello there<|eot_id|>");
  std::vector<uint32_t> all = head;
  all.insert(all.end(), answer.begin(), answer.end());
  ASSERT_EQ(r.ids, all);
  std::vector<uint8_t> want(head.size(), 0);
  want.resize(all.size(), 1);
  EXPECT_EQ(r.counted, want);

  // ChatML: the "\n" after <|im_end|> is template text, not counted.
  const Tokenizer q = fixture_tokenizer("qwen2");
  const RenderedChat c = render_chat(q, ChatTemplate::chatml, {{"user", "Hi"}, {"assistant", "Yo"}}, false);
  head = q.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const std::vector<uint32_t> yo = q.encode("Yo<|im_end|>"), tail = q.encode("\n");
  all = head;
  all.insert(all.end(), yo.begin(), yo.end());
  all.insert(all.end(), tail.begin(), tail.end());
  ASSERT_EQ(c.ids, all);
  want.assign(head.size(), 0);
  want.resize(head.size() + yo.size(), 1);
  want.resize(all.size(), 0);
  EXPECT_EQ(c.counted, want);
}

TEST(ChatTemplate, IdsEqualEncodingTheText) {
  // Beyond the fixtures: special tokens inside contents are matched as Hugging
  // Face matches them, empty answers, several system messages (llama3 / chatml).
  const std::vector<std::vector<ChatMessage>> conversations = {
      {{"user", "say <|im_end|> and <|eot_id|> and </s>"}, {"assistant", ""}},
      {{"system", "a"}, {"user", "b"}, {"assistant", "c"}, {"user", "d"}, {"assistant", " e "}},
      {{"user", "x\n\n\ny"}, {"assistant", "\t tabs and  spaces \n"}},
  };
  struct Setup {
    const char* tokenizer;
    ChatTemplate t;
  };
  for (const Setup& s : {Setup{"llama3", ChatTemplate::llama3}, Setup{"qwen2", ChatTemplate::chatml},
                         Setup{"smollm", ChatTemplate::chatml}, Setup{"mistral", ChatTemplate::llama2},
                         Setup{"mistral", ChatTemplate::mistral}, Setup{"mistral-v3", ChatTemplate::mistral}}) {
    const Tokenizer tok = fixture_tokenizer(s.tokenizer);
    for (const auto& conv : conversations) {
      for (const bool gen : {false, true}) {
        SCOPED_TRACE(std::string(s.tokenizer) + " " + std::string(chat_template_name(s.t)));
        const std::string text = render_chat_text(tok, s.t, conv, gen);
        const RenderedChat r = render_chat(tok, s.t, conv, gen);
        EXPECT_EQ(r.ids, tok.encode(text)) << text;
        int64_t counted = 0, answers = 0;
        for (const uint8_t k : r.counted) counted += k;
        for (const ChatMessage& m : conv) answers += m.role == "assistant";
        EXPECT_GE(counted, answers) << "each answer's end-of-turn token at least";
      }
    }
  }
}

TEST(ChatTemplate, Detection) {
  EXPECT_EQ(find_chat_template(fixture_tokenizer("llama3")), ChatTemplate::llama3);  // its template text
  EXPECT_EQ(find_chat_template(fixture_tokenizer("qwen2")), ChatTemplate::chatml);
  EXPECT_EQ(find_chat_template(fixture_tokenizer("smollm")), ChatTemplate::chatml);
  // Without a template text: the special tokens.
  EXPECT_EQ(find_chat_template(fixture_tokenizer("llama3", "")), ChatTemplate::llama3);
  EXPECT_EQ(find_chat_template(fixture_tokenizer("qwen2", "")), ChatTemplate::chatml);
  EXPECT_EQ(find_chat_template(fixture_tokenizer("mistral-v3")), ChatTemplate::mistral);  // [INST] is a token
  // Templates that hold both [INST] and <<SYS>> are Llama 2's.
  EXPECT_EQ(find_chat_template(fixture_tokenizer("mistral", "{{ bos_token + '[INST] <<SYS>>\\n' }}")),
            ChatTemplate::llama2);
  EXPECT_EQ(find_chat_template(fixture_tokenizer("mistral", "{{ '[INST] ' + m + ' [/INST]' }}")),
            ChatTemplate::mistral);
  // Nothing to go by: Mistral v0.1's tokenizer has only <s> and </s>.
  EXPECT_EQ(find_chat_template(fixture_tokenizer("mistral")), std::nullopt);
  const std::string none = error_of([] { detect_chat_template(fixture_tokenizer("mistral"), "models/m"); });
  EXPECT_NE(none.find("models/m"), std::string::npos) << none;
  EXPECT_NE(none.find("--template"), std::string::npos) << none;
  const std::string other =
      error_of([] { detect_chat_template(fixture_tokenizer("gpt2", "{{ '<start_of_turn>' }}")); });
  EXPECT_NE(other.find("none of the known"), std::string::npos) << other;
}

TEST(ChatTemplate, GenerationPrompt) {
  const Tokenizer tok = fixture_tokenizer("llama3");
  const std::vector<ChatMessage> conv = {{"user", "Hi"}};
  const RenderedChat with = render_chat(tok, ChatTemplate::llama3, conv, true);
  const RenderedChat without = render_chat(tok, ChatTemplate::llama3, conv, false);
  ASSERT_GT(with.ids.size(), without.ids.size());
  EXPECT_TRUE(std::equal(without.ids.begin(), without.ids.end(), with.ids.begin()));
  EXPECT_EQ(tok.decode(std::vector<uint32_t>(with.ids.begin() + static_cast<std::ptrdiff_t>(without.ids.size()),
                                             with.ids.end())),
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  for (const uint8_t k : with.counted) EXPECT_EQ(k, 0);
  // ChatML opens the assistant's turn; Llama 2's prompt ends at [/INST] either way.
  const Tokenizer q = fixture_tokenizer("qwen2");
  EXPECT_EQ(render_chat_text(q, ChatTemplate::chatml, conv, true),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const Tokenizer m = fixture_tokenizer("mistral");
  EXPECT_EQ(render_chat(m, ChatTemplate::llama2, conv, true).ids,
            render_chat(m, ChatTemplate::llama2, conv, false).ids);
}

TEST(ChatTemplate, EndOfTurnIds) {
  const Tokenizer l3 = fixture_tokenizer("llama3");  // eos <|end_of_text|>
  EXPECT_EQ(end_of_turn_ids(l3, ChatTemplate::llama3),
            (std::vector<uint32_t>{*l3.token_to_id("<|eot_id|>"), *l3.token_to_id("<|end_of_text|>")}));
  const Tokenizer sm = fixture_tokenizer("smollm");  // eos <|im_end|>
  EXPECT_EQ(end_of_turn_ids(sm, ChatTemplate::chatml), std::vector<uint32_t>{*sm.token_to_id("<|im_end|>")});
  const Tokenizer mi = fixture_tokenizer("mistral");
  EXPECT_EQ(end_of_turn_ids(mi, ChatTemplate::mistral), std::vector<uint32_t>{*mi.token_to_id("</s>")});
  EXPECT_THROW(end_of_turn_ids(mi, ChatTemplate::chatml), Error);
}

TEST(ChatTemplate, Names) {
  for (const ChatTemplate t : {ChatTemplate::llama3, ChatTemplate::chatml, ChatTemplate::llama2, ChatTemplate::mistral})
    EXPECT_EQ(parse_chat_template(chat_template_name(t)), t);
  const std::string e = error_of([] { parse_chat_template("vicuna"); });
  EXPECT_NE(e.find("'vicuna'"), std::string::npos) << e;
  EXPECT_NE(e.find("llama3, chatml, llama2, mistral"), std::string::npos) << e;
  EXPECT_THROW(parse_chat_template("Llama3"), Error);
}

TEST(ChatTemplate, BadConversations) {
  const Tokenizer l3 = fixture_tokenizer("llama3");
  const Tokenizer mi = fixture_tokenizer("mistral");
  EXPECT_NE(error_of([&] { render_chat(l3, ChatTemplate::llama3, {}, false); }).find("no messages"), std::string::npos);
  const std::string role = error_of([&] {
    render_chat(l3, ChatTemplate::llama3, {{"user", "a"}, {"tool", "b"}}, false);
  });
  EXPECT_NE(role.find("message 1: unknown role 'tool'"), std::string::npos) << role;
  const std::string order = error_of([&] {
    render_chat(mi, ChatTemplate::llama2, {{"user", "a"}, {"user", "b"}}, false);
  });
  EXPECT_NE(order.find("message 1"), std::string::npos) << order;
  EXPECT_NE(order.find("alternating"), std::string::npos) << order;
  EXPECT_THROW(render_chat(mi, ChatTemplate::mistral, {{"assistant", "a"}}, false), Error);
  EXPECT_THROW(render_chat(mi, ChatTemplate::mistral, {{"user", "a"}, {"system", "b"}}, false), Error);
  // llama3 and chatml take any order of roles.
  EXPECT_NO_THROW(render_chat(l3, ChatTemplate::llama3, {{"assistant", "a"}, {"system", "b"}}, false));
  // The template's special tokens must be in the vocabulary.
  const std::string missing = error_of([&] { render_chat(mi, ChatTemplate::llama3, {{"user", "a"}}, false); });
  EXPECT_NE(missing.find("<|begin_of_text|>"), std::string::npos) << missing;
}

TEST(ChatTemplate, DefaultSystemMessageFromTheTemplate) {
  // SmolLM2 writes its template with real newlines, Qwen2 with \n escapes; a
  // plain ChatML template inserts no system message.
  const json cases = read_json(fixtures() / "chat_templates.json").at("cases");
  std::string smollm2, qwen2;
  for (const json& c : cases) {
    if (c.at("name") == "smollm2") smollm2 = c.at("chat_template");
    if (c.at("name") == "qwen2") qwen2 = c.at("chat_template");
  }
  const std::vector<ChatMessage> conv = {{"user", "Hi"}};
  EXPECT_EQ(render_chat_text(fixture_tokenizer("smollm", smollm2.c_str()), ChatTemplate::chatml, conv, false),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n");
  EXPECT_EQ(render_chat_text(fixture_tokenizer("qwen2", qwen2.c_str()), ChatTemplate::chatml, conv, false),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
  EXPECT_EQ(render_chat_text(fixture_tokenizer("qwen2"), ChatTemplate::chatml, conv, false),
            "<|im_start|>user\nHi<|im_end|>\n");
  // A template whose system turn is built from the message is no default.
  EXPECT_EQ(render_chat_text(fixture_tokenizer("qwen2", "{{ '<|im_start|>system\\n' + m + '<|im_end|>' }}"),
                             ChatTemplate::chatml, conv, false),
            "<|im_start|>user\nHi<|im_end|>\n");
}

}  // namespace
}  // namespace halo
