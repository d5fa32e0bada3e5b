// libFuzzer target: a Hugging Face directory's config.json and
// model.safetensors.index.json (the input split at its first NUL byte) read
// as `moekit import hf` reads them. Each is accepted or refused with
// std::invalid_argument; nothing else.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "fuzz_files.h"
#include "moekit/models/lm/hf_config.h"

namespace {

const std::string& input_dir() {
  static const std::string dir = moekit_fuzz::input_dir("hf");
  return dir;
}

void put(const std::string& name, const std::string& bytes) { moekit_fuzz::put(input_dir(), name, bytes); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  put("config.json", input.substr(0, split));
  put("model.safetensors.index.json", split == std::string::npos ? "" : input.substr(split + 1));
  try {
    (void)moekit::read_hf_config(input_dir());
  } catch (const std::invalid_argument&) {
  }
  try {
    (void)moekit::hf_weight_files(input_dir());
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
