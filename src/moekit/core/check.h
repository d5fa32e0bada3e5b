#pragma once
// Error helpers: library code throws, only main() turns errors into exit codes.
// std::invalid_argument for caller mistakes (bad options, shapes, input files),
// std::runtime_error for everything else.
#include <sstream>
#include <stdexcept>
#include <string>

namespace moekit {

namespace detail {
inline void append_all(std::ostringstream&) {}
template <typename T, typename... Rest>
void append_all(std::ostringstream& out, const T& first, const Rest&... rest) {
  out << first;
  append_all(out, rest...);
}
}  // namespace detail

// Concatenates its arguments with operator<<.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream out;
  detail::append_all(out, args...);
  return out.str();
}

}  // namespace moekit

// Throws std::invalid_argument with the concatenated message when cond is false.
#define MOEKIT_CHECK_ARG(cond, ...)                                  \
  do {                                                               \
    if (!(cond)) throw std::invalid_argument(::moekit::str_cat(__VA_ARGS__)); \
  } while (0)

// Throws std::runtime_error with the concatenated message when cond is false.
#define MOEKIT_CHECK(cond, ...)                                      \
  do {                                                               \
    if (!(cond)) throw std::runtime_error(::moekit::str_cat(__VA_ARGS__)); \
  } while (0)
