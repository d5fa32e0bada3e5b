#pragma once
// The resident memory of this process as the kernel counts it.
#include <cstdint>

namespace moekit {

// The peak resident set size of this process so far (VmHWM of
// /proc/self/status, which starts afresh at exec), in bytes; -1 where the
// kernel does not say.
int64_t peak_resident_bytes();

// The resident set size of this process now (VmRSS), in bytes; -1 where
// the kernel does not say.
int64_t resident_bytes();

}  // namespace moekit
