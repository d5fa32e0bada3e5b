#pragma once
// Seq2seq training for the shared trainer: sentence pairs of several tasks,
// mixed by temperature sampling (p_task proportional to n_task^(1/T), the
// task-level MoE paper's T = 5: small tasks are seen more often than their
// share), grouped into batches of similar length up to a token budget, with
// label-smoothed cross entropy plus the MoE load-balancing loss. Epochs are
// deterministic per seed and epoch, so a resumed run sees the same batches.
#include <memory>
#include <string>
#include <vector>

#include "moekit/data/parallel_data.h"
#include "moekit/decode/seq2seq_search.h"
#include "moekit/models/seq2seq/seq2seq_model.h"
#include "moekit/train/trainer.h"

namespace moekit {

template <class Options>
class FieldTable;

struct Seq2seqDataOptions {
  int64_t max_tokens = 4096;       // per batch: sentences x (longest source + longest target)
  int64_t max_source_len = 128;    // longer pairs are left out of training (counted in the log)
  int64_t max_target_len = 128;
  double temperature = 5.0;        // task sampling temperature (1 = proportional to data)
  double label_smoothing = 0.1;
  int64_t max_valid_sentences = 0; // validation pairs used (0 = all)

  static const FieldTable<Seq2seqDataOptions>& fields();
  void validate() const;
  YAML::Node to_yaml() const;
  static Seq2seqDataOptions from_yaml(const YAML::Node& node, const std::string& where);
};

class Seq2seqTrainTask : public TrainTask {
 public:
  // `tokenizer_path` is copied into every checkpoint and the final model.
  Seq2seqTrainTask(std::shared_ptr<Seq2seqModel> model, std::vector<ParallelExample> train,
                   std::vector<ParallelExample> valid, Seq2seqDataOptions options, uint64_t seed,
                   std::string tokenizer_path);

  Model& model() override { return *model_; }
  int64_t num_batches(int64_t epoch) override;
  BatchLoss train_batch(int64_t epoch, int64_t index) override;
  std::map<std::string, double> validate() override;  // loss (= nll), ppl
  void save_assets(const std::string& model_dir) override;
  std::string units_name() const override { return "tokens"; }

  // Word-level distillation (Kim & Rush, 2016): the loss becomes
  //   (1 - weight) * label-smoothed CE + weight * KL(teacher || student)
  // per target token, the teacher's distribution from its forward on the
  // same batch (eval mode, no gradient). weight in (0, 1].
  void set_teacher(std::shared_ptr<Seq2seqModel> teacher, double weight);

  // Sampling probability of each task.
  std::vector<double> task_probabilities() const;
  // The batches of an epoch (indices into the training pairs).
  const std::vector<std::vector<int64_t>>& batches(int64_t epoch);
  int64_t skipped_too_long() const { return skipped_; }

 private:
  struct Tensors {
    torch::Tensor src, src_lens, task, tgt, tgt_lens;
  };
  Tensors collate(const std::vector<ParallelExample>& pool, const std::vector<int64_t>& index) const;
  std::vector<std::vector<int64_t>> make_batches(const std::vector<ParallelExample>& pool,
                                                 std::vector<int64_t> order) const;

  std::shared_ptr<Seq2seqModel> model_, teacher_;
  double kd_weight_ = 0.0;
  std::vector<ParallelExample> train_, valid_;
  Seq2seqDataOptions options_;
  uint64_t seed_;
  std::string tokenizer_path_;
  std::vector<std::vector<int64_t>> by_task_;  // usable training pairs of each task
  int64_t usable_ = 0, skipped_ = 0;
  int64_t batches_epoch_ = -1;
  std::vector<std::vector<int64_t>> batches_;
};

// Sequence-level distillation's data: each pair's target replaced by the
// teacher's best beam-search translation of its source (</s> appended);
// pairs whose translation comes back empty keep their reference.
std::vector<ParallelExample> teacher_targets(Seq2seqModel& teacher, const std::vector<ParallelExample>& pairs,
                                             const SearchOptions& search, int64_t batch_size);

// Copies every weight of `teacher` whose name and shape the student also
// has (embeddings, attention, norms, dense FFNs: the non-expert weights
// when the student is the teacher's architecture without MoE); returns the
// names copied.
std::vector<std::string> init_student_from_teacher(Seq2seqModel& student, const Seq2seqModel& teacher);

}  // namespace moekit
