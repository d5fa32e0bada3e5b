// The streaming server (serve/asr_server.h) through a real WebSocket client:
// results equal a StreamingSession fed the same audio, each malformed input
// gets its error reply and the server goes on, shutdown, the page.
#include <gtest/gtest.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>
#include <thread>

#include "asr_test_util.h"
#include "cli_test_util.h"
#include "moekit/audio/audio_file.h"
#include "moekit/core/mapped_tensors.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/utf8.h"
#include "moekit/decode/recognizer.h"
#include "moekit/models/asr/wenet_import.h"
#include "moekit/serve/asr_protocol.h"
#include "moekit/serve/asr_server.h"
#include "test_util.h"

namespace moekit {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

Units test_units() {
  return Units({"<blank>", "<unk>", "a", "b", "c", "d", "e", "f", "g", "h", "\xe2\x96\x81", "<sos/eos>"});
}

std::shared_ptr<AsrModel> test_model(bool attention_decoder) {
  torch::manual_seed(7);
  AsrConfig config = small_asr_config();
  if (!attention_decoder) {
    config.decoder.num_blocks = 0;
    config.decoder.r_num_blocks = 0;
    config.reverse_weight = 0;
  }
  auto model = std::make_shared<AsrModel>(config);
  model->eval();
  return model;
}

// Seconds of noisy tones as 16-bit samples (what a client sends).
std::vector<int16_t> test_pcm(double seconds, unsigned seed = 1) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  std::vector<int16_t> pcm(static_cast<size_t>(seconds * 16000));
  for (size_t i = 0; i < pcm.size(); ++i) {
    const double t = static_cast<double>(i) / 16000;
    const float v = static_cast<float>(0.3 * std::sin(2 * M_PI * (200 + 150 * std::sin(t * 3)) * t)) + noise(rng);
    pcm[i] = static_cast<int16_t>(std::lround(std::clamp(v, -1.0f, 1.0f) * 32767));
  }
  return pcm;
}

std::vector<float> as_float(const int16_t* pcm, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(pcm[i]) / 32768.0f;
  return out;
}

std::string sentence_of(const json& reply) { return json::parse(reply.at("nbest").get<std::string>())[0]["sentence"]; }

// A WebSocket client with a time limit on every read.
class Client {
 public:
  explicit Client(int port, const std::string& target = "/") {
    ws_.next_layer().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
    ws_.handshake("127.0.0.1:" + std::to_string(port), target);
  }
  void text(const std::string& message) {
    ws_.text(true);
    ws_.write(asio::buffer(message));
  }
  void send(const json& message) { text(message.dump()); }
  // Sends the start signal; the type of the server's reply ("server_ready").
  std::string start() {
    send({{"signal", "start"}});
    return read().value_or(json()).value("type", "");
  }
  bool pcm(const int16_t* samples, size_t count) {
    std::vector<unsigned char> bytes(2 * count);
    for (size_t i = 0; i < count; ++i) {
      bytes[2 * i] = static_cast<unsigned char>(static_cast<uint16_t>(samples[i]) & 0xff);
      bytes[2 * i + 1] = static_cast<unsigned char>(static_cast<uint16_t>(samples[i]) >> 8);
    }
    return binary(bytes);
  }
  bool binary(const std::vector<unsigned char>& bytes) {
    beast::error_code ec;
    ws_.binary(true);
    ws_.write(asio::buffer(bytes), ec);
    return !ec;
  }
  // The next message; nullopt when the server closed the stream (close_code() tells why).
  std::optional<json> read(double seconds = 30) {
    beast::flat_buffer buffer;
    bool done = false;
    beast::error_code ec;
    ws_.async_read(buffer, [&](beast::error_code e, std::size_t) {
      ec = e;
      done = true;
    });
    ioc_.restart();
    ioc_.run_for(std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
    if (!done) {
      timed_out_ = true;
      beast::error_code ignored;
      ws_.next_layer().close(ignored);
      ioc_.restart();
      ioc_.run();
      return std::nullopt;
    }
    if (ec) return std::nullopt;
    return json::parse(beast::buffers_to_string(buffer.data()));
  }
  // Reads until the stream closes: every message.
  std::vector<json> read_all(double seconds = 60) {
    std::vector<json> out;
    while (auto m = read(seconds)) out.push_back(*m);
    return out;
  }
  int close_code() const { return static_cast<int>(ws_.reason().code); }
  bool timed_out() const { return timed_out_; }
  void drop() {
    beast::error_code ignored;
    ws_.next_layer().close(ignored);
  }

 private:
  asio::io_context ioc_;
  websocket::stream<tcp::socket> ws_{ioc_};
  bool timed_out_ = false;
};

// A server on a free port, run on its own thread for the test's lifetime.
class ServerFixture {
 public:
  ServerFixture(std::shared_ptr<AsrModel> model, DecodeOptions decode, AsrServerOptions options = {})
      : recognizer_(model, test_units(), decode) {
    options.port = 0;
    options.host = "127.0.0.1";
    server_ = std::make_unique<AsrServer>(recognizer_, options);
    thread_ = std::thread([this] { server_->run(); });
  }
  ~ServerFixture() { stop(); }
  void stop() {
    if (!thread_.joinable()) return;
    server_->stop();
    thread_.join();
  }
  int port() const { return server_->port(); }
  AsrServer& server() { return *server_; }
  const Recognizer& recognizer() const { return recognizer_; }

 private:
  Recognizer recognizer_;
  std::unique_ptr<AsrServer> server_;
  std::thread thread_;
};

DecodeOptions streaming_options() {
  DecodeOptions d;
  d.chunk_size = 4;
  d.beam_size = 4;
  return d;
}

struct Expected {
  std::vector<std::string> partials;
  std::vector<std::string> finals;
};

// What the server should send for `pcm` in `frame`-sample messages: a
// StreamingSession fed the same pieces, a partial after each piece that
// completed a chunk and has text; with `endpoint`, a final result and a new
// session wherever the rules fire.
Expected expected_results(const Recognizer& recognizer, const std::vector<int16_t>& pcm, size_t frame,
                          const EndpointRules* endpoint = nullptr) {
  Expected e;
  auto session = std::make_unique<StreamingSession>(recognizer);
  size_t fed = 0;
  for (size_t pos = 0; pos < pcm.size(); pos += frame) {
    const size_t n = std::min(frame, pcm.size() - pos);
    const std::vector<float> x = as_float(pcm.data() + pos, n);
    const int64_t before = session->frames_decoded();
    const Recognition r = session->accept_waveform(x.data(), x.size());
    fed += n;
    if (endpoint && session->at_endpoint(*endpoint)) {
      e.finals.push_back(session->finish().text);
      session = std::make_unique<StreamingSession>(recognizer);
      fed = 0;
    } else if (session->frames_decoded() > before && !r.tokens.empty()) {
      e.partials.push_back(r.text);
    }
  }
  if (!endpoint || fed > 0) e.finals.push_back(session->finish().text);
  return e;
}

Expected received(const std::vector<json>& replies) {
  Expected got;
  for (const json& m : replies) {
    if (m.value("type", "") == "partial_result") got.partials.push_back(sentence_of(m));
    if (m.value("type", "") == "final_result") got.finals.push_back(sentence_of(m));
  }
  return got;
}

std::vector<json> stream(Client& client, const std::vector<int16_t>& pcm, size_t frame, const json& start) {
  client.send(start);
  std::vector<json> replies;
  replies.push_back(client.read().value_or(json()));
  for (size_t pos = 0; pos < pcm.size(); pos += frame) client.pcm(pcm.data() + pos, std::min(frame, pcm.size() - pos));
  client.send({{"signal", "end"}});
  for (const json& m : client.read_all()) replies.push_back(m);
  return replies;
}

TEST(AsrServer, PartialAndFinalResultsEqualAStreamingSession) {
  ServerFixture server(test_model(true), streaming_options());
  const std::vector<int16_t> pcm = test_pcm(3.0);
  Client client(server.port());
  const std::vector<json> replies = stream(client, pcm, 1600, {{"signal", "start"}, {"nbest", 1}});
  ASSERT_GE(replies.size(), 3u);
  EXPECT_EQ(replies.front(), json({{"status", "ok"}, {"type", "server_ready"}}));
  EXPECT_EQ(replies.back(), json({{"status", "ok"}, {"type", "speech_end"}}));
  const Expected want = expected_results(server.recognizer(), pcm, 1600);
  const Expected got = received(replies);
  ASSERT_FALSE(want.partials.empty());
  EXPECT_EQ(got.partials, want.partials);
  ASSERT_EQ(got.finals.size(), 1u);
  EXPECT_EQ(got.finals, want.finals);
  // nbest is WeNet's shape: a JSON array, serialized into a string.
  for (const json& m : replies) {
    if (m.contains("nbest")) {
      EXPECT_TRUE(json::parse(m["nbest"].get<std::string>()).is_array());
    }
  }
}

// Before its first client the server ran a batched encoder step on noise
// (the warm-up), not counted among its clients' steps.
TEST(AsrServer, WarmsUpWithABatchedStepBeforeTheFirstClient) {
  const FastPathProbe probe;
  ServerFixture server(test_model(true), streaming_options());
  EXPECT_GT(probe.ran("attention.self_attention_streams"), 0);
  EXPECT_EQ(server.server().stats().encoder_steps, 0);
  EXPECT_EQ(server.server().stats().encoder_chunks, 0);
}

// {"nbest": 3}: each result carries up to three ranked sentences, those a
// StreamingSession ranks (the beam's for partial results, the rescored ones
// for the final result).
TEST(AsrServer, NbestSendsTheRankedHypotheses) {
  ServerFixture server(test_model(true), streaming_options());
  const std::vector<int16_t> pcm = test_pcm(3.0, 11);
  Client client(server.port());
  const std::vector<json> replies = stream(client, pcm, 1600, {{"signal", "start"}, {"nbest", 3}});
  const Units& units = server.recognizer().units();
  auto texts = [&](const Recognition& r) {
    std::vector<std::string> out;
    for (size_t i = 0; i < r.nbest.size() && i < 3; ++i) out.push_back(units.to_text(r.nbest[i].tokens));
    return out;
  };
  std::vector<std::vector<std::string>> want_partials, got_partials, got_finals;
  StreamingSession session(server.recognizer());
  for (size_t pos = 0; pos < pcm.size(); pos += 1600) {
    const std::vector<float> x = as_float(pcm.data() + pos, std::min<size_t>(1600, pcm.size() - pos));
    const int64_t before = session.frames_decoded();
    const Recognition r = session.accept_waveform(x.data(), x.size());
    if (session.frames_decoded() > before && !r.tokens.empty()) want_partials.push_back(texts(r));
  }
  const Recognition final_result = session.finish();
  for (const json& m : replies) {
    if (!m.contains("nbest")) continue;
    std::vector<std::string> sentences;
    const json entries = json::parse(m["nbest"].get<std::string>());
    for (size_t i = 0; i < entries.size(); ++i) {
      const json& e = entries[i];
      sentences.push_back(e.at("sentence"));
      // WeNet's word_pieces, in final results only: a unit per token of that
      // hypothesis, in ms, in order, inside the audio.
      if (m["type"] == "partial_result") {
        EXPECT_FALSE(e.contains("word_pieces"));
        continue;
      }
      ASSERT_TRUE(e.contains("word_pieces")) << e;
      const Hypothesis& h = final_result.nbest.at(i);
      ASSERT_EQ(e["word_pieces"].size(), h.tokens.size()) << e;
      int64_t previous_start = 0;
      for (size_t j = 0; j < h.tokens.size(); ++j) {
        const json& piece = e["word_pieces"][j];
        EXPECT_EQ(piece.at("word").get<std::string>(), units.symbol(h.tokens[j]));
        const int64_t start = piece.at("start"), end = piece.at("end");
        EXPECT_LE(previous_start, start);
        EXPECT_LE(start, end);
        EXPECT_LE(end, static_cast<int64_t>(pcm.size()) * 1000 / 16000);
        EXPECT_EQ(end % 20, 0) << "frame times are multiples of the 40 ms frame (halves at most)";
        previous_start = start;
      }
    }
    (m["type"] == "partial_result" ? got_partials : got_finals).push_back(sentences);
  }
  ASSERT_FALSE(want_partials.empty());
  EXPECT_EQ(got_partials, want_partials);
  ASSERT_EQ(got_finals.size(), 1u);
  EXPECT_EQ(got_finals[0], texts(final_result));
  EXPECT_EQ(got_finals[0].front(), final_result.text);
  EXPECT_EQ(got_finals[0].size(), 3u);  // the beam (4) holds more than three hypotheses
}

TEST(AsrServer, ContinuousDecodingSendsOneFinalResultPerUtterance) {
  // Rules that end an utterance every second, whatever the model hears.
  AsrServerOptions options;
  options.endpoint.rule1 = {false, 1e9, 0};
  options.endpoint.rule2 = {true, 1e9, 0};
  options.endpoint.rule3 = {false, 0, 1000};
  ServerFixture server(test_model(true), streaming_options(), options);
  const std::vector<int16_t> pcm = test_pcm(3.5, 3);
  Client client(server.port());
  const std::vector<json> replies =
      stream(client, pcm, 1600, {{"signal", "start"}, {"continuous_decoding", true}});
  const Expected want = expected_results(server.recognizer(), pcm, 1600, &options.endpoint);
  const Expected got = received(replies);
  EXPECT_EQ(want.finals.size(), 3u);  // 1 s + the decoding delay each, then the rest
  EXPECT_EQ(got.finals, want.finals);
  EXPECT_EQ(got.partials, want.partials);
  EXPECT_EQ(replies.back().value("type", ""), "speech_end");
}

TEST(AsrServer, AModelWithoutAttentionDecoderGivesTheCtcResult) {
  auto model = test_model(false);
  DecodeOptions d = streaming_options();
  d.mode = resolve_decode_mode("auto", *model);
  ASSERT_EQ(d.mode, DecodeMode::CtcPrefixBeam);
  ServerFixture server(model, d);
  const std::vector<int16_t> pcm = test_pcm(2.0, 5);
  Client client(server.port());
  const Expected got = received(stream(client, pcm, 3200, {{"signal", "start"}}));
  EXPECT_EQ(got.finals, expected_results(server.recognizer(), pcm, 3200).finals);
}

TEST(AsrServer, ASenderFasterThanRealTimeLosesNothing) {
  AsrServerOptions options;
  options.max_buffered_seconds = 0.5;  // reading pauses after half a second of undecoded audio
  ServerFixture server(test_model(true), streaming_options(), options);
  const std::vector<int16_t> pcm = test_pcm(8.0, 9);
  Client client(server.port());
  const Expected got = received(stream(client, pcm, 800, {{"signal", "start"}}));
  const Expected want = expected_results(server.recognizer(), pcm, 800);
  EXPECT_GT(server.server().stats().read_pauses, 0);  // the server did hold the sender back
  EXPECT_EQ(got.partials, want.partials);
  EXPECT_EQ(got.finals, want.finals);
}

// Resident memory of this process, MiB (Linux /proc).
double rss_mib() {
  std::ifstream in("/proc/self/statm");
  long pages = 0, resident = 0;
  in >> pages >> resident;
  return static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

// N clients at once, each sending in real time: every one gets exactly its
// own results, and the server's memory after a second round of streams is
// where it was after the first (nothing kept per finished stream).
TEST(AsrServer, ConcurrentRealTimeStreamsAllGetTheirResults) {
  AsrServerOptions options;
  options.decode_threads = 2;
  ServerFixture server(test_model(true), streaming_options(), options);
  constexpr int kStreams = 6;
  std::vector<std::vector<int16_t>> audio;
  std::vector<Expected> want;
  for (int i = 0; i < kStreams; ++i) {
    audio.push_back(test_pcm(1.5 + 0.1 * i, 100 + static_cast<unsigned>(i)));
    want.push_back(expected_results(server.recognizer(), audio.back(), 1600));
  }
  auto round = [&] {
    std::vector<Expected> got(kStreams);
    std::vector<std::thread> clients;
    for (int i = 0; i < kStreams; ++i) {
      clients.emplace_back([&, i] {
        Client client(server.port());
        client.send({{"signal", "start"}});
        // Replies wait in the socket's buffer until the end (they are small).
        const auto begin = std::chrono::steady_clock::now();
        for (size_t pos = 0, k = 0; pos < audio[i].size(); pos += 1600, ++k) {
          std::this_thread::sleep_until(begin + std::chrono::milliseconds(100 * k));  // real time
          client.pcm(audio[i].data() + pos, std::min<size_t>(1600, audio[i].size() - pos));
        }
        client.send({{"signal", "end"}});
        got[i] = received(client.read_all(60));
      });
    }
    for (auto& c : clients) c.join();
    for (int i = 0; i < kStreams; ++i) {
      SCOPED_TRACE(i);
      EXPECT_EQ(got[i].partials, want[i].partials);
      EXPECT_EQ(got[i].finals, want[i].finals);
    }
  };
  round();
  const double after_first = rss_mib();
  round();
  round();
  for (int i = 0; i < 500 && server.server().stats().open_streams > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(server.server().stats().open_streams, 0);
  EXPECT_EQ(server.server().stats().streams_served, 3 * kStreams);
  // Chunks of streams that were ready together ran as one encoder step.
  EXPECT_GT(server.server().stats().encoder_chunks, server.server().stats().encoder_steps);
  if (kMemoryBoundsApply) {
    EXPECT_LT(rss_mib() - after_first, 16.0) << "memory grew over two more rounds of " << kStreams << " streams";
  }
}

// With --batch-streams 1 every stream's chunk is its own encoder step; the
// results are the same.
TEST(AsrServer, UnbatchedStepsGiveTheSameResults) {
  AsrServerOptions options;
  options.batch_streams = 1;
  options.decode_threads = 2;
  ServerFixture server(test_model(true), streaming_options(), options);
  std::vector<std::vector<int16_t>> audio = {test_pcm(1.6, 40), test_pcm(1.9, 41), test_pcm(1.3, 42)};
  std::vector<Expected> got(audio.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < audio.size(); ++i) {
    clients.emplace_back([&, i] {
      Client client(server.port());
      got[i] = received(stream(client, audio[i], 1600, {{"signal", "start"}}));
    });
  }
  for (auto& c : clients) c.join();
  for (size_t i = 0; i < audio.size(); ++i) {
    SCOPED_TRACE(i);
    const Expected want = expected_results(server.recognizer(), audio[i], 1600);
    EXPECT_EQ(got[i].partials, want.partials);
    EXPECT_EQ(got[i].finals, want.finals);
  }
  EXPECT_GT(server.server().stats().encoder_steps, 0);
  EXPECT_EQ(server.server().stats().encoder_steps, server.server().stats().encoder_chunks);
}

TEST(AsrServer, BadServerOptionsNameTheirFlag) {
  auto message = [](const std::function<void(AsrServerOptions&)>& change) {
    AsrServerOptions o;
    change(o);
    try {
      o.validate();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message([](AsrServerOptions& o) { o.batch_streams = 0; }).find("--batch-streams"), std::string::npos);
  EXPECT_NE(message([](AsrServerOptions& o) { o.batch_window_ms = -1; }).find("--batch-window-ms"), std::string::npos);
  EXPECT_NE(message([](AsrServerOptions& o) { o.decode_threads = 0; }).find("--decode-threads"), std::string::npos);
  EXPECT_EQ(message([](AsrServerOptions&) {}), "");
}

// The reply to a malformed stream: its failed message (empty when the server
// closed without one).
std::string failure(const std::function<void(Client&)>& act, int port) {
  Client client(port);
  act(client);
  for (const json& m : client.read_all(20)) {
    if (m.value("status", "") == "failed") return m.value("message", "");
  }
  return client.timed_out() ? "timed out" : "";
}

// Client input quoted in a reply: whole characters up to the limit, what
// is not UTF-8 or is a control character shown as '?'.
TEST(AsrProtocol, PrintableQuotesWholeUtf8Characters) {
  EXPECT_EQ(printable("plain"), "plain");
  EXPECT_EQ(printable(std::string(79, 'x') + "\u00e9z"), std::string(79, 'x') + "...");
  EXPECT_EQ(printable(std::string(78, 'x') + "\u00e9z"), std::string(78, 'x') + "\u00e9...");
  EXPECT_EQ(printable("a\xff\xc3" "b\n\x7f\u20ac"), "a??b??\u20ac");
  EXPECT_EQ(printable("\xf0\x9f\x98\x80\xf0\x9f", 6), "\xf0\x9f\x98\x80??");
  EXPECT_EQ(printable("\xf0\x9f\x98\x80\xf0\x9f", 5), "\xf0\x9f\x98\x80?...");
  EXPECT_EQ(printable(std::string(100, 'y'), 3), "yyy...");
}

// The protocol's order and formats without a server: what each message
// gives, and each refusal.
TEST(AsrProtocol, AcceptsOneStreamInOrderAndRefusesTheRest) {
  ClientProtocol p(16000, 1.0);
  const auto refusal = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "(accepted)";
  };
  const unsigned char pcm[] = {0x00, 0x80, 0xff, 0x7f, 0x01, 0x00};
  EXPECT_EQ(refusal([&] { p.binary(pcm, 6); }), "Start signal is expected before binary data");
  EXPECT_EQ(refusal([&] { p.text(R"({"signal": "end"})"); }), "an end signal before the start signal");
  EXPECT_NE(refusal([&] { p.text(R"({"signal": "start", "nbest": 0})"); }).find("nbest"), std::string::npos);
  EXPECT_FALSE(p.started());
  const ClientSignal start = p.text(R"({"signal": "start", "nbest": 18446744073709551615, "continuous_decoding": true,
                                        "sample_rate": 16000.0, "channels": 1})");
  EXPECT_EQ(start.kind, ClientSignal::Kind::Start);
  EXPECT_EQ(start.nbest, 1000u);
  EXPECT_TRUE(start.continuous);
  EXPECT_EQ(refusal([&] { p.text(R"({"signal": "start"})"); }),
            "a start signal while the stream is open (one stream per connection)");
  EXPECT_EQ(p.binary(pcm, 6), (std::vector<float>{-1.0f, 32767.0f / 32768.0f, 1.0f / 32768.0f}));
  EXPECT_EQ(refusal([&] { p.binary(pcm, 5); }), "a binary message of 5 bytes: audio is 16-bit PCM, an even number of bytes");
  EXPECT_EQ(p.samples(), 3);
  EXPECT_EQ(p.text(R"({"signal": "end"})").kind, ClientSignal::Kind::End);
  EXPECT_EQ(refusal([&] { p.binary(pcm, 6); }), "binary data after the end signal");
  EXPECT_EQ(refusal([&] { p.text(R"({"signal": "end"})"); }), "a second end signal");
  // An option's value quoted by its kind when it is an array or object:
  // written whole, 500,000 levels of nesting overflowed the stack (and
  // stopped the server).
  ClientProtocol deep(16000, 1.0);
  EXPECT_EQ(refusal([&] {
              deep.text(R"({"signal": "start", "sample_rate": )" + std::string(500000, '[') + std::string(500000, ']') +
                        "}");
            }),
            "sample_rate an array of 1 elements in the start message: this model takes 16000 Hz 16-bit mono PCM");
  EXPECT_EQ(refusal([&] { deep.text(R"({"signal": "start", "channels": ")" + std::string(100, 'c') + "\"}"); }),
            "channels \"" + std::string(79, 'c') + "... in the start message: this model takes 16000 Hz 16-bit mono PCM");
  // The longest stream, counted over the messages.
  ClientProtocol q(4, 1.0);
  q.text(R"({"signal": "start"})");
  const std::vector<unsigned char> four(8, 0);
  EXPECT_EQ(q.binary(four.data(), 8).size(), 4u);
  EXPECT_EQ(refusal([&] { q.binary(four.data(), 2); }), "the stream is longer than 1 s (--max-stream-seconds)");
}

// fuzz/corpus/asr_protocol: message sequences as fuzz_asr_protocol reads
// them (a kind byte, even for text; a 16-bit little-endian length; the
// bytes). Each is accepted to its end or refused with one line of UTF-8.
TEST(AsrProtocol, FuzzCorpusSequencesAreAcceptedOrRefusedWithOneLine) {
  int accepted = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(MOEKIT_SOURCE_DIR) + "/fuzz/corpus/asr_protocol")) {
    SCOPED_TRACE(entry.path().string());
    const std::string bytes = read_file(entry.path().string());
    ClientProtocol protocol(16000, 2.0);
    bool refused = false;
    for (size_t at = 0; at + 3 <= bytes.size() && !refused;) {
      const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
      const size_t length = std::min<size_t>(u[at + 1] | (u[at + 2] << 8), bytes.size() - at - 3);
      const bool binary = (u[at] & 1) != 0;
      const std::string payload = bytes.substr(at + 3, length);
      at += 3 + length;
      try {
        if (binary) {
          protocol.binary(reinterpret_cast<const unsigned char*>(payload.data()), payload.size());
        } else {
          protocol.text(payload);
        }
      } catch (const std::invalid_argument& e) {
        const std::string reason = e.what();
        EXPECT_TRUE(is_valid_utf8(reason)) << reason;
        EXPECT_EQ(printable(reason, reason.size()), reason);  // no control characters
        refused = true;
      }
    }
    accepted += refused ? 0 : 1;
  }
  EXPECT_GE(accepted, 2) << "the seeds 'stream' and 'start_format' are whole streams";
}

TEST(AsrServer, EachMalformedInputEndsOnlyItsStreamWithAnError) {
  AsrServerOptions options;
  options.max_stream_seconds = 1;
  options.idle_timeout_seconds = 0.5;
  ServerFixture server(test_model(true), streaming_options(), options);
  const int port = server.port();
  const std::vector<int16_t> pcm = test_pcm(0.5);
  const json start = {{"signal", "start"}};
  struct Case {
    const char* what;
    std::function<void(Client&)> act;
    const char* error;
  };
  const std::vector<Case> cases = {
      {"audio first", [&](Client& c) { c.pcm(pcm.data(), 100); }, "Start signal is expected before binary data"},
      {"not JSON", [](Client& c) { c.text("{start"); }, "text message is not JSON: {start"},
      // Quoted up to 80 bytes: cut before the character that straddles them
      // (cut inside it, the reply was not UTF-8 and its JSON dump threw,
      // which took the whole server down).
      {"not JSON, a character across the quote's end",
       [](Client& c) { c.text(std::string(79, 'x') + "\u00e9 and more"); },
       "text message is not JSON: xxxxxxxxxx"},
      {"unknown signal, long and not ASCII",
       [](Client& c) { c.send({{"signal", std::string(39, 'a') + "\u00fcberlange \u00fcberlange"}}); },
       "Unexpected signal type: \"aaaa"},
      {"not an object", [](Client& c) { c.text("[1]"); }, "Wrong protocol"},
      {"no signal", [](Client& c) { c.send({{"nbest", 1}}); }, "Wrong message header"},
      {"unknown signal", [](Client& c) { c.send({{"signal", "pause"}}); }, "Unexpected signal type: \"pause\""},
      {"nbest", [](Client& c) { c.send({{"signal", "start"}, {"nbest", "two"}}); },
       "integer is expected for nbest option"},
      {"continuous", [](Client& c) { c.send({{"signal", "start"}, {"continuous_decoding", 1}}); },
       "boolean true or false is expected for continuous_decoding option"},
      {"rate", [](Client& c) { c.send({{"signal", "start"}, {"sample_rate", 8000}}); },
       "sample_rate 8000 in the start message: this model takes 16000 Hz 16-bit mono PCM"},
      {"channels", [](Client& c) { c.send({{"signal", "start"}, {"channels", 2}}); },
       "channels 2 in the start message: this model takes 16000 Hz 16-bit mono PCM"},
      {"odd bytes",
       [&](Client& c) {
         c.send(start);
         c.binary({1, 2, 3});
       },
       "a binary message of 3 bytes: audio is 16-bit PCM"},
      {"two starts",
       [&](Client& c) {
         c.send(start);
         c.send(start);
       },
       "a start signal while the stream is open"},
      {"end first", [](Client& c) { c.send({{"signal", "end"}}); }, "an end signal before the start signal"},
      {"too long",
       [&](Client& c) {
         c.send(start);
         for (int i = 0; i < 3; ++i) c.pcm(pcm.data(), pcm.size());
       },
       "the stream is longer than 1 s (--max-stream-seconds)"},
      {"silent client", [&](Client& c) { c.send(start); }, "no message for 0.5 s (--idle-timeout)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string message = failure(c.act, port);
    EXPECT_NE(message.find(c.error), std::string::npos) << message;
  }
  // The server is still there, and a good stream still gets its result.
  Client client(port);
  const Expected got = received(stream(client, test_pcm(0.9), 1600, start));
  EXPECT_EQ(got.finals.size(), 1u);
}

// Random sequences of messages, good and bad mixed (start messages whose
// options take values of every JSON type, audio frames of any length and
// content, end signals, text that is not JSON or not UTF-8, connections
// dropped mid-way): every connection ends within the idle timeout with
// replies of the protocol's shape, and afterwards nothing is left open and
// a good stream gets its result. The sequences are fixed by the seed.
TEST(AsrServer, RandomMessageSequencesEndEachStreamCleanly) {
  AsrServerOptions options;
  options.max_stream_seconds = 2;
  options.idle_timeout_seconds = 0.3;
  ServerFixture server(test_model(true), streaming_options(), options);
  const int port = server.port();
  std::mt19937 rng(20261205);
  const auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  const std::vector<json> values = {1,    -1,    0,  2.5, 1e300, "x", "", true, false, nullptr, json::array(),
                                    json::object(), 16000, 8000, std::numeric_limits<uint64_t>::max()};
  const std::vector<std::string> keys = {"nbest", "continuous_decoding", "sample_rate", "channels", "signal"};
  const std::vector<int16_t> pcm = test_pcm(1.0, 7);
  int messages = 0, failed = 0, finals = 0;
  for (int connection = 0; connection < 40; ++connection) {
    SCOPED_TRACE("connection " + std::to_string(connection));
    Client client(port);
    // Every third connection a good stream in pieces of random sizes, so
    // streams that succeed are interleaved with the rest.
    const bool good = connection % 3 == 0;
    if (good) {
      client.send({{"signal", "start"}, {"nbest", 1 + static_cast<int>(pick(3))}, {"continuous_decoding", pick(2) == 0}});
      for (size_t pos = 0; pos < pcm.size();) {
        const size_t n = std::min(pcm.size() - pos, 1 + pick(8000));
        client.pcm(pcm.data() + pos, n);
        pos += n;
      }
      client.send({{"signal", "end"}});
    }
    const size_t actions = good ? 0 : 1 + pick(6);
    bool dropped = false;
    for (size_t a = 0; a < actions && !dropped; ++a) {
      switch (pick(7)) {
        case 0:
        case 1: {  // a start message: good options, or options drawn from every JSON type
          json start = {{"signal", "start"}};
          if (pick(2) == 0) {
            start["nbest"] = 1 + static_cast<int>(pick(3));
            start["continuous_decoding"] = pick(2) == 0;
          } else {
            for (size_t k = pick(3); k > 0; --k) start[keys[pick(keys.size())]] = values[pick(values.size())];
          }
          client.send(start);
          break;
        }
        case 2:
        case 3: {  // audio: whole samples or an odd byte count, speech or noise
          const size_t samples = pick(6000);
          if (pick(2) == 0) {
            client.pcm(pcm.data(), std::min(samples, pcm.size()));
          } else {
            std::vector<unsigned char> bytes(2 * samples + pick(2));
            for (auto& b : bytes) b = static_cast<unsigned char>(rng());
            client.binary(bytes);
          }
          break;
        }
        case 4:
          client.send({{"signal", "end"}});
          break;
        case 5: {  // text that is not a protocol message: JSON of another shape, not JSON, not UTF-8
          const std::vector<std::string> texts = {"{}", "[]", "null", "{\"signal\": 3}", "{start", "\xff\xfe", ""};
          client.text(texts[pick(texts.size())]);
          break;
        }
        default:
          client.drop();
          dropped = true;
      }
    }
    if (dropped) continue;
    // The server either finished the stream, refused it, or ends it for
    // silence within the idle timeout: no connection outlives that.
    const int finals_before = finals;
    for (const json& m : client.read_all(10)) {
      ++messages;
      ASSERT_TRUE(m.is_object()) << m.dump();
      const std::string status = m.value("status", "");
      ASSERT_TRUE(status == "ok" || status == "failed") << m.dump();
      if (status == "failed") {
        ++failed;
        EXPECT_FALSE(m.value("message", "").empty()) << m.dump();
      } else {
        ASSERT_TRUE(m.contains("type")) << m.dump();
        finals += m["type"] == "final_result" ? 1 : 0;
      }
    }
    EXPECT_FALSE(client.timed_out());
    if (good) {
      EXPECT_GE(finals - finals_before, 1);
    }
  }
  EXPECT_GT(failed, 10) << "the random sequences should refuse many streams";
  EXPECT_GT(messages, failed);
  for (int i = 0; i < 500 && server.server().stats().open_streams > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(server.server().stats().open_streams, 0);
  Client client(port);
  const Expected got = received(stream(client, test_pcm(0.9), 1600, {{"signal", "start"}}));
  EXPECT_EQ(got.finals.size(), 1u);
  std::cout << "random sequences: " << messages << " replies, " << failed << " failed, " << finals << " final results\n";
}

TEST(AsrServer, AMessageOverTheLimitClosesTheStreamWithCode1009) {
  AsrServerOptions options;
  options.max_message_bytes = 1000;
  ServerFixture server(test_model(true), streaming_options(), options);
  Client client(server.port());
  ASSERT_EQ(client.start(), "server_ready");
  std::vector<unsigned char> big(4000, 0);
  client.binary(big);
  EXPECT_TRUE(client.read_all(20).empty());
  EXPECT_FALSE(client.timed_out());
  EXPECT_EQ(client.close_code(), 1009);  // message too big
}

TEST(AsrServer, ClientsThatVanishMidStreamLeaveNothingOpen) {
  ServerFixture server(test_model(true), streaming_options());
  const std::vector<int16_t> pcm = test_pcm(2.0);
  for (int i = 0; i < 4; ++i) {
    Client client(server.port());
    client.send({{"signal", "start"}});
    client.read();
    client.pcm(pcm.data(), pcm.size());
    client.drop();
  }
  for (int i = 0; i < 500 && server.server().stats().open_streams > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(server.server().stats().open_streams, 0);
  EXPECT_EQ(server.server().stats().streams_served, 4);
}

TEST(AsrServer, StopEndsOpenStreamsWithAMessage) {
  ServerFixture server(test_model(true), streaming_options());
  Client client(server.port());
  ASSERT_EQ(client.start(), "server_ready");
  std::thread stopper([&] { server.stop(); });
  const std::vector<json> rest = client.read_all(20);
  stopper.join();
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0], json({{"status", "failed"}, {"message", "server shutting down"}}));
}

TEST(AsrServer, TooManyConnectionsAreRefusedWithAMessage) {
  AsrServerOptions options;
  options.max_connections = 1;
  ServerFixture server(test_model(true), streaming_options(), options);
  Client first(server.port());
  ASSERT_EQ(first.start(), "server_ready");
  const std::string message = failure([](Client&) {}, server.port());
  EXPECT_NE(message.find("server busy: 1 streams open (--max-connections)"), std::string::npos) << message;
}

// One HTTP request; the response's status and body.
std::pair<int, std::string> http_request(int port, http::verb verb, const std::string& target) {
  asio::io_context ioc;
  tcp::socket socket(ioc);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
  http::request<http::string_body> request(verb, target, 11);
  request.set(http::field::host, "127.0.0.1");
  http::write(socket, request);
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  http::read(socket, buffer, response);
  return {static_cast<int>(response.result_int()), response.body()};
}

TEST(AsrServer, ServesThePageAndNamesBadPaths) {
  ServerFixture server(test_model(true), streaming_options());
  const auto [status, body] = http_request(server.port(), http::verb::get, "/");
  EXPECT_EQ(status, 200);
  EXPECT_NE(body.find("<title>MoEKit speech recognition</title>"), std::string::npos);
  EXPECT_NE(body.find("const SAMPLE_RATE = 16000;"), std::string::npos);
  const auto [missing, text] = http_request(server.port(), http::verb::get, "/static/app.js");
  EXPECT_EQ(missing, 404);
  EXPECT_NE(text.find("not found: /static/app.js"), std::string::npos);
  EXPECT_EQ(http_request(server.port(), http::verb::post, "/").first, 405);
}

TEST(AsrServer, APortInUseIsNamed) {
  ServerFixture first(test_model(true), streaming_options());
  const Recognizer recognizer(test_model(true), test_units(), streaming_options());
  AsrServerOptions options;
  options.host = "127.0.0.1";
  options.port = first.port();
  const std::string message = error_of([&] { AsrServer second(recognizer, options); });
  EXPECT_EQ(message, "cannot listen on 127.0.0.1:" + std::to_string(first.port()) +
                         ": the port is in use (choose another with --port)");
}

// `moekit serve asr` as a user runs it: its final result for a WAV file
// equals `moekit transcribe --streaming` on the same file; SIGTERM stops it.
// A model file rewritten in place under the server (`cp` over it) would
// have the model read a mix of the old and new weights: new streams are
// refused with a message naming the file, and the server stays up.
TEST(AsrServer, AModelFileRewrittenInPlaceRefusesNewStreams) {
  if (!map_weights_enabled()) GTEST_SKIP() << "MOEKIT_MAP_WEIGHTS=0";
  const std::string dir = temp_dir("asr_server_rewritten") + "/model";
  {
    torch::manual_seed(7);
    AsrConfig config = small_asr_config();
    config.encoder.ffn.hidden = 512;  // expert matrices of 128 KiB: mapped
    save_asr_model(dir, AsrModel(config), test_units());
  }
  LoadedAsr loaded = load_asr_model(dir, WeightStorage::kMap);
  ASSERT_GT(mapped_tensor_bytes(), 0u);
  ServerFixture server(loaded.model, streaming_options());
  {
    Client client(server.port());
    EXPECT_EQ(client.start(), "server_ready");
  }
  const std::string weights = dir + "/model.safetensors";
  const std::string bytes = read_file(weights);
  std::ofstream(weights, std::ios::binary | std::ios::trunc) << bytes;
  Client client(server.port());
  client.send({{"signal", "start"}});
  const std::optional<json> reply = client.read();
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->value("status", ""), "failed");
  const std::string message = reply->value("message", "");
  EXPECT_NE(message.find(weights + " was rewritten in place"), std::string::npos) << message;
}

TEST(AsrServer, TheCommandAgreesWithTranscribeStreaming) {
  const std::string dir = temp_dir("serve_cli");
  auto model = test_model(true);
  save_asr_model(dir + "/model", *model, test_units());
  const std::vector<int16_t> pcm = test_pcm(2.5, 11);
  std::vector<float> scaled(pcm.size());  // write_wav16 writes round(v * 32767): the same 16-bit samples
  for (size_t i = 0; i < pcm.size(); ++i) scaled[i] = static_cast<float>(pcm[i]) / 32767.0f;
  write_wav16(dir + "/a.wav", scaled, 16000);
  const CliRun transcribed = run_cli("transcribe " + dir + "/model " + dir + "/a.wav --streaming --chunk-size 4 --beam 4 --json");
  ASSERT_EQ(transcribed.exit_code, 0) << transcribed.output;
  const std::string want = json::parse(transcribed.output.substr(0, transcribed.output.find('\n')))["text"];

  const std::string log = dir + "/serve.log";
  const std::string command = "exec " + std::string(MOEKIT_CLI_PATH) + " serve asr " + dir +
                              "/model --host 127.0.0.1 --port 0 --chunk-size 4 --beam 4 2>" + log;
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int port = 0;
  for (int i = 0; i < 600 && port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::smatch m;
    if (std::regex_search(text, m, std::regex("on port ([0-9]+)"))) port = std::stoi(m[1]);
  }
  ASSERT_GT(port, 0) << "the server did not start";
  {
    Client client(port);
    const Expected got = received(stream(client, pcm, 1600, {{"signal", "start"}}));
    ASSERT_EQ(got.finals.size(), 1u);
    EXPECT_EQ(got.finals[0], want);
  }
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("server stopped after 1 streams"), std::string::npos) << text;
}

// --- The page in a real browser -------------------------------------------

std::string find_chromium() {
  if (const char* env = std::getenv("MOEKIT_CHROMIUM")) return env;
  for (const char* path : {"/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"}) {
    if (std::filesystem::exists(path)) return path;
  }
  return "";
}

std::string base64_decode(const std::string& text) {
  static const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    const size_t v = alphabet.find(c);
    if (v == std::string::npos) continue;  // '=' padding
    bits = (bits << 6) | static_cast<uint32_t>(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out.push_back(static_cast<char>((bits >> count) & 0xff));
    }
  }
  return out;
}

// Chrome DevTools Protocol on one page target.
class DevTools {
 public:
  DevTools(int port, const std::string& target) : client_(port, target) {}
  json call(const std::string& method, const json& params = json::object()) {
    const int id = ++id_;
    client_.send({{"id", id}, {"method", method}, {"params", params}});
    for (;;) {
      std::optional<json> m = client_.read(30);
      if (!m) return json{{"error", "devtools connection closed"}};
      if (m->value("id", 0) == id) return *m;  // events in between are skipped
    }
  }
  // The expression's value; what DevTools answered instead when it has none.
  json evaluate(const std::string& expression) {
    const json reply = call("Runtime.evaluate", {{"expression", expression}, {"returnByValue", true}});
    if (reply.contains("result") && reply["result"].contains("result") && reply["result"]["result"].contains("value"))
      return reply["result"]["result"]["value"];
    return json{{"no value", reply}};
  }
  std::string text(const std::string& expression) {
    const json v = evaluate(expression);
    return v.is_string() ? v.get<std::string>() : v.dump().substr(0, 300);
  }

 private:
  Client client_;
  int id_ = 0;
};

// Headless Chromium with its microphone fed from a WAV file opens the page
// and streams to the server; the final transcript in the page's DOM equals
// a StreamingSession's on the very samples the page sent (kept by ?keep=1),
// and those samples are the file's (silence, then the tone). A screenshot is
// written to test-artifacts/asr_page.png.
TEST(AsrServer, ThePageStreamsTheMicrophoneInARealBrowser) {
  const std::string chromium = find_chromium();
  if (chromium.empty()) GTEST_SKIP() << "Chromium not found (apt install chromium, or set MOEKIT_CHROMIUM)";
  ServerFixture server(test_model(true), streaming_options());
  const std::string dir = temp_dir("serve_browser");
  // 1 s of silence, then 2 s of the test signal.
  std::vector<int16_t> pcm = test_pcm(3.0, 13);
  std::fill(pcm.begin(), pcm.begin() + 16000, int16_t{0});
  std::vector<float> scaled(pcm.size());
  for (size_t i = 0; i < pcm.size(); ++i) scaled[i] = static_cast<float>(pcm[i]) / 32767.0f;
  write_wav16(dir + "/mic.wav", scaled, 16000);

  const std::string profile = dir + "/profile";
  const std::string url = "http://127.0.0.1:" + std::to_string(server.port()) +
                          "/?autostart=1&seconds=3.5&continuous=0&keep=1";
  const std::vector<std::string> args = {chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                         "--no-first-run", "--user-data-dir=" + profile,
                                         "--remote-debugging-port=0", "--window-size=900,600",
                                         "--autoplay-policy=no-user-gesture-required",
                                         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                         "--use-file-for-fake-audio-capture=" + dir + "/mic.wav%noloop", url};
  // Chromium keeps its singleton socket under TMPDIR: inside the test's directory.
  std::vector<std::string> env = {"TMPDIR=" + dir};
  for (char** e = environ; *e != nullptr; ++e)
    if (std::string(*e).rfind("TMPDIR=", 0) != 0) env.emplace_back(*e);
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int null_fd = ::open("/dev/null", O_WRONLY);
    dup2(null_fd, 1);
    dup2(null_fd, 2);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      kill(pid, SIGTERM);
      int status = 0;
      waitpid(pid, &status, 0);
    }
  } reaper{pid};

  int devtools_port = 0;
  for (int i = 0; i < 600 && devtools_port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream in(profile + "/DevToolsActivePort");
    in >> devtools_port;
  }
  ASSERT_GT(devtools_port, 0) << "Chromium did not start";
  std::string page_target;
  for (int i = 0; i < 100 && page_target.empty(); ++i) {
    for (const json& t : json::parse(http_request(devtools_port, http::verb::get, "/json/list").second)) {
      if (t.value("type", "") == "page" && t.value("url", "").find("127.0.0.1:" + std::to_string(server.port())) !=
                                               std::string::npos)
        page_target = t["webSocketDebuggerUrl"].get<std::string>();
    }
    if (page_target.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(page_target.empty()) << "no page target";
  DevTools devtools(devtools_port, page_target.substr(page_target.find("/devtools/")));

  std::string status;
  for (int i = 0; i < 600 && status != "done" && status.rfind("server:", 0) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = devtools.text("document.getElementById('status').textContent");
  }
  ASSERT_EQ(status, "done") << devtools.text("document.body.innerText");
  const std::string shown = devtools.text("document.getElementById('finals').textContent");
  const json sent = devtools.evaluate(
      "(() => { const out = []; for (const a of window.sentPcm) out.push(...a); return out; })()");
  std::vector<int16_t> audio;
  ASSERT_TRUE(sent.is_array()) << sent.dump().substr(0, 300);
  for (const json& v : sent) audio.push_back(static_cast<int16_t>(v.get<int>()));
  ASSERT_GE(audio.size(), 3u * 16000);

  // The page's samples are the file's, resampled by the browser: quiet, then
  // loud. The fake device plays the file from when it opens, so a page
  // whose audio starts late (a loaded machine) misses some of the silence:
  // the tone begins within the file's first second, not exactly at 1 s.
  auto rms = [&](double from, double to) {
    double sum = 0;
    const size_t a = static_cast<size_t>(from * 16000), b = static_cast<size_t>(to * 16000);
    for (size_t i = a; i < b; ++i) sum += static_cast<double>(audio[i]) * audio[i];
    return std::sqrt(sum / static_cast<double>(b - a)) / 32768.0;
  };
  double onset = 0;
  while (onset < 2.0 && rms(onset, onset + 0.01) < 0.05) onset += 0.01;
  EXPECT_GT(onset, 0.2);
  EXPECT_LT(onset, 1.1);
  EXPECT_LT(rms(0.0, onset - 0.05), 0.01) << "tone from " << onset << " s";
  EXPECT_GT(rms(onset, onset + 1.2), 0.1) << "tone from " << onset << " s";
  const Expected want = expected_results(server.recognizer(), audio, 1600);
  ASSERT_EQ(want.finals.size(), 1u);
  EXPECT_EQ(shown, want.finals[0]);

  const json shot = devtools.call("Page.captureScreenshot", {{"format", "png"}});
  const std::string png = base64_decode(shot["result"].value("data", ""));
  EXPECT_EQ(png.substr(1, 3), "PNG");
  std::filesystem::create_directories(MOEKIT_ARTIFACT_DIR);
  std::ofstream(std::string(MOEKIT_ARTIFACT_DIR) + "/asr_page.png", std::ios::binary) << png;
  std::cout << "screenshot: " << MOEKIT_ARTIFACT_DIR << "/asr_page.png\n";
}

}  // namespace
}  // namespace moekit
