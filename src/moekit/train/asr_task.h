#pragma once
// Training data and losses of the U2++ recognizer for the shared trainer:
// audio loaded once, fbank (dither when configured), length-sorted batches
// under a frame budget, SpecAugment, the joint CTC + attention objective.
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

 private:
  struct Example {
    std::string key, text;
    std::vector<float> samples;
    torch::Tensor feats;  // [T, F] without dither
    std::vector<int64_t> tokens;
  };
  std::vector<Example> load(const std::vector<Utterance>& data, const char* what);
  std::vector<std::vector<size_t>> make_batches(const std::vector<Example>& set, int64_t epoch, bool shuffle) const;
  torch::Tensor features(const Example& e, bool train) const;
  AsrLosses forward(const std::vector<Example>& set, const std::vector<size_t>& batch, bool train);

  std::shared_ptr<AsrModel> model_;
  Units units_;
  std::shared_ptr<const SentencePieceTokenizer> sentencepiece_;  // null: character units
  AsrDataOptions options_;
  uint64_t seed_;
  std::vector<Example> train_, cv_;
  int64_t batches_epoch_ = -1;
  std::vector<std::vector<size_t>> batches_;
};

}  // namespace moekit
