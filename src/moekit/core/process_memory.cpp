#include "moekit/core/process_memory.h"

#include <fstream>
#include <string>

namespace moekit {

int64_t peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) != 0) continue;
    try {
      return std::stoll(line.substr(6)) * 1024;  // "VmHWM:   123456 kB"
    } catch (const std::exception&) {
      return -1;
    }
  }
  return -1;
}

}  // namespace moekit
