#include "moekit/train/asr_task.h"

#include <algorithm>
#include <iostream>
#include <random>
#include <set>

#include "moekit/audio/audio_file.h"
#include "moekit/audio/fbank.h"
#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/fields.h"
#include "moekit/core/file_io.h"
#include "moekit/decode/ctc_search.h"
#include "moekit/decode/recognizer.h"

namespace moekit {

namespace {

const FieldTable<AsrDataOptions>& spec_aug_fields() {
  using O = AsrDataOptions;
  static const auto table = FieldTable<O>("spec_aug_conf")
                                .field("num_t_mask", &O::num_t_mask, "time masks per utterance").non_negative()
                                .field("num_f_mask", &O::num_f_mask, "frequency masks per utterance").non_negative()
                                .field("max_t", &O::max_t, "longest time mask, frames").non_negative()
                                .field("max_f", &O::max_f, "widest frequency mask, bins").non_negative();
  return table;
}

// WeNet's dataset_conf names (fbank_conf is read into the model's config).
const FieldTable<AsrDataOptions>& asr_data_fields() {
  using O = AsrDataOptions;
  static const auto table =
      FieldTable<O>("dataset_conf")
          .field("batch_size", &O::batch_size, "utterances per batch at most").at_least(1)
          .field("max_frames_in_batch", &O::max_frames_in_batch, "padded feature frames per batch at most")
          .at_least(1)
          .field("spec_aug", &O::spec_aug, "SpecAugment in training")
          .section<O>("spec_aug_conf", [](O& o) -> O& { return o; }, spec_aug_fields(), "SpecAugment's masks")
          .field("shuffle", &O::shuffle, "shuffle utterances each epoch")
          .field("in_memory_mb", &O::in_memory_mb,
                 "audio (or features) held in memory up to this many MB; a larger corpus is read again per batch")
          .non_negative();
  return table;
}

}  // namespace

const FieldTable<AsrDataOptions>& AsrDataOptions::fields() { return asr_data_fields(); }
YAML::Node AsrDataOptions::to_yaml() const { return asr_data_fields().write(*this); }
AsrDataOptions AsrDataOptions::from_yaml(const YAML::Node& n, const std::string& where) {
  return asr_data_fields().parse(n, where);
}

namespace {

int64_t edit_distance(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::vector<int64_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = static_cast<int64_t>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int64_t diagonal = row[0];
    row[0] = static_cast<int64_t>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int64_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> out;
  std::string word;
  for (char c : text) {
    if (c == ' ' || c == '\t') {
      if (!word.empty()) out.push_back(word);
      word.clear();
    } else {
      word += c;
    }
  }
  if (!word.empty()) out.push_back(word);
  return out;
}

std::vector<std::string> chars_no_space(const std::string& text) {
  std::vector<std::string> out;
  for (auto& c : text_to_chars(text))
    if (c != "\xe2\x96\x81") out.push_back(c);
  return out;
}

}  // namespace

void ErrorRates::add(const std::string& reference, const std::string& hypothesis) {
  const auto rc = chars_no_space(reference), hc = chars_no_space(hypothesis);
  char_edits += edit_distance(rc, hc);
  chars += static_cast<int64_t>(rc.size());
  const auto rw = split_words(reference), hw = split_words(hypothesis);
  word_edits += edit_distance(rw, hw);
  words += static_cast<int64_t>(rw.size());
}

AsrTrainTask::AsrTrainTask(std::shared_ptr<AsrModel> model, Units units, const std::vector<Utterance>& train,
                           const std::vector<Utterance>& cv, AsrDataOptions options, uint64_t seed,
                           std::shared_ptr<const SentencePieceTokenizer> sentencepiece)
    : model_(std::move(model)),
      units_(std::move(units)),
      sentencepiece_(std::move(sentencepiece)),
      options_(options),
      seed_(seed) {
  MOEKIT_CHECK_ARG(units_.size() == model_->config().vocab_size, "train: ", units_.size(),
                   " units for a model vocabulary of ", model_->config().vocab_size);
  train_ = load(train, "training", /*train=*/true);
  cv_ = load(cv, "validation", /*train=*/false);
  // Global CMVN from the training features (WeNet's compute_cmvn_stats), in
  // the model so that decoding needs nothing else. A resumed run overwrites
  // it with the checkpoint's identical values.
  const torch::Tensor mean = feat_sum_ / static_cast<double>(feat_frames_);
  const torch::Tensor var =
      torch::clamp_min(feat_sum_sq_ / static_cast<double>(feat_frames_) - mean * mean, 1e-20);
  torch::NoGradGuard no_grad;
  model_->encoder->global_cmvn->mean.copy_(mean.to(torch::kFloat));
  model_->encoder->global_cmvn->istd.copy_((1.0 / var.sqrt()).to(torch::kFloat));
}

std::vector<AsrTrainTask::Example> AsrTrainTask::load(const std::vector<Utterance>& data, const char* what,
                                                      bool train) {
  std::vector<Example> out;
  const int rate = model_->config().fbank.sample_rate;
  // Training with dither makes its features afresh from the samples each
  // time, so it holds the samples; otherwise the features.
  const bool hold_samples = train && model_->config().fbank.dither > 0;
  const int64_t budget = options_.in_memory_mb << 20;
  int64_t held = held_bytes();  // the training set's, when this is the validation set
  bool hold = held <= budget;
  if (train) {
    feat_sum_ = torch::zeros({model_->config().encoder.input_dim}, torch::kDouble);
    feat_sum_sq_ = torch::zeros_like(feat_sum_);
    feat_frames_ = 0;
  }
  const int64_t min_frames = model_->encoder->right_context() + 1;
  int64_t skipped = 0;
  std::string first_reason;
  // SentencePiece runs once over all transcripts.
  std::vector<std::vector<int64_t>> pieces;
  if (sentencepiece_) {
    std::vector<std::string> texts;
    for (const auto& u : data) texts.push_back(u.text);
    pieces = sentencepiece_->encode(texts, units_, what);
  }
  size_t index = 0;
  for (const auto& u : data) {
    const size_t current = index++;
    try {
      Example e;
      e.key = u.key;
      e.text = u.text;
      e.wav = u.wav;
      std::vector<float> samples = load_audio(u.wav, rate).samples;
      const torch::Tensor feats = model_features(*model_, samples);
      e.frames = feats.size(0);
      e.tokens = sentencepiece_ ? pieces.at(current) : tokenize(u.text, units_, u.key);
      MOEKIT_CHECK_ARG(!e.tokens.empty(), u.key, ": empty transcript");
      MOEKIT_CHECK_ARG(e.frames >= min_frames, u.key, ": audio too short (", e.frames, " frames)");
      const int64_t outputs = model_->encoder->embed->output_length(e.frames);
      MOEKIT_CHECK_ARG(outputs >= static_cast<int64_t>(e.tokens.size()), u.key, ": ", e.tokens.size(),
                       " tokens do not fit in ", outputs, " encoder frames");
      if (train) {
        const torch::Tensor f = feats.to(torch::kDouble);
        feat_sum_ += f.sum(0);
        feat_sum_sq_ += (f * f).sum(0);
        feat_frames_ += e.frames;
      }
      if (hold) {
        const int64_t bytes = hold_samples ? static_cast<int64_t>(samples.size() * sizeof(float))
                                           : feats.numel() * static_cast<int64_t>(sizeof(float));
        if (held + bytes <= budget) {
          if (hold_samples) {
            e.samples = std::move(samples);
          } else {
            e.feats = feats;
          }
          held += bytes;
        } else {
          // Over the budget: this set is read per batch, and nothing of it is held.
          hold = false;
          for (Example& kept : out) {
            kept.samples = std::vector<float>();
            kept.feats = torch::Tensor();
          }
        }
      }
      out.push_back(std::move(e));
    } catch (const std::invalid_argument& err) {
      if (first_reason.empty()) first_reason = err.what();
      ++skipped;
    }
  }
  if (skipped > 0)
    std::cerr << "warning: skipped " << skipped << " of " << data.size() << " " << what << " utterances (first: "
              << first_reason << ")\n";
  MOEKIT_CHECK_ARG(!out.empty(), "no usable ", what, " utterances (first problem: ", first_reason, ")");
  if (!hold)
    std::cerr << "asr data: the " << what << " audio does not fit in dataset_conf.in_memory_mb (" << options_.in_memory_mb
              << "): each batch reads its files again\n";
  return out;
}

int64_t AsrTrainTask::held_bytes() const {
  int64_t bytes = 0;
  for (const auto* set : {&train_, &cv_}) {
    for (const Example& e : *set) {
      bytes += static_cast<int64_t>(e.samples.size() * sizeof(float));
      if (e.feats.defined()) bytes += e.feats.numel() * static_cast<int64_t>(sizeof(float));
    }
  }
  return bytes;
}

std::vector<std::vector<size_t>> AsrTrainTask::make_batches(const std::vector<Example>& set, int64_t epoch,
                                                            bool shuffle) const {
  std::vector<size_t> order(set.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::mt19937_64 rng(seed_ * 1000003ULL + static_cast<uint64_t>(epoch));
  if (shuffle) std::shuffle(order.begin(), order.end(), rng);
  // Sort within windows of 100 (WeNet's sort buffer) so batches hold similar lengths.
  for (size_t s = 0; s < order.size(); s += 100) {
    auto end = order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), s + 100));
    std::stable_sort(order.begin() + static_cast<std::ptrdiff_t>(s), end,
                     [&](size_t a, size_t b) { return set[a].frames < set[b].frames; });
  }
  std::vector<std::vector<size_t>> batches;
  std::vector<size_t> current;
  int64_t longest = 0;
  for (size_t i : order) {
    const int64_t frames = set[i].frames;
    const int64_t new_longest = std::max(longest, frames);
    if (!current.empty() && (static_cast<int64_t>(current.size()) + 1 > options_.batch_size ||
                             new_longest * static_cast<int64_t>(current.size() + 1) > options_.max_frames_in_batch)) {
      batches.push_back(current);
      current.clear();
      longest = 0;
    }
    current.push_back(i);
    longest = std::max(longest, frames);
  }
  if (!current.empty()) batches.push_back(current);
  if (shuffle) std::shuffle(batches.begin(), batches.end(), rng);
  return batches;
}

int64_t AsrTrainTask::num_batches(int64_t epoch) {
  if (batches_epoch_ != epoch) {
    batches_ = make_batches(train_, epoch, options_.shuffle);
    batches_epoch_ = epoch;
  }
  return static_cast<int64_t>(batches_.size());
}

std::vector<float> AsrTrainTask::read_samples(const Example& e) const {
  return load_audio(e.wav, model_->config().fbank.sample_rate).samples;
}

torch::Tensor AsrTrainTask::features(const Example& e, bool train) const {
  const FbankOptions& fb = model_->config().fbank;
  torch::Tensor feats;
  if (train && fb.dither > 0) {
    std::vector<float> read;
    const std::vector<float>& s = e.samples.empty() ? (read = read_samples(e)) : e.samples;
    torch::Tensor wave =
        torch::from_blob(const_cast<float*>(s.data()), {static_cast<int64_t>(s.size())}, torch::kFloat) * 32768.0;
    feats = compute_fbank(wave, fb);
  } else {
    feats = e.feats.defined() ? e.feats : model_features(*model_, read_samples(e));
  }
  MOEKIT_CHECK_ARG(feats.size(0) == e.frames, e.wav, ": gives ", feats.size(0), " feature frames, ", e.frames,
                   " when training started: the file changed");
  if (train && options_.spec_aug) {
    feats = feats.clone();
    const int64_t t = feats.size(0), f = feats.size(1);
    auto randint = [](int64_t lo, int64_t hi) { return hi <= lo ? lo : torch::randint(lo, hi, {1}).item<int64_t>(); };
    for (int64_t i = 0; i < options_.num_t_mask; ++i) {
      const int64_t start = randint(0, t - 1);
      const int64_t length = randint(1, options_.max_t + 1);
      feats.slice(0, start, std::min(t, start + length)).zero_();
    }
    for (int64_t i = 0; i < options_.num_f_mask; ++i) {
      const int64_t start = randint(0, f - 1);
      const int64_t length = randint(1, options_.max_f + 1);
      feats.slice(1, start, std::min(f, start + length)).zero_();
    }
  }
  return feats;
}

AsrLosses AsrTrainTask::forward(const std::vector<Example>& set, const std::vector<size_t>& batch, bool train) {
  int64_t longest = 0;
  for (size_t i : batch) longest = std::max(longest, set[i].frames);
  const int64_t dim = model_->config().encoder.input_dim;
  torch::Tensor feats = torch::zeros({static_cast<int64_t>(batch.size()), longest, dim});
  torch::Tensor lens = torch::empty({static_cast<int64_t>(batch.size())}, torch::kLong);
  std::vector<std::vector<int64_t>> targets;
  for (size_t b = 0; b < batch.size(); ++b) {
    const Example& e = set[batch[b]];
    feats[static_cast<int64_t>(b)].slice(0, 0, e.frames).copy_(features(e, train));
    lens[static_cast<int64_t>(b)] = e.frames;
    targets.push_back(e.tokens);
  }
  return model_->forward_train(feats.to(device_), lens.to(device_), targets);
}

BatchLoss AsrTrainTask::train_batch(int64_t epoch, int64_t index) {
  num_batches(epoch);
  const auto& batch = batches_.at(static_cast<size_t>(index));
  AsrLosses l = forward(train_, batch, true);
  BatchLoss out;
  out.loss = l.loss;
  if (l.ctc.defined()) out.parts["ctc"] = l.ctc.item<double>();
  if (l.att.defined()) {
    out.parts["att"] = l.att.item<double>();
    out.parts["acc"] = l.att_accuracy;
  }
  if (l.moe_aux.defined()) out.parts["moe_aux"] = l.moe_aux.item<double>();
  for (size_t i : batch) out.units += train_[i].frames;
  return out;
}

std::map<std::string, double> AsrTrainTask::validate() {
  double loss = 0, ctc = 0, att = 0;
  int64_t n = 0;
  ErrorRates rates;
  const auto batches = make_batches(cv_, 0, false);
  for (const auto& batch : batches) {
    AsrLosses l = forward(cv_, batch, false);
    const double w = static_cast<double>(batch.size());
    loss += l.loss.item<double>() * w;
    if (l.ctc.defined()) ctc += l.ctc.item<double>() * w;
    if (l.att.defined()) att += l.att.item<double>() * w;
    n += static_cast<int64_t>(batch.size());
  }
  for (const Example& e : cv_) {
    const torch::Tensor lens = torch::full({1}, e.frames, torch::kLong);
    const torch::Tensor feats = features(e, false);
    auto [out, mask] = model_->encoder->forward(feats.unsqueeze(0).to(device_), lens.to(device_), -1, -1);
    const auto tokens = ctc_greedy_search(model_->ctc_log_probs(out)[0].cpu(), model_->config().blank_id());
    rates.add(e.text, units_.to_text(tokens));
  }
  return {{"loss", loss / n}, {"ctc", ctc / n}, {"att", att / n}, {"cer", rates.cer()}};
}

void AsrTrainTask::save_assets(const std::string& model_dir) {
  write_file_atomic(model_dir + "/units.txt", units_.serialize());
  if (sentencepiece_) write_file_atomic(model_dir + "/tokenizer.model", read_file(sentencepiece_->path()));
}

}  // namespace moekit
