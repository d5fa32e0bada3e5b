// libFuzzer target: the streaming server's protocol (ClientProtocol, as
// `moekit serve asr` runs every message of a stream through it) on a
// sequence of messages. The input is split into messages, each a kind byte
// (even: text, odd: binary), a 16-bit little-endian length and that many
// bytes. Text that is not UTF-8 is skipped (Beast closes a connection that
// sends it before the server sees it). A message the protocol refuses
// ends the stream, as in the server; its reason must be one line of UTF-8
// that the server's reply can carry. What is accepted must follow the
// protocol: one start, audio only between start and end, two bytes a sample.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "moekit/core/utf8.h"
#include "moekit/serve/asr_protocol.h"

namespace {

void expect(bool ok) {
  if (!ok) std::abort();
}

// A refusal's reason: one line of UTF-8, which a strict JSON dump (what
// the server's reply does) takes.
void check_reason(const std::string& reason) {
  expect(!reason.empty() && moekit::is_valid_utf8(reason));
  for (const char c : reason) expect(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f);
  (void)nlohmann::json{{"status", "failed"}, {"message", reason}}.dump();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  moekit::ClientProtocol protocol(16000, 2.0);
  int starts = 0;
  for (size_t at = 0; at + 3 <= size;) {
    const bool binary = (data[at] & 1) != 0;
    const size_t length = std::min<size_t>(data[at + 1] | (data[at + 2] << 8), size - at - 3);
    const uint8_t* payload = data + at + 3;
    at += 3 + length;
    try {
      if (binary) {
        const bool open = protocol.started() && !protocol.ended();
        const int64_t before = protocol.samples();
        const std::vector<float> samples = protocol.binary(payload, length);
        expect(open && length % 2 == 0 && samples.size() == length / 2);
        expect(protocol.samples() == before + static_cast<int64_t>(samples.size()));
        for (const float v : samples) expect(v >= -1.0f && v < 1.0f);
      } else {
        const std::string text(reinterpret_cast<const char*>(payload), length);
        if (!moekit::is_valid_utf8(text)) continue;
        const bool was_started = protocol.started();
        const moekit::ClientSignal signal = protocol.text(text);
        if (signal.kind == moekit::ClientSignal::Kind::Start) {
          expect(!was_started && ++starts == 1);
          expect(signal.nbest >= 1 && signal.nbest <= 1000);
        } else {
          expect(was_started && protocol.ended());
        }
      }
    } catch (const std::invalid_argument& e) {
      check_reason(e.what());
      break;  // the server ends the stream here
    }
  }
  return 0;
}
