#pragma once
// Helpers shared by the test files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <exception>
#include <filesystem>
#include <functional>
#include <string>

#include "moekit/core/file_io.h"

namespace moekit {

// A fresh, empty directory under the test temp dir, unique to this process.
inline std::string temp_dir(const std::string& name) {
  const std::string dir = testing::TempDir() + "/moekit_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  make_dirs(dir);
  return dir;
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

}  // namespace moekit
