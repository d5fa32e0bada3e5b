#pragma once
// Helpers shared by the test files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <string>

#include "moekit/core/file_io.h"
#include "moekit/models/ffn_stack/ffn_stack.h"
#include "moekit/ops/fast_path.h"

namespace moekit {

// Every test process keeps its files under one directory of its own,
// <test temp dir>/moekit_tests_<pid>, which is removed after the last test
// (kept when a test failed, or when MOEKIT_KEEP_TEST_DIRS is set, for a look
// afterwards), so a test run leaves nothing behind. Paths a test derives
// from a temp_dir (`dir + "-int8"`) stay inside it. A forked child never
// removes its parent's directory.
class TestTempRoot : public ::testing::Environment {
 public:
  // The directory, made by the first call.
  static const std::string& path() {
    static const std::string root = [] {
      remove_path(name());
      make_dirs(name());
      return name();
    }();
    return root;
  }

  void TearDown() override {
    if (::getpid() != owner_ || !std::filesystem::exists(name())) return;
    const char* keep = std::getenv("MOEKIT_KEEP_TEST_DIRS");
    if ((keep != nullptr && *keep != '\0') || ::testing::UnitTest::GetInstance()->Failed()) {
      std::fprintf(stderr, "test files kept in %s\n", name().c_str());
      return;
    }
    remove_path(name());
  }

 private:
  static std::string name() {
    std::string base = ::testing::TempDir();
    if (!base.empty() && base.back() == '/') base.pop_back();
    return base + "/moekit_tests_" + std::to_string(::getpid());
  }

  pid_t owner_ = ::getpid();
};

inline const bool kTestTempRootRegistered = (::testing::AddGlobalTestEnvironment(new TestTempRoot), true);

// A fresh, empty directory inside this process's test directory.
inline std::string temp_dir(const std::string& name) {
  const std::string dir = TestTempRoot::path() + "/" + name;
  remove_path(dir);
  make_dirs(dir);
  return dir;
}

// A small ffn_stack (the smallest complete model): `layers` pre-norm blocks
// of width d_model, FFN 2 x d_model, 4 experts top-2 in every block.
// Whether a process's peak-memory bounds apply to this build: under
// AddressSanitizer (scripts/sanitize.sh) every block carries redzones and
// freed blocks wait in a quarantine (256 MB by default) before reuse, so a
// process holds more than the code asks for. Tests still print the figures.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kMemoryBoundsApply = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kMemoryBoundsApply = false;
#else
constexpr bool kMemoryBoundsApply = true;
#endif
#else
constexpr bool kMemoryBoundsApply = true;
#endif

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
