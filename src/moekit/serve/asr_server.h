#pragma once
// `moekit serve asr`: streaming speech recognition over WebSocket, speaking
// the protocol of WeNet's runtime (runtime/core/websocket), so its web page
// and clients work unchanged:
//
//   client -> {"signal": "start", "nbest": 1, "continuous_decoding": false}
//   server <- {"status": "ok", "type": "server_ready"}
//   client -> binary messages: 16-bit little-endian mono PCM at the model's rate
//   server <- {"status": "ok", "type": "partial_result", "nbest": "[{\"sentence\": ...}]"}
//   client -> {"signal": "end"}
//   server <- {"status": "ok", "type": "final_result", "nbest": "..."}
//             {"status": "ok", "type": "speech_end"}
//   errors:   {"status": "failed", "message": "..."}, then the stream closes
//
// `nbest` is a JSON array serialized into a string, as WeNet sends it: the
// best `nbest` hypotheses (of the CTC prefix beam for partial results, the
// rescored ones for final results; at most the beam size), best first.
// Final results add WeNet's "word_pieces" to each: [{"word": unit, "start":
// ms, "end": ms}], one per token, times from the CTC prefix beam's best
// alignment and counted from the stream's start (empty in ctc_greedy_search
// mode, which tracks no times).
// Departures from WeNet, each deliberate: the start message may carry
// "sample_rate" and "channels" (checked against the model: a mismatch is an
// error, never silently wrong text); without continuous decoding the whole
// stream is one utterance, its final result equal to `moekit transcribe
// --streaming` (WeNet stops at the first endpoint); a partial result is sent after each
// binary message that completed a chunk and has text. `GET /` serves a page
// that streams the browser's microphone to the same port.
//
// Each connection has its own StreamingSession (its own caches) over the
// shared read-only model; decode threads take streams with audio waiting,
// one message at a time. The encoder steps of streams whose chunks are ready
// at the same moment run as one batched step (up to --batch-streams of them,
// waiting at most --batch-window-ms for more to arrive): an MoE layer then
// reads each expert once per step rather than once per stream. Before the
// first client the server runs one such step on noise (a warm-up: weight
// panels packed, kernels compiled, buffers faulted in), so the first
// streams are served at full speed. Audio received but not yet decoded is bounded: the
// server stops reading a stream that sends faster than it decodes (TCP holds
// the rest) instead of buffering without limit.
#include <cstdint>
#include <memory>
#include <string>

#include "moekit/decode/recognizer.h"

namespace moekit {

struct AsrServerImpl;

struct AsrServerOptions {
  std::string host = "0.0.0.0";
  int port = 10086;                       // 0: any free port (AsrServer::port() tells which)
  int max_connections = 64;               // WebSocket streams open at once; more are refused
  int decode_threads = 1;                 // batched encoder steps running at the same time
  int batch_streams = 16;                 // streams in one encoder step (1: each stream on its own)
  double batch_window_ms = 20;            // how long a ready chunk waits for others to join its step
  int64_t max_message_bytes = 1 << 20;    // one WebSocket message (1 MiB: 32 s of 16 kHz PCM)
  double max_stream_seconds = 3600;       // audio in one stream
  double idle_timeout_seconds = 30;       // an open stream with no message for this long is ended
  double max_buffered_seconds = 4;        // received, not yet decoded: reading pauses beyond this
  EndpointRules endpoint;                 // continuous decoding: where an utterance ends
  // Throws std::invalid_argument naming the first bad field as its CLI flag.
  void validate() const;
};

class AsrServer {
 public:
  // Binds host:port; throws std::runtime_error naming the address when it
  // is in use or cannot be bound. The recognizer must outlive the server.
  AsrServer(const Recognizer& recognizer, AsrServerOptions options);
  ~AsrServer();
  AsrServer(const AsrServer&) = delete;
  AsrServer& operator=(const AsrServer&) = delete;

  int port() const;  // the bound port
  // Serves until stop() (or, with handle_signals, SIGINT / SIGTERM): open
  // streams then get {"status": "failed", "message": "server shutting
  // down"} and are closed; returns when all are.
  void run(bool handle_signals = false);
  void stop();  // from any thread

  struct Stats {
    int64_t open_streams = 0;
    int64_t streams_served = 0;  // streams accepted since start
    int64_t read_pauses = 0;     // times a stream was read no further until its audio was decoded
    int64_t encoder_steps = 0;   // encoder steps run (batched: each covers one or more streams' chunks)
    int64_t encoder_chunks = 0;  // stream chunks those steps encoded
  };
  Stats stats() const;

 private:
  std::shared_ptr<AsrServerImpl> impl_;
};

// The page `GET /` serves: microphone capture, streaming at sample_rate,
// partial and final transcripts shown as they arrive.
std::string asr_web_page(int sample_rate);

}  // namespace moekit
