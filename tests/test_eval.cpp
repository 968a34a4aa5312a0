// Evaluation: the answer metrics (eval/metrics.h), the SQL task generator
// (data/sql_task.h) and `halo data sql`, `halo eval` on a tiny random model
// with a fixture tokenizer, and the HTML report of `halo report`.
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/sql_task.h"
#include "eval/metrics.h"
#include "eval/report.h"
#include "model/config.h"
#include "testing.h"
#include "text/tokenizer.h"

namespace halo {
namespace {

namespace fs = std::filesystem;
using testing::run_halo;

const fs::path kFixtures = testing::fixtures_dir();

using testing::temp_dir;

std::vector<std::string> read_lines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

void write_text(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

// ---- metrics ---------------------------------------------------------------------------------

TEST(Metrics, ExactTrimsOnlyTheEnds) {
  EXPECT_TRUE(exact_match("  SELECT 1;\n", "SELECT 1;"));
  EXPECT_FALSE(exact_match("select 1;", "SELECT 1;"));
  EXPECT_FALSE(exact_match("SELECT  1;", "SELECT 1;"));
  EXPECT_TRUE(exact_match("", " \n"));
}

TEST(Metrics, SqlIgnoresCaseSpacingAndTheSemicolon) {
  EXPECT_TRUE(sql_match("select count( * ) from Employees where salary>5000",
                        "SELECT COUNT(*) FROM employees WHERE salary > 5000;"));
  EXPECT_TRUE(sql_match("SELECT name,age FROM t ;;", "SELECT name, age FROM t;"));
  EXPECT_TRUE(sql_match("SELECT a FROM t WHERE b != 3;", "SELECT a FROM t WHERE b <> 3;"));
  EXPECT_TRUE(sql_match("SELECT a FROM t WHERE b <= 3", "SELECT a FROM t WHERE b<=3;"));
  // Quoted text is compared exactly; numbers and names token by token.
  EXPECT_FALSE(sql_match("SELECT a FROM t WHERE c = 'Sales';", "SELECT a FROM t WHERE c = 'sales';"));
  EXPECT_FALSE(sql_match("SELECT a FROM t WHERE c = 'sales ';", "SELECT a FROM t WHERE c = 'sales';"));
  EXPECT_FALSE(sql_match("SELECT a FROM t LIMIT 50;", "SELECT a FROM t LIMIT 5;"));
  EXPECT_FALSE(sql_match("SELECT a FROM t WHERE b < = 3;", "SELECT a FROM t WHERE b <= 3;"));
  EXPECT_FALSE(sql_match("SELECT ab FROM t;", "SELECT a b FROM t;"));
  EXPECT_FALSE(sql_match("SELECT a FROM t; -- all of them", "SELECT a FROM t;"));
  EXPECT_FALSE(sql_match("", "SELECT a FROM t;"));
  EXPECT_FALSE(sql_match(";", ";"));  // an empty reference matches nothing
  EXPECT_EQ(normalize_sql("Select COUNT(*)  from T where X='It''s' ;"),
            "select count ( * ) from t where x = 'It''s'");
  // A fenced block: only its content counts, the language tag and prose dropped.
  EXPECT_TRUE(sql_match("Here is the query:\n```sql\nSELECT AVG(age) FROM pupils;\n```\nIt averages.",
                        "SELECT AVG(age) FROM pupils;"));
  EXPECT_EQ(strip_code_fence("```\nSELECT 1\n```"), "SELECT 1\n");
  EXPECT_EQ(strip_code_fence("no fence"), "no fence");
  EXPECT_TRUE(score_prediction(Metric::sql, "select 1", "SELECT 1;"));
}

TEST(Metrics, Gsm8kComparesTheLastNumberWithTheOneAfterTheMarks) {
  EXPECT_TRUE(gsm8k_match("She pays 2 * 617 = 1234 dollars.", "2 * 617 = 1234\n#### 1,234"));
  EXPECT_TRUE(gsm8k_match("The total is $1,234.", "#### 1234"));
  EXPECT_TRUE(gsm8k_match("18.00", "#### 18"));
  EXPECT_TRUE(gsm8k_match("so the answer is -3", "#### -3"));
  EXPECT_TRUE(gsm8k_match("5 apples, then 7 more: #### 12", "#### 12"));
  EXPECT_FALSE(gsm8k_match("It costs 12, then 7", "#### 12"));  // the last number counts
  EXPECT_FALSE(gsm8k_match("no idea", "#### 12"));
  EXPECT_FALSE(gsm8k_match("5-3", "#### -3"));  // a minus between digits is not a sign
  EXPECT_TRUE(gsm8k_match("5-3", "#### 3"));
  EXPECT_EQ(last_number("1,2345").value(), 2345.0);  // not a thousands group: 1 and 2345
  EXPECT_EQ(last_number("12,345,678 people").value(), 12345678.0);
  EXPECT_EQ(last_number("about .5 of it").value(), 0.5);
  EXPECT_EQ(last_number("pi is 3.14.").value(), 3.14);
  EXPECT_EQ(last_number("1, 2, 3").value(), 3.0);
  EXPECT_FALSE(last_number("none").has_value());
  EXPECT_EQ(gsm8k_answer("a #### 5 b #### 7").value(), 7.0);
  EXPECT_FALSE(gsm8k_answer("#### none").has_value());
  EXPECT_THROW(gsm8k_match("5", "no marks here"), Error);
}

TEST(Metrics, ViggoComparesFunctionAndAttributeSetInAnyOrder) {
  const std::string ref = "inform(name[Tomb Raider], rating[good], genres[action-adventure, shooter])";
  EXPECT_TRUE(viggo_match("inform(rating[good], genres[action-adventure, shooter], name[Tomb Raider])", ref));
  EXPECT_TRUE(viggo_match("  inform( name[ Tomb  Raider ] ,rating[good],genres[action-adventure, shooter])\n", ref));
  EXPECT_FALSE(viggo_match("confirm(name[Tomb Raider], rating[good], genres[action-adventure, shooter])", ref));
  EXPECT_FALSE(viggo_match("inform(name[Tomb Raider], rating[poor], genres[action-adventure, shooter])", ref));
  EXPECT_FALSE(viggo_match("inform(name[Tomb Raider], rating[good])", ref));  // an attribute missing
  EXPECT_FALSE(viggo_match(
      "inform(name[Tomb Raider], rating[good], genres[action-adventure, shooter], platforms[PC])", ref));  // extra
  EXPECT_FALSE(viggo_match(ref + " Thanks!", ref));                            // text after it
  EXPECT_FALSE(viggo_match("inform(name[Tomb Raider], rating[good", ref));     // unclosed
  EXPECT_FALSE(viggo_match("name[Tomb Raider], rating[good]", ref));           // no function
  EXPECT_FALSE(viggo_match("inform(name[Tomb Raider] rating[good])", ref));    // no comma
  const auto mr = parse_meaning_representation("request_attribute(player_perspective[])");
  ASSERT_TRUE(mr.has_value());
  EXPECT_EQ(mr->function, "request_attribute");
  EXPECT_EQ(mr->attributes.size(), 1u);
  EXPECT_THROW(viggo_match("inform(a[b])", "not a meaning representation"), Error);
  EXPECT_THROW(parse_metric("bleu"), Error);
  EXPECT_EQ(parse_metric("viggo"), Metric::viggo);
}

// ---- the SQL task ----------------------------------------------------------------------------

TEST(SqlTask, DeterministicHeldOutAndVaried) {
  const SqlTask a = make_sql_task(1500, 200, 3), b = make_sql_task(1500, 200, 3), c = make_sql_task(1500, 200, 4);
  ASSERT_EQ(a.train.size(), 1500u);
  ASSERT_EQ(a.test.size(), 200u);
  std::set<std::string> train_q, test_q, kinds, tables;
  for (size_t i = 0; i < a.train.size(); ++i) {
    EXPECT_EQ(a.train[i].question, b.train[i].question);
    EXPECT_EQ(a.train[i].sql, b.train[i].sql);
    train_q.insert(a.train[i].question);
    kinds.insert(a.train[i].kind);
  }
  for (const SqlExample& e : a.test) {
    test_q.insert(e.question);
    EXPECT_EQ(train_q.count(e.question), 0u) << "test question in train: " << e.question;
  }
  EXPECT_EQ(train_q.size(), a.train.size());  // no repeats within a split
  EXPECT_EQ(test_q.size(), a.test.size());
  EXPECT_EQ(kinds.size(), sql_task_kinds().size());
  size_t same = 0;
  for (size_t i = 0; i < a.test.size(); ++i) same += a.test[i].question == c.test[i].question;
  EXPECT_LT(same, 5u) << "another seed gives other questions";
  // The test set does not depend on the training set's size.
  const SqlTask small = make_sql_task(10, 200, 3);
  for (size_t i = 0; i < a.test.size(); ++i) EXPECT_EQ(small.test[i].question, a.test[i].question);

  for (const SqlExample& e : a.train) {
    ASSERT_EQ(e.question.rfind("Table ", 0), 0u) << e.question;
    const std::string table = e.question.substr(6, e.question.find('(') - 6);
    EXPECT_EQ(e.sql.rfind("SELECT ", 0), 0u) << e.sql;
    EXPECT_EQ(e.sql.back(), ';');
    EXPECT_NE(e.sql.find("FROM " + table), std::string::npos) << e.question << " -> " << e.sql;
    tables.insert(table);
    EXPECT_LT(e.question.size() + e.sql.size(), 260u) << "examples stay short: " << e.question;
  }
  EXPECT_GE(tables.size(), 20u);
}

TEST(SqlTask, JsonlLinesAreChatRecords) {
  const SqlTask t = make_sql_task(2, 1, 0);
  const nlohmann::json j = nlohmann::json::parse(sql_example_jsonl(t.train[0]));
  ASSERT_EQ(j["messages"].size(), 3u);
  EXPECT_EQ(j["messages"][0]["role"], "system");
  EXPECT_EQ(j["messages"][0]["content"], kSqlSystemPrompt);
  EXPECT_EQ(j["messages"][1]["role"], "user");
  EXPECT_EQ(j["messages"][1]["content"], t.train[0].question);
  EXPECT_EQ(j["messages"][2]["role"], "assistant");
  EXPECT_EQ(j["messages"][2]["content"], t.train[0].sql);
  EXPECT_THROW(make_sql_task(-1, 1, 0), Error);
}

TEST(SqlTask, DataSqlWritesTrainAndTest) {
  const fs::path dir = temp_dir("data_sql");
  const auto r = run_halo("data sql --out " + dir.string() + " --train 40 --test 10 --seed 9");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto train = read_lines(dir / "train.jsonl"), test = read_lines(dir / "test.jsonl");
  EXPECT_EQ(train.size(), 40u);
  EXPECT_EQ(test.size(), 10u);
  const SqlTask t = make_sql_task(40, 10, 9);
  EXPECT_EQ(train[5], sql_example_jsonl(t.train[5]));
  EXPECT_EQ(test[9], sql_example_jsonl(t.test[9]));
  EXPECT_NE(run_halo("data sql --train 5").out.find("--out DIR is required"), std::string::npos);
}

// ---- halo eval ---------------------------------------------------------------------------------

// A tiny random model whose vocabulary covers the SmolLM fixture tokenizer.
struct TinyModel {
  fs::path dir, model, tokenizer;
};
TinyModel tiny_model(const std::string& name) {
  TinyModel t;
  t.dir = temp_dir(name);
  t.tokenizer = kFixtures / "tokenizers" / "smollm";
  const Tokenizer tok = Tokenizer::load(t.tokenizer.string());
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.vocab_size = tok.vocab_size();
  c.max_position_embeddings = 512;
  c.tie_word_embeddings = true;
  check_config(c);
  save_config(c, (t.dir / "config.json").string());
  t.model = t.dir / "model";
  const auto r = run_halo("init --config " + (t.dir / "config.json").string() + " --out " + t.model.string() +
                          " --seed 2 --dtype f32");
  EXPECT_EQ(r.status, 0) << r.out;
  return t;
}

std::string record(const std::string& user, const std::string& answer) {
  nlohmann::json j;
  j["messages"] = {{{"role", "user"}, {"content", user}}, {{"role", "assistant"}, {"content", answer}}};
  return j.dump() + "\n";
}

TEST(Eval, GenerationWritesPerExampleJsonlAndScoresIt) {
  const TinyModel m = tiny_model("gen");
  const fs::path data = m.dir / "data.jsonl", out = m.dir / "results.jsonl";
  write_text(data, record("Table t(id, a)\nHow many t?", "SELECT COUNT(*) FROM t;") + "\n" +
                       record("hello", "world") + "{\"prompt\": \"what is 2+2?\", \"completion\": \"4\"}\n" +
                       record("unused", "x"));
  const std::string base = "eval --model " + m.model.string() + " --tokenizer " + m.tokenizer.string() +
                           " --device cpu --max-new-tokens 6 --batch 2 --limit 3 ";
  auto r = run_halo(base + "--data " + data.string() + " --metric exact --output " + out.string() + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  const auto summary = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_EQ(summary["records"], 3);
  EXPECT_EQ(summary["metric"], "exact");
  const auto lines = read_lines(out);
  ASSERT_EQ(lines.size(), 3u);  // --limit 3, the blank line skipped
  std::vector<nlohmann::json> rows;
  for (size_t i = 0; i < lines.size(); ++i) {
    rows.push_back(nlohmann::json::parse(lines[i]));
    EXPECT_EQ(rows[i]["index"], static_cast<int>(i));
    for (const char* key : {"prompt", "reference", "prediction", "correct"}) EXPECT_TRUE(rows[i].contains(key)) << key;
  }
  EXPECT_EQ(rows[0]["prompt"], "Table t(id, a)\nHow many t?");
  EXPECT_EQ(rows[1]["reference"], "world");
  EXPECT_EQ(rows[2]["prompt"], "what is 2+2?");  // a prompt / completion record
  EXPECT_EQ(rows[2]["reference"], "4");
  EXPECT_EQ(summary["correct"].get<int>(), (rows[0]["correct"] == true) + (rows[1]["correct"] == true) +
                                               (rows[2]["correct"] == true));

  // The model's own (greedy, deterministic) answers as references: all correct.
  std::string same;
  for (const auto& row : rows) same += record(row["prompt"], row["prediction"]);
  write_text(data, same);
  r = run_halo(base + "--data " + data.string() + " --metric exact --output " + out.string());
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("accuracy 100.0% (3/3, metric exact)"), std::string::npos) << r.out;
}

TEST(Eval, LossIsTheMeanOverAssistantTokens) {
  const TinyModel m = tiny_model("loss");
  const fs::path data = m.dir / "data.jsonl";
  write_text(data, record("Table t(id, a)\nHow many t?", "SELECT COUNT(*) FROM t;") + record("hello", "world"));
  const std::string base = "eval --model " + m.model.string() + " --tokenizer " + m.tokenizer.string() +
                           " --device cpu --metric loss --json --data " + data.string();
  const auto one = run_halo(base + " --batch 1"), two = run_halo(base + " --batch 2");
  ASSERT_EQ(one.status, 0) << one.out;
  ASSERT_EQ(two.status, 0) << two.out;
  const auto a = nlohmann::json::parse(one.out.substr(one.out.rfind('{')));
  const auto b = nlohmann::json::parse(two.out.substr(two.out.rfind('{')));
  const double loss = a["loss"].get<double>();
  // A near-uniform random model: about ln(vocab).
  const double ln_v = std::log(static_cast<double>(Tokenizer::load(m.tokenizer.string()).vocab_size()));
  EXPECT_NEAR(loss, ln_v, 0.5);
  EXPECT_NEAR(a["perplexity"].get<double>(), std::exp(loss), 1e-6 * std::exp(loss));
  EXPECT_GT(a["tokens"].get<int>(), 8);  // the answers and their end-of-turn tokens only
  EXPECT_LT(a["tokens"].get<int>(), 30);
  EXPECT_EQ(a["tokens"], b["tokens"]);
  EXPECT_NEAR(b["loss"].get<double>(), loss, 1e-4);  // padding changes nothing
}

TEST(Eval, ErrorsNameTheProblem) {
  const fs::path dir = temp_dir("errors");
  write_text(dir / "bad.jsonl", record("a", "b") + "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n");
  auto r = run_halo("eval --model " + (kFixtures / "llama").string() + " --tokenizer " +
                    (kFixtures / "tokenizers" / "smollm").string() + " --data " + (dir / "bad.jsonl").string() +
                    " --metric exact --device cpu");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("bad.jsonl:2"), std::string::npos) << r.out;
  r = run_halo("eval --model x --data y --metric bleu");
  EXPECT_NE(r.out.find("unknown metric 'bleu'"), std::string::npos) << r.out;
  r = run_halo("eval --model " + (kFixtures / "llama").string() + " --data y --metric exact");
  EXPECT_NE(r.out.find("--tokenizer"), std::string::npos) << r.out;
}

// ---- halo report ----------------------------------------------------------------------------------

TEST(Report, HtmlHoldsCurvesAccuraciesAndExamples) {
  const fs::path dir = temp_dir("report");
  fs::create_directories(dir / "run_a");
  fs::create_directories(dir / "run_b");
  std::string ma, mb;
  for (int s = 1; s <= 20; ++s) {
    ma += "{\"step\": " + std::to_string(s) + ", \"loss\": " + std::to_string(3.0 - 0.1 * s) +
          ", \"tokens_per_s\": 100.0, \"step_ms\": 500.0}\n";
    mb += "{\"step\": " + std::to_string(s) + ", \"loss\": " + std::to_string(3.2 - 0.1 * s) + "}\n";
  }
  ma += "{\"step\": 20, \"val_loss\": 1.2345}\n";
  write_text(dir / "run_a" / "metrics.jsonl", ma);
  write_text(dir / "run_b" / "metrics.jsonl", mb);
  const auto row = [](int i, const std::string& ref, const std::string& pred, bool ok) {
    nlohmann::ordered_json j{{"index", i}, {"prompt", "q<" + std::to_string(i) + ">"}, {"reference", ref},
                             {"prediction", pred}, {"correct", ok}};
    return j.dump() + "\n";
  };
  write_text(dir / "base.jsonl", row(0, "A", "nope", false) + row(1, "B", "nah", false) + row(2, "C", "C", true) +
                                     row(3, "D", "x", false));
  write_text(dir / "tuned.jsonl",
             row(0, "A", "A", true) + row(1, "B", "B", true) + row(2, "C", "C", true) + row(3, "D", "<D & E>", false));
  const fs::path out = dir / "sub" / "report.html";
  const auto r = run_halo("report --run bf16=" + (dir / "run_a").string() + " --run halo2-int8=" +
                          (dir / "run_b").string() + " --eval base=" + (dir / "base.jsonl").string() +
                          " --eval tuned=" + (dir / "tuned.jsonl").string() + " --out " + out.string() +
                          " --examples 3 --title 'SQL <demo>'");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("25.0%  (1/4)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("75.0%  (3/4)"), std::string::npos) << r.out;
  std::ifstream in(out);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string html = ss.str();
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("</html>"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_NE(html.find("<title>SQL &lt;demo&gt;</title>"), std::string::npos);
  EXPECT_EQ(count(html, "<svg"), 1u);
  EXPECT_EQ(count(html, "</svg>"), 1u);
  EXPECT_EQ(count(html, "<polyline"), 4u);  // per run: raw and averaged
  EXPECT_EQ(count(html, "<circle"), 1u);    // one val_loss point
  EXPECT_NE(html.find("1.2345"), std::string::npos);
  EXPECT_EQ(count(html, "<table"), count(html, "</table>"));
  EXPECT_EQ(count(html, "<tr"), count(html, "</tr>"));
  EXPECT_NE(html.find("25.0%"), std::string::npos);
  EXPECT_NE(html.find("75.0%"), std::string::npos);
  EXPECT_NE(html.find("1 / 4"), std::string::npos);
  EXPECT_NE(html.find("3 / 4"), std::string::npos);
  // The examples where the models disagree (0 and 1) come first; 3 of 4 shown, escaped.
  EXPECT_NE(html.find("q&lt;0&gt;"), std::string::npos);
  EXPECT_NE(html.find("q&lt;1&gt;"), std::string::npos);
  EXPECT_EQ(html.find("q<"), std::string::npos);
  EXPECT_EQ(count(html, "q&lt;"), 3u);
  EXPECT_NE(html.find("100"), std::string::npos);  // run a's tokens/s

  EXPECT_EQ(html_escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
  const auto bad = run_halo("report --run x=" + dir.string() + " --out " + out.string());
  EXPECT_NE(bad.out.find("no metrics.jsonl"), std::string::npos) << bad.out;
  EXPECT_NE(run_halo("report --eval nameless --out x.html").out.find("NAME=PATH"), std::string::npos);
}

}  // namespace
}  // namespace halo
