// libFuzzer target: the speech data a training run reads. The input is split
// at NUL bytes into a WeNet data.list, a Kaldi wav.scp and text, and a
// units.txt. Each data source is read, its character units built, written
// as units.txt and read back (the round trip must give the same units, or
// training would write a units.txt that no command can load), and its
// transcripts tokenized with both units tables. Readers accept the input or
// refuse it with std::invalid_argument; nothing else.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuzz_files.h"
#include "moekit/data/asr_data.h"
#include "moekit/data/units.h"

namespace {

std::vector<std::string> split_at_nul(const std::string& input, size_t parts) {
  std::vector<std::string> out;
  size_t start = 0;
  while (out.size() + 1 < parts) {
    const size_t nul = input.find('\0', start);
    if (nul == std::string::npos) break;
    out.push_back(input.substr(start, nul - start));
    start = nul + 1;
  }
  out.push_back(start <= input.size() ? input.substr(start) : "");
  out.resize(parts);
  return out;
}

void check_units_round_trip(const moekit::Units& units) {
  const moekit::Units back = moekit::Units::parse(units.serialize(), "round trip");
  if (back.size() != units.size()) std::abort();
  for (int64_t i = 0; i < units.size(); ++i)
    if (back.symbol(i) != units.symbol(i)) std::abort();
}

void use(const std::vector<moekit::Utterance>& data, const moekit::Units* given) {
  const moekit::Units units = moekit::build_char_units(data);
  try {
    check_units_round_trip(units);
  } catch (const std::invalid_argument&) {
    std::abort();  // units built from accepted transcripts must be writable
  }
  for (const auto& u : data) {
    if (moekit::tokenize(u.text, units, u.key).size() != moekit::text_to_chars(u.text).size()) std::abort();
    if (given != nullptr) {
      try {
        (void)moekit::tokenize(u.text, *given, u.key);
      } catch (const std::invalid_argument&) {
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string> part =
      split_at_nul(std::string(reinterpret_cast<const char*>(data), size), 4);
  static const std::string dir = moekit_fuzz::input_dir("asr_data");
  moekit_fuzz::put(dir, "data.list", part[0]);
  moekit_fuzz::put(dir, "wav.scp", part[1]);
  moekit_fuzz::put(dir, "text", part[2]);

  moekit::Units given;
  bool have_units = false;
  try {
    given = moekit::Units::parse(part[3], "fuzz units.txt");
    have_units = true;
  } catch (const std::invalid_argument&) {
  }
  if (have_units) check_units_round_trip(given);  // a units.txt read once must read again
  for (const std::string& path : {dir + "/data.list", dir}) {
    try {
      use(moekit::read_asr_data(path), have_units ? &given : nullptr);
    } catch (const std::invalid_argument&) {
    }
  }
  return 0;
}
