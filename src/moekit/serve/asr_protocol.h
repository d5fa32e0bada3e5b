#pragma once
// The client's side of `moekit serve asr`'s protocol (WeNet runtime's; see
// asr_server.h), read without the network: which message is allowed when,
// what a start message may carry, how binary audio becomes samples, and the
// replies that refuse the rest. The server runs every message of a stream
// through one ClientProtocol; fuzz/fuzz_asr_protocol.cpp runs arbitrary
// message sequences through it. Nothing here needs a model or a socket.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moekit {

// What a well-formed text message asks for.
struct ClientSignal {
  enum class Kind { Start, End };
  Kind kind = Kind::Start;
  // Start only: the hypotheses per result (WeNet's "nbest", at most 1000
  // kept) and continuous decoding with endpoint detection.
  size_t nbest = 1;
  bool continuous = false;
};

class ClientProtocol {
 public:
  // The model's sample rate (16-bit mono PCM) and the longest stream.
  ClientProtocol(int sample_rate, double max_stream_seconds);

  // A text message: the start or the end signal. Anything else, or a
  // signal out of turn, throws std::invalid_argument with the message for
  // the client's {"status": "failed"} reply (valid UTF-8, one line).
  ClientSignal text(const std::string& message);
  // A binary message: its samples, as libsndfile reads 16-bit files (v /
  // 32768). Before the start, after the end, an odd byte count or past
  // the longest stream throws as text() does.
  std::vector<float> binary(const unsigned char* data, size_t bytes);

  bool started() const { return started_; }
  bool ended() const { return ended_; }
  int64_t samples() const { return samples_; }

 private:
  int sample_rate_;
  double max_stream_seconds_;
  bool started_ = false;
  bool ended_ = false;
  int64_t samples_ = 0;
};

}  // namespace moekit
