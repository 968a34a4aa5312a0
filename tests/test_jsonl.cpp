// JSONL training data (data/jsonl.h): each record shape tokenized with its
// loss mask, malformed records named by file and line, loss on the answers or
// on every token; `halo data jsonl`; and `halo train` on a JSONL file (the
// mask reaches the loss, resume continues the same batches).
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/jsonl.h"
#include "data/token_data.h"
#include "io/atomic_file.h"
#include "model/config.h"
#include "testing.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"
#include "train/trainer.h"

namespace halo {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path tokenizer_dir(const std::string& name) {
  return testing::fixtures_dir() / "tokenizers" / name;
}

using testing::error_of;

class Jsonl : public testing::TempDirTest {
 protected:
  std::string write(const std::string& name, const std::string& text) const {
    write_file_atomic(path(name), text);
    return path(name);
  }
};

// The mask as the JSONL reader keeps it: the render's counted flags, the first token's 0.
std::vector<uint8_t> as_mask(std::vector<uint8_t> counted) {
  if (!counted.empty()) counted[0] = 0;
  return counted;
}

TEST_F(Jsonl, EachShape) {
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("qwen2").string());  // ChatML, EOS <|im_end|>
  const std::string p = write("a.jsonl",
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", "
                              "\"content\": \"Hello!\"}], \"id\": 7}\n"
                              "\n"
                              "{\"prompt\": \"2+2?\", \"completion\": \"4\"}\n"
                              "{\"text\": \"Plain text here.\"}\r\n");
  const JsonlDocuments d = read_jsonl_documents(p, tok);
  EXPECT_EQ(d.chat_template, "chatml");  // auto: from the tokenizer
  EXPECT_EQ(d.records, 3);
  EXPECT_EQ(d.skipped, 0);
  ASSERT_EQ(d.docs.size(), 3u);
  EXPECT_EQ(d.lines, (std::vector<int64_t>{1, 3, 4}));

  const RenderedChat chat = render_chat(tok, ChatTemplate::chatml, {{"user", "Hi"}, {"assistant", "Hello!"}}, false);
  EXPECT_EQ(d.docs[0], chat.ids);
  EXPECT_EQ(d.masks[0], as_mask(chat.counted));
  const RenderedChat pc = render_chat(tok, ChatTemplate::chatml, {{"user", "2+2?"}, {"assistant", "4"}}, false);
  EXPECT_EQ(d.docs[1], pc.ids);
  EXPECT_EQ(d.masks[1], as_mask(pc.counted));
  std::vector<uint32_t> text = tok.encode("Plain text here.");
  text.push_back(*tok.token_to_id("<|im_end|>"));
  EXPECT_EQ(d.docs[2], text);
  std::vector<uint8_t> all(text.size(), 1);
  all[0] = 0;
  EXPECT_EQ(d.masks[2], all);

  int64_t tokens = 0, targets = 0;
  for (size_t i = 0; i < 3; ++i) {
    tokens += static_cast<int64_t>(d.docs[i].size());
    for (const uint8_t m : d.masks[i]) targets += m;
  }
  EXPECT_EQ(d.tokens, tokens);
  EXPECT_EQ(d.targets, targets);
  EXPECT_LT(d.targets, d.tokens);
  EXPECT_NE(describe(d).find("3 records"), std::string::npos) << describe(d);
  EXPECT_NE(describe(d).find("template chatml"), std::string::npos) << describe(d);
}

TEST_F(Jsonl, LossOnAllTokens) {
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("llama3").string());
  const std::string p =
      write("a.jsonl",
            "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
            "\"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello!\"}]}\n");
  JsonlOptions o;
  const JsonlDocuments assistant = read_jsonl_documents(p, tok, o);
  o.loss = LossOn::all;
  const JsonlDocuments all = read_jsonl_documents(p, tok, o);
  ASSERT_EQ(all.docs.size(), 1u);
  EXPECT_EQ(all.docs, assistant.docs);
  std::vector<uint8_t> ones(all.docs[0].size(), 1);
  ones[0] = 0;
  EXPECT_EQ(all.masks[0], ones);
  EXPECT_EQ(all.targets, all.tokens - 1);
  // On the answers only: "Hello!<|eot_id|>".
  std::vector<uint32_t> counted;
  for (size_t i = 0; i < assistant.docs[0].size(); ++i)
    if (assistant.masks[0][i]) counted.push_back(assistant.docs[0][i]);
  EXPECT_EQ(tok.decode(counted), "Hello!<|eot_id|>");
  EXPECT_EQ(parse_loss_on("all"), LossOn::all);
  EXPECT_NE(error_of([] { parse_loss_on("answers"); }).find("'answers'"), std::string::npos);
}

TEST_F(Jsonl, NoTemplate) {
  // "none": prompt + completion concatenated, the completion and EOS counted;
  // a messages record is refused.
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("qwen2").string());
  JsonlOptions o;
  o.chat_template = "none";
  const std::string p = write("a.jsonl", "{\"prompt\": \"Question: 2+2?\\nAnswer:\", \"completion\": \" 4\"}\n");
  const JsonlDocuments d = read_jsonl_documents(p, tok, o);
  EXPECT_EQ(d.chat_template, "none");
  ASSERT_EQ(d.docs.size(), 1u);
  std::vector<uint32_t> want = tok.encode("Question: 2+2?\nAnswer: 4");
  want.push_back(*tok.token_to_id("<|im_end|>"));
  EXPECT_EQ(d.docs[0], want);
  std::vector<uint32_t> counted;
  for (size_t i = 0; i < d.docs[0].size(); ++i)
    if (d.masks[0][i]) counted.push_back(d.docs[0][i]);
  EXPECT_EQ(tok.decode(counted), " 4<|im_end|>");
  const std::string m = write("m.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n");
  const std::string e = error_of([&] { read_jsonl_documents(m, tok, o); });
  EXPECT_NE(e.find(m + ":1: a 'messages' record needs a chat template"), std::string::npos) << e;

  // "auto" on a tokenizer without a known template (Mistral v0.1's): the same.
  const Tokenizer mistral = Tokenizer::load(tokenizer_dir("mistral").string());
  EXPECT_EQ(read_jsonl_documents(p, mistral).chat_template, "none");
  EXPECT_THROW(read_jsonl_documents(m, mistral), Error);
  // ... and a named template applies.
  o.chat_template = "llama2";
  const JsonlDocuments l2 = read_jsonl_documents(p, mistral, o);
  EXPECT_EQ(l2.docs[0], render_chat(mistral, ChatTemplate::llama2,
                                    {{"user", "Question: 2+2?\nAnswer:"}, {"assistant", " 4"}}, false)
                            .ids);
  EXPECT_THROW(check_template_choice("llama4"), Error);
  EXPECT_NO_THROW(check_template_choice("auto"));
}

TEST_F(Jsonl, RecordsWithoutATargetAreLeftOut) {
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("llama3").string());
  const std::string p = write("a.jsonl",
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"Only a question\"}]}\n"
                              "{\"prompt\": \"Q\", \"completion\": \"A\"}\n");
  const JsonlDocuments d = read_jsonl_documents(p, tok);
  EXPECT_EQ(d.records, 2);
  EXPECT_EQ(d.skipped, 1);
  ASSERT_EQ(d.docs.size(), 1u);
  EXPECT_EQ(d.lines, std::vector<int64_t>{2});
  EXPECT_NE(describe(d).find("1 without a target left out"), std::string::npos) << describe(d);
}

TEST_F(Jsonl, MalformedRecordsNameFileAndLine) {
  const Tokenizer tok = Tokenizer::load(tokenizer_dir("qwen2").string());
  const std::string good = "{\"text\": \"fine\"}\n\n";  // lines 1 and 2 (blank)
  const auto expect = [&](const std::string& record, const std::string& what) {
    const std::string p = write("bad.jsonl", good + record + "\n" + good);
    const std::string e = error_of([&] { read_jsonl_documents(p, tok); });
    EXPECT_NE(e.find(p + ":3: "), std::string::npos) << record << " -> " << e;
    EXPECT_NE(e.find(what), std::string::npos) << record << " -> " << e;
  };
  expect("{\"text\": \"unterminated}", "not valid JSON");
  expect("[1, 2]", "expected a JSON object, got a list");
  expect("{\"messages\": \"hi\"}", "'messages' must be a list");
  expect("{\"messages\": []}", "'messages' is empty");
  expect("{\"messages\": [\"hi\"]}", "message 0: must be an object");
  expect("{\"messages\": [{\"role\": \"user\"}]}", "message 0: has no 'content'");
  expect("{\"messages\": [{\"role\": \"user\", \"content\": null}]}",
         "message 0: 'content' must be a string, got null");
  expect("{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"tool\", \"content\": \"b\"}]}",
         "message 1: unknown role 'tool'");
  expect("{\"prompt\": \"a\"}", "has 'prompt' but no 'completion'");
  expect("{\"prompt\": \"a\", \"completion\": 3}", "'completion' must be a string, got a number");
  expect("{\"text\": [\"a\"]}", "'text' must be a string, got a list");
  expect("{\"input\": \"a\"}", "has none of 'messages', 'prompt' + 'completion' and 'text'");
  expect("{\"text\": \"a\", \"messages\": []}", "more than one of");
  // A template's own rule: Llama 2 needs alternating roles.
  const Tokenizer mistral = Tokenizer::load(tokenizer_dir("mistral").string());
  JsonlOptions o;
  o.chat_template = "llama2";
  const std::string p = write("l2.jsonl",
                              "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", "
                              "\"content\": \"b\"}]}\n");
  const std::string e = error_of([&] { read_jsonl_documents(p, mistral, o); });
  EXPECT_NE(e.find(p + ":1: message 1"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { read_jsonl_documents(path("missing.jsonl"), tok); }).find("missing.jsonl"),
            std::string::npos);
}

TEST_F(Jsonl, DataCommandWritesAMaskedTokenFile) {
  std::string text;
  for (int i = 0; i < 5; ++i)
    text += "{\"messages\": [{\"role\": \"user\", \"content\": \"Q" + std::to_string(i) +
            "\"}, {\"role\": \"assistant\", \"content\": \"A" + std::to_string(i) + "\"}]}\n";
  const std::string in = write("chat.jsonl", text);
  const std::string dir = tokenizer_dir("smollm").string();
  const auto r = testing::run_halo("data jsonl --input " + in + " --tokenizer " + dir + " --out " + path("c.tok"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("5 records"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("counted"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("template chatml"), std::string::npos) << r.out;
  const TokenFile f(path("c.tok"));
  ASSERT_TRUE(f.has_mask());
  const Tokenizer tok = Tokenizer::load(dir);
  const JsonlDocuments d = read_jsonl_documents(in, tok);
  ASSERT_EQ(f.num_docs(), 5);
  EXPECT_EQ(f.vocab_size(), tok.vocab_size());
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(std::vector<uint32_t>(f.doc(i).begin(), f.doc(i).end()), d.docs[i]);
    EXPECT_EQ(std::vector<uint8_t>(f.doc_mask(i).begin(), f.doc_mask(i).end()), d.masks[i]);
  }
  // --loss all counts more; bad options are refused with a message.
  const auto all = testing::run_halo("data jsonl --input " + in + " --tokenizer " + dir + " --out " + path("all.tok") +
                                     " --loss all --template chatml");
  ASSERT_EQ(all.status, 0) << all.out;
  EXPECT_GT(TokenFile(path("all.tok")).doc_targets(0), f.doc_targets(0));
  const auto bad = testing::run_halo("data jsonl --input " + in + " --tokenizer " + dir + " --out " + path("x.tok") +
                                     " --template gemma");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.out.find("unknown chat template 'gemma'"), std::string::npos) << bad.out;
  const auto missing = testing::run_halo("data jsonl --input " + in + " --out " + path("x.tok"));
  EXPECT_NE(missing.status, 0);
  EXPECT_NE(missing.out.find("--tokenizer"), std::string::npos) << missing.out;
}

// ---- halo train on JSONL --------------------------------------------------------------------

// A tiny model over the SmolLM fixture's vocabulary (1500 tokens) and chat
// records whose answer is always the same: its loss, counted on the answers
// only, falls fast; counted on every token (random user text) it cannot.
class JsonlTraining : public Jsonl {
 protected:
  void SetUp() override {
    Jsonl::SetUp();
    omp_set_num_threads(1);  // small steps: no OpenMP teams spinning on a shared machine
    ModelConfig c;
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = 16;
    c.vocab_size = 1536;
    c.max_position_embeddings = 128;
    c.rms_norm_eps = 1e-5;
    check_config(c);
    save_config(c, path("model.json"));
    std::string text;
    for (int i = 0; i < 60; ++i) {
      std::string question;
      for (int w = 0; w < 6; ++w) question += std::to_string((i * 7919 + w * 104729) % 997) + " ";
      text += "{\"messages\": [{\"role\": \"user\", \"content\": \"" + question +
              "\"}, {\"role\": \"assistant\", \"content\": \"OK.\"}]}\n";
    }
    write("chat.jsonl", text);
  }
  TrainConfig run(const std::string& name, int64_t steps) const {
    TrainConfig c;
    c.init = path("model.json");
    c.tokenizer = tokenizer_dir("smollm").string();
    c.data = path("chat.jsonl");
    c.recipe = "bf16";
    c.steps = steps;
    c.batch = 4;
    c.seq_len = 64;
    c.lr = 1e-2;
    c.warmup_steps = 2;
    c.val_fraction = 0.1;
    c.device = "cpu";
    c.save_dtype = "f32";
    c.out = path(name);
    return c;
  }
};

TrainOptions quiet() {
  TrainOptions o;
  o.quiet = true;
  return o;
}

TEST_F(JsonlTraining, LossCountsTheAnswers) {
  TrainConfig c = run("assistant", 30);
  c.eval_data = path("chat.jsonl");  // the answers the trained model generates at the end
  c.eval_max_new_tokens = 6;
  const TrainResult a = run_training(c, quiet());
  ASSERT_EQ(a.steps, 30);
  // It has learnt to answer "OK.": the generated answers match.
  EXPECT_GT(a.accuracy, 0.9);
  const std::string answers = read_file((fs::path(c.out) / "eval.jsonl").string());
  EXPECT_EQ(std::count(answers.begin(), answers.end(), '\n'), 60) << answers.substr(0, 400);
  EXPECT_NE(answers.find("\"prediction\":\"OK.\""), std::string::npos) << answers.substr(0, 400);
  EXPECT_NE(read_file((fs::path(c.out) / "metrics.jsonl").string()).find("\"accuracy\""), std::string::npos);
  c.eval_data = "";
  c.loss_on = "all";
  c.out = path("all");
  const TrainResult all = run_training(c, quiet());
  ASSERT_EQ(all.steps, 30);
  // ln(1536) = 7.3 at the start; the constant answer "OK.<|im_end|>" is learnt,
  // the random digits of the questions are not.
  // Measured: 7.37 -> 0.31 (validation 0.30) on the answers, 7.36 -> 1.87 (1.87) on all tokens.
  EXPECT_NEAR(a.losses.front(), std::log(1536.0), 0.3);
  EXPECT_LT(a.losses.back(), 0.6);
  EXPECT_LT(a.val_loss, 0.6);
  EXPECT_GT(all.losses.back(), 1.2);
  EXPECT_GT(all.val_loss, 3 * a.val_loss);
}

TEST_F(JsonlTraining, ResumeContinuesTheSameBatches) {
  TrainConfig c = run("a", 6);
  c.save_interval = 3;
  c.keep_checkpoints = 0;
  c.packing = "pad";
  const TrainResult a = run_training(c, quiet());
  ASSERT_EQ(a.losses.size(), 6u);
  TrainConfig cb = c;
  cb.out = path("b");
  TrainOptions ob = quiet();
  ob.resume = (fs::path(c.out) / "step-00000003").string();
  const TrainResult b = run_training(cb, ob);
  ASSERT_EQ(b.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(b.losses[i], a.losses[3 + i]) << "step " << 4 + i;
}

TEST_F(JsonlTraining, TrainCommandOnJsonl) {
  const TrainConfig c = run("cli", 2);
  const auto r = testing::run_halo("train --init " + c.init + " --tokenizer " + c.tokenizer + " --data " + c.data +
                                   " --val_data " + c.data +
                                   " --template chatml --packing pad --steps 2 --batch 2 "
                                   "--seq_len 64 --device cpu --recipe bf16 --out " +
                                   c.out);
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("data: " + c.data + ": 60 records"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("template chatml"), std::string::npos) << r.out;
  EXPECT_TRUE(fs::exists(fs::path(c.out) / "final" / "model.safetensors"));
  // Checkpoints carry the tokenizer: final/ is a complete model directory.
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"})
    if (fs::exists(fs::path(c.tokenizer) / name))
      EXPECT_EQ(read_file((fs::path(c.out) / "final" / name).string()),
                read_file((fs::path(c.tokenizer) / name).string()))
          << name;
  EXPECT_TRUE(fs::exists(fs::path(c.out) / "final" / "tokenizer.json"));
  const std::string saved = read_file((fs::path(c.out) / "step-00000002" / "run_config.toml").string());
  EXPECT_NE(saved.find("template = \"chatml\""), std::string::npos) << saved;
  EXPECT_NE(saved.find("packing = \"pad\""), std::string::npos) << saved;
  // JSONL data from an initialized model needs a tokenizer.
  const auto no_tok =
      testing::run_halo("train --init " + c.init + " --data " + c.data + " --steps 1 --out " + path("x"));
  EXPECT_NE(no_tok.status, 0);
  EXPECT_NE(no_tok.out.find("set 'tokenizer'"), std::string::npos) << no_tok.out;
  // A bad eval_data file stops the run before it trains.
  const auto bad_eval = testing::run_halo("train --init " + c.init + " --tokenizer " + c.tokenizer + " --data " +
                                          c.data + " --eval_data " + path("missing.jsonl") +
                                          " --steps 1 --device cpu --out " + path("y"));
  EXPECT_NE(bad_eval.status, 0);
  EXPECT_NE(bad_eval.out.find("missing.jsonl"), std::string::npos) << bad_eval.out;
  EXPECT_FALSE(fs::exists(fs::path(path("y")) / "metrics.jsonl")) << bad_eval.out;
}

}  // namespace
}  // namespace halo
