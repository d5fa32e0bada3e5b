#include "moekit/decode/recognizer.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "moekit/audio/audio_file.h"
#include "moekit/audio/fbank.h"
#include "moekit/core/check.h"
#include "moekit/decode/lexicon.h"
#include "moekit/decode/ngram_lm.h"

namespace moekit {

DecodeMode parse_decode_mode(const std::string& name) {
  if (name == "ctc_greedy_search" || name == "ctc_greedy") return DecodeMode::CtcGreedy;
  if (name == "ctc_prefix_beam_search" || name == "ctc_prefix_beam") return DecodeMode::CtcPrefixBeam;
  if (name == "attention_rescoring") return DecodeMode::AttentionRescoring;
  throw std::invalid_argument("unknown decoding mode '" + name +
                              "' (ctc_greedy_search | ctc_prefix_beam_search | attention_rescoring | auto)");
}

DecodeMode resolve_decode_mode(const std::string& name, const AsrModel& model) {
  if (name != "auto") return parse_decode_mode(name);
  return model.config().decoder.num_blocks > 0 ? DecodeMode::AttentionRescoring : DecodeMode::CtcPrefixBeam;
}

void check_decode_mode_name(const std::string& name) {
  if (name != "auto") parse_decode_mode(name);
}

std::string decode_mode_name(DecodeMode mode) {
  switch (mode) {
    case DecodeMode::CtcGreedy: return "ctc_greedy_search";
    case DecodeMode::CtcPrefixBeam: return "ctc_prefix_beam_search";
    case DecodeMode::AttentionRescoring: return "attention_rescoring";
  }
  return "?";
}

torch::Device model_device(const AsrModel& model) { return model.ctc->ctc_lo->weight.device(); }

std::vector<Hypothesis> attention_rescoring_nbest(AsrModel& model, const torch::Tensor& encoder_out,
                                                  const std::vector<Hypothesis>& nbest, double ctc_weight,
                                                  double reverse_weight) {
  MOEKIT_CHECK_ARG(!nbest.empty(), "attention rescoring: no hypotheses");
  std::vector<std::vector<int64_t>> hyps;
  for (const auto& h : nbest) hyps.push_back(h.tokens);
  auto [left, right] = model.decoder_log_probs(encoder_out, hyps);
  const bool use_right = reverse_weight > 0 && right.defined();
  left = left.to(torch::kCPU, torch::kDouble).contiguous();
  if (use_right) right = right.to(torch::kCPU, torch::kDouble).contiguous();
  const int64_t eos = model.config().eos_id();
  std::vector<Hypothesis> scored;
  for (size_t i = 0; i < nbest.size(); ++i) {
    const auto& tokens = nbest[i].tokens;
    const int64_t n = static_cast<int64_t>(tokens.size());
    const torch::Tensor left_i = left[static_cast<int64_t>(i)];
    auto l = left_i.accessor<double, 2>();
    double score = 0.0;
    for (int64_t j = 0; j < n; ++j) score += l[j][tokens[j]];
    score += l[n][eos];
    if (use_right) {
      const torch::Tensor right_i = right[static_cast<int64_t>(i)];
      auto r = right_i.accessor<double, 2>();
      double r_score = 0.0;
      for (int64_t j = 0; j < n; ++j) r_score += r[n - j - 1][tokens[j]];
      r_score += r[n][eos];
      score = score * (1 - reverse_weight) + r_score * reverse_weight;
    }
    score += nbest[i].score * ctc_weight;
    scored.push_back({tokens, score, nbest[i].times});
  }
  std::stable_sort(scored.begin(), scored.end(),
                   [](const Hypothesis& a, const Hypothesis& b) { return a.score > b.score; });
  return scored;
}

Hypothesis attention_rescoring(AsrModel& model, const torch::Tensor& encoder_out,
                               const std::vector<Hypothesis>& nbest, double ctc_weight, double reverse_weight) {
  return attention_rescoring_nbest(model, encoder_out, nbest, ctc_weight, reverse_weight).front();
}

torch::Tensor model_features(const AsrModel& model, const std::vector<float>& samples) {
  FbankOptions fbank = model.config().fbank;
  fbank.dither = 0.0;
  torch::Tensor wave = torch::from_blob(const_cast<float*>(samples.data()), {static_cast<int64_t>(samples.size())},
                                        torch::kFloat) * 32768.0;
  return compute_fbank(wave, fbank);
}

namespace {

// Audio shorter than the encoder's receptive field gives no output frame:
// refused alike by whole-file and streaming decoding.
void check_long_enough(const AsrModel& model, int64_t feature_frames) {
  const int64_t needed = model.encoder->right_context() + 1;
  MOEKIT_CHECK_ARG(feature_frames >= needed, "audio too short: ", feature_frames, " feature frames, the model needs ",
                   needed, " (about ", (needed - 1) * 10 + 25, " ms)");
}

}  // namespace

void DecodeOptions::validate() const {
  MOEKIT_CHECK_ARG(beam_size >= 1 && beam_size <= kMaxBeam, "--beam must be in [1, ", kMaxBeam, "], got ",
                   beam_size);
  MOEKIT_CHECK_ARG(chunk_size == -1 || chunk_size > 0, "--chunk-size must be -1 (full context) or > 0, got ",
                   chunk_size, chunk_size == 0 ? " (0 is the training setting)" : "");
  MOEKIT_CHECK_ARG(left_chunks >= -1, "--left-chunks must be -1 (all) or >= 0, got ", left_chunks);
  MOEKIT_CHECK_ARG(std::isfinite(ctc_weight) && ctc_weight >= 0, "--ctc-weight must be a finite number >= 0, got ",
                   ctc_weight);
  MOEKIT_CHECK_ARG(reverse_weight == -1 || (reverse_weight >= 0 && reverse_weight <= 1),
                   "--reverse-weight must be -1 (the model's) or in [0, 1], got ", reverse_weight);
  MOEKIT_CHECK_ARG(max_segment_seconds == 0 || (std::isfinite(max_segment_seconds) && max_segment_seconds >= 5),
                   "--max-segment must be 0 (never split) or at least 5 seconds, got ", max_segment_seconds);
  MOEKIT_CHECK_ARG(lm.empty() || !lexicon.empty(), "--lm needs --lexicon (the words the search may output)");
  MOEKIT_CHECK_ARG(std::isfinite(lm_weight) && lm_weight >= 0, "--lm-weight must be a finite number >= 0, got ",
                   lm_weight);
  MOEKIT_CHECK_ARG(std::isfinite(word_bonus), "--word-bonus must be a finite number, got ", word_bonus);
}

void for_each_quiet_piece(const SampleSource& read, int sample_rate, double max_seconds,
                          const std::function<void(const std::vector<float>&)>& piece) {
  const size_t max_len = static_cast<size_t>(max_seconds * sample_rate);
  const size_t min_tail = static_cast<size_t>(sample_rate);  // no piece shorter than 1 s at the end
  const size_t frame = static_cast<size_t>(std::max(1, sample_rate / 100));  // 10 ms
  std::vector<float> buffer;  // the stream from the end of the last piece on
  if (max_len == 0) {
    while (read(buffer, size_t{1} << 20) > 0) {
    }
    piece(buffer);
    return;
  }
  bool at_end = false;
  for (;;) {
    // Enough to know whether more than max_len remain, and if so, whether
    // the last second is among them.
    while (!at_end && buffer.size() < max_len + min_tail + 1)
      at_end = read(buffer, max_len + min_tail + 1 - buffer.size()) == 0;
    if (buffer.size() <= max_len) break;
    const size_t lo = max_len * 2 / 3;
    const size_t hi = buffer.size() > min_tail ? std::min(max_len, buffer.size() - min_tail) : lo;
    size_t best = hi;
    double best_energy = std::numeric_limits<double>::infinity();
    for (size_t start = lo; start + frame <= hi; start += frame) {
      double energy = 0;
      for (size_t i = start; i < start + frame; ++i) energy += static_cast<double>(buffer[i]) * buffer[i];
      if (energy < best_energy) {
        best_energy = energy;
        best = start + frame / 2;
      }
    }
    best = std::max<size_t>(best, 1);
    piece(std::vector<float>(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(best)));
    buffer.erase(buffer.begin(), buffer.begin() + static_cast<std::ptrdiff_t>(best));
  }
  piece(buffer);
}

namespace {
SampleSource vector_source(const std::vector<float>& samples) {
  return [&samples, pos = size_t{0}](std::vector<float>& out, size_t max_samples) mutable {
    const size_t n = std::min(max_samples, samples.size() - pos);
    out.insert(out.end(), samples.begin() + static_cast<std::ptrdiff_t>(pos),
               samples.begin() + static_cast<std::ptrdiff_t>(pos + n));
    pos += n;
    return n;
  };
}
}  // namespace

std::vector<size_t> quiet_split_points(const std::vector<float>& samples, int sample_rate, double max_seconds) {
  std::vector<size_t> cuts;
  size_t end = 0;
  for_each_quiet_piece(vector_source(samples), sample_rate, max_seconds, [&](const std::vector<float>& piece) {
    end += piece.size();
    cuts.push_back(end);
  });
  cuts.pop_back();  // the end of the last piece is the end of the audio
  return cuts;
}

Recognizer::Recognizer(std::shared_ptr<AsrModel> model, Units units, DecodeOptions options)
    : model_(std::move(model)), units_(std::move(units)), options_(options) {
  MOEKIT_CHECK_ARG(model_, "recognizer: no model");
  options_.validate();
  MOEKIT_CHECK_ARG(options_.mode != DecodeMode::AttentionRescoring || model_->config().decoder.num_blocks > 0,
                   "recognizer: attention_rescoring needs a model with an attention decoder");
  MOEKIT_CHECK_ARG(units_.size() == 0 || units_.size() == model_->config().vocab_size, "recognizer: ", units_.size(),
                   " units for a vocabulary of ", model_->config().vocab_size);
  if (!options_.lexicon.empty()) {
    MOEKIT_CHECK_ARG(units_.size() > 0, "recognizer: --lexicon needs the model's units (units.txt)");
    words_.lexicon = Lexicon::read(options_.lexicon, units_);
  }
  if (!options_.lm.empty()) words_.lm = NgramLm::read(options_.lm);
  words_.lm_weight = options_.lm_weight;
  words_.word_bonus = options_.word_bonus;
  model_->eval();
}

double Recognizer::reverse_weight() const {
  const double w = options_.reverse_weight >= 0 ? options_.reverse_weight : model_->config().reverse_weight;
  return model_->decoder->has_right() ? w : 0.0;
}

Recognition Recognizer::search(const torch::Tensor& encoder_out) const {
  torch::NoGradGuard no_grad;
  const torch::Tensor device_log_probs = model_->ctc_log_probs(encoder_out)[0];
  const torch::Tensor log_probs = device_log_probs.to(torch::kCPU);  // the searches read it element by element
  Recognition result;
  if (options_.mode == DecodeMode::CtcGreedy) {
    result.tokens = ctc_greedy_search(log_probs, model_->config().blank_id());
    result.nbest = {{result.tokens, result.score, {}}};  // greedy tracks no times
  } else {
    result.nbest = ctc_prefix_beam_search(log_probs, options_.beam_size, model_->config().blank_id(), words_);
    if (options_.mode == DecodeMode::AttentionRescoring) {
      torch::Tensor memory = encoder_out;
      if (model_->config().apply_non_blank_embedding) {
        memory = model_->non_blank_frames(encoder_out, device_log_probs.unsqueeze(0),
                                          torch::ones({1, encoder_out.size(1)}, torch::dtype(torch::kBool).device(encoder_out.device())))
                     .first;
      }
      result.nbest = attention_rescoring_nbest(*model_, memory, result.nbest, options_.ctc_weight, reverse_weight());
    }
    result.tokens = result.nbest.front().tokens;
    result.score = result.nbest.front().score;
  }
  if (units_.size() > 0) result.text = units_.to_text(result.tokens);
  return result;
}

Recognition Recognizer::recognize_features(const torch::Tensor& feats) const {
  torch::NoGradGuard no_grad;
  MOEKIT_CHECK_ARG(feats.dim() == 2, "recognizer: features must be [T, F], got ", feats.sizes());
  check_long_enough(*model_, feats.size(0));
  const torch::Device device = model_device(*model_);
  const torch::Tensor lens = torch::full({1}, feats.size(0), torch::dtype(torch::kLong).device(device));
  auto [encoder_out, mask] =
      model_->encoder->forward(feats.unsqueeze(0).to(device), lens, options_.chunk_size, options_.left_chunks);
  return search(encoder_out);
}

Recognition Recognizer::recognize(const std::vector<float>& samples) const {
  return recognize_source(vector_source(samples));
}

Recognition Recognizer::recognize_source(const SampleSource& read) const {
  // Long audio: each piece on its own, the tokens joined.
  Recognition joined;
  for_each_quiet_piece(read, model_->config().fbank.sample_rate, options_.max_segment_seconds,
                       [&](const std::vector<float>& piece) {
                         const Recognition r = recognize_features(model_features(*model_, piece));
                         joined.tokens.insert(joined.tokens.end(), r.tokens.begin(), r.tokens.end());
                         joined.score += r.score;
                       });
  if (units_.size() > 0) joined.text = units_.to_text(joined.tokens);
  joined.nbest = {{joined.tokens, joined.score, {}}};
  return joined;
}

Recognition Recognizer::recognize_file(const std::string& path) const {
  AudioReader reader(path, model_->config().fbank.sample_rate);
  try {
    return recognize_source([&](std::vector<float>& out, size_t max_samples) { return reader.read(out, max_samples); });
  } catch (const std::invalid_argument& e) {
    const std::string message = e.what();
    if (message.rfind(path, 0) == 0) throw;
    throw std::invalid_argument(path + ": " + message);
  }
}

StreamingSession::StreamingSession(const Recognizer& recognizer, ChunkEncoder* encoder)
    : recognizer_(recognizer), encoder_(encoder), beam_(recognizer.options().beam_size, recognizer.model().config().blank_id(), recognizer.word_context()) {
  MOEKIT_CHECK_ARG(recognizer.options().chunk_size > 0, "streaming: chunk size must be > 0, got ",
                   recognizer.options().chunk_size);
  feats_ = torch::empty({0, recognizer.model().config().encoder.input_dim});
  const AsrConfig& c = recognizer.model().config();
  const double frames_per_second = 1000.0 / (c.fbank.frame_shift_ms * static_cast<double>(c.encoder.subsampling_rate));
  max_segment_frames_ = static_cast<int64_t>(recognizer.options().max_segment_seconds * frames_per_second);
  endpoint_frames_ = std::max<int64_t>(1, static_cast<int64_t>(DecodeOptions::kEndpointSeconds * frames_per_second));
  frame_ms_ = 1000.0 / frames_per_second;
}

Recognition StreamingSession::accept_waveform(const float* samples, size_t count) {
  MOEKIT_CHECK_ARG(!finished_, "streaming: session already finished");
  torch::NoGradGuard no_grad;
  samples_.insert(samples_.end(), samples, samples + count);
  FbankOptions fbank = recognizer_.model().config().fbank;
  fbank.dither = 0.0;
  const int64_t frames = fbank.num_frames(static_cast<int64_t>(samples_.size()));
  if (frames > 0) {
    const int64_t used = frames * fbank.window_shift();
    const int64_t span = (frames - 1) * fbank.window_shift() + fbank.window_size();
    std::vector<float> head(samples_.begin(), samples_.begin() + span);
    feats_ = torch::cat({feats_, model_features(recognizer_.model(), head)}, 0);
    samples_.erase(samples_.begin(), samples_.begin() + used);
    samples_consumed_ += used;
  }
  run_chunks(false);
  return partial();
}

void StreamingSession::run_chunks(bool last) {
  AsrModel& model = recognizer_.model();
  const DecodeOptions& o = recognizer_.options();
  const int64_t window = model.encoder->window_frames(o.chunk_size);
  const int64_t stride = model.encoder->subsampling_rate() * o.chunk_size;
  const int64_t context = model.encoder->right_context() + 1;
  // All left context, up to a segment's worth (attention over an hour of
  // cache would make streaming quadratic).
  const int64_t cache_frames =
      o.left_chunks >= 0 ? o.chunk_size * o.left_chunks : (max_segment_frames_ > 0 ? max_segment_frames_ : -1);
  const int64_t blank = model.config().blank_id();
  while (feats_.size(0) >= window || (last && feats_.size(0) >= context)) {
    const int64_t take = std::min(window, feats_.size(0));
    const torch::Tensor piece = feats_.slice(0, 0, take).unsqueeze(0).to(model_device(model));
    const torch::Tensor out = encoder_ ? encoder_->encode(piece, cache_, cache_frames)
                                       : model.encoder->forward_chunk(piece, cache_, cache_frames);
    outputs_.push_back(out);
    const torch::Tensor log_probs = model.ctc_log_probs(out)[0].to(torch::kCPU);
    beam_.advance(log_probs);
    segment_frames_ += out.size(1);
    any_output_ = true;
    const torch::Tensor best = log_probs.argmax(-1);
    const int64_t* ids = best.data_ptr<int64_t>();
    for (int64_t t = 0; t < best.size(0); ++t) trailing_blanks_ = ids[t] == blank ? trailing_blanks_ + 1 : 0;
    const torch::Tensor blank_logp = log_probs.select(1, blank).to(torch::kDouble).contiguous();
    const double* lp = blank_logp.data_ptr<double>();
    const double silence_logp = std::log(EndpointRules::kBlankThreshold);
    for (int64_t t = 0; t < blank_logp.size(0); ++t) trailing_silence_ = lp[t] > silence_logp ? trailing_silence_ + 1 : 0;
    frames_decoded_ += out.size(1);
    feats_ = feats_.slice(0, std::min(stride, feats_.size(0)));
    if (max_segment_frames_ > 0 && (segment_frames_ >= max_segment_frames_ ||
                                    (segment_frames_ >= max_segment_frames_ * 2 / 3 && trailing_blanks_ >= endpoint_frames_)))
      end_segment();
    if (take < window) break;  // the last, partial window
  }
}

torch::Tensor StreamingSession::encoder_out() const {
  if (outputs_.empty()) {
    return torch::empty({1, 0, recognizer_.model().config().encoder.output_size},
                        torch::TensorOptions().device(model_device(recognizer_.model())));
  }
  return torch::cat(outputs_, 1);
}

void StreamingSession::end_segment(bool keep_outputs) {
  if (outputs_.empty()) return;
  // CTC prefix beam: the beam's best, as a partial result reads it; other
  // modes search the segment's encoder output (rescoring included).
  Recognition r;
  if (recognizer_.options().mode == DecodeMode::CtcPrefixBeam) {
    r.nbest = beam_.nbest(/*final=*/true);
    r.tokens = r.nbest.front().tokens;
    r.score = r.nbest.front().score;
  } else {
    r = recognizer_.search(encoder_out());
  }
  last_nbest_.clear();
  for (const Hypothesis& h : r.nbest) last_nbest_.push_back(joined(h));
  const Hypothesis best = r.nbest.empty() ? Hypothesis{r.tokens, r.score, {}} : r.nbest.front();
  if (times_known_ && best.tokens == r.tokens && best.times.size() == best.tokens.size()) {
    const int64_t segment_start = frames_decoded_ - segment_frames_;
    for (int64_t t : best.times) committed_times_.push_back(segment_start + t);
  } else {
    times_known_ = false;
    committed_times_.clear();
  }
  committed_.insert(committed_.end(), r.tokens.begin(), r.tokens.end());
  committed_score_ += r.score;
  if (keep_outputs) return;
  outputs_.clear();
  beam_.reset();
  segment_frames_ = 0;
  trailing_blanks_ = 0;
}

bool StreamingSession::at_endpoint(const EndpointRules& rules) const {
  const bool decoded_something = !committed_.empty() || !beam_.nbest().front().tokens.empty();
  const double utterance_ms = static_cast<double>(frames_decoded_) * frame_ms_;
  const double silence_ms = static_cast<double>(trailing_silence_) * frame_ms_;
  for (const EndpointRule* rule : {&rules.rule1, &rules.rule2, &rules.rule3}) {
    if ((decoded_something || !rule->must_decode_something) && silence_ms >= rule->min_trailing_silence_ms &&
        utterance_ms >= rule->min_utterance_ms)
      return true;
  }
  return false;
}

Hypothesis StreamingSession::joined(const Hypothesis& h) const {
  Hypothesis out{committed_, committed_score_ + h.score, {}};
  out.tokens.insert(out.tokens.end(), h.tokens.begin(), h.tokens.end());
  if (times_known_ && h.times.size() == h.tokens.size()) {
    const int64_t segment_start = frames_decoded_ - segment_frames_;
    out.times = committed_times_;
    for (int64_t t : h.times) out.times.push_back(segment_start + t);
  }
  return out;
}

Recognition StreamingSession::partial() const {
  Recognition r;
  for (const Hypothesis& h : beam_.nbest()) r.nbest.push_back(joined(h));
  r.tokens = r.nbest.front().tokens;
  r.score = r.nbest.front().score;
  if (recognizer_.units().size() > 0) r.text = recognizer_.units().to_text(r.tokens);
  return r;
}

Recognition StreamingSession::finish() {
  MOEKIT_CHECK_ARG(!finished_, "streaming: session already finished");
  torch::NoGradGuard no_grad;
  run_chunks(true);
  finished_ = true;
  if (!any_output_) check_long_enough(recognizer_.model(), feats_.size(0));  // too short for one frame
  end_segment(/*keep_outputs=*/true);
  Recognition r;
  r.tokens = committed_;
  r.score = committed_score_;
  r.nbest = last_nbest_;
  if (r.nbest.empty()) r.nbest = {{r.tokens, r.score, times_known_ ? committed_times_ : std::vector<int64_t>{}}};
  if (recognizer_.units().size() > 0) r.text = recognizer_.units().to_text(r.tokens);
  return r;
}

}  // namespace moekit
