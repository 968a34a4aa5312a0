#include "cli/args.h"

#include <algorithm>
#include <cstdlib>

#include "core/error.h"

namespace halo::cli {

Args::Args(const std::vector<std::string>& argv, const std::vector<std::string>& flags) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    HALO_CHECK(a.rfind("--", 0) == 0, "unexpected argument '", a, "' (options start with --)");
    std::string name = a.substr(2), value = "1";
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (std::find(flags.begin(), flags.end(), name) == flags.end()) {
      HALO_CHECK(i + 1 < argv.size(), "option --", name, " needs a value");
      value = argv[++i];
    }
    values_[name] = value;
  }
}

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

long long Args::get_int(const std::string& name, long long fallback) const {
  if (!has(name)) return fallback;
  const std::string v = get(name, "");
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  HALO_CHECK(end && *end == 0 && !v.empty(), "option --", name, ": expected an integer, got '", v, "'");
  return x;
}

void Args::check_all_used(const std::vector<std::string>& known) const {
  for (const auto& [name, value] : values_) {
    if (std::find(known.begin(), known.end(), name) != known.end()) continue;
    std::string list;
    for (const auto& k : known) list += (list.empty() ? "--" : ", --") + k;
    HALO_FAIL("unknown option --", name, " (known: ", list, ")");
  }
}

std::vector<long long> parse_int_list(const std::string& text, const std::string& option) {
  std::vector<long long> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = text.find(',', start);
    const std::string part = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    char* end = nullptr;
    const long long v = std::strtoll(part.c_str(), &end, 10);
    HALO_CHECK(!part.empty() && end && *end == 0 && v > 0, "option --", option,
               ": expected positive integers separated by commas, got '", text, "'");
    out.push_back(v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace halo::cli
