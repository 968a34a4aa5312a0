// Errors that say what failed and where.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace halo {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
}  // namespace detail

template <class... Args>
[[noreturn]] void fail_at(const char* file, int line, const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  os << " [" << file << ":" << line << "]";
  throw Error(os.str());
}

}  // namespace halo

// HALO_CHECK(cond, "message ", value, ...): throws halo::Error naming the call site.
#define HALO_CHECK(cond, ...)                                      \
  do {                                                             \
    if (!(cond)) ::halo::fail_at(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
#define HALO_FAIL(...) ::halo::fail_at(__FILE__, __LINE__, __VA_ARGS__)
