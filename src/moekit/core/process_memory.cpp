#include "moekit/core/process_memory.h"

#include <fstream>
#include <string>

namespace moekit {

namespace {

// A "Name:   123456 kB" line of /proc/self/status, in bytes.
int64_t status_bytes(const std::string& name) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(name, 0) != 0) continue;
    try {
      return std::stoll(line.substr(name.size())) * 1024;
    } catch (const std::exception&) {
      return -1;
    }
  }
  return -1;
}

}  // namespace

int64_t peak_resident_bytes() { return status_bytes("VmHWM:"); }

int64_t resident_bytes() { return status_bytes("VmRSS:"); }

}  // namespace moekit
