#pragma once
// Training data and losses of the U2++ recognizer for the shared trainer:
// audio read once to check it, count its frames and compute the global CMVN,
// then held in memory while it fits in `in_memory_mb` and otherwise read
// again for each batch (so a corpus larger than memory trains, with the same
// batches and the same results); fbank (dither when configured),
// length-sorted batches under a frame budget, SpecAugment, the joint CTC +
// attention objective.
#include <memory>
#include <string>
#include <vector>

#include "moekit/data/asr_data.h"
#include "moekit/data/sentencepiece.h"
#include "moekit/models/asr/asr_model.h"
#include "moekit/train/trainer.h"

namespace moekit {

template <class Options>
class FieldTable;

struct AsrDataOptions {
  int64_t batch_size = 16;             // utterances per batch at most
  int64_t max_frames_in_batch = 12000; // padded feature frames per batch at most
  bool spec_aug = true;
  int64_t num_t_mask = 2, num_f_mask = 2, max_t = 50, max_f = 10;
  bool shuffle = true;
  // Audio (or features) held in memory when the set takes at most this many
  // MB; a larger set's files are read again for each batch.
  int64_t in_memory_mb = 4096;

  // The field table (core/fields.h) behind to_yaml / from_yaml; from_yaml
  // refuses unknown keys (naming the closest known one) and checks ranges.
  static const FieldTable<AsrDataOptions>& fields();
  YAML::Node to_yaml() const;
  static AsrDataOptions from_yaml(const YAML::Node& node, const std::string& where);
};

// Error rates over a set: edits / reference length, in characters and words.
struct ErrorRates {
  int64_t char_edits = 0, chars = 0, word_edits = 0, words = 0;
  double cer() const { return chars ? static_cast<double>(char_edits) / chars : 0.0; }
  double wer() const { return words ? static_cast<double>(word_edits) / words : 0.0; }
  void add(const std::string& reference, const std::string& hypothesis);
};

class AsrTrainTask : public TrainTask {
 public:
  AsrTrainTask(std::shared_ptr<AsrModel> model, Units units, const std::vector<Utterance>& train,
               const std::vector<Utterance>& cv, AsrDataOptions options, uint64_t seed,
               std::shared_ptr<const SentencePieceTokenizer> sentencepiece = nullptr);

  Model& model() override { return *model_; }
  int64_t num_batches(int64_t epoch) override;
  BatchLoss train_batch(int64_t epoch, int64_t index) override;
  std::map<std::string, double> validate() override;  // loss, ctc, att, cer (CTC greedy)
  void save_assets(const std::string& model_dir) override;

  // Bytes of audio and features held in memory (0 when every batch reads
  // its files).
  int64_t held_bytes() const;

 private:
  struct Example {
    std::string key, text, wav;
    int64_t frames = 0;           // fbank frames
    std::vector<int64_t> tokens;
    std::vector<float> samples;  // held: what dithered features are made from
    torch::Tensor feats;         // held: [T, F] without dither
  };
  // `train`: the training set (its features' sums give the CMVN; dithered
  // features need the samples).
  std::vector<Example> load(const std::vector<Utterance>& data, const char* what, bool train);
  std::vector<std::vector<size_t>> make_batches(const std::vector<Example>& set, int64_t epoch, bool shuffle) const;
  // The utterance's samples read from its file again.
  std::vector<float> read_samples(const Example& e) const;
  // Held or made from the file (an error naming the file if it no longer
  // gives the frames it gave at the start); dither and SpecAugment in training.
  torch::Tensor features(const Example& e, bool train) const;
  AsrLosses forward(const std::vector<Example>& set, const std::vector<size_t>& batch, bool train);

  std::shared_ptr<AsrModel> model_;
  Units units_;
  std::shared_ptr<const SentencePieceTokenizer> sentencepiece_;  // null: character units
  AsrDataOptions options_;
  uint64_t seed_;
  std::vector<Example> train_, cv_;
  torch::Tensor feat_sum_, feat_sum_sq_;  // over the training features, float64
  int64_t feat_frames_ = 0;
  int64_t batches_epoch_ = -1;
  std::vector<std::vector<size_t>> batches_;
};

}  // namespace moekit
