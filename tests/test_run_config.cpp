// TrainConfig: TOML files, command-line overrides, errors, and the TOML round trip.
#include <unistd.h>

#include <filesystem>
#include <string>

#include "core/error.h"
#include "io/atomic_file.h"
#include "testing.h"
#include "train/run_config.h"

namespace halo {
namespace {

namespace fs = std::filesystem;

using testing::error_of;

#define EXPECT_ERROR_HAS(stmt, ...)                                              \
  do {                                                                           \
    const std::string msg_ = error_of([&] { stmt; });                            \
    ASSERT_FALSE(msg_.empty()) << "no error from " #stmt;                        \
    for (const char* part : {__VA_ARGS__})                                       \
      EXPECT_NE(msg_.find(part), std::string::npos) << "'" << part << "' not in: " << msg_; \
  } while (0)

TEST(RunConfig, ParsesEveryTypeAndKeepsDefaults) {
  const TrainConfig c = parse_train_config(R"(
model = "models/smollm-135m"
recipe = "halo1-fp8+row"
data = "data/train.tok"
steps = 500
lr = 3e-4
weight_decay = 1          # an integer is fine for a number key
recompute = true
)", "run.toml");
  EXPECT_EQ(c.model, "models/smollm-135m");
  EXPECT_EQ(c.recipe, "halo1-fp8+row");
  EXPECT_EQ(c.steps, 500);
  EXPECT_EQ(c.lr, 3e-4);
  EXPECT_EQ(c.weight_decay, 1.0);
  EXPECT_TRUE(c.recompute);
  EXPECT_EQ(c.batch, TrainConfig().batch);  // untouched keys keep their defaults
  EXPECT_EQ(c.lm_head_recipe, "bf16");
  check_train_config(c);
}

TEST(RunConfig, ErrorsNameTheFileTheLineAndTheKey) {
  EXPECT_ERROR_HAS(parse_train_config("lr = 1e-4\nlearning_rate = 1e-4\n", "run.toml"), "run.toml:2",
                   "learning_rate", "unknown key", "warmup_steps");
  EXPECT_ERROR_HAS(parse_train_config("batch = \"8\"\n", "run.toml"), "run.toml:1", "'batch'", "an integer");
  EXPECT_ERROR_HAS(parse_train_config("steps = 1.5\n", "run.toml"), "'steps'", "an integer");
  EXPECT_ERROR_HAS(parse_train_config("lr = true\n", "run.toml"), "'lr'", "a number");
  EXPECT_ERROR_HAS(parse_train_config("recompute = 1\n", "run.toml"), "'recompute'", "boolean");
  EXPECT_ERROR_HAS(parse_train_config("[optim]\nlr = 1\n", "run.toml"), "'optim'", "unknown key");
  EXPECT_ERROR_HAS(parse_train_config("batch = 0\n", "run.toml"), "'batch'", "must be >= 1");
  EXPECT_ERROR_HAS(parse_train_config("beta2 = 1.0\n", "run.toml"), "'beta2'", "[0, 1)");
  EXPECT_ERROR_HAS(parse_train_config("lr = -1e-4\n", "run.toml"), "'lr'", "> 0");
  EXPECT_ERROR_HAS(parse_train_config("lr = nan\n", "run.toml"), "'lr'");
  EXPECT_ERROR_HAS(parse_train_config("schedule = \"exp\"\n", "run.toml"), "'schedule'", "cosine");
  EXPECT_ERROR_HAS(parse_train_config("master_weights = \"fp16\"\n", "run.toml"), "'master_weights'");
  EXPECT_ERROR_HAS(parse_train_config("grad_dtype = \"f16\"\n", "run.toml"), "'grad_dtype'", "f32 or bf16");
  EXPECT_ERROR_HAS(parse_train_config("device = \"tpu\"\n", "run.toml"), "'device'");
  EXPECT_ERROR_HAS(parse_train_config("save_dtype = \"f16\"\n", "run.toml"), "'save_dtype'");
  EXPECT_ERROR_HAS(parse_train_config("recipe = \"halo3-int8\"\n", "run.toml"), "'recipe'", "halo3-int8");
  EXPECT_ERROR_HAS(parse_train_config("lr = = 3\n", "run.toml"), "run.toml:1", "TOML syntax error");
  EXPECT_ERROR_HAS(load_train_config("/nonexistent/run.toml"), "/nonexistent/run.toml");
}

TEST(RunConfig, ChecksKeysTogether) {
  TrainConfig c;
  c.data = "d.tok";
  c.steps = 10;
  EXPECT_ERROR_HAS(check_train_config(c), "'model'", "'init'");
  c.model = "m";
  c.init = "config.json";
  EXPECT_ERROR_HAS(check_train_config(c), "only one of 'model' and 'init'");
  c.init.clear();
  c.epochs = 2;
  EXPECT_ERROR_HAS(check_train_config(c), "only one of 'steps' and 'epochs'");
  c.steps = 0;
  check_train_config(c);
  c.epochs = 0;
  EXPECT_ERROR_HAS(check_train_config(c), "'steps' or 'epochs'");
  c.epochs = 1;
  c.data.clear();
  EXPECT_ERROR_HAS(check_train_config(c), "'data'");
}

TEST(RunConfig, JsonlDataKeys) {
  // tokenizer, template, loss_on and packing: parsed, checked, written back.
  TrainConfig c = parse_train_config(
      "init = \"cfg.json\"\ndata = \"chat.jsonl\"\nsteps = 5\ntokenizer = \"models/m\"\n"
      "template = \"llama3\"\nloss_on = \"all\"\npacking = \"pad\"\n",
      "run.toml");
  EXPECT_EQ(c.tokenizer, "models/m");
  EXPECT_EQ(c.chat_template, "llama3");
  EXPECT_EQ(c.loss_on, "all");
  EXPECT_EQ(c.packing, "pad");
  check_train_config(c);
  EXPECT_EQ(parse_train_config(to_toml(c), "round trip"), c);
  const TrainConfig d;
  EXPECT_EQ(d.chat_template, "auto");
  EXPECT_EQ(d.loss_on, "assistant");
  EXPECT_EQ(d.packing, "pack");
  EXPECT_ERROR_HAS(parse_train_config("template = \"gemma\"\n", "run.toml"), "'template'", "chatml");
  EXPECT_ERROR_HAS(parse_train_config("loss_on = \"answers\"\n", "run.toml"), "'loss_on'", "assistant or all");
  EXPECT_ERROR_HAS(parse_train_config("packing = \"packed\"\n", "run.toml"), "'packing'", "pack or pad");
  TrainConfig bad = c;
  EXPECT_ERROR_HAS(set_train_config_key(bad, "template", "vicuna"), "--template");
  // JSONL data from an initialized model needs the tokenizer key (a model directory has one).
  c.tokenizer.clear();
  EXPECT_ERROR_HAS(check_train_config(c), "set 'tokenizer'");
  c.data = "train.tok";
  c.val_data = "val.jsonl";
  EXPECT_ERROR_HAS(check_train_config(c), "set 'tokenizer'");
  c.init.clear();
  c.model = "models/m";
  check_train_config(c);
}

class RunConfigFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("halo_rc_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

TEST_F(RunConfigFiles, CommandLineOverridesTheFileInOrder) {
  write_file_atomic(path("run.toml"), "init = \"cfg.json\"\ndata = \"a.tok\"\nsteps = 100\nlr = 1e-3\n");
  const TrainConfig c = train_config_from_args({"--lr", "2e-4", "--config", path("run.toml"), "--batch=4",
                                                "--recompute", "--stochastic_rounding", "false", "--seed", "7",
                                                "--lr", "5e-4", "--schedule=linear"});
  EXPECT_EQ(c.init, "cfg.json");
  EXPECT_EQ(c.steps, 100);
  EXPECT_EQ(c.lr, 5e-4);  // the last --lr wins; the file is read first whatever its place
  EXPECT_EQ(c.batch, 4);
  EXPECT_TRUE(c.recompute);
  EXPECT_FALSE(c.stochastic_rounding);
  EXPECT_EQ(c.seed, 7);
  EXPECT_EQ(c.schedule, "linear");
  // --recompute as the last argument is a flag too.
  EXPECT_TRUE(train_config_from_args({"--config", path("run.toml"), "--recompute"}).recompute);
}

TEST_F(RunConfigFiles, CommandLineErrorsNameTheFlag) {
  TrainConfig c;
  EXPECT_ERROR_HAS(apply_train_args(c, {"--batchsize", "4"}), "--batchsize", "unknown option");
  EXPECT_ERROR_HAS(apply_train_args(c, {"--batch", "four"}), "--batch", "an integer", "four");
  EXPECT_ERROR_HAS(apply_train_args(c, {"--batch", "4x"}), "--batch");
  EXPECT_ERROR_HAS(apply_train_args(c, {"--lr", "1e-4abc"}), "--lr", "a number");
  EXPECT_ERROR_HAS(apply_train_args(c, {"--lr", "0"}), "--lr", "> 0");
  EXPECT_ERROR_HAS(apply_train_args(c, {"--recompute", "yes"}), "--recompute", "boolean");
  EXPECT_ERROR_HAS(apply_train_args(c, {"--batch"}), "--batch", "needs a value");
  EXPECT_ERROR_HAS(apply_train_args(c, {"batch", "4"}), "unexpected argument 'batch'");
  EXPECT_ERROR_HAS(apply_train_args(c, {"--config", path("missing.toml")}), "missing.toml");
  write_file_atomic(path("bad.toml"), "steps = 10\nbatch = -1\n");
  EXPECT_ERROR_HAS(apply_train_args(c, {"--config", path("bad.toml")}), "bad.toml:2", "'batch'");
  write_file_atomic(path("ok.toml"), "steps = 10\n");
  EXPECT_ERROR_HAS(apply_train_args(c, {"--config", path("ok.toml"), "--config=" + path("ok.toml")}),
                   "--config given more than once");
}

TEST(RunConfig, TomlRoundTripIsExact) {
  TrainConfig c;
  c.model = "models/tiny \"quoted\" \\ path\twith tab";
  c.recipe = "halo2-fp8+row+e5m2+sr";
  c.data = "/data/train.tok";
  c.val_data = "/data/val.tok";
  c.val_fraction = 0.0;
  c.epochs = 2.5;
  c.lr = 0.1 + 0.2;  // needs all 17 digits
  c.min_lr_ratio = 1.0 / 3.0;
  c.eps = 1e-300;
  c.weight_decay = 1e20;
  c.beta2 = 0.95;
  c.grad_clip = 0.0;
  c.stochastic_rounding = true;
  c.master_weights = "bf16";
  c.grad_dtype = "bf16";
  c.seed = 123456789012345;
  c.keep_checkpoints = 0;
  const std::string text = to_toml(c);
  EXPECT_EQ(parse_train_config(text, "round trip"), c) << text;
  EXPECT_NE(text.find("epochs = 2.5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("grad_clip = 0.0\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("init ="), std::string::npos) << "unset strings are left out:\n" << text;
  // Defaults too, and each key appears once, in order.
  const TrainConfig d;
  EXPECT_EQ(parse_train_config(to_toml(d), "defaults"), d);
  size_t at = 0;
  for (const std::string& key : train_config_keys()) {
    if (key == "model" || key == "init" || key == "data" || key == "val_data" || key == "tokenizer" ||
        key == "eval_data")
      continue;
    const size_t found = to_toml(d).find("\n" + key + " = ");
    ASSERT_NE(found, std::string::npos) << key;
    EXPECT_GT(found, at) << key;
    at = found;
  }
}

}  // namespace
}  // namespace halo
