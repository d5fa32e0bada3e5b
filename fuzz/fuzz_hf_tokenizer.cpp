// libFuzzer target: a Hugging Face tokenizer.json as `moekit` reads it for
// language models (the input split at its NUL bytes: tokenizer.json, an
// optional tokenizer_config.json, then a text). A file is accepted or
// refused with std::invalid_argument; an accepted tokenizer then encodes the
// text (with and without the post-processor's template), decodes what it
// encoded and decodes ids taken from the text's bytes. Encoding refuses
// invalid UTF-8 and decoding refuses ids outside the vocabulary, both with
// std::invalid_argument; nothing else.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuzz_files.h"
#include "moekit/data/hf_tokenizer.h"

namespace {

const std::string& input_dir() {
  static const std::string dir = moekit_fuzz::input_dir("tok");
  return dir;
}

void put(const std::string& name, const std::string& bytes) { moekit_fuzz::put(input_dir(), name, bytes); }

// The input's part `index` of those split at NUL bytes ("" past the last).
std::string part(const std::string& input, int index) {
  size_t begin = 0;
  for (int i = 0; i < index; ++i) {
    const size_t nul = input.find('\0', begin);
    if (nul == std::string::npos) return "";
    begin = nul + 1;
  }
  const size_t end = input.find('\0', begin);
  return input.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  put("tokenizer.json", part(input, 0));
  const std::string config = part(input, 1);
  const std::string config_path = input_dir() + "/tokenizer_config.json";
  if (config.empty()) {
    std::remove(config_path.c_str());
  } else {
    put("tokenizer_config.json", config);
  }
  const std::string text = part(input, 2);
  std::optional<moekit::HfTokenizer> tokenizer;
  try {
    tokenizer.emplace(input_dir() + "/tokenizer.json");
  } catch (const std::invalid_argument&) {
    return 0;
  }
  try {
    const std::vector<int64_t> ids = tokenizer->encode(text, true);
    (void)tokenizer->decode(ids, false);
    (void)tokenizer->decode(tokenizer->encode(text, false), true, true);
  } catch (const std::invalid_argument&) {
  }
  std::vector<int64_t> ids;
  for (unsigned char c : text) ids.push_back(static_cast<int64_t>(c) - 8);
  try {
    (void)tokenizer->decode(ids, false, false);
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
