#pragma once
// Speech recognition with a U2++ model: whole utterances (full context or
// chunk-masked) and streaming sessions. The model's weights are shared and
// read-only; each StreamingSession owns its caches, so any number of
// sessions can decode concurrently on one model.
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "moekit/data/units.h"
#include "moekit/decode/ctc_search.h"
#include "moekit/models/asr/asr_model.h"

namespace moekit {

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
};

struct Recognition {
  std::vector<int64_t> tokens;
  double score = 0.0;
  std::string text;  // empty without units
};

class Recognizer {
 public:
  Recognizer(std::shared_ptr<AsrModel> model, Units units, DecodeOptions options);

  // A waveform (full scale = 1.0) at the model's sample rate.
  Recognition recognize(const std::vector<float>& samples) const;
  // Any audio file libsndfile reads, resampled and mixed to mono.
  Recognition recognize_file(const std::string& path) const;
  // Features [T, F] (already fbank).
  Recognition recognize_features(const torch::Tensor& feats) const;
  // Decoding of an encoder output [1, T', D] by the configured mode.
  Recognition search(const torch::Tensor& encoder_out) const;

  AsrModel& model() const { return *model_; }
  const Units& units() const { return units_; }
  const DecodeOptions& options() const { return options_; }
  double reverse_weight() const;

 private:
  std::shared_ptr<AsrModel> model_;
  Units units_;
  DecodeOptions options_;
};

// Attention rescoring of CTC n-best hypotheses with both decoders (WeNet's
// attention_rescoring): returns the best hypothesis and its score.
Hypothesis attention_rescoring(AsrModel& model, const torch::Tensor& encoder_out,
                               const std::vector<Hypothesis>& nbest, double ctc_weight, double reverse_weight);

// Fbank of a waveform (full scale 1.0) as the model expects it: [T, F].
torch::Tensor model_features(const AsrModel& model, const std::vector<float>& samples);
// Where the model's weights are (CPU or a GPU): features go there, and the
// CTC log-probs come back to the CPU for the searches.
torch::Device model_device(const AsrModel& model);

class StreamingSession {
 public:
  // options.chunk_size must be > 0; the model must have been trained with
  // chunks (use_dynamic_chunk or static_chunk_size) for good results.
  explicit StreamingSession(const Recognizer& recognizer);

  // Feeds more samples (full scale 1.0, the model's sample rate); runs every
  // chunk that is complete. Returns the partial result (CTC prefix beam best).
  Recognition accept_waveform(const float* samples, size_t count);
  // Flushes the last partial chunk and returns the final result (by the
  // recognizer's mode; attention rescoring over the whole utterance).
  Recognition finish();
  // Encoder output so far, [1, T', D].
  torch::Tensor encoder_out() const;

 private:
  void run_chunks(bool last);
  Recognition partial() const;
  const Recognizer& recognizer_;
  std::vector<float> samples_;   // not yet turned into frames
  int64_t samples_consumed_ = 0; // samples before samples_[0] (frame alignment)
  torch::Tensor feats_;          // [T, F] not yet consumed by the encoder
  EncoderStreamCache cache_;
  std::vector<torch::Tensor> outputs_;
  CtcPrefixBeamSearch beam_;
  std::vector<int64_t> greedy_;
  bool finished_ = false;
};

}  // namespace moekit
