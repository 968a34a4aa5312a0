// halo: fine-tuning with 8-bit matmuls made accurate by Hadamard rotations.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "cli/commands.h"

namespace {

const char* kUsage =
    "usage: halo <command> [options]\n"
    "\n"
    "commands:\n"
    "  bench linear   speed and accuracy of the HALO linear layer per recipe\n"
    "                 --device cpu|cuda --recipe R1,R2,... --shape M,N,K [--outliers] [--bias]\n"
    "                 [--json] [--warmup N] [--iters N] [--seed S]\n"
    "  bench kernels  memory-bound kernels against the copy bandwidth, GEMMs per format\n"
    "                 --device cpu|cuda --shape M,N,K [--warmup N] [--iters N]\n"
    "  doctor         the build, the GPU, and every CUDA kernel checked against the CPU\n"
    "                 [--full] (Llama sizes)  [--probe] (print the best device)\n"
    "\n"
    "recipes: bf16, halo{0,1,2}-{int8,fp8}, ideal-{int8,fp8}; options after '+':\n"
    "         tensor|row|1x128|128x128 (scales), e5m2 (gradients), sr (stochastic rounding), sim\n";

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines appear as they happen, even in a pipe
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  try {
    const std::string cmd = args[0];
    if (cmd == "bench" && args.size() >= 2 && args[1] == "linear")
      return halo::cli::bench_linear({args.begin() + 2, args.end()});
    if (cmd == "bench" && args.size() >= 2 && args[1] == "kernels")
      return halo::cli::bench_kernels({args.begin() + 2, args.end()});
    if (cmd == "doctor") return halo::cli::doctor({args.begin() + 1, args.end()});
    std::fprintf(stderr, "halo: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "halo: error: %s\n", e.what());
    return 1;
  }
}
