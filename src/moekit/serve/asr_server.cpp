#include "moekit/serve/asr_server.h"

#include <ATen/CPUGeneratorImpl.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <vector>

#include "moekit/core/check.h"
#include "moekit/core/mapped_tensors.h"
#include "moekit/core/utf8.h"
#include "moekit/serve/asr_protocol.h"

namespace moekit {

namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

void AsrServerOptions::validate() const {
  MOEKIT_CHECK_ARG(port >= 0 && port <= 65535, "--port must be in [0, 65535], got ", port);
  MOEKIT_CHECK_ARG(max_connections >= 1, "--max-connections must be >= 1, got ", max_connections);
  MOEKIT_CHECK_ARG(decode_threads >= 1 && decode_threads <= 256, "--decode-threads must be in [1, 256], got ",
                   decode_threads);
  MOEKIT_CHECK_ARG(batch_streams >= 1 && batch_streams <= 256, "--batch-streams must be in [1, 256], got ",
                   batch_streams);
  MOEKIT_CHECK_ARG(std::isfinite(batch_window_ms) && batch_window_ms >= 0 && batch_window_ms <= 1000,
                   "--batch-window-ms must be in [0, 1000], got ", batch_window_ms);
  MOEKIT_CHECK_ARG(max_message_bytes >= 2 && max_message_bytes <= (int64_t{1} << 30),
                   "--max-message-bytes must be in [2, 2^30], got ", max_message_bytes);
  MOEKIT_CHECK_ARG(std::isfinite(max_stream_seconds) && max_stream_seconds > 0,
                   "--max-stream-seconds must be > 0, got ", max_stream_seconds);
  MOEKIT_CHECK_ARG(std::isfinite(idle_timeout_seconds) && idle_timeout_seconds > 0,
                   "--idle-timeout must be > 0, got ", idle_timeout_seconds);
  MOEKIT_CHECK_ARG(std::isfinite(max_buffered_seconds) && max_buffered_seconds > 0,
                   "--max-buffered-seconds must be > 0, got ", max_buffered_seconds);
}

namespace {

std::chrono::milliseconds millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000.0)));
}

// Where a final result's words lie: WeNet runtime's word_pieces, one per
// token (its unit), in ms from the stream's start. A token's frame is where
// the CTC prefix beam's best alignment emits it; as WeNet's decoder does, a
// piece starts kTimestampGapMs before its frame and ends at it, except that
// neighbours closer than the gap meet halfway between their frames.
struct Timing {
  double frame_ms = 40;   // one encoder frame
  int64_t offset_ms = 0;  // the utterance's start in the stream (continuous decoding)
};
constexpr int64_t kTimestampGapMs = 100;

json word_pieces(const Hypothesis& h, const Units& units, const Timing& timing) {
  json pieces = json::array();
  if (h.times.size() != h.tokens.size() || units.size() == 0) return pieces;
  const auto shift = static_cast<int64_t>(timing.frame_ms);
  const std::vector<int64_t>& t = h.times;
  for (size_t j = 0; j < t.size(); ++j) {
    int64_t start = std::max<int64_t>(0, t[j] * shift - kTimestampGapMs);
    if (j > 0 && (t[j] - t[j - 1]) * shift < kTimestampGapMs) start = (t[j - 1] + t[j]) / 2 * shift;
    int64_t end = t[j] * shift;
    if (j + 1 < t.size() && (t[j + 1] - t[j]) * shift < kTimestampGapMs) end = (t[j + 1] + t[j]) / 2 * shift;
    pieces.push_back(json{{"word", units.symbol(h.tokens[j])},
                          {"start", timing.offset_ms + start},
                          {"end", timing.offset_ms + end}});
  }
  return pieces;
}

// WeNet's result shape: a JSON array of {"sentence": ...} (final results:
// also "word_pieces"), serialized. The best `n` of r's ranked hypotheses.
std::string nbest_string(const Recognition& r, const Units& units, size_t n, const Timing* final_timing = nullptr) {
  json array = json::array();
  for (size_t i = 0; i < std::max<size_t>(1, std::min(n, r.nbest.size())); ++i) {
    json entry{{"sentence", i == 0 ? r.text : units.to_text(r.nbest[i].tokens)}};
    if (final_timing != nullptr) {
      entry["word_pieces"] = i < r.nbest.size() && (i > 0 || r.nbest[0].tokens == r.tokens)
                                 ? word_pieces(r.nbest[i], units, *final_timing)
                                 : json::array();
    }
    array.push_back(std::move(entry));
  }
  return array.dump();
}

json reply(const std::string& type) { return json{{"status", "ok"}, {"type", type}}; }

// A partial_result or final_result message.
json result_reply(const std::string& type, const std::string& nbest) {
  json message = reply(type);
  message["nbest"] = nbest;
  return message;
}

// Gathers the encoder steps of concurrent StreamingSessions into batched
// steps. A decode thread whose session needs a step queues it and waits; a
// step starts when batch_streams requests wait, or when every decode thread
// that is working on a stream is waiting here (nobody else can join), or
// when the oldest request has waited the batching window. Any waiting thread
// may run the step (at most max_running steps at a time) and hands each
// request its own output.
class ChunkBatcher : public ChunkEncoder {
 public:
  ChunkBatcher(AsrModel& model, int batch_streams, int max_running, double window_ms)
      : model_(model),
        batch_streams_(static_cast<size_t>(batch_streams)),
        max_running_(max_running),
        window_(std::chrono::microseconds(static_cast<int64_t>(window_ms * 1000))) {}

  // A decode thread starts (+1) or stops (-1) working on a stream.
  void working(int delta) {
    std::lock_guard<std::mutex> lock(mutex_);
    working_ += delta;
    cv_.notify_all();
  }

  torch::Tensor encode(const torch::Tensor& feats, EncoderStreamCache& cache, int64_t cache_frames) override {
    Request request;
    request.feats = feats;
    request.cache = &cache;
    request.cache_frames = cache_frames;
    request.arrived = Clock::now();
    std::unique_lock<std::mutex> lock(mutex_);
    waiting_.push_back(&request);
    cv_.notify_all();
    while (!request.done) {
      if (running_ < max_running_ && !waiting_.empty() && step_due(Clock::now())) {
        run_step(lock);
        continue;
      }
      if (running_ < max_running_ && !waiting_.empty())
        cv_.wait_until(lock, waiting_.front()->arrived + window_);
      else
        cv_.wait(lock);
    }
    if (!request.error.empty()) throw std::runtime_error(request.error);
    return request.out;
  }

  int64_t steps() const { return steps_.load(); }
  int64_t chunks() const { return chunks_.load(); }

 private:
  using Clock = std::chrono::steady_clock;
  struct Request {
    torch::Tensor feats;
    EncoderStreamCache* cache = nullptr;
    int64_t cache_frames = -1;
    Clock::time_point arrived;
    torch::Tensor out;
    std::string error;
    bool done = false;
  };

  bool step_due(Clock::time_point now) const {
    return waiting_.size() >= batch_streams_ || static_cast<int64_t>(waiting_.size()) >= working_ ||
           now >= waiting_.front()->arrived + window_;
  }

  // Takes up to batch_streams waiting requests and runs them (the lock is
  // released meanwhile).
  void run_step(std::unique_lock<std::mutex>& lock) {
    const size_t n = std::min(batch_streams_, waiting_.size());
    std::vector<Request*> batch(waiting_.begin(), waiting_.begin() + static_cast<std::ptrdiff_t>(n));
    waiting_.erase(waiting_.begin(), waiting_.begin() + static_cast<std::ptrdiff_t>(n));
    ++running_;
    lock.unlock();
    std::vector<torch::Tensor> feats;
    std::vector<EncoderStreamCache*> caches;
    std::vector<int64_t> cache_frames;
    for (Request* r : batch) {
      feats.push_back(r->feats);
      caches.push_back(r->cache);
      cache_frames.push_back(r->cache_frames);
    }
    std::vector<torch::Tensor> outs;
    std::string error;
    try {
      torch::NoGradGuard no_grad;
      outs = model_.encoder->forward_chunks(feats, caches, cache_frames);
    } catch (const std::exception& e) {
      error = e.what();
    }
    ++steps_;
    chunks_ += static_cast<int64_t>(n);
    lock.lock();
    for (size_t i = 0; i < n; ++i) {
      if (error.empty()) batch[i]->out = outs[i];
      batch[i]->error = error;
      batch[i]->done = true;
    }
    --running_;
    cv_.notify_all();
  }

  AsrModel& model_;
  const size_t batch_streams_;
  const int max_running_;
  const Clock::duration window_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Request*> waiting_;
  int64_t working_ = 0;  // decode threads working on a stream
  int running_ = 0;      // steps running
  std::atomic<int64_t> steps_{0}, chunks_{0};
};

}  // namespace

class Stream;

struct AsrServerImpl {
  AsrServerImpl(const Recognizer& r, AsrServerOptions o)
      : recognizer(r), options(std::move(o)), sample_rate(r.model().config().fbank.sample_rate), acceptor(ioc) {
    batcher = std::make_unique<ChunkBatcher>(recognizer.model(), options.batch_streams, options.decode_threads,
                                             options.batch_window_ms);
  }

  const Recognizer& recognizer;
  const AsrServerOptions options;
  // Runs the sessions' encoder steps, batch_streams streams at most in one.
  std::unique_ptr<ChunkBatcher> batcher;
  // Decode threads: enough to bring batch_streams streams to each of the
  // decode_threads steps that may run at once.
  int worker_threads() const { return options.decode_threads * options.batch_streams; }
  const int sample_rate;
  // Declared before the I/O context: streams whose handlers were still
  // queued when it stopped end with it and read these as they go.
  std::atomic<int64_t> open_streams{0};
  std::atomic<int64_t> streams_served{0};
  std::atomic<int64_t> read_pauses{0};
  std::vector<std::weak_ptr<Stream>> streams;  // open WebSocket streams (I/O thread)
  bool stopping = false;                       // I/O thread

  // Streams with decoding work, for the decode threads.
  std::mutex queue_mutex;
  std::condition_variable queue_cv;
  std::deque<std::shared_ptr<Stream>> ready;
  bool workers_stop = false;

  asio::io_context ioc;
  tcp::acceptor acceptor;
  std::optional<asio::signal_set> signals;
  std::optional<asio::steady_timer> shutdown_timer;
  std::chrono::steady_clock::time_point shutdown_deadline;

  void schedule(std::shared_ptr<Stream> stream);
  void warm_up();
  void worker_loop();
  void do_accept();
  void begin_shutdown();
  void wait_for_streams();
  void register_stream(const std::shared_ptr<Stream>& stream);
};

// One WebSocket connection: the protocol on the I/O thread, decoding on a
// decode thread (at most one at a time per stream), replies queued back to
// the I/O thread in order.
class Stream : public std::enable_shared_from_this<Stream> {
 public:
  Stream(AsrServerImpl* server, tcp::socket socket)
      : server_(server),
        ws_(std::move(socket)),
        idle_timer_(server_->ioc),
        protocol_(server->sample_rate, server->options.max_stream_seconds) {
    ++server_->open_streams;
  }
  ~Stream() { --server_->open_streams; }

  void start(http::request<http::string_body> request) {
    request_ = std::move(request);
    websocket::stream_base::timeout timeout{};
    timeout.handshake_timeout = std::chrono::seconds(10);  // the opening and the closing handshake
    timeout.idle_timeout = websocket::stream_base::none();  // our idle timer judges messages, not pings
    timeout.keep_alive_pings = false;
    ws_.set_option(timeout);
    ws_.read_message_max(static_cast<std::uint64_t>(server_->options.max_message_bytes));
    ws_.async_accept(request_, [self = shared_from_this()](beast::error_code ec) { self->on_accept(ec); });
  }

  // Ends the stream with an error message (I/O thread).
  void fail(const std::string& message) {
    if (closing_) return;
    cancel_decoding();
    send(json{{"status", "failed"}, {"message", message}});
    close_after_sending();
  }

  // Decode thread: runs the stream's queued work until none is left.
  void decode_pending();

 private:
  struct Job {
    std::vector<float> samples;
    bool end = false;
  };

  void on_accept(beast::error_code ec) {
    if (ec) return;  // not a WebSocket client after all: nothing to answer
    server_->register_stream(shared_from_this());
    if (server_->stopping) return fail("server shutting down");
    if (server_->open_streams > server_->options.max_connections)
      return fail(str_cat("server busy: ", server_->options.max_connections,
                          " streams open (--max-connections)"));
    ++server_->streams_served;
    do_read();
  }

  void arm_idle_timer() {
    idle_timer_.expires_after(millis(server_->options.idle_timeout_seconds));
    idle_timer_.async_wait([weak = weak_from_this()](beast::error_code ec) {
      auto self = weak.lock();
      if (ec || !self || self->protocol_.ended()) return;
      self->fail(str_cat("no message for ", self->server_->options.idle_timeout_seconds,
                         " s (--idle-timeout): the stream is closed"));
    });
  }

  void do_read() {
    if (reading_ || closing_) return;
    reading_ = true;
    if (!protocol_.ended()) arm_idle_timer();
    ws_.async_read(buffer_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->reading_ = false;
      self->on_read(ec);
    });
  }

  void on_read(beast::error_code ec) {
    if (ec) {
      // The client closed or went away, or broke the WebSocket framing
      // (Beast has answered with a close code, e.g. 1009 for a message
      // over read_message_max): nothing more can be sent.
      cancel_decoding();
      idle_timer_.cancel();
      closing_ = true;
      return;
    }
    // A message the protocol refuses ends its stream with the reason; so
    // does anything else thrown while handling it: never the server.
    try {
      if (ws_.got_text()) {
        on_text(beast::buffers_to_string(buffer_.data()));
      } else {
        on_binary(buffer_);
      }
    } catch (const std::invalid_argument& e) {
      fail(e.what());
    } catch (const std::exception& e) {
      fail(str_cat("the server could not handle the message: ", e.what()));
    }
    buffer_.consume(buffer_.size());
    if (closing_) return;
    if (!read_paused()) {
      do_read();
    } else {
      idle_timer_.cancel();  // the server, not the client, is behind: do_read re-arms it on resuming
    }
  }

  // Throw std::invalid_argument (ClientProtocol's refusals), which on_read
  // turns into the stream's failure reply.
  void on_text(const std::string& text) {
    const ClientSignal signal = protocol_.text(text);
    if (signal.kind == ClientSignal::Kind::Start) return on_start(signal);
    idle_timer_.cancel();
    enqueue(Job{{}, true});
  }

  void on_start(const ClientSignal& signal) {
    // Read by the decode threads only after the jobs this start precedes.
    nbest_ = signal.nbest;
    continuous_ = signal.continuous;
    if (const std::string changed = changed_mapped_file(); !changed.empty())
      return fail(str_cat("the model file ", changed,
                          " was rewritten in place since the server loaded it; restart the server "
                          "(install a new model by renaming it into place)"));
    try {
      session_ = std::make_unique<StreamingSession>(server_->recognizer, server_->batcher.get());
    } catch (const std::exception& e) {
      return fail(e.what());
    }
    send(reply("server_ready"));
  }

  void on_binary(const beast::flat_buffer& buffer) {
    Job job;
    job.samples = protocol_.binary(static_cast<const unsigned char*>(buffer.data().data()), buffer.size());
    enqueue(std::move(job));
  }

  void enqueue(Job job) {
    bool schedule = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cancelled_) return;
      pending_samples_ += static_cast<int64_t>(job.samples.size());
      jobs_.push_back(std::move(job));
      if (!scheduled_) schedule = scheduled_ = true;
    }
    if (schedule) server_->schedule(shared_from_this());
  }

  bool read_paused() {
    std::lock_guard<std::mutex> lock(mutex_);
    paused_ = static_cast<double>(pending_samples_) > server_->options.max_buffered_seconds * server_->sample_rate;
    if (paused_) ++server_->read_pauses;
    return paused_;
  }

  void cancel_decoding() {
    std::lock_guard<std::mutex> lock(mutex_);
    cancelled_ = true;
    jobs_.clear();
  }

  // From a decode thread: hands a reply to the I/O thread.
  void post(std::function<void(Stream&)> action) {
    asio::post(server_->ioc, [self = shared_from_this(), action = std::move(action)] { action(*self); });
  }

  void send(const json& message) {
    if (closing_) return;
    // Replies quote client input (printable() keeps it UTF-8); bytes that
    // are not UTF-8 are replaced rather than thrown on.
    outbox_.push_back(message.dump(-1, ' ', false, json::error_handler_t::replace));
    if (!writing_) do_write();
  }

  void close_after_sending() {
    closing_ = true;
    idle_timer_.cancel();
    if (!writing_) do_close();
  }

  void do_write() {
    if (outbox_.empty()) {
      if (closing_) do_close();
      return;
    }
    writing_ = true;
    ws_.text(true);
    ws_.async_write(asio::buffer(outbox_.front()), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->writing_ = false;
      self->outbox_.pop_front();
      if (ec) {
        self->outbox_.clear();
        self->cancel_decoding();
        self->closing_ = true;
        return;
      }
      self->do_write();
    });
  }

  void do_close() {
    if (close_started_) return;
    close_started_ = true;
    ws_.async_close(websocket::close_code::normal, [self = shared_from_this()](beast::error_code) {});
  }

  AsrServerImpl* server_;  // outlives every stream and session
  websocket::stream<beast::tcp_stream> ws_;
  http::request<http::string_body> request_;  // the upgrade request, until accepted
  beast::flat_buffer buffer_;
  asio::steady_timer idle_timer_;

  // I/O thread only.
  std::deque<std::string> outbox_;
  bool reading_ = false;
  bool writing_ = false;
  bool closing_ = false;  // no more replies; close once the outbox is out
  bool close_started_ = false;
  ClientProtocol protocol_;  // which messages the client may send now
  bool continuous_ = false;
  size_t nbest_ = 1;  // hypotheses per result (at most the beam's)

  // Shared with the decode threads, under mutex_.
  std::mutex mutex_;
  std::deque<Job> jobs_;
  int64_t pending_samples_ = 0;
  bool scheduled_ = false;  // in the ready queue or being decoded
  bool cancelled_ = false;
  bool paused_ = false;

  // The decode thread that holds scheduled_ only.
  std::unique_ptr<StreamingSession> session_;
  int64_t session_samples_ = 0;          // audio the current session was given
  int64_t utterance_start_samples_ = 0;  // audio of the stream before the current session's

  // The current session's result times: its frame length, and its start in the stream.
  Timing utterance_timing() const {
    return {session_->frame_ms(), utterance_start_samples_ * 1000 / server_->sample_rate};
  }
};

void Stream::decode_pending() {
  for (;;) {
    Job job;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cancelled_ || jobs_.empty()) {
        scheduled_ = false;
        return;
      }
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    try {
      if (!job.end) {
        const int64_t frames_before = session_->frames_decoded();
        Recognition r = session_->accept_waveform(job.samples.data(), job.samples.size());
        session_samples_ += static_cast<int64_t>(job.samples.size());
        if (continuous_ && session_->at_endpoint(server_->options.endpoint)) {
          // One final result per utterance; the next starts with fresh caches, as WeNet's runtime does.
          const Recognition final_result = session_->finish();
          const Timing timing = utterance_timing();
          session_ = std::make_unique<StreamingSession>(server_->recognizer, server_->batcher.get());
          utterance_start_samples_ += session_samples_;
          session_samples_ = 0;
          post([text = nbest_string(final_result, server_->recognizer.units(), nbest_, &timing)](Stream& s) {
            s.send(result_reply("final_result", text));
          });
        } else if (session_->frames_decoded() > frames_before && !r.tokens.empty()) {
          post([text = nbest_string(r, server_->recognizer.units(), nbest_)](Stream& s) {
            s.send(result_reply("partial_result", text));
          });
        }
      } else {
        // A continuous stream that ended right after an endpoint has no
        // utterance left: no final result for it, only the end.
        std::optional<Recognition> final_result;
        if (!continuous_ || session_samples_ > 0) final_result = session_->finish();
        const Timing timing = utterance_timing();
        post([text = final_result ? nbest_string(*final_result, server_->recognizer.units(), nbest_, &timing)
                                  : std::string()](Stream& s) {
          if (!text.empty()) s.send(result_reply("final_result", text));
          s.send(reply("speech_end"));
          s.close_after_sending();
        });
      }
    } catch (const std::exception& e) {
      std::string message = e.what();
      message = message.substr(0, message.find('\n'));
      {
        std::lock_guard<std::mutex> lock(mutex_);
        cancelled_ = true;
        jobs_.clear();
        scheduled_ = false;
      }
      post([message](Stream& s) { s.fail(message); });
      return;
    }
    bool resume = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      pending_samples_ -= static_cast<int64_t>(job.samples.size());
      if (paused_ && static_cast<double>(pending_samples_) <=
                         server_->options.max_buffered_seconds * server_->sample_rate / 2) {
        paused_ = false;
        resume = true;
      }
    }
    if (resume) post([](Stream& s) { s.do_read(); });
  }
}

// A plain HTTP connection: the page, or the upgrade to a WebSocket stream.
class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(AsrServerImpl* server, tcp::socket socket)
      : server_(server), stream_(std::move(socket)) {
    parser_.body_limit(64 * 1024);
    parser_.header_limit(16 * 1024);
  }

  void run() {
    stream_.expires_after(std::chrono::seconds(30));
    http::async_read(stream_, buffer_, parser_,
                     [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
  }

 private:
  void on_read(beast::error_code ec) {
    if (ec) return;  // closed, timed out or not HTTP: the socket closes when this object is released
    http::request<http::string_body> request = parser_.release();
    if (websocket::is_upgrade(request)) {
      stream_.expires_never();
      std::make_shared<Stream>(server_, stream_.release_socket())->start(std::move(request));
      return;
    }
    auto response = std::make_shared<http::response<http::string_body>>();
    response->version(request.version());
    response->keep_alive(false);
    response->set(http::field::server, "moekit");
    const std::string target(request.target());
    if (request.method() != http::verb::get && request.method() != http::verb::head) {
      response->result(http::status::method_not_allowed);
      response->set(http::field::allow, "GET, HEAD");
      response->set(http::field::content_type, "text/plain; charset=utf-8");
      response->body() = "method not allowed: " + printable(std::string(request.method_string())) +
                         " (the server answers GET / and WebSocket streams)\n";
    } else if (target == "/" || target == "/index.html" || target.rfind("/?", 0) == 0) {
      response->result(http::status::ok);
      response->set(http::field::content_type, "text/html; charset=utf-8");
      response->set(http::field::cache_control, "no-store");
      response->body() = asr_web_page(server_->sample_rate);
    } else {
      response->result(http::status::not_found);
      response->set(http::field::content_type, "text/plain; charset=utf-8");
      response->body() = "not found: " + printable(target) + " (the server has / and WebSocket streams)\n";
    }
    response->prepare_payload();
    if (request.method() == http::verb::head) response->body().clear();
    http::async_write(stream_, *response, [self = shared_from_this(), response](beast::error_code, std::size_t) {
      beast::error_code ignored;
      self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    });
  }

  AsrServerImpl* server_;  // outlives every stream and session
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  http::request_parser<http::string_body> parser_;
};

void AsrServerImpl::schedule(std::shared_ptr<Stream> stream) {
  {
    std::lock_guard<std::mutex> lock(queue_mutex);
    ready.push_back(std::move(stream));
  }
  queue_cv.notify_one();
}

// Before the first client: one encoder step of batch_streams streams and one
// of a single stream, two chunks each, on noise. The weights' panels are
// packed, oneDNN's kernels for the steps' shapes compiled and the step
// buffers faulted in now rather than in the first clients' latency (a cold
// server spent its first seconds on them).
void AsrServerImpl::warm_up() {
  torch::NoGradGuard no_grad;
  AsrModel& model = recognizer.model();
  ConformerEncoderImpl& encoder = *model.encoder;
  const torch::Device device = model.ctc->ctc_lo->weight.device();
  const int64_t window = encoder.window_frames(recognizer.options().chunk_size);
  const int64_t dim = model.config().encoder.input_dim;
  torch::Generator noise = at::make_generator<at::CPUGeneratorImpl>(/*seed=*/1);
  for (const int64_t n : {static_cast<int64_t>(options.batch_streams), int64_t{1}}) {
    std::vector<EncoderStreamCache> caches(static_cast<size_t>(n));
    std::vector<EncoderStreamCache*> cache_ptrs;
    for (EncoderStreamCache& cache : caches) cache_ptrs.push_back(&cache);
    for (int chunk = 0; chunk < 2; ++chunk) {
      std::vector<torch::Tensor> feats;
      for (int64_t i = 0; i < n; ++i) feats.push_back(torch::randn({1, window, dim}, noise).to(device));
      for (const torch::Tensor& out : encoder.forward_chunks(feats, cache_ptrs, std::vector<int64_t>(feats.size(), -1)))
        model.ctc_log_probs(out);
    }
  }
}

void AsrServerImpl::worker_loop() {
  for (;;) {
    std::shared_ptr<Stream> stream;
    {
      std::unique_lock<std::mutex> lock(queue_mutex);
      queue_cv.wait(lock, [&] { return workers_stop || !ready.empty(); });
      if (ready.empty()) return;  // stopping, nothing left
      stream = std::move(ready.front());
      ready.pop_front();
    }
    batcher->working(1);
    stream->decode_pending();
    batcher->working(-1);
  }
}

void AsrServerImpl::register_stream(const std::shared_ptr<Stream>& stream) {
  // Drop the entries of streams that are gone, then add this one.
  streams.erase(std::remove_if(streams.begin(), streams.end(), [](const auto& w) { return w.expired(); }),
                streams.end());
  streams.push_back(stream);
}

void AsrServerImpl::do_accept() {
  acceptor.async_accept(ioc, [this](beast::error_code ec, tcp::socket socket) {
    if (stopping || !acceptor.is_open()) return;
    if (!ec) std::make_shared<HttpSession>(this, std::move(socket))->run();
    do_accept();
  });
}

void AsrServerImpl::begin_shutdown() {
  if (stopping) return;
  stopping = true;
  beast::error_code ignored;
  acceptor.close(ignored);
  if (signals) signals->cancel(ignored);
  for (const auto& weak : streams) {
    if (auto stream = weak.lock()) stream->fail("server shutting down");
  }
  // Done when every stream has closed; clients that never answer the
  // closing handshake hold the server 12 s at most.
  shutdown_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(12);
  shutdown_timer.emplace(ioc);
  wait_for_streams();
}

void AsrServerImpl::wait_for_streams() {
  if (open_streams == 0 || std::chrono::steady_clock::now() >= shutdown_deadline) {
    ioc.stop();
    return;
  }
  shutdown_timer->expires_after(std::chrono::milliseconds(20));
  shutdown_timer->async_wait([this](beast::error_code ec) {
    if (!ec) wait_for_streams();
  });
}

AsrServer::AsrServer(const Recognizer& recognizer, AsrServerOptions options) {
  options.validate();
  MOEKIT_CHECK_ARG(recognizer.options().chunk_size > 0, "serve asr needs --chunk-size > 0 (streaming), got ",
                   recognizer.options().chunk_size);
  impl_ = std::make_shared<AsrServerImpl>(recognizer, options);  // (shared only so that stop() can post safely)
  const std::string where = str_cat(options.host, ":", options.port);
  beast::error_code ec;
  const auto address = asio::ip::make_address(options.host, ec);
  MOEKIT_CHECK_ARG(!ec, "--host ", options.host, " is not an IP address");
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(options.port));
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (ec == asio::error::address_in_use)
    throw std::runtime_error(str_cat("cannot listen on ", where, ": the port is in use (choose another with --port)"));
  MOEKIT_CHECK(!ec, "cannot listen on ", where, ": ", ec.message());
  impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  MOEKIT_CHECK(!ec, "cannot listen on ", where, ": ", ec.message());
  impl_->warm_up();  // clients that connect meanwhile wait in the listen queue
}

AsrServer::~AsrServer() = default;

int AsrServer::port() const { return impl_->acceptor.local_endpoint().port(); }

void AsrServer::run(bool handle_signals) {
  AsrServerImpl& s = *impl_;
  if (handle_signals) {
    s.signals.emplace(s.ioc, SIGINT, SIGTERM);
    s.signals->async_wait([&s](beast::error_code ec, int) {
      if (!ec) s.begin_shutdown();
    });
  }
  {
    std::lock_guard<std::mutex> lock(s.queue_mutex);
    s.workers_stop = false;
  }
  std::vector<std::thread> workers;
  for (int i = 0; i < s.worker_threads(); ++i) workers.emplace_back([&s] { s.worker_loop(); });
  s.do_accept();
  s.ioc.run();
  {
    std::lock_guard<std::mutex> lock(s.queue_mutex);
    s.workers_stop = true;
  }
  s.queue_cv.notify_all();
  for (auto& w : workers) w.join();
}

void AsrServer::stop() {
  asio::post(impl_->ioc, [impl = impl_] { impl->begin_shutdown(); });
}

AsrServer::Stats AsrServer::stats() const {
  Stats stats;
  stats.open_streams = impl_->open_streams.load();
  stats.streams_served = impl_->streams_served.load();
  stats.read_pauses = impl_->read_pauses.load();
  stats.encoder_steps = impl_->batcher->steps();
  stats.encoder_chunks = impl_->batcher->chunks();
  return stats;
}

}  // namespace moekit
