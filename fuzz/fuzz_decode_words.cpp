// libFuzzer target: the word files of decoding (the input split at its
// first NUL byte): an ARPA language model as `--lm` reads it, and a word
// list as `--lexicon` reads it, then queried as the beam search queries
// them. Each is accepted or refused with std::invalid_argument; nothing
// else.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "moekit/data/units.h"
#include "moekit/decode/lexicon.h"
#include "moekit/decode/ngram_lm.h"

namespace {

const std::string& words_path() {
  static const std::string path = [] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir != nullptr ? dir : "/tmp") + "/moekit_fuzz_words_" + std::to_string(::getpid());
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  try {
    const auto lm = moekit::NgramLm::parse(input.substr(0, split), "fuzz.arpa");
    std::vector<int32_t> history = {lm->bos()};
    for (const char* w : {"a", "the", "<unk>", "</s>", "ab"}) {
      (void)lm->log_prob(history, lm->id(w));
      history.push_back(lm->id(w));
    }
  } catch (const std::invalid_argument&) {
  }
  if (split == std::string::npos) return 0;
  if (FILE* f = std::fopen(words_path().c_str(), "wb")) {
    std::fwrite(input.data() + split + 1, 1, input.size() - split - 1, f);
    std::fclose(f);
  }
  try {
    const moekit::Units units({"<blank>", "<unk>", "a", "b", "\xe2\x96\x81", "\xe2\x96\x81" "ab", "ba", "<sos/eos>"});
    const auto lexicon = moekit::Lexicon::read(words_path(), units);
    std::string word, next;
    for (int64_t u : {2, 3, 4, 5, 6, 1, 3, 4}) {
      if (lexicon->extend(word, u, &next)) word = next;
    }
    (void)lexicon->finished_length({2, 5, 3, 6});
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
