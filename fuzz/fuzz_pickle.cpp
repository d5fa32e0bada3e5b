// libFuzzer target: the torch.save (zip + pickle) reader on arbitrary bytes.
// Inputs are refused with std::invalid_argument or read; nothing else.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "moekit/core/torch_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    (void)moekit::parse_torch_checkpoint(bytes, "fuzz.pt");
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
