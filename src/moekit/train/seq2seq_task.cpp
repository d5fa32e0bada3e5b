#include "moekit/train/seq2seq_task.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "moekit/core/check.h"
#include "moekit/core/fields.h"
#include "moekit/core/file_io.h"
#include "moekit/core/mapped_tensors.h"

namespace moekit {
namespace {

const FieldTable<Seq2seqDataOptions>& seq2seq_data_fields() {
  using O = Seq2seqDataOptions;
  static const auto table =
      FieldTable<O>("data")
          .field("max_tokens", &O::max_tokens, "per batch: sentences x (longest source + longest target)")
          .in_range(2, 1 << 24)
          .field("max_source_len", &O::max_source_len, "longer pairs are left out of training").in_range(2, 1 << 16)
          .field("max_target_len", &O::max_target_len, "longer pairs are left out of training").in_range(1, 1 << 16)
          .field("temperature", &O::temperature, "task sampling temperature (1 = proportional)").in_range(0.01, 1000)
          .field("label_smoothing", &O::label_smoothing, "label smoothing of the cross entropy").in_range(0, 0.99)
          .field("max_valid_sentences", &O::max_valid_sentences, "validation pairs used (0 = all)").non_negative()
          .rule([](const O& o) {
            return o.max_tokens >= o.max_source_len + o.max_target_len
                       ? std::string()
                       : str_cat("max_tokens ", o.max_tokens, " cannot hold one pair of max_source_len + ",
                                 "max_target_len = ", o.max_source_len + o.max_target_len);
          });
  return table;
}

int64_t len_of(const std::vector<int64_t>& v) { return static_cast<int64_t>(v.size()); }

}  // namespace

const FieldTable<Seq2seqDataOptions>& Seq2seqDataOptions::fields() { return seq2seq_data_fields(); }
void Seq2seqDataOptions::validate() const { seq2seq_data_fields().validate(*this); }
YAML::Node Seq2seqDataOptions::to_yaml() const { return seq2seq_data_fields().write(*this); }
Seq2seqDataOptions Seq2seqDataOptions::from_yaml(const YAML::Node& n, const std::string& where) {
  return seq2seq_data_fields().parse(n, where);
}

Seq2seqTrainTask::Seq2seqTrainTask(std::shared_ptr<Seq2seqModel> model, std::vector<ParallelExample> train,
                                   std::vector<ParallelExample> valid, Seq2seqDataOptions options, uint64_t seed,
                                   std::string tokenizer_path)
    : model_(std::move(model)), train_(std::move(train)), valid_(std::move(valid)), options_(options), seed_(seed),
      tokenizer_path_(std::move(tokenizer_path)) {
  options_.validate();
  const Seq2seqConfig& c = model_->config();
  const int64_t tasks = std::max<int64_t>(1, static_cast<int64_t>(c.tasks.size()));
  for (const auto* pool : {&train_, &valid_}) {
    for (const ParallelExample& e : *pool) {
      MOEKIT_CHECK_ARG(e.task >= 0 && e.task < tasks, "data: task id ", e.task, " is outside the model's ", tasks,
                       " tasks");
      MOEKIT_CHECK_ARG(!e.source.empty() && !e.target.empty(), "data: an empty source or target");
      for (const auto* ids : {&e.source, &e.target}) {
        for (int64_t id : *ids) {
          MOEKIT_CHECK_ARG(id >= 0 && id < c.vocab_size, "data: token id ", id, " is outside the model's vocabulary of ",
                           c.vocab_size, " (a tokenizer other than the model's?)");
        }
      }
    }
  }
  by_task_.assign(static_cast<size_t>(tasks), {});
  for (size_t i = 0; i < train_.size(); ++i) {
    const ParallelExample& e = train_[i];
    if (len_of(e.source) > options_.max_source_len || len_of(e.target) > options_.max_target_len) {
      ++skipped_;
      continue;
    }
    by_task_[static_cast<size_t>(e.task)].push_back(static_cast<int64_t>(i));
    ++usable_;
  }
  MOEKIT_CHECK_ARG(usable_ > 0, "data: no training pair fits max_source_len ", options_.max_source_len,
                   " and max_target_len ", options_.max_target_len);
  MOEKIT_CHECK_ARG(!valid_.empty(), "data: no validation pairs");
}

std::vector<double> Seq2seqTrainTask::task_probabilities() const {
  std::vector<double> p(by_task_.size());
  double sum = 0;
  for (size_t t = 0; t < by_task_.size(); ++t) {
    const double share = static_cast<double>(by_task_[t].size()) / static_cast<double>(usable_);
    p[t] = share > 0 ? std::pow(share, 1.0 / options_.temperature) : 0.0;
    sum += p[t];
  }
  for (double& v : p) v /= sum;
  return p;
}

std::vector<std::vector<int64_t>> Seq2seqTrainTask::make_batches(const std::vector<ParallelExample>& pool,
                                                                 std::vector<int64_t> order) const {
  // Similar lengths together (stable: `order`'s shuffle breaks ties), then
  // greedy batches under the token budget.
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const auto& x = pool[static_cast<size_t>(a)];
    const auto& y = pool[static_cast<size_t>(b)];
    return std::make_pair(len_of(x.source), len_of(x.target)) < std::make_pair(len_of(y.source), len_of(y.target));
  });
  std::vector<std::vector<int64_t>> batches;
  std::vector<int64_t> current;
  int64_t src_max = 0, tgt_max = 0;
  for (int64_t i : order) {
    const auto& e = pool[static_cast<size_t>(i)];
    const int64_t s = std::max(src_max, len_of(e.source)), t = std::max(tgt_max, len_of(e.target));
    if (!current.empty() && static_cast<int64_t>(current.size() + 1) * (s + t) > options_.max_tokens) {
      batches.push_back(std::move(current));
      current.clear();
      src_max = tgt_max = 0;
    }
    current.push_back(i);
    src_max = std::max(src_max, len_of(e.source));
    tgt_max = std::max(tgt_max, len_of(e.target));
  }
  if (!current.empty()) batches.push_back(std::move(current));
  return batches;
}

const std::vector<std::vector<int64_t>>& Seq2seqTrainTask::batches(int64_t epoch) {
  if (batches_epoch_ == epoch) return batches_;
  std::mt19937_64 rng(seed_ * 1000003ULL + static_cast<uint64_t>(epoch));
  // An epoch draws as many pairs as there are: the task by temperature,
  // then the task's next pair in a per-task shuffled cycle.
  const std::vector<double> p = task_probabilities();
  std::discrete_distribution<size_t> pick_task(p.begin(), p.end());
  std::vector<std::vector<int64_t>> cycle = by_task_;
  std::vector<size_t> next(cycle.size(), 0);
  for (auto& c : cycle) std::shuffle(c.begin(), c.end(), rng);
  std::vector<int64_t> drawn;
  drawn.reserve(static_cast<size_t>(usable_));
  for (int64_t n = 0; n < usable_; ++n) {
    const size_t t = pick_task(rng);
    if (next[t] == cycle[t].size()) {
      std::shuffle(cycle[t].begin(), cycle[t].end(), rng);
      next[t] = 0;
    }
    drawn.push_back(cycle[t][next[t]++]);
  }
  batches_ = make_batches(train_, std::move(drawn));
  std::shuffle(batches_.begin(), batches_.end(), rng);
  batches_epoch_ = epoch;
  return batches_;
}

int64_t Seq2seqTrainTask::num_batches(int64_t epoch) { return static_cast<int64_t>(batches(epoch).size()); }

Seq2seqTrainTask::Tensors Seq2seqTrainTask::collate(const std::vector<ParallelExample>& pool,
                                                    const std::vector<int64_t>& index) const {
  const Seq2seqConfig& c = model_->config();
  const int64_t batch = static_cast<int64_t>(index.size());
  int64_t src_max = 0, tgt_max = 0;
  for (int64_t i : index) {
    src_max = std::max(src_max, len_of(pool[static_cast<size_t>(i)].source));
    tgt_max = std::max(tgt_max, len_of(pool[static_cast<size_t>(i)].target));
  }
  Tensors t;
  t.src = torch::full({batch, src_max}, c.pad_id, torch::kLong);
  t.tgt = torch::full({batch, tgt_max}, c.pad_id, torch::kLong);
  t.src_lens = torch::empty({batch}, torch::kLong);
  t.tgt_lens = torch::empty({batch}, torch::kLong);
  t.task = torch::empty({batch}, torch::kLong);
  int64_t* src = t.src.data_ptr<int64_t>();
  int64_t* tgt = t.tgt.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    const ParallelExample& e = pool[static_cast<size_t>(index[static_cast<size_t>(b)])];
    std::copy(e.source.begin(), e.source.end(), src + b * src_max);
    std::copy(e.target.begin(), e.target.end(), tgt + b * tgt_max);
    t.src_lens[b] = len_of(e.source);
    t.tgt_lens[b] = len_of(e.target);
    t.task[b] = e.task;
  }
  if (c.tasks.empty()) t.task = torch::Tensor();
  if (device_.is_cpu()) return t;
  for (torch::Tensor* x : {&t.src, &t.tgt, &t.src_lens, &t.tgt_lens, &t.task})
    if (x->defined()) *x = x->to(device_);
  return t;
}

void Seq2seqTrainTask::set_teacher(std::shared_ptr<Seq2seqModel> teacher, double weight) {
  MOEKIT_CHECK_ARG(weight > 0.0 && weight <= 1.0, "distill: the distillation weight must be in (0, 1], got ", weight);
  MOEKIT_CHECK_ARG(teacher && teacher->config().vocab_size == model_->config().vocab_size,
                   "distill: the teacher's vocabulary differs from the student's");
  MOEKIT_CHECK_ARG(teacher->config().tasks == model_->config().tasks,
                   "distill: the teacher's tasks differ from the student's");
  teacher_ = std::move(teacher);
  teacher_->eval();
  kd_weight_ = weight;
}

BatchLoss Seq2seqTrainTask::train_batch(int64_t epoch, int64_t index) {
  const std::vector<int64_t>& rows = batches(epoch).at(static_cast<size_t>(index));
  const Tensors t = collate(train_, rows);
  const Seq2seqLoss loss = model_->loss(t.src, t.src_lens, t.task, t.tgt, t.tgt_lens, options_.label_smoothing);
  BatchLoss out;
  out.loss = loss.loss;
  if (teacher_) {
    torch::Tensor teacher_logp;
    {
      torch::NoGradGuard no_grad;
      const Seq2seqLoss tl = teacher_->loss(t.src, t.src_lens, t.task, t.tgt, t.tgt_lens, 0.0);
      teacher_logp = torch::log_softmax(tl.logits, -1);
    }
    // A teacher mapped from its file (distill) and rewritten in place would
    // teach a mix of two models: the batch fails before its update.
    check_mapped_files_unchanged("distillation's teacher");
    const torch::Tensor student_logp = torch::log_softmax(loss.logits, -1);
    const torch::Tensor kl_per_token = (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1);  // [B * L]
    const torch::Tensor kl = kl_per_token.masked_select(loss.valid).mean();
    out.loss = (1.0 - kd_weight_) * (loss.loss - loss.aux) + kd_weight_ * kl + loss.aux;
    out.parts["kl"] = kl.item<double>();
  }
  out.parts["nll"] = loss.nll.item<double>();
  if (model_->config().moe.enabled()) out.parts["aux"] = loss.aux.item<double>();
  out.units = loss.tokens;
  return out;
}

std::map<std::string, double> Seq2seqTrainTask::validate() {
  int64_t count = static_cast<int64_t>(valid_.size());
  if (options_.max_valid_sentences > 0) count = std::min(count, options_.max_valid_sentences);
  std::vector<int64_t> order(static_cast<size_t>(count));
  std::iota(order.begin(), order.end(), 0);
  double total = 0;
  int64_t tokens = 0;
  for (const auto& rows : make_batches(valid_, order)) {
    const Tensors t = collate(valid_, rows);
    const Seq2seqLoss loss = model_->loss(t.src, t.src_lens, t.task, t.tgt, t.tgt_lens, 0.0);
    total += loss.nll.item<double>() * static_cast<double>(loss.tokens);
    tokens += loss.tokens;
  }
  const double nll = total / static_cast<double>(std::max<int64_t>(tokens, 1));
  return {{"loss", nll}, {"ppl", std::exp(nll)}};
}

std::vector<ParallelExample> teacher_targets(Seq2seqModel& teacher, const std::vector<ParallelExample>& pairs,
                                             const SearchOptions& search, int64_t batch_size) {
  MOEKIT_CHECK_ARG(batch_size >= 1, "distill: batch size must be >= 1");
  const Seq2seqConfig& c = teacher.config();
  teacher.eval();
  std::vector<ParallelExample> out = pairs;
  std::vector<size_t> order(pairs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return pairs[a].source.size() < pairs[b].source.size(); });
  for (size_t first = 0; first < order.size(); first += static_cast<size_t>(batch_size)) {
    const size_t count = std::min(order.size() - first, static_cast<size_t>(batch_size));
    int64_t longest = 0;
    for (size_t k = 0; k < count; ++k) longest = std::max(longest, len_of(pairs[order[first + k]].source));
    torch::Tensor src = torch::full({static_cast<int64_t>(count), longest}, c.pad_id, torch::kLong);
    torch::Tensor lens = torch::empty({static_cast<int64_t>(count)}, torch::kLong);
    torch::Tensor task = torch::empty({static_cast<int64_t>(count)}, torch::kLong);
    for (size_t k = 0; k < count; ++k) {
      const ParallelExample& e = pairs[order[first + k]];
      std::copy(e.source.begin(), e.source.end(), src.data_ptr<int64_t>() + static_cast<int64_t>(k) * longest);
      lens[static_cast<int64_t>(k)] = len_of(e.source);
      task[static_cast<int64_t>(k)] = e.task;
    }
    const auto hyps = translate_batch(teacher, src, lens, c.tasks.empty() ? torch::Tensor() : task, search);
    for (size_t k = 0; k < count; ++k) {
      if (hyps[k].empty() || hyps[k][0].tokens.empty()) continue;
      std::vector<int64_t> target = hyps[k][0].tokens;
      target.push_back(c.eos_id);
      out[order[first + k]].target = std::move(target);
    }
  }
  return out;
}

std::vector<std::string> init_student_from_teacher(Seq2seqModel& student, const Seq2seqModel& teacher) {
  torch::NoGradGuard no_grad;
  const auto from = teacher.named_parameters();
  std::vector<std::string> copied;
  for (auto& item : student.named_parameters()) {
    const torch::Tensor* t = from.find(item.key());
    if (t && t->sizes() == item.value().sizes()) {
      item.value().copy_(*t);
      copied.push_back(item.key());
    }
  }
  return copied;
}

void Seq2seqTrainTask::save_assets(const std::string& model_dir) {
  if (!tokenizer_path_.empty()) write_file_atomic(model_dir + "/tokenizer.model", read_file(tokenizer_path_));
}

}  // namespace moekit
