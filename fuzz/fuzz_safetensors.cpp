// libFuzzer target: the safetensors reader on arbitrary bytes. Every input
// must parse or be refused with std::invalid_argument; anything else
// (another exception, a crash, a sanitizer report) is a finding.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "moekit/core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const moekit::SafetensorsContents contents = moekit::parse_safetensors(bytes, "fuzz.safetensors");
    for (const auto& [name, tensor] : contents.tensors) (void)tensor.numel();
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
