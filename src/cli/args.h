// Command-line options of the form --name value, --name=value and --flag.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace halo::cli {

class Args {
 public:
  // argv after the command words; `flags` are the options that take no value.
  Args(const std::vector<std::string>& argv, const std::vector<std::string>& flags);
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string get(const std::string& name, const std::string& fallback) const;
  long long get_int(const std::string& name, long long fallback) const;
  // Fails naming any option that no get/has call asked about.
  void check_all_used(const std::vector<std::string>& known) const;

 private:
  std::map<std::string, std::string> values_;
};

// "8192,4096,4096" -> {8192, 4096, 4096}; fails naming the option on bad input.
std::vector<long long> parse_int_list(const std::string& text, const std::string& option);

}  // namespace halo::cli
