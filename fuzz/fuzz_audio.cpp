// libFuzzer target: the audio path (libsndfile's readers, the checks on
// rates, channels and truncation, libsoxr to 16 kHz) on arbitrary file
// bytes. Inputs are refused with std::invalid_argument or decoded.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "moekit/audio/audio_file.h"

namespace {

// One file per process, rewritten for every input.
const std::string& input_path() {
  static const std::string path = [] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir != nullptr ? dir : "/tmp") + "/moekit_fuzz_audio_" + std::to_string(::getpid());
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (FILE* f = std::fopen(input_path().c_str(), "wb")) {
    std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  try {
    const moekit::Audio audio = moekit::load_audio(input_path(), 16000);
    (void)audio.samples.size();
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
