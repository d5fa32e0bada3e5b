#include "moekit/train/lm_task.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "moekit/core/check.h"
#include "moekit/core/fields.h"
#include "moekit/core/file_io.h"
#include "moekit/data/lm_tokenizer.h"

namespace moekit {

namespace {

const FieldTable<LmDataOptions>& lm_data_fields() {
  using O = LmDataOptions;
  static const auto table = FieldTable<O>("data")
                                .field("seq_len", &O::seq_len, "tokens predicted per window").at_least(1)
                                .field("batch_size", &O::batch_size, "windows per batch").at_least(1)
                                .field("shuffle", &O::shuffle, "shuffle windows each epoch")
                                .field("max_valid_windows", &O::max_valid_windows, "validation windows used (0 = all)")
                                .non_negative();
  return table;
}

}  // namespace

const FieldTable<LmDataOptions>& LmDataOptions::fields() { return lm_data_fields(); }
void LmDataOptions::validate() const { lm_data_fields().validate(*this); }
YAML::Node LmDataOptions::to_yaml() const { return lm_data_fields().write(*this); }
LmDataOptions LmDataOptions::from_yaml(const YAML::Node& n, const std::string& where) {
  return lm_data_fields().parse(n, where);
}

LmTrainTask::LmTrainTask(std::shared_ptr<LmModel> model, std::vector<int64_t> train_stream,
                         std::vector<int64_t> valid_stream, LmDataOptions options, uint64_t seed,
                         std::string tokenizer_path)
    : model_(std::move(model)), train_(std::move(train_stream)), valid_(std::move(valid_stream)),
      options_(options), seed_(seed), tokenizer_path_(std::move(tokenizer_path)) {
  options_.validate();
  const LmConfig& c = model_->config();
  MOEKIT_CHECK_ARG(options_.seq_len <= c.max_seq_len, "data: seq_len ", options_.seq_len,
                   " exceeds the model's max_seq_len ", c.max_seq_len);
  for (const auto* stream : {&train_, &valid_})
    for (int64_t id : *stream)
      MOEKIT_CHECK_ARG(id >= 0 && id < c.vocab_size, "data: token id ", id, " is outside the model's vocabulary of ",
                       c.vocab_size, " (a tokenizer other than the model's?)");
  const int64_t window = options_.seq_len + 1;
  MOEKIT_CHECK_ARG(static_cast<int64_t>(train_.size()) >= window * options_.batch_size, "data: the training text has ",
                   train_.size(), " tokens, fewer than one batch (", options_.batch_size, " x ", window, ")");
  MOEKIT_CHECK_ARG(static_cast<int64_t>(valid_.size()) >= window, "data: the validation text has ", valid_.size(),
                   " tokens, fewer than one window of ", window);
}

int64_t LmTrainTask::num_batches(int64_t) {
  const int64_t windows = (static_cast<int64_t>(train_.size()) - 1) / options_.seq_len;
  return windows / options_.batch_size;
}

torch::Tensor LmTrainTask::windows(const std::vector<int64_t>& stream, const std::vector<int64_t>& starts) const {
  const int64_t window = options_.seq_len + 1;
  torch::Tensor batch = torch::empty({static_cast<int64_t>(starts.size()), window}, torch::kLong);
  int64_t* out = batch.data_ptr<int64_t>();
  for (size_t i = 0; i < starts.size(); ++i)
    std::copy_n(stream.begin() + starts[i], window, out + static_cast<int64_t>(i) * window);
  return batch;
}

BatchLoss LmTrainTask::train_batch(int64_t epoch, int64_t index) {
  if (order_epoch_ != epoch) {
    const int64_t count = (static_cast<int64_t>(train_.size()) - 1) / options_.seq_len;
    order_.resize(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) order_[static_cast<size_t>(i)] = i * options_.seq_len;
    if (options_.shuffle) {
      std::mt19937_64 rng(seed_ * 1000003ULL + static_cast<uint64_t>(epoch));
      std::shuffle(order_.begin(), order_.end(), rng);
    }
    order_epoch_ = epoch;
  }
  const auto first = order_.begin() + index * options_.batch_size;
  const std::vector<int64_t> starts(first, first + options_.batch_size);
  const LmLoss loss = model_->loss(windows(train_, starts).to(device_));
  BatchLoss out;
  out.loss = loss.loss;
  out.parts["ce"] = loss.ce.item<double>();
  if (model_->config().moe.enabled()) out.parts["aux"] = loss.aux.item<double>();
  out.units = tokens_per_batch();
  return out;
}

std::map<std::string, double> LmTrainTask::validate() {
  int64_t count = (static_cast<int64_t>(valid_.size()) - 1) / options_.seq_len;
  if (options_.max_valid_windows > 0) count = std::min(count, options_.max_valid_windows);
  double total = 0;
  int64_t tokens = 0;
  for (int64_t first = 0; first < count; first += options_.batch_size) {
    std::vector<int64_t> starts;
    for (int64_t i = first; i < std::min(count, first + options_.batch_size); ++i) starts.push_back(i * options_.seq_len);
    const LmLoss loss = model_->loss(windows(valid_, starts).to(device_));
    const int64_t n = static_cast<int64_t>(starts.size()) * options_.seq_len;
    total += loss.ce.item<double>() * static_cast<double>(n);
    tokens += n;
  }
  const double ce = total / static_cast<double>(tokens);
  return {{"loss", ce}, {"ppl", std::exp(ce)}};
}

void LmTrainTask::save_assets(const std::string& model_dir) {
  if (!tokenizer_path_.empty()) copy_lm_tokenizer(tokenizer_path_, model_dir);
}

double LmTrainTask::flops_per_unit() const {
  // Forward + backward = 3 x forward; attention at the mean context of a window.
  return 3.0 * model_->config().forward_flops_per_token((options_.seq_len + 1) / 2);
}

}  // namespace moekit
