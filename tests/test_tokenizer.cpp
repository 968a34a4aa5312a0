// The tokenizers against Hugging Face `tokenizers`: the ids of a varied text (whole and
// line by line), special tokens, decoding, the pre-tokenizer regexes, errors for
// malformed files, and the encoding rate. Fixtures: tests/fixtures/tokenizers/, written
// by scripts/make_tokenizer_fixtures.py (real GPT-2, Llama 3, Mistral v0.1 / v0.3 and
// Qwen2 vocabularies cut to their first merges, a trained SmolLM-style one); more
// fixture directories (e.g. the uncut tokenizers) can be given in
// $HALO_TOKENIZER_EXTRA_FIXTURES (a directory of fixture directories).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "text/pretokenize.h"
#include "testing.h"
#include "text/tokenizer.h"
#include "text/unicode.h"

namespace halo {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path fixture_root() {
  return testing::fixtures_dir() / "tokenizers";
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Fixture directories: those with an expected.json.
std::vector<fs::path> fixture_dirs() {
  std::vector<fs::path> out;
  std::vector<fs::path> roots = {fixture_root()};
  if (const char* extra = std::getenv("HALO_TOKENIZER_EXTRA_FIXTURES")) roots.emplace_back(extra);
  for (const fs::path& root : roots) {
    if (!fs::is_directory(root)) continue;
    std::vector<fs::path> dirs;
    for (const auto& e : fs::directory_iterator(root))
      if (fs::exists(e.path() / "expected.json")) dirs.push_back(e.path());
    std::sort(dirs.begin(), dirs.end());
    out.insert(out.end(), dirs.begin(), dirs.end());
  }
  return out;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t pos = 0;
  for (size_t nl; (nl = text.find('\n', pos)) != std::string::npos; pos = nl + 1)
    lines.push_back(text.substr(pos, nl + 1 - pos));
  lines.push_back(text.substr(pos));
  return lines;
}

std::vector<uint32_t> ids_of(const json& j) { return j.get<std::vector<uint32_t>>(); }

// Where two id lists first differ, with the tokens around it.
std::string first_difference(const Tokenizer& tok, const std::vector<uint32_t>& got,
                             const std::vector<uint32_t>& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  if (i == got.size() && i == want.size()) return "equal";
  std::ostringstream os;
  os << "first difference at " << i << " of " << got.size() << " (got) / " << want.size() << " (expected):";
  auto show = [&](const char* label, const std::vector<uint32_t>& v) {
    os << "\n  " << label << ":";
    for (size_t k = i >= 4 ? i - 4 : 0; k < std::min(v.size(), i + 6); ++k)
      os << (k == i ? " >>" : " ") << v[k] << "'" << tok.id_to_token(v[k]) << "'";
  };
  show("got", got);
  show("expected", want);
  return os.str();
}

struct Fixture {
  fs::path dir;
  Tokenizer tok;
  json expected;
  std::string text;
};

const Fixture& fixture(const fs::path& dir) {
  static std::map<fs::path, std::unique_ptr<Fixture>> cache;
  auto& f = cache[dir];
  if (!f) {
    json expected = json::parse(read_file(dir / "expected.json"));
    f = std::make_unique<Fixture>(
        Fixture{dir, Tokenizer::load(dir.string()), expected, read_file(dir.parent_path() / "sample.txt")});
  }
  return *f;
}

class TokenizerParity : public ::testing::TestWithParam<fs::path> {};

TEST_P(TokenizerParity, WholeText) {
  const Fixture& f = fixture(GetParam());
  const auto want = ids_of(f.expected["whole"]);
  const auto got = f.tok.encode(f.text);
  EXPECT_EQ(got, want) << first_difference(f.tok, got, want);
}

TEST_P(TokenizerParity, LineByLine) {
  const Fixture& f = fixture(GetParam());
  const std::vector<std::string> lines = split_lines(f.text);
  const json& want = f.expected["lines"];
  ASSERT_EQ(lines.size(), want.size());
  int failures = 0;
  for (size_t i = 0; i < lines.size() && failures < 5; ++i) {
    const auto got = f.tok.encode(lines[i]);
    const auto w = ids_of(want[i]);
    if (got != w) {
      ++failures;
      ADD_FAILURE() << "line " << i << " \"" << lines[i] << "\": " << first_difference(f.tok, got, w);
    }
  }
}

TEST_P(TokenizerParity, Cases) {
  const Fixture& f = fixture(GetParam());
  for (const json& c : f.expected["cases"]) {
    const std::string text = c["text"];
    SCOPED_TRACE("text \"" + text + "\"");
    const auto ids = f.tok.encode(text);
    EXPECT_EQ(ids, ids_of(c["ids"])) << first_difference(f.tok, ids, ids_of(c["ids"]));
    EncodeOptions plain;
    plain.parse_special = false;
    EXPECT_EQ(f.tok.encode(text, plain), ids_of(c["ids_no_special"])) << "special tokens as text";
    EncodeOptions add;
    add.add_special_tokens = true;
    EXPECT_EQ(f.tok.encode(text, add), ids_of(c["ids_add_special"])) << "with the post-processor's tokens";
    EXPECT_EQ(f.tok.decode(ids, false), c["decoded"].get<std::string>());
    EXPECT_EQ(f.tok.decode(ids, true), c["decoded_skip"].get<std::string>()) << "skip_special_tokens";
  }
}

TEST_P(TokenizerParity, Decode) {
  const Fixture& f = fixture(GetParam());
  EXPECT_EQ(f.tok.decode(ids_of(f.expected["whole"])), f.expected["whole_decoded"].get<std::string>());
  for (const json& c : f.expected["decode"]) {
    const auto ids = ids_of(c["ids"]);
    EXPECT_EQ(f.tok.decode(ids, false), c["decoded"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(f.tok.decode(ids, true), c["decoded_skip"].get<std::string>()) << c["ids"].dump();
  }
}

TEST_P(TokenizerParity, EncodeBatchEqualsEncode) {
  const Fixture& f = fixture(GetParam());
  const std::vector<std::string> lines = split_lines(f.text);
  std::vector<std::string_view> views(lines.begin(), lines.end());
  const auto batch = f.tok.encode_batch(views, {}, 2);
  ASSERT_EQ(batch.size(), lines.size());
  for (size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(batch[i], f.tok.encode(lines[i])) << "line " << i;
}

std::string fixture_name(const ::testing::TestParamInfo<fs::path>& info) {
  std::string name = info.param.filename().string();
  if (info.param.parent_path() != fixture_root()) name = "extra_" + name;
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerParity, ::testing::ValuesIn(fixture_dirs()), fixture_name);

const Tokenizer& tokenizer(const std::string& name) { return fixture(fixture_root() / name).tok; }

// Pipelines no real tokenizer here uses (Split behaviors, ByteLevel with a prefix space,
// Metaspace schemes, unk without byte fallback, other post-processors and decoders),
// as changes to two small bases.
TEST(TokenizerVariants, MatchHuggingFace) {
  const json all = json::parse(read_file(fixture_root() / "variants.json"));
  const json& texts = all["texts"];
  for (const json& v : all["variants"]) {
    const std::string name = v["name"];
    json data = all["bases"][v["base"].get<std::string>()];
    for (const auto& [key, value] : v["changes"].items()) {
      if (key == "model") {
        data["model"].update(value);
      } else {
        data[key] = value;
      }
    }
    const Tokenizer tok = Tokenizer::from_json(data, name);
    int failures = 0;
    for (size_t i = 0; i < texts.size() && failures < 3; ++i) {
      const std::string text = texts[i];
      const json& c = v["cases"][i];
      EncodeOptions add;
      add.add_special_tokens = true;
      const auto ids = tok.encode(text);
      const bool ok = ids == ids_of(c[0]) && tok.encode(text, add) == ids_of(c[1]) &&
                      tok.decode(ids) == c[2].get<std::string>();
      if (!ok) {
        ++failures;
        ADD_FAILURE() << name << ": \"" << text << "\": " << first_difference(tok, ids, ids_of(c[0])) << "\n  decoded \""
                      << tok.decode(ids) << "\", expected \"" << c[2].get<std::string>() << "\"";
      }
    }
  }
}

// ---- Unicode --------------------------------------------------------------------------

std::string normalized(std::string_view s, text::NormalForm form) {
  std::string out;
  return text::normalize(s, form, &out) ? out : std::string(s);
}

TEST(Unicode, NfcAndNfd) {
  using text::NormalForm;
  std::string out;
  EXPECT_FALSE(text::normalize("plain ASCII text", NormalForm::nfc, &out));
  EXPECT_FALSE(text::normalize("d\u00e9j\u00e0 vu \u4e2d\u6587", NormalForm::nfc, &out));
  EXPECT_EQ(normalized("e\u0301", NormalForm::nfc), "\u00e9");
  EXPECT_EQ(normalized("\u212b", NormalForm::nfc), "\u00c5");               // Angstrom sign
  EXPECT_EQ(normalized("\u1100\u1161\u11a8", NormalForm::nfc), "\uac01");   // Hangul L V T
  EXPECT_EQ(normalized("\uac00\u11a8", NormalForm::nfc), "\uac01");         // LV + T
  EXPECT_EQ(normalized("a\u0301\u0316", NormalForm::nfc), "\u00e1\u0316");  // reordered, composed
  EXPECT_EQ(normalized("\u00e9", NormalForm::nfd), "e\u0301");
  EXPECT_EQ(normalized("a\u0301\u0316", NormalForm::nfd), "a\u0316\u0301");
  EXPECT_EQ(normalized("\u0344", NormalForm::nfd), "\u0308\u0301");
  EXPECT_EQ(normalized("x\xff e\u0301 y", NormalForm::nfc), "x\xff \u00e9 y");  // invalid bytes kept
  // Unicode 9.0 normalization data, as Hugging Face: U+11938 does not compose.
  EXPECT_EQ(normalized("\U00011935\U00011930", NormalForm::nfc), "\U00011935\U00011930");
}

TEST(Unicode, LossyUtf8AndCategories) {
  EXPECT_EQ(text::utf8_lossy("ok \u00e9"), "ok \u00e9");
  EXPECT_EQ(text::utf8_lossy("\xE2\x82"
                             "a"),
            "\uFFFD"
            "a");  // a truncated sequence is one error
  EXPECT_EQ(text::utf8_lossy("\xF0\x9F\x98"), "\uFFFD");
  EXPECT_EQ(text::utf8_lossy("\xC0\x80"), "\uFFFD\uFFFD");            // overlong: each byte
  EXPECT_EQ(text::utf8_lossy("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // surrogate
  const text::UnicodeTable& t = text::UnicodeTable::get();
  EXPECT_EQ(t.category('A'), text::Category::Lu);
  EXPECT_EQ(t.category(0x4E2D), text::Category::Lo);
  EXPECT_EQ(t.category(0x0663), text::Category::Nd);
  EXPECT_EQ(t.category(0x10D4A), text::Category::Lo);  // Unicode 16.0 (Garay), as Oniguruma 6.9.10
  EXPECT_EQ(t.category(0x3000), text::Category::Zs);
  EXPECT_EQ(t.category(0x10FFFF), text::Category::Cn);
}

// ---- pre-tokenizer regexes ------------------------------------------------------------

TEST(Pretokenize, KnownPatternsSplitAsOniguruma) {
  const json expected = json::parse(read_file(fixture_root() / "pretokenize.json"));
  const std::vector<std::string> lines = split_lines(read_file(fixture_root() / "sample.txt"));
  for (const auto& [name, entry] : expected.items()) {
    const auto pattern = text::known_split_pattern(entry["pattern"].get<std::string>());
    ASSERT_TRUE(pattern) << name;
    EXPECT_STREQ(text::split_pattern_name(*pattern), name.c_str());
    const json& splits = entry["splits"];
    ASSERT_EQ(splits.size(), lines.size());
    int failures = 0;
    for (size_t i = 0; i < lines.size() && failures < 5; ++i) {
      std::string line = lines[i];
      if (line.empty() || line.back() != '\n') line += '\n';
      std::vector<std::string> got;
      for (std::string_view s : text::split_matches(*pattern, line)) got.emplace_back(s);
      if (got != splits[i].get<std::vector<std::string>>()) {
        ++failures;
        ADD_FAILURE() << name << " line " << i << " \"" << line << "\": got " << json(got).dump() << ", expected "
                      << splits[i].dump();
      }
    }
  }
}

TEST(Pretokenize, Llama3DigitsAndContractions) {
  auto split = [](const std::string& s) {
    std::vector<std::string> out;
    for (std::string_view p : text::split_matches(text::SplitPattern::llama3, s)) out.emplace_back(p);
    return out;
  };
  EXPECT_EQ(split("1234567"), (std::vector<std::string>{"123", "456", "7"}));
  EXPECT_EQ(split("I'M here, YOU'LL"), (std::vector<std::string>{"I", "'M", " here", ",", " YOU", "'LL"}));
  EXPECT_EQ(split("a  \n\n  b"), (std::vector<std::string>{"a", "  \n\n", " ", " b"}));
  EXPECT_EQ(text::split_matches(text::SplitPattern::qwen2, "123").size(), 3u);
}

// ---- special tokens, the configuration ------------------------------------------------

TEST(Tokenizer, SpecialTokensAreMatchedFirst) {
  const Tokenizer& tok = tokenizer("llama3");
  const uint32_t bos = *tok.token_to_id("<|begin_of_text|>");
  EXPECT_EQ(tok.bos_id(), bos);
  const auto ids = tok.encode("<|begin_of_text|>Hello<|eot_id|>");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), bos);
  EXPECT_EQ(ids.back(), *tok.token_to_id("<|eot_id|>"));
  EXPECT_TRUE(tok.is_special(bos));
  EncodeOptions plain;
  plain.parse_special = false;
  const auto text_ids = tok.encode("<|begin_of_text|>", plain);
  EXPECT_GT(text_ids.size(), 1u);
  EXPECT_EQ(std::count(text_ids.begin(), text_ids.end(), bos), 0);
  EXPECT_EQ(tok.decode(ids, true), "Hello");
  EXPECT_EQ(tok.decode(ids, false), "<|begin_of_text|>Hello<|eot_id|>");
}

TEST(Tokenizer, SentencePieceBosAndByteFallback) {
  const Tokenizer& tok = tokenizer("mistral");
  EncodeOptions with_bos;
  with_bos.add_special_tokens = true;
  const auto ids = tok.encode("Hello 𝐀", with_bos);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1u);  // <s>
  // 𝐀 is not in the vocabulary: its four UTF-8 bytes as <0xF0> <0x9D> <0x90> <0x80>.
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(tok.id_to_token(ids[ids.size() - 4]), "<0xF0>");
  EXPECT_EQ(tok.id_to_token(ids.back()), "<0x80>");
  EXPECT_EQ(tok.decode(ids, true), "Hello 𝐀");
}

TEST(Tokenizer, ConfigGivesChatTemplateAndBosEos) {
  const Tokenizer& qwen = tokenizer("qwen2");
  EXPECT_NE(qwen.chat_template().find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(qwen.eos_token(), "<|im_end|>");
  EXPECT_EQ(qwen.eos_id(), qwen.token_to_id("<|im_end|>"));
  EXPECT_FALSE(qwen.bos_id());
  const Tokenizer& mistral = tokenizer("mistral");
  EXPECT_EQ(mistral.bos_id(), std::optional<uint32_t>(1));
  EXPECT_EQ(mistral.eos_id(), std::optional<uint32_t>(2));
}

TEST(Tokenizer, ByteLevelRoundTripsAnyText) {
  std::mt19937 rng(5);
  const std::vector<std::string> pool = {"a",
                                         "Z",
                                         "7",
                                         " ",
                                         "  ",
                                         "\n",
                                         "\r\n",
                                         "\t",
                                         "'s",
                                         "é",
                                         "e\xCC\x81",
                                         "中",
                                         "😀",
                                         "\xE2\x80\x8D",
                                         "!",
                                         "<|",
                                         "|>",
                                         "\xC2\xA0",
                                         "\xF0\x9D\x90\x80"};
  for (const char* name : {"gpt2", "llama3", "smollm"}) {
    const Tokenizer& tok = tokenizer(name);
    for (int i = 0; i < 200; ++i) {
      std::string s;
      const int n = static_cast<int>(rng() % 40);
      for (int k = 0; k < n; ++k) s += pool[rng() % pool.size()];
      EXPECT_EQ(tok.decode(tok.encode(s)), s) << name;
    }
    const std::string sample = read_file(fixture_root() / "sample.txt");
    EXPECT_EQ(tok.decode(tok.encode(sample)), sample) << name;
  }
}

TEST(Tokenizer, LongWordsAreNotQuadratic) {
  // One pre-token of 400 KB (SentencePiece-style: a whole line is one word).
  std::string word;
  for (int i = 0; i < 40000; ++i) word += "abcdefghij";
  for (const char* name : {"mistral", "llama3"}) {
    const auto start = std::chrono::steady_clock::now();
    const auto ids = tokenizer(name).encode(word);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tokenizer(name).decode(ids), word);
    EXPECT_LT(s, 5.0) << name << ": " << s << " s for a 400 KB word";
  }
}

// ---- malformed files ------------------------------------------------------------------

class MalformedTokenizer : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("halo_tok_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    base_ = json::parse(read_file(fixture_root() / "smollm" / "tokenizer.json"));
  }
  void TearDown() override { fs::remove_all(dir_); }
  // Loading `j` fails with a message holding the file's path and each of `parts`.
  void expect_error(const json& j, const std::vector<std::string>& parts) {
    const fs::path file = dir_ / "tokenizer.json";
    std::ofstream(file) << j.dump();
    try {
      Tokenizer::load(file.string());
      ADD_FAILURE() << "no error for " << parts.front();
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(file.string()), std::string::npos) << msg;
      for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    }
  }
  fs::path dir_;
  json base_;
};

TEST_F(MalformedTokenizer, NamesFileAndKey) {
  json j = base_;
  j.erase("model");
  expect_error(j, {"model", "missing"});
  j = base_;
  j["model"]["merges"][3] = "onlyone";
  expect_error(j, {"model.merges[3]", "one space"});
  j = base_;
  j["model"]["merges"][5] = json::array({"Ġ", "no-such-token"});
  expect_error(j, {"model.merges[5]", "no-such-token", "not in model.vocab"});
  j = base_;
  j["model"]["type"] = "Unigram";
  expect_error(j, {"model.type", "Unigram"});
  j = base_;
  j["model"]["vocab"]["Ġ"] = -3;
  expect_error(j, {"model.vocab[\"Ġ\"]", "token id"});
  j = base_;
  j["pre_tokenizer"]["pretokenizers"][1]["type"] = "Whitespace";
  expect_error(j, {"pre_tokenizer.pretokenizers[1].type", "Whitespace"});
  j = base_;
  j["pre_tokenizer"] = json::parse(R"({"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated"})");
  expect_error(j, {"pre_tokenizer.pattern.Regex", "unknown pre-tokenizer regex"});
  j = base_;
  j["added_tokens"][0]["id"] = "zero";
  expect_error(j, {"added_tokens[0].id"});
  j = base_;
  j["normalizer"] = json::parse(R"({"type": "Lowercase"})");
  expect_error(j, {"normalizer.type", "Lowercase"});
  j = base_;
  j["decoder"] = json::parse(R"({"type": "WordPiece"})");
  expect_error(j, {"decoder.type", "WordPiece"});
}

TEST(Tokenizer, FromJsonText) {
  const std::string json_text = read_file(fixture_root() / "smollm" / "tokenizer.json");
  const Tokenizer tok = Tokenizer::from_json_text(json_text);
  EXPECT_EQ(tok.encode("Hello 123"), tokenizer("smollm").encode("Hello 123"));
  EXPECT_THROW(Tokenizer::from_json_text("[1, 2]"), Error);
}

TEST_F(MalformedTokenizer, ConfigNamesFileAndKey) {
  std::ofstream(dir_ / "tokenizer.json") << base_.dump();
  std::ofstream(dir_ / "tokenizer_config.json") << R"({"bos_token": "<|im_start|>", "chat_template": 42})";
  try {
    Tokenizer::load(dir_.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find((dir_ / "tokenizer_config.json").string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("chat_template"), std::string::npos) << msg;
  }
  std::ofstream(dir_ / "tokenizer_config.json") << R"({"bos_token": {"content": "<|im_start|>"}, "eos_token": null})";
  const Tokenizer tok = Tokenizer::load(dir_.string());
  EXPECT_EQ(tok.bos_id(), tok.token_to_id("<|im_start|>"));
  EXPECT_FALSE(tok.eos_id());
}

TEST_F(MalformedTokenizer, InvalidJsonAndMissingFile) {
  const fs::path file = dir_ / "tokenizer.json";
  std::ofstream(file) << "{\"model\": ";
  try {
    Tokenizer::load(dir_.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
  }
  fs::remove(file);
  EXPECT_THROW(Tokenizer::load(dir_.string()), Error);
}

// ---- rate -----------------------------------------------------------------------------

TEST(TokenizerRate, EncodeMegabytes) {
  // About 4 MB: the sample's lines in shuffled orders.
  const std::vector<std::string> lines = split_lines(read_file(fixture_root() / "sample.txt"));
  std::mt19937 rng(1);
  std::string text;
  std::vector<size_t> order(lines.size());
  std::iota(order.begin(), order.end(), 0);
  while (text.size() < (4u << 20)) {
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t i : order) text += lines[i];
  }
  for (const char* name : {"llama3", "gpt2", "qwen2", "mistral"}) {
    const Tokenizer& tok = tokenizer(name);
    tok.encode(text.substr(0, 1 << 16));  // warm the cache as a long run would
    const auto start = std::chrono::steady_clock::now();
    const auto ids = tok.encode(text);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double mbs = text.size() / 1e6 / s;
    std::printf("[ rate     ] %-8s %.1f MB in %.3f s: %.1f MB/s, %.2f M tokens/s (1 thread)\n", name, text.size() / 1e6,
                s, mbs, ids.size() / s / 1e6);
    EXPECT_GT(mbs, 1.0) << name;
  }
}

// ---- the command ----------------------------------------------------------------------

TEST(TokenizeCommand, PrintsTokensAndIds) {
  const testing::CommandResult r = testing::run_halo("tokenize --tokenizer " + (fixture_root() / "llama3").string() +
                                                     " --text 'Hello world<|eot_id|>' --quiet");
  const std::string& out = r.out;
  EXPECT_EQ(r.status, 0) << out;
  const Tokenizer& tok = tokenizer("llama3");
  const std::vector<uint32_t> ids = tok.encode("Hello world<|eot_id|>");
  std::string id_line, token_line;
  for (size_t i = 0; i < ids.size(); ++i) {
    id_line += (i ? " " : "") + std::to_string(ids[i]);
    token_line += (i ? " \"" : "\"") + std::string(tok.id_to_token(ids[i])) + "\"";
  }
  EXPECT_NE(out.find(token_line + "\n" + id_line + "\n"), std::string::npos) << out;
  EXPECT_NE(out.find("\"<|eot_id|>\"\n"), std::string::npos) << out;
}

}  // namespace
}  // namespace halo
