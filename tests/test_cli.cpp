// The `halo` program as a user runs it.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <regex>
#include <string>

#include "testing.h"

namespace {

using Result = halo::testing::CommandResult;
Result run(const std::string& args) { return halo::testing::run_halo(args); }

double field(const std::string& line, const std::string& name) {
  std::smatch m;
  const std::regex re("\"" + name + "\": ([-0-9.e+]+)");
  EXPECT_TRUE(std::regex_search(line, m, re)) << name << " in " << line;
  return std::stod(m[1]);
}

TEST(Cli, BenchLinearJsonShowsRotationsBeatHalo0OnOutliers) {
  const Result r = run("bench linear --device cpu --outliers --json --shape 128,256,256 --iters 1 --warmup 0 "
                       "--recipe halo0-int8,halo1-int8,halo2-int8");
  ASSERT_EQ(r.status, 0) << r.out;
  std::map<std::string, std::string> lines;  // recipe -> its JSON line
  std::regex recipe_re("\"recipe\": \"([^\"]+)\"");
  size_t start = 0;
  while (start < r.out.size()) {
    const size_t end = r.out.find('\n', start);
    const std::string line = r.out.substr(start, end - start);
    std::smatch m;
    if (std::regex_search(line, m, recipe_re)) lines[m[1]] = line;
    start = end == std::string::npos ? r.out.size() : end + 1;
  }
  ASSERT_EQ(lines.size(), 4u) << r.out;  // bf16 is always run, for the speedups
  for (const char* name : {"halo1-int8", "halo2-int8"}) {
    for (const char* err : {"err_y", "err_dx", "err_dw"}) {
      EXPECT_LT(2 * field(lines[name], err), field(lines["halo0-int8"], err)) << name << " " << err;
    }
  }
  EXPECT_GT(field(lines["bf16"], "fwd_ms"), 0.0);
}

TEST(Cli, ErrorsNameTheProblem) {
  Result r = run("bench linear --recipe halo9-int8");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("unknown recipe 'halo9-int8'"), std::string::npos) << r.out;
  r = run("bench linear --shape 12,x");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("--shape"), std::string::npos) << r.out;
  r = run("bench linear --frobnicate 3");
  EXPECT_NE(r.out.find("unknown option --frobnicate"), std::string::npos) << r.out;
  r = run("launch");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown command 'launch'"), std::string::npos) << r.out;
}

TEST(Cli, HelpOfEachCommand) {
  // Each command's own lines of the usage, and nothing of the others.
  const std::pair<const char*, const char*> cases[] = {
      {"eval --help", "--metric loss|exact|sql|gsm8k|viggo"},
      {"bench train -h", "--recompute"},
      {"generate --model x --help", "--top-p P"},
      {"convert --help", "MODEL.gguf --out DIR"},
  };
  for (const auto& [args, expect] : cases) {
    const Result r = run(args);
    EXPECT_EQ(r.status, 0) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(expect), std::string::npos) << args << "\n" << r.out;
    EXPECT_EQ(r.out.find("tokenize "), std::string::npos) << args << "\n" << r.out;
  }
}

TEST(Cli, DoctorReportsTheBuild) {
  const Result r = run("doctor");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("BLAS: OpenBLAS"), std::string::npos) << r.out;
}

}  // namespace
