// The subcommands of the `halo` program.
#pragma once
#include <string>
#include <vector>

namespace halo::cli {

int bench_linear(const std::vector<std::string>& args);
int bench_kernels(const std::vector<std::string>& args);
int doctor(const std::vector<std::string>& args);

}  // namespace halo::cli
