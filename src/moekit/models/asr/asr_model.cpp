#include "moekit/models/asr/asr_model.h"

#include <algorithm>

#include "moekit/core/check.h"
#include "moekit/moe/moe_layer.h"

namespace moekit {

AsrModel::AsrModel(const AsrConfig& config) : config_(config) {
  config_.validate();
  encoder = register_module("encoder", ConformerEncoder(config_.encoder));
  decoder = register_module("decoder",
                            BiTransformerDecoder(config_.vocab_size, config_.encoder.output_size, config_.decoder));
  ctc = register_module("ctc", Ctc(config_.encoder.output_size, config_.vocab_size));
}

std::pair<torch::Tensor, torch::Tensor> AsrModel::decoder_log_probs(const torch::Tensor& encoder_out,
                                                                    const std::vector<std::vector<int64_t>>& hyps) {
  MOEKIT_CHECK_ARG(encoder_out.dim() == 3 && encoder_out.size(0) == 1, "decoder: encoder output must be [1, T, D]");
  MOEKIT_CHECK_ARG(!hyps.empty(), "decoder: no hypotheses to score");
  MOEKIT_CHECK_ARG(config_.decoder.num_blocks > 0, "decoder: this model has no attention decoder");
  for (const auto& h : hyps)
    for (int64_t t : h)
      MOEKIT_CHECK_ARG(t >= 0 && t < config_.vocab_size, "decoder: token id ", t, " outside the vocabulary of ",
                       config_.vocab_size);
  const int64_t n = static_cast<int64_t>(hyps.size());
  const torch::Tensor memory = encoder_out.expand({n, -1, -1});
  const torch::Device device = encoder_out.device();
  const torch::Tensor memory_mask = torch::ones({n, 1, encoder_out.size(1)}, torch::dtype(torch::kBool).device(device));
  auto [ys, lens] = decoder_inputs(hyps, config_.sos_id(), config_.eos_id(), false);
  torch::Tensor left = torch::log_softmax(
      decoder->left_decoder->forward(memory, memory_mask, ys.to(device), lens.to(device)), -1);
  torch::Tensor right;
  if (decoder->has_right()) {
    auto [r_ys, r_lens] = decoder_inputs(hyps, config_.sos_id(), config_.eos_id(), true);
    right = torch::log_softmax(
        decoder->right_decoder->forward(memory, memory_mask, r_ys.to(device), r_lens.to(device)), -1);
  }
  return {left, right};
}

std::pair<torch::Tensor, torch::Tensor> AsrModel::non_blank_frames(const torch::Tensor& encoder_out,
                                                                    const torch::Tensor& log_probs,
                                                                    const torch::Tensor& mask) const {
  MOEKIT_CHECK_ARG(encoder_out.dim() == 3 && log_probs.dim() == 3 && mask.dim() == 2 &&
                       log_probs.size(0) == encoder_out.size(0) && log_probs.size(1) == encoder_out.size(1) &&
                       mask.sizes() == log_probs.sizes().slice(0, 2),
                   "non_blank_frames: encoder_out ", encoder_out.sizes(), ", log_probs ", log_probs.sizes(),
                   " and mask ", mask.sizes(), " do not match");
  torch::Tensor keep;
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor valid = mask.to(torch::kBool);
    keep = (log_probs.argmax(-1) != config_.blank_id()) & valid;
    const torch::Tensor none = keep.sum(1) == 0;
    keep = torch::where(none.unsqueeze(1), valid, keep);
  }
  const int64_t batch = encoder_out.size(0);
  std::vector<torch::Tensor> frames;
  std::vector<int64_t> counts;
  for (int64_t b = 0; b < batch; ++b) {
    const torch::Tensor index = keep[b].nonzero().squeeze(1);
    frames.push_back(encoder_out[b].index_select(0, index));
    counts.push_back(index.size(0));
  }
  const torch::Tensor padded = torch::nn::utils::rnn::pad_sequence(frames, /*batch_first=*/true);
  const torch::Tensor out_mask = torch::arange(padded.size(1), mask.options().dtype(torch::kLong)).unsqueeze(0) <
                                 torch::tensor(counts).to(mask.device()).unsqueeze(1);
  return {padded, out_mask};
}

torch::Tensor label_smoothing_loss(const torch::Tensor& logits, const torch::Tensor& targets, double smoothing,
                                   bool normalize_length) {
  const int64_t batch = logits.size(0), vocab = logits.size(-1);
  const torch::Tensor x = logits.reshape({-1, vocab});
  const torch::Tensor t = targets.reshape({-1});
  const torch::Tensor ignore = t < 0;
  const int64_t total = t.numel() - ignore.sum().item<int64_t>();
  const double confidence = 1.0 - smoothing;
  torch::Tensor true_dist = torch::full_like(x, smoothing / (vocab - 1));
  true_dist.scatter_(1, t.masked_fill(ignore, 0).unsqueeze(1), confidence);
  const torch::Tensor log_p = torch::log_softmax(x, 1);
  // KLDivLoss(reduction=none): p * (log p - q), with 0 * log 0 = 0.
  const torch::Tensor kl = torch::xlogy(true_dist, true_dist) - true_dist * log_p;
  const torch::Tensor loss = kl.masked_fill(ignore.unsqueeze(1), 0.0).sum();
  return loss / static_cast<double>(normalize_length ? std::max<int64_t>(total, 1) : batch);
}

AsrLosses AsrModel::forward_train(const torch::Tensor& feats, const torch::Tensor& feat_lens,
                                  const std::vector<std::vector<int64_t>>& targets) {
  const int64_t batch = feats.size(0);
  MOEKIT_CHECK_ARG(static_cast<int64_t>(targets.size()) == batch, "train: ", targets.size(), " targets for a batch of ",
                   batch);
  AsrLosses out;
  auto [encoder_out, mask] = encoder->forward(feats, feat_lens, 0, -1);
  const torch::Tensor encoder_lens = mask.sum(1);
  std::vector<int64_t> flat, target_lens;
  for (const auto& y : targets) {
    for (int64_t t : y)
      MOEKIT_CHECK_ARG(t > 0 && t < config_.vocab_size - 1, "train: target id ", t, " is blank, sos/eos or outside ",
                       "the vocabulary");
    flat.insert(flat.end(), y.begin(), y.end());
    target_lens.push_back(static_cast<int64_t>(y.size()));
    out.tokens += static_cast<int64_t>(y.size());
  }
  torch::Tensor loss = torch::zeros({}, feats.options());
  MOEKIT_CHECK_ARG(!config_.apply_non_blank_embedding || config_.ctc_weight > 0,
                   "train: apply_non_blank_embedding needs ctc_weight > 0 (the CTC head picks the frames)");
  torch::Tensor ctc_out;  // [B, T', V]
  if (config_.ctc_weight > 0) {
    ctc_out = ctc_log_probs(encoder_out);
    const torch::Tensor log_probs = ctc_out.transpose(0, 1);  // [T', B, V]
    const torch::Tensor lens = encoder_lens.to(torch::kLong);
    out.ctc = torch::ctc_loss(log_probs, torch::tensor(flat, torch::kLong).to(feats.device()), lens,
                              torch::tensor(target_lens, torch::kLong).to(feats.device()), config_.blank_id(),
                              at::Reduction::Sum,
                              /*zero_infinity=*/true) /
              static_cast<double>(batch);
    loss = loss + out.ctc * config_.ctc_weight;
  }
  if (config_.ctc_weight < 1 && config_.decoder.num_blocks > 0) {
    torch::Tensor memory = encoder_out, memory_mask = mask.unsqueeze(1);
    if (config_.apply_non_blank_embedding) {
      auto [frames, frames_mask] = non_blank_frames(encoder_out, ctc_out.detach(), mask);
      memory = frames;
      memory_mask = frames_mask.unsqueeze(1);
    }
    // ys_in = [sos, y], ys_out = [y, eos], padded with -1 (ignored).
    auto run = [&](TransformerDecoder& dec, bool reverse, double* accuracy) {
      std::vector<std::vector<int64_t>> ys = targets;
      if (reverse)
        for (auto& y : ys) std::reverse(y.begin(), y.end());
      auto [ys_in, lens] = decoder_inputs(ys, config_.sos_id(), config_.eos_id(), false);
      torch::Tensor ys_out = torch::full(ys_in.sizes(), -1, torch::kLong);
      auto out_a = ys_out.accessor<int64_t, 2>();  // plain stores, not one tensor op per token
      for (int64_t b = 0; b < batch; ++b) {
        const auto& y = ys[b];
        for (size_t j = 0; j < y.size(); ++j) out_a[b][static_cast<int64_t>(j)] = y[j];
        out_a[b][static_cast<int64_t>(y.size())] = config_.eos_id();
      }
      ys_out = ys_out.to(feats.device());
      const torch::Tensor logits = dec->forward(memory, memory_mask, ys_in.to(feats.device()), lens.to(feats.device()));
      if (accuracy) {
        torch::NoGradGuard no_grad;
        const torch::Tensor valid = ys_out >= 0;
        const torch::Tensor hit = (logits.argmax(-1) == ys_out) & valid;
        *accuracy = hit.sum().item<double>() / std::max<double>(1.0, valid.sum().item<double>());
      }
      return label_smoothing_loss(logits, ys_out, config_.lsm_weight, config_.length_normalized_loss);
    };
    out.att = run(decoder->left_decoder, false, &out.att_accuracy);
    torch::Tensor att = out.att;
    if (decoder->has_right() && config_.reverse_weight > 0) {
      out.att_r2l = run(decoder->right_decoder, true, nullptr);
      att = att * (1 - config_.reverse_weight) + out.att_r2l * config_.reverse_weight;
    }
    loss = loss + att * (1 - config_.ctc_weight);
  }
  out.moe_aux = collect_moe_aux_loss(*this);
  if (out.moe_aux.defined()) loss = loss + out.moe_aux;
  out.loss = loss;
  return out;
}

}  // namespace moekit
