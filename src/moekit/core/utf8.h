#pragma once
// Well-formed UTF-8 as Unicode defines it (table 3-7 of the standard): no
// overlong forms, no surrogates, nothing past U+10FFFF. Text that reaches a
// tokenizer, a units table or PCRE2 in UTF mode is checked with it, so a
// Latin-1 file is refused by name instead of being split into byte units.
#include <cstddef>
#include <string>
#include <string_view>

namespace moekit {

// The length in bytes of the well-formed character at s[i] (1-4), or 0
// where none starts there.
inline size_t utf8_char_length(std::string_view s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;  // bounds of the second byte
  if (c < 0x80) {
    return 1;
  } else if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  const unsigned char second = static_cast<unsigned char>(s[i + 1]);
  if (second < lo || second > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return 0;
  return n;
}

inline bool is_valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_char_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// A piece of input quoted in an error or a log line: at most max_bytes of
// it, cut between characters, control characters and bytes that are not
// UTF-8 shown as '?', "..." where it was cut. The result is always
// well-formed UTF-8 on one line, whatever the input (a JSON serializer
// accepts it, a terminal shows it).
inline std::string printable(std::string_view text, size_t max_bytes = 80) {
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    const size_t n = utf8_char_length(text, i);  // 0: a byte that is not UTF-8
    const auto c = static_cast<unsigned char>(text[i]);
    const bool shown = n > 0 && c >= 0x20 && c != 0x7f;
    if (out.size() + (shown ? n : 1) > max_bytes) break;
    if (shown) {
      out.append(text, i, n);
    } else {
      out += '?';
    }
    i += n > 0 ? n : 1;
  }
  return i < text.size() ? out + "..." : out;
}

}  // namespace moekit
