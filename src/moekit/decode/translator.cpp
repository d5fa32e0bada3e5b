#include "moekit/decode/translator.h"

#include <algorithm>
#include <numeric>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/data/parallel_data.h"

namespace moekit {

Translator::Translator(std::shared_ptr<Seq2seqModel> model, std::shared_ptr<const LmTokenizer> tokenizer,
                       TranslateOptions options)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)), options_(options) {
  options_.search.validate();
  MOEKIT_CHECK_ARG(options_.batch_size >= 1 && options_.batch_size <= 4096, "translate: batch size must be in [1, 4096], got ",
                   options_.batch_size);
  MOEKIT_CHECK_ARG(options_.max_input_tokens >= 3 && options_.max_input_tokens <= 100000,
                   "translate: max input tokens must be in [3, 100000], got ", options_.max_input_tokens);
  const Seq2seqConfig& c = model_->config();
  MOEKIT_CHECK_ARG(tokenizer_->vocab_size() == c.vocab_size, tokenizer_->path(), ": the tokenizer has ",
                   tokenizer_->vocab_size(), " pieces but the model's vocabulary is ", c.vocab_size,
                   " (not the model's tokenizer)");
  MOEKIT_CHECK_ARG(tokenizer_->eos_id() == c.eos_id, tokenizer_->path(), ": the tokenizer's </s> is id ",
                   tokenizer_->eos_id(), ", the model's eos_id ", c.eos_id, " (not the model's tokenizer)");
  for (const std::string& task : tasks()) {
    MOEKIT_CHECK_ARG(tokenizer_->id_of(Seq2seqConfig::task_tag(task)) >= 0, tokenizer_->path(), ": no piece ",
                     Seq2seqConfig::task_tag(task), " for the model's task '", task, "' (not the model's tokenizer)");
  }
}

std::vector<std::string> Translator::tasks() const {
  const Seq2seqConfig& c = model_->config();
  if (!c.extracted_task.empty()) return {c.extracted_task};
  return c.tasks;
}

void Translator::check_task(const std::string& task) const {
  const Seq2seqConfig& c = model_->config();
  MOEKIT_CHECK_ARG(!c.tasks.empty(), "translate: the model lists no tasks (it was trained without task tags)");
  if (!c.extracted_task.empty()) {
    MOEKIT_CHECK_ARG(task == c.extracted_task, "translate: this model is the sub-network of task '", c.extracted_task,
                     "' and cannot translate task '", task, "'");
    return;
  }
  if (c.task_id(task) < 0) {
    std::string known;
    for (const auto& t : c.tasks) known += (known.empty() ? "" : ", ") + t;
    throw std::invalid_argument(str_cat("translate: unknown task '", task, "' (the model's tasks: ", known, ")"));
  }
}

std::vector<Translation> Translator::translate(const std::vector<std::string>& lines, const std::string& task) {
  check_task(task);
  const Seq2seqConfig& c = model_->config();
  std::vector<Translation> out(lines.size());
  std::vector<size_t> good;
  std::vector<std::string> texts;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      out[i].error = "empty line";
    } else if (!is_valid_utf8(line)) {
      out[i].error = "invalid UTF-8";
    } else if (line.find('\n') != std::string::npos) {
      out[i].error = "a line break inside the line";
    } else {
      good.push_back(i);
      texts.push_back(line);
    }
  }
  if (good.empty()) return out;
  std::vector<std::vector<int64_t>> ids = encode_sources(*tokenizer_, texts, task);
  std::vector<size_t> ready;  // indices into good/ids
  for (size_t j = 0; j < ids.size(); ++j) {
    std::vector<int64_t>& src = ids[j];
    if (static_cast<int64_t>(src.size()) > options_.max_input_tokens) {
      if (!options_.truncate) {
        out[good[j]].error = str_cat("the input has ", src.size(), " tokens, more than --max-input-tokens ",
                                     options_.max_input_tokens);
        continue;
      }
      src.resize(static_cast<size_t>(options_.max_input_tokens - 1));
      src.push_back(c.eos_id);
      out[good[j]].truncated = true;
    }
    ready.push_back(j);
  }
  // Similar lengths together: less padding, and per-batch limits that fit.
  std::stable_sort(ready.begin(), ready.end(), [&](size_t a, size_t b) { return ids[a].size() < ids[b].size(); });
  const int64_t task_id = c.task_id(task);
  torch::NoGradGuard no_grad;
  const torch::Device device = model_->embed_tokens->weight.device();
  for (size_t first = 0; first < ready.size(); first += static_cast<size_t>(options_.batch_size)) {
    const size_t count = std::min(ready.size() - first, static_cast<size_t>(options_.batch_size));
    int64_t longest = 0;
    for (size_t k = 0; k < count; ++k) longest = std::max<int64_t>(longest, static_cast<int64_t>(ids[ready[first + k]].size()));
    torch::Tensor src = torch::full({static_cast<int64_t>(count), longest}, c.pad_id, torch::kLong);
    torch::Tensor lens = torch::empty({static_cast<int64_t>(count)}, torch::kLong);
    for (size_t k = 0; k < count; ++k) {
      const auto& s = ids[ready[first + k]];
      std::copy(s.begin(), s.end(), src.data_ptr<int64_t>() + static_cast<int64_t>(k) * longest);
      lens[static_cast<int64_t>(k)] = static_cast<int64_t>(s.size());
    }
    torch::Tensor task_ids;
    if (!c.tasks.empty()) task_ids = torch::full({static_cast<int64_t>(count)}, task_id, torch::kLong).to(device);
    const auto hyps = translate_batch(*model_, src.to(device), lens.to(device), task_ids, options_.search);
    for (size_t k = 0; k < count; ++k) {
      Translation& t = out[good[ready[first + k]]];
      t.nbest = hyps[k];
      if (!t.nbest.empty()) t.text = tokenizer_->decode(t.nbest.front().tokens);
    }
  }
  return out;
}

Translator load_translator(const std::string& model_dir, const TranslateOptions& options, const torch::Device& device) {
  std::shared_ptr<Seq2seqModel> model = load_seq2seq_model(model_dir, WeightStorage::kMap, options.weight_dtype);
  model->to(device);
  const std::string tokenizer = model_dir + "/tokenizer.model";
  MOEKIT_CHECK_ARG(path_exists(tokenizer), model_dir, ": no tokenizer.model");
  return Translator(model, std::make_shared<LmTokenizer>(tokenizer), options);
}

}  // namespace moekit
