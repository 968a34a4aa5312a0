// The subcommands of the `halo` program.
#pragma once
#include <string>
#include <vector>

namespace halo::cli {

int bench_linear(const std::vector<std::string>& args);
int bench_kernels(const std::vector<std::string>& args);
int doctor(const std::vector<std::string>& args);
int init(const std::vector<std::string>& args);
int train(const std::vector<std::string>& args);
int bench_train(const std::vector<std::string>& args);
int data(const std::vector<std::string>& args);
int data_sql(const std::vector<std::string>& args);  // data_sql.cpp: halo data sql
int data_jsonl(const std::vector<std::string>& args);  // data_jsonl.cpp: halo data jsonl
int eval(const std::vector<std::string>& args);      // eval.cpp
int report(const std::vector<std::string>& args);    // report.cpp
int convert(const std::vector<std::string>& args);  // convert.cpp
int logits(const std::vector<std::string>& args);   // convert.cpp
int tokenize(const std::vector<std::string>& args);  // tokenize.cpp
int generate(const std::vector<std::string>& args);  // generate.cpp

}  // namespace halo::cli
