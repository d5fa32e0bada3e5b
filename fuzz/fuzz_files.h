#pragma once
// For the fuzz targets whose readers take files: one directory per process
// under $TMPDIR (scripts/fuzz.sh gives each run its own and removes it),
// and the fuzzer's bytes written into it.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "moekit/core/file_io.h"

namespace moekit_fuzz {

// $TMPDIR/moekit_fuzz_<tag>_<pid>, made on first use.
inline std::string input_dir(const std::string& tag) {
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir =
      std::string(tmp != nullptr ? tmp : "/tmp") + "/moekit_fuzz_" + tag + "_" + std::to_string(::getpid());
  moekit::make_dirs(dir);
  return dir;
}

// Writes `bytes` to dir/name (a failed write leaves the reader a missing or
// short file, which it must refuse like any other).
inline void put(const std::string& dir, const std::string& name, const std::string& bytes) {
  if (FILE* f = std::fopen((dir + "/" + name).c_str(), "wb")) {
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
}

}  // namespace moekit_fuzz
