#pragma once
// Helpers shared by the test files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "moekit/core/file_io.h"
#include "moekit/models/ffn_stack/ffn_stack.h"
#include "moekit/ops/fast_path.h"

namespace moekit {

// A fresh, empty directory under the test temp dir, unique to this process.
inline std::string temp_dir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/moekit_" + name + "_" + std::to_string(::getpid());
  remove_path(dir);
  make_dirs(dir);
  return dir;
}

// A small ffn_stack (the smallest complete model): `layers` pre-norm blocks
// of width d_model, FFN 2 x d_model, 4 experts top-2 in every block.
inline FfnStackOptions small_stack_options(int64_t d_model = 16, int64_t layers = 3) {
  FfnStackOptions o;
  o.d_model = d_model;
  o.d_hidden = 2 * d_model;
  o.num_layers = layers;
  o.moe_options.num_experts = 4;
  o.moe_options.top_k = 2;
  o.moe_every = 1;
  return o;
}

// The message of the `Error` that `f` throws ("" when it throws none; an
// exception of another type propagates and fails the test).
template <typename Error = std::exception>
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// How often each fast path (ops/fast_path.h) ran since this probe was made:
// a test comparing a fast path with LibTorch asserts ran(name) > 0, so a
// regressed predicate cannot turn it into LibTorch against itself.
class FastPathProbe {
 public:
  FastPathProbe() : before_(fast_path_counts()) {}
  int64_t ran(const std::string& name) const {
    const auto it = before_.find(name);
    return fast_path_count(name) - (it == before_.end() ? 0 : it->second);
  }

 private:
  std::map<std::string, int64_t> before_;
};

}  // namespace moekit
