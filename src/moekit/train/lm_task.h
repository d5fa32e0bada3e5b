#pragma once
// Language-model pretraining for the shared trainer: the tokenized corpus
// is one stream of ids (documents separated by </s>), cut into windows of
// seq_len + 1 tokens that are shuffled per epoch (deterministically, by seed
// and epoch, so a resumed run sees the same batches).
#include <memory>
#include <string>
#include <vector>

#include "moekit/models/lm/lm_model.h"
#include "moekit/train/trainer.h"

namespace moekit {

template <class Options>
class FieldTable;

struct LmDataOptions {
  int64_t seq_len = 256;        // tokens predicted per window
  int64_t batch_size = 16;      // windows per batch
  bool shuffle = true;          // shuffle windows each epoch
  int64_t max_valid_windows = 0;  // validation windows used (0 = all)

  // The field table (core/fields.h) behind the functions below.
  static const FieldTable<LmDataOptions>& fields();
  void validate() const;
  YAML::Node to_yaml() const;
  // Unknown keys are refused (naming the closest known one); calls validate().
  static LmDataOptions from_yaml(const YAML::Node& node, const std::string& where);
};

class LmTrainTask : public TrainTask {
 public:
  // `tokenizer_path` is copied into every checkpoint and the final model (empty: none).
  LmTrainTask(std::shared_ptr<LmModel> model, std::vector<int64_t> train_stream, std::vector<int64_t> valid_stream,
              LmDataOptions options, uint64_t seed, std::string tokenizer_path);

  Model& model() override { return *model_; }
  int64_t num_batches(int64_t epoch) override;
  BatchLoss train_batch(int64_t epoch, int64_t index) override;
  std::map<std::string, double> validate() override;  // loss (= ce), ppl
  void save_assets(const std::string& model_dir) override;
  std::string units_name() const override { return "tokens"; }
  double flops_per_unit() const override;

  int64_t tokens_per_batch() const { return options_.batch_size * options_.seq_len; }

 private:
  torch::Tensor windows(const std::vector<int64_t>& stream, const std::vector<int64_t>& starts) const;

  std::shared_ptr<LmModel> model_;
  std::vector<int64_t> train_, valid_;
  LmDataOptions options_;
  uint64_t seed_;
  std::string tokenizer_path_;
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;  // window starts of order_epoch_, shuffled
};

}  // namespace moekit
