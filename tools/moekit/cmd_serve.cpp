// `moekit serve asr <model_dir>`: the streaming recognition server
// (serve/asr_server.h), until SIGINT or SIGTERM.
#include <algorithm>
#include <iostream>
#include <thread>

#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/core/runtime.h"
#include "moekit/models/asr/wenet_import.h"
#ifdef MOEKIT_HAVE_SERVER
#include "moekit/serve/asr_server.h"
#endif

namespace moekit::cli {

#ifndef MOEKIT_HAVE_SERVER
void add_serve_command(CLI::App& app, const GlobalOptions&) {
  CLI::App* serve = app.add_subcommand("serve", "Serve a model over the network (not in this build)");
  serve->allow_extras();
  serve->callback([] {
    throw std::runtime_error("this moekit was built without Boost (apt install libboost-dev, rebuild): no serve");
  });
}
#else
void add_serve_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* serve = app.add_subcommand("serve", "Serve a model over the network");
  serve->require_subcommand(1);
  struct Options {
    std::string model_dir;
    std::string mode = "auto";
    DecodeOptions decode;
    AsrServerOptions server;
  };
  auto o = std::make_shared<Options>();
  o->decode.chunk_size = 16;
  o->server.decode_threads = 0;  // one per core (resolved when the command runs)
  CLI::App* cmd = serve->add_subcommand(
      "asr", "Streaming speech recognition over WebSocket (WeNet runtime's protocol) and a browser page at /");
  cmd->add_option("model_dir", o->model_dir, "Model directory of an asr model")->required();
  cmd->add_option("--host", o->server.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", o->server.port, "TCP port (0: any free one, printed at start)")->capture_default_str();
  cmd->add_option("--mode", o->mode,
                  "Final results: attention_rescoring | ctc_prefix_beam_search | ctc_greedy_search | auto "
                  "(attention_rescoring, or CTC prefix beam for a model without attention decoder)")
      ->capture_default_str();
  add_decode_options(*cmd, o->decode);
  cmd->add_option("--max-connections", o->server.max_connections, "Streams open at once; more are refused")
      ->capture_default_str();
  cmd->add_option("--decode-threads", o->server.decode_threads,
                  "Batched encoder steps running at the same time (0: one per core, each on one intra-op thread "
                  "unless --threads is given)")
      ->capture_default_str();
  cmd->add_option("--batch-streams", o->server.batch_streams,
                  "Most streams whose chunks run as one encoder step (1: each stream on its own)")
      ->capture_default_str();
  cmd->add_option("--batch-window-ms", o->server.batch_window_ms,
                  "Longest a ready chunk waits for other streams' chunks to join its step")
      ->capture_default_str();
  cmd->add_option("--max-message-bytes", o->server.max_message_bytes, "Largest WebSocket message")
      ->capture_default_str();
  cmd->add_option("--max-stream-seconds", o->server.max_stream_seconds, "Most audio in one stream")
      ->capture_default_str();
  cmd->add_option("--idle-timeout", o->server.idle_timeout_seconds,
                  "Seconds without a message after which an open stream is ended")
      ->capture_default_str();
  cmd->add_option("--max-buffered-seconds", o->server.max_buffered_seconds,
                  "Audio received but not decoded per stream; reading pauses beyond it")
      ->capture_default_str();
  cmd->callback([o, &global] {
    apply_runtime(global);
    // Steps of one thread each, one per core, held the most streams
    // (bench/README.md, "Streaming server").
    if (o->server.decode_threads == 0) {
      o->server.decode_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
      if (global.threads == 0) set_num_threads(1);
    }
    check_decode_mode_name(o->mode);
    o->decode.validate();
    MOEKIT_CHECK_ARG(o->decode.chunk_size > 0, "serve asr streams: --chunk-size must be > 0, got ",
                     o->decode.chunk_size);
    o->server.validate();
    const torch::Device device = parse_device(global.device);
    LoadedAsr loaded = load_asr_model(o->model_dir, WeightStorage::kMap);
    loaded.model->to(device);
    o->decode.mode = resolve_decode_mode(o->mode, *loaded.model);
    const Recognizer recognizer(loaded.model, loaded.units, o->decode);
    AsrServer server(recognizer, o->server);
    std::cerr << "moekit: serving " << o->model_dir << " (" << decode_mode_name(o->decode.mode) << ", chunk "
              << o->decode.chunk_size << ", " << o->server.decode_threads << " decode threads x " << num_threads()
              << " intra-op) on port " << server.port() << ": ws://" << o->server.host << ":"
              << server.port() << "/ and the page at http://" << o->server.host << ":" << server.port() << "/"
              << std::endl;
    server.run(/*handle_signals=*/true);
    const AsrServer::Stats stats = server.stats();
    std::cerr << "moekit: server stopped after " << stats.streams_served << " streams (" << stats.encoder_chunks
              << " chunks in " << stats.encoder_steps << " encoder steps)" << std::endl;
  });
}
#endif

}  // namespace moekit::cli
