#include "moekit/serve/asr_protocol.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "moekit/core/check.h"
#include "moekit/core/json_error.h"
#include "moekit/core/utf8.h"

namespace moekit {

using json = nlohmann::json;

namespace {

[[noreturn]] void refuse(const std::string& message) { throw std::invalid_argument(message); }

// A start message's options, checked against the model's format.
ClientSignal read_start(const json& message, int sample_rate) {
  ClientSignal s;
  if (const auto v = message.find("nbest"); v != message.end()) {
    // Unsigned: a count past int64's range, kept as 1000 like any large one.
    if (v->is_number_unsigned()) {
      if (v->get<uint64_t>() < 1) refuse("integer is expected for nbest option (>= 1)");
      s.nbest = static_cast<size_t>(std::min<uint64_t>(v->get<uint64_t>(), 1000));
    } else if (v->is_number_integer() && v->get<int64_t>() >= 1) {
      s.nbest = static_cast<size_t>(std::min<int64_t>(v->get<int64_t>(), 1000));
    } else {
      refuse("integer is expected for nbest option (>= 1)");
    }
  }
  if (const auto v = message.find("continuous_decoding"); v != message.end()) {
    if (!v->is_boolean()) refuse("boolean true or false is expected for continuous_decoding option");
    s.continuous = v->get<bool>();
  }
  const std::string format = str_cat(" in the start message: this model takes ", sample_rate, " Hz 16-bit mono PCM");
  if (const auto v = message.find("sample_rate"); v != message.end()) {
    if (!v->is_number() || v->get<double>() != sample_rate)
      refuse(str_cat("sample_rate ", json_value_for_message(*v, 80), format));
  }
  if (const auto v = message.find("channels"); v != message.end()) {
    if (!v->is_number_integer() || v->get<int64_t>() != 1) refuse(str_cat("channels ", json_value_for_message(*v, 80), format));
  }
  return s;
}

}  // namespace

ClientProtocol::ClientProtocol(int sample_rate, double max_stream_seconds)
    : sample_rate_(sample_rate), max_stream_seconds_(max_stream_seconds) {
  MOEKIT_CHECK_ARG(sample_rate > 0, "serve: sample rate ", sample_rate);
}

ClientSignal ClientProtocol::text(const std::string& text) {
  const json message = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (message.is_discarded()) refuse("text message is not JSON: " + printable(text));
  if (!message.is_object()) refuse("Wrong protocol: a text message must be a JSON object");
  const auto signal = message.find("signal");
  if (signal == message.end() || !signal->is_string())
    refuse("Wrong message header: a text message needs a \"signal\" (\"start\" or \"end\")");
  const std::string& name = signal->get_ref<const std::string&>();
  if (name == "start") {
    if (started_) refuse("a start signal while the stream is open (one stream per connection)");
    ClientSignal s = read_start(message, sample_rate_);
    started_ = true;
    return s;
  }
  if (name == "end") {
    if (!started_) refuse("an end signal before the start signal");
    if (ended_) refuse("a second end signal");
    ended_ = true;
    return ClientSignal{ClientSignal::Kind::End};
  }
  refuse("Unexpected signal type: \"" + printable(name) + "\" (expected \"start\" or \"end\")");
}

std::vector<float> ClientProtocol::binary(const unsigned char* data, size_t bytes) {
  if (!started_) refuse("Start signal is expected before binary data");
  if (ended_) refuse("binary data after the end signal");
  if (bytes % 2 != 0) refuse(str_cat("a binary message of ", bytes, " bytes: audio is 16-bit PCM, an even number of bytes"));
  const size_t count = bytes / 2;
  samples_ += static_cast<int64_t>(count);
  if (static_cast<double>(samples_) > max_stream_seconds_ * sample_rate_)
    refuse(str_cat("the stream is longer than ", max_stream_seconds_, " s (--max-stream-seconds)"));
  std::vector<float> samples(count);
  for (size_t i = 0; i < count; ++i) {
    const auto v = static_cast<int16_t>(static_cast<uint16_t>(data[2 * i] | (data[2 * i + 1] << 8)));
    samples[i] = static_cast<float>(v) / 32768.0f;  // as libsndfile reads 16-bit files
  }
  return samples;
}

}  // namespace moekit
