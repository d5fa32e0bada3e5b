#pragma once
// Speech recognition with a U2++ model: whole utterances (full context or
// chunk-masked) and streaming sessions. The model's weights are shared and
// read-only; each StreamingSession owns its caches, so any number of
// sessions can decode concurrently on one model.
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moekit/data/units.h"
#include "moekit/decode/ctc_search.h"
#include "moekit/models/asr/asr_model.h"

namespace moekit {

// A stream of samples: appends up to max_samples of them to `out`, returns
// how many (0: the end). AudioReader::read is one.
using SampleSource = std::function<size_t(std::vector<float>& out, size_t max_samples)>;

enum class DecodeMode { CtcGreedy, CtcPrefixBeam, AttentionRescoring };
DecodeMode parse_decode_mode(const std::string& name);  // ctc_greedy_search | ctc_prefix_beam_search | attention_rescoring
std::string decode_mode_name(DecodeMode mode);
// parse_decode_mode, plus "auto": attention rescoring where the model has an
// attention decoder, CTC prefix beam search where it has none.
DecodeMode resolve_decode_mode(const std::string& name, const AsrModel& model);
// Throws what resolve_decode_mode would for an unknown name, before any model is loaded.
void check_decode_mode_name(const std::string& name);

struct DecodeOptions {
  DecodeMode mode = DecodeMode::AttentionRescoring;
  int beam_size = 10;
  int64_t chunk_size = -1;    // encoder frames per chunk; < 0 full context
  int64_t left_chunks = -1;   // chunks of left context; < 0 all
  double ctc_weight = 0.5;    // attention rescoring: weight of the CTC prefix score
  double reverse_weight = -1; // < 0: the model's reverse_weight
  // Long audio, in bounded memory and linear time. Whole-file decoding
  // splits audio longer than this at its quietest 10 ms in the last third
  // of each window and decodes the pieces one by one (full context over an
  // hour would need a T x T attention mask of gigabytes). A streaming
  // session keeps at most this much left context when left_chunks is -1,
  // and ends a segment at the first trailing CTC blank run of
  // kEndpointSeconds after two thirds of it (at its full length at the
  // latest): its attention rescoring and beam then start over, as WeNet's
  // runtime does at endpoints. 0: never (memory grows with the audio).
  double max_segment_seconds = 30;
  static constexpr double kEndpointSeconds = 0.5;
  // A word list (decode/lexicon.h): the CTC prefix beam search, and so
  // attention rescoring, keep to its words. Empty: any unit sequence.
  // CTC greedy search ignores it.
  std::string lexicon;
  // A word n-gram model in ARPA format (decode/ngram_lm.h), fused into the
  // beam search with these weights (see WordContext); needs the lexicon.
  std::string lm;
  double lm_weight = 0.5;
  double word_bonus = 0.0;

  // Largest beam accepted: WeNet decodes with 10; a beam in the millions
  // only burns minutes and gigabytes.
  static constexpr int kMaxBeam = 1000;
  // Throws std::invalid_argument naming the first bad field (as its CLI
  // flag): beam outside [1, kMaxBeam], chunk size 0 or below -1, left
  // chunks below -1, a non-finite or negative weight, a segment length
  // other than 0 or >= 5 s.
  void validate() const;
};

struct Recognition {
  std::vector<int64_t> tokens;
  double score = 0.0;
  std::string text;  // empty without units
  // The hypotheses the search ranked, best first (the first is `tokens`):
  // the CTC prefix beam's, or the rescored ones for attention rescoring;
  // only `tokens` for CTC greedy and for audio decoded in several pieces
  // (streaming: the last segment's, after the earlier segments' tokens).
  std::vector<Hypothesis> nbest;
};

class Recognizer {
 public:
  Recognizer(std::shared_ptr<AsrModel> model, Units units, DecodeOptions options);

  // A waveform (full scale = 1.0) at the model's sample rate.
  Recognition recognize(const std::vector<float>& samples) const;
  // Any audio file libsndfile reads, resampled and mixed to mono, read
  // piece by piece: memory holds one segment of audio, not the file.
  Recognition recognize_file(const std::string& path) const;
  // A stream of samples, decoded as recognize() would decode all of it,
  // holding one segment at a time.
  Recognition recognize_source(const SampleSource& read) const;
  // Features [T, F] (already fbank).
  Recognition recognize_features(const torch::Tensor& feats) const;
  // Decoding of an encoder output [1, T', D] by the configured mode.
  Recognition search(const torch::Tensor& encoder_out) const;

  AsrModel& model() const { return *model_; }
  const Units& units() const { return units_; }
  const DecodeOptions& options() const { return options_; }
  // DecodeOptions::lexicon, read; nullptr without one.
  const std::shared_ptr<const Lexicon>& lexicon() const { return words_.lexicon; }
  // The lexicon and language model the beam searches use.
  const WordContext& word_context() const { return words_; }
  double reverse_weight() const;

 private:
  std::shared_ptr<AsrModel> model_;
  Units units_;
  DecodeOptions options_;
  WordContext words_;
};

// Where whole-file decoding splits `samples` (DecodeOptions::
// max_segment_seconds): none when they are at most max_seconds long (or
// max_seconds is 0); else each cut at the centre of the quietest 10 ms
// frame in the last third of a max_seconds window, no piece after the last
// cut shorter than 1 s.
std::vector<size_t> quiet_split_points(const std::vector<float>& samples, int sample_rate, double max_seconds);

// The pieces quiet_split_points cuts a stream into, handed to `piece` in
// order as soon as each is known, holding at most max_seconds + 1 s of the
// stream (all of it when max_seconds is 0).
void for_each_quiet_piece(const SampleSource& read, int sample_rate, double max_seconds,
                          const std::function<void(const std::vector<float>&)>& piece);

// Attention rescoring of CTC n-best hypotheses with both decoders (WeNet's
// attention_rescoring): every hypothesis with its rescored score, best first
// (ties keep the CTC order).
std::vector<Hypothesis> attention_rescoring_nbest(AsrModel& model, const torch::Tensor& encoder_out,
                                                  const std::vector<Hypothesis>& nbest, double ctc_weight,
                                                  double reverse_weight);
// The best of attention_rescoring_nbest.
Hypothesis attention_rescoring(AsrModel& model, const torch::Tensor& encoder_out,
                               const std::vector<Hypothesis>& nbest, double ctc_weight, double reverse_weight);

// Fbank of a waveform (full scale 1.0) as the model expects it: [T, F].
torch::Tensor model_features(const AsrModel& model, const std::vector<float>& samples);
// Where the model's weights are (CPU or a GPU): features go there, and the
// CTC log-probs come back to the CPU for the searches.
torch::Device model_device(const AsrModel& model);

// When a stream's utterance has ended (WeNet's CtcEndpoint rules): a frame
// is silence when its CTC blank probability exceeds kBlankThreshold (0.8,
// WeNet's); the utterance ends when any rule holds.
struct EndpointRule {
  bool must_decode_something = true;  // only after a non-blank token was decoded
  double min_trailing_silence_ms = 1000;
  double min_utterance_ms = 0;
};
struct EndpointRules {
  static constexpr double kBlankThreshold = 0.8;
  EndpointRule rule1{false, 5000, 0};  // 5 s of silence, even with nothing decoded
  EndpointRule rule2{true, 1000, 0};   // 1 s of silence after speech
  EndpointRule rule3{false, 0, 20000}; // an utterance of 20 s, whatever it holds
};

// Runs a StreamingSession's encoder steps. Without one a session calls the
// encoder itself; a server hands its sessions one that gathers the steps of
// concurrent streams into one batched step (ConformerEncoderImpl::
// forward_chunks), so an MoE layer reads its experts once per batch.
class ChunkEncoder {
 public:
  virtual ~ChunkEncoder() = default;
  // feats [1, t, F] on the model's device -> [1, t', D]; as
  // ConformerEncoderImpl::forward_chunk.
  virtual torch::Tensor encode(const torch::Tensor& feats, EncoderStreamCache& cache, int64_t cache_frames) = 0;
};

class StreamingSession {
 public:
  // options.chunk_size must be > 0; the model must have been trained with
  // chunks (use_dynamic_chunk or static_chunk_size) for good results.
  // `encoder` (not owned; it must outlive the session) runs the encoder
  // steps; nullptr: the session runs them itself.
  explicit StreamingSession(const Recognizer& recognizer, ChunkEncoder* encoder = nullptr);

  // Feeds more samples (full scale 1.0, the model's sample rate); runs every
  // chunk that is complete. Returns the partial result (CTC prefix beam best).
  Recognition accept_waveform(const float* samples, size_t count);
  // Flushes the last partial chunk and returns the final result (by the
  // recognizer's mode; attention rescoring over each segment, see
  // DecodeOptions::max_segment_seconds).
  Recognition finish();
  // Encoder output of the current (after finish(): the last) segment,
  // [1, T', D]; the whole utterance's when it is shorter than 2/3 of
  // max_segment_seconds.
  torch::Tensor encoder_out() const;
  // Whether `rules` say the utterance has ended, from the encoder frames
  // decoded so far (continuous decoding starts a new session there).
  bool at_endpoint(const EndpointRules& rules) const;
  // Encoder frames decoded so far (all segments).
  int64_t frames_decoded() const { return frames_decoded_; }
  // One encoder frame in milliseconds (feature shift x subsampling): the
  // unit of Hypothesis::times, which a session counts from its first frame
  // across segments (empty where the search tracks none: CTC greedy).
  double frame_ms() const { return frame_ms_; }

 private:
  void run_chunks(bool last);
  // Ends the current segment: its final result joins committed_, and the
  // beam and rescoring start over (the encoder cache goes on). finish()
  // keeps the last segment's outputs for encoder_out().
  void end_segment(bool keep_outputs = false);
  Recognition partial() const;
  // h (a hypothesis of the current segment) after the committed segments:
  // tokens, score and (where known) times from the session's first frame.
  Hypothesis joined(const Hypothesis& h) const;
  const Recognizer& recognizer_;
  ChunkEncoder* encoder_;
  std::vector<float> samples_;   // not yet turned into frames
  int64_t samples_consumed_ = 0; // samples before samples_[0] (frame alignment)
  torch::Tensor feats_;          // [T, F] not yet consumed by the encoder
  EncoderStreamCache cache_;
  std::vector<torch::Tensor> outputs_;  // of the current segment
  CtcPrefixBeamSearch beam_;
  std::vector<int64_t> committed_;      // tokens of the segments ended so far
  std::vector<int64_t> committed_times_;  // their frames, while every segment's search tracked them
  bool times_known_ = true;
  std::vector<Hypothesis> last_nbest_;  // finish(): the last segment's ranking, after the earlier tokens
  double committed_score_ = 0.0;
  int64_t segment_frames_ = 0;          // encoder frames in outputs_
  int64_t trailing_blanks_ = 0;         // encoder frames since the last non-blank argmax
  int64_t max_segment_frames_ = 0;      // 0: segments never end early
  int64_t endpoint_frames_ = 1;         // trailing blanks that end a long segment
  int64_t frames_decoded_ = 0;          // encoder frames, all segments
  int64_t trailing_silence_ = 0;        // frames since the last with P(blank) <= kBlankThreshold
  double frame_ms_ = 40;                // one encoder frame
  bool any_output_ = false;             // an encoder frame came out
  bool finished_ = false;
};

}  // namespace moekit
