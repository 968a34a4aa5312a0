// Checkpoint directories: contents, atomic replacement, keeping the newest K,
// failures while writing, and leftovers of a crash.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "testing.h"
#include "train/checkpoint.h"

namespace halo {
namespace {

namespace fs = std::filesystem;

class Checkpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    out_ = (fs::temp_directory_path() / ("halo_ckpt_" + std::to_string(::getpid()) + "_" + info->name())).string();
    fs::remove_all(out_);
  }
  void TearDown() override { fs::remove_all(out_); }

  std::vector<std::string> listing(const std::string& dir) const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  static TrainerState state_at(int64_t step) {
    TrainerState s;
    s.step = step;
    s.data = {1, 17, 5};
    s.seed = 0xfedcba9876543210ull;
    s.tokens = step * 4096;
    s.skipped_steps = 1;
    s.loss = 2.5 - step * 1e-3;
    s.val_loss = std::numeric_limits<double>::quiet_NaN();
    s.extra = {{"best_val_loss", 2.75}, {"note", "hi"}};
    return s;
  }
  static NamedTensors optimizer_state(float x) {
    return {{"w.m", Tensor::from_floats({2, 2}, {x, 2, 3, 4})},
            {"w.v", Tensor::from_floats({2, 2}, {5, 6, 7, x}, DType::bf16)}};
  }
  // Writes the model files the way LlamaModel::save would.
  static void write_model(const std::string& dir) {
    write_file_atomic(dir + "/config.json", "{\"model_type\": \"llama\"}\n");
    write_safetensors(dir + "/model.safetensors", {{"model.norm.weight", Tensor::from_floats({3}, {1, 1, 1})}});
  }
  std::string save(int64_t step, int64_t keep) {
    return save_checkpoint(out_, state_at(step), optimizer_state(static_cast<float>(step)),
                           "steps = " + std::to_string(step) + "\n", write_model, keep);
  }
  std::string out_;
};

TEST_F(Checkpoint, WritesEverythingAndReadsItBack) {
  EXPECT_EQ(checkpoint_name(100), "step-00000100");
  EXPECT_FALSE(latest_checkpoint(out_).has_value());  // out/ does not exist yet
  const std::string dir = save(100, 2);
  EXPECT_EQ(dir, out_ + "/step-00000100");
  EXPECT_EQ(listing(out_), std::vector<std::string>{"step-00000100"});
  EXPECT_EQ(listing(dir), (std::vector<std::string>{"config.json", "model.safetensors", "run_config.toml",
                                                     "trainer_state.json", "training_state.safetensors"}));
  EXPECT_EQ(load_trainer_state(dir), state_at(100));
  EXPECT_TRUE(std::isnan(load_trainer_state(dir).val_loss));
  EXPECT_EQ(load_run_config(dir), "steps = 100\n");
  const NamedTensors opt = load_training_state(dir);
  ASSERT_EQ(opt.size(), 2u);
  EXPECT_EQ(opt.at("w.m").to_floats(), (std::vector<float>{100, 2, 3, 4}));
  EXPECT_EQ(opt.at("w.v").dtype(), DType::bf16);
  EXPECT_EQ(opt.at("w.v").to_floats(), (std::vector<float>{5, 6, 7, 100}));
  EXPECT_EQ(SafetensorsReader(dir).names(), std::vector<std::string>{"model.norm.weight"});
  EXPECT_EQ(latest_checkpoint(out_), dir);
}

TEST_F(Checkpoint, KeepsTheNewestK) {
  for (int64_t step : {100, 200, 300, 400}) save(step, 2);
  EXPECT_EQ(listing(out_), (std::vector<std::string>{"step-00000300", "step-00000400"}));
  save(500, 0);  // 0: keep all
  save(100000000, 0);  // nine digits: ordered by number, not by name
  const auto all = list_checkpoints(out_);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all.back().first, 100000000);
  EXPECT_EQ(latest_checkpoint(out_), out_ + "/step-100000000");
  save(600, 1);  // keep 1: the new one stays even though a higher step exists
  EXPECT_EQ(listing(out_), (std::vector<std::string>{"step-00000600"}));
}

TEST_F(Checkpoint, FailureWhileWritingLeavesEarlierCheckpointsIntact) {
  save(100, 1);
  const auto failing_model = [](const std::string& dir) {
    write_file_atomic(dir + "/config.json", "{}");
    throw std::runtime_error("disk full (simulated)");
  };
  EXPECT_THROW(save_checkpoint(out_, state_at(200), optimizer_state(200), "x", failing_model, 1), std::runtime_error);
  EXPECT_EQ(listing(out_), std::vector<std::string>{"step-00000100"});  // no staging directory, 100 not pruned
  EXPECT_EQ(load_trainer_state(out_ + "/step-00000100"), state_at(100));
  EXPECT_EQ(latest_checkpoint(out_), out_ + "/step-00000100");
  // A failure re-saving the same step keeps the old one too.
  EXPECT_THROW(save_checkpoint(out_, state_at(100), optimizer_state(1), "x", failing_model, 1), std::runtime_error);
  EXPECT_EQ(listing(out_), std::vector<std::string>{"step-00000100"});
  EXPECT_EQ(load_run_config(out_ + "/step-00000100"), "steps = 100\n");
  // An optimizer tensor that cannot be written fails the same way.
  const NamedTensors bad{{"x", Tensor::from_floats({1}, {1})}, {"y", Tensor()}};  // y: undefined
  EXPECT_ANY_THROW(save_checkpoint(out_, state_at(300), bad, "x", write_model, 1));
  EXPECT_EQ(listing(out_), std::vector<std::string>{"step-00000100"});
}

TEST_F(Checkpoint, SameStepIsReplaced) {
  save(100, 2);
  TrainerState s = state_at(100);
  s.loss = 1.0;
  save_checkpoint(out_, s, optimizer_state(7), "second\n", write_model, 2);
  EXPECT_EQ(listing(out_), std::vector<std::string>{"step-00000100"});
  EXPECT_EQ(load_trainer_state(out_ + "/step-00000100").loss, 1.0);
  EXPECT_EQ(load_run_config(out_ + "/step-00000100"), "second\n");
}

TEST_F(Checkpoint, CrashLeftoversAreIgnoredAndCleanedUp) {
  save(100, 3);
  save(200, 3);
  // A crash mid-save: a staging directory with some files; and a step-* directory
  // without trainer_state.json (not one we wrote: ignored, left alone).
  make_directories(out_ + "/.tmp-step-00000300");
  write_file_atomic(out_ + "/.tmp-step-00000300/config.json", "{}");
  make_directories(out_ + "/step-00000400");
  // A crash while re-saving step 200, after moving the old one aside.
  fs::rename(out_ + "/step-00000200", out_ + "/.tmp-step-00000200.old");
  EXPECT_EQ(latest_checkpoint(out_), out_ + "/step-00000100");
  EXPECT_EQ(remove_incomplete_checkpoints(out_), 1);
  EXPECT_EQ(listing(out_), (std::vector<std::string>{"step-00000100", "step-00000200", "step-00000400"}));
  EXPECT_EQ(latest_checkpoint(out_), out_ + "/step-00000200");  // moved back
  EXPECT_EQ(load_trainer_state(out_ + "/step-00000200"), state_at(200));
  // The next save cleans up too.
  make_directories(out_ + "/.tmp-step-00000250");
  save(300, 0);
  EXPECT_EQ(listing(out_),
            (std::vector<std::string>{"step-00000100", "step-00000200", "step-00000300", "step-00000400"}));
}

TEST_F(Checkpoint, BadTrainerStateNamesTheFile) {
  save(100, 1);
  const std::string path = out_ + "/step-00000100/trainer_state.json";
  auto expect_error = [&](const std::string& text, const char* what) {
    write_file_atomic(path, text);
    try {
      load_trainer_state(out_ + "/step-00000100");
      ADD_FAILURE() << "no error for " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  nlohmann::json j = to_json(state_at(100));
  expect_error("{", "not valid JSON");
  expect_error("[]", "JSON object");
  j.erase("doc_offset");
  expect_error(j.dump(), "doc_offset");
  j = to_json(state_at(100));
  j["step"] = "100";
  expect_error(j.dump(), "'step'");
  j = to_json(state_at(100));
  j["format"] = "something else";
  expect_error(j.dump(), "not a halo trainer state");
  EXPECT_ANY_THROW(load_training_state(out_ + "/nonexistent"));
}

}  // namespace
}  // namespace halo
