#pragma once
// The U2++ speech recognizer: Conformer encoder (dense or MoE FFNs), CTC
// head, left-to-right and right-to-left attention decoders. Module names
// follow WeNet's ASRModel, so a WeNet state dict maps onto it by renaming
// only the FFN tensors.
#include <torch/torch.h>

#include <vector>

#include "moekit/models/asr/asr_config.h"
#include "moekit/models/asr/decoder.h"
#include "moekit/models/asr/encoder.h"
#include "moekit/models/model.h"
#include "moekit/ops/packed_linear.h"

namespace moekit {

class CtcImpl : public torch::nn::Module {
 public:
  CtcImpl(int64_t d_model, int64_t vocab_size) {
    ctc_lo = register_module("ctc_lo", PackedLinear(d_model, vocab_size));
  }
  torch::Tensor log_probs(const torch::Tensor& x) {
    return torch::log_softmax(ctc_lo(x), -1);
  }
  PackedLinear ctc_lo{nullptr};
};
TORCH_MODULE(Ctc);

// Training losses of one batch (each already normalised as WeNet does).
struct AsrLosses {
  torch::Tensor loss;     // the joint objective (+ MoE aux losses)
  torch::Tensor ctc;      // CTC, summed over a sequence, averaged over the batch
  torch::Tensor att;      // left-to-right decoder, label-smoothed
  torch::Tensor att_r2l;  // right-to-left decoder (undefined without one)
  torch::Tensor moe_aux;  // load-balancing + z-loss (undefined when off)
  double att_accuracy = 0;  // token accuracy of the L2R decoder
  int64_t tokens = 0;       // target tokens in the batch
};

// WeNet's LabelSmoothingLoss: KL(smoothed one-hot || softmax(logits)),
// targets < 0 ignored; divided by the batch size, or by the token count
// when `normalize_length`.
torch::Tensor label_smoothing_loss(const torch::Tensor& logits, const torch::Tensor& targets, double smoothing,
                                   bool normalize_length);

class AsrModel : public Model {
 public:
  explicit AsrModel(const AsrConfig& config);

  std::string model_type() const override { return "asr"; }
  YAML::Node architecture() const override { return config_.to_yaml(); }
  const AsrConfig& config() const { return config_; }

  // [B, T', V] log-probabilities of the CTC head.
  torch::Tensor ctc_log_probs(const torch::Tensor& encoder_out) { return ctc->log_probs(encoder_out); }

  // Log-softmax outputs of both decoders for `hyps` of one utterance
  // (encoder_out [1, T', D]), as attention rescoring consumes them:
  // [N, Lmax + 1, V] each; the right-to-left one is undefined without an
  // R2L decoder.
  std::pair<torch::Tensor, torch::Tensor> decoder_log_probs(const torch::Tensor& encoder_out,
                                                            const std::vector<std::vector<int64_t>>& hyps);

  // WeNet's filter_blank_embedding (model_conf.apply_non_blank_embedding):
  // the frames of encoder_out [B, T', D] whose CTC argmax (log_probs
  // [B, T', V]) is not blank, in order, zero-padded to the longest: returns
  // them [B, N, D] with their mask [B, N] (bool). Only frames inside `mask`
  // [B, T'] count (WeNet also keeps padding frames whose argmax is not
  // blank). An utterance without a non-blank frame keeps all its frames
  // (WeNet fails on it). Differentiable with respect to encoder_out.
  std::pair<torch::Tensor, torch::Tensor> non_blank_frames(const torch::Tensor& encoder_out,
                                                           const torch::Tensor& log_probs,
                                                           const torch::Tensor& mask) const;

  // feats [B, T, F], feat_lens [B], targets: token ids per utterance.
  AsrLosses forward_train(const torch::Tensor& feats, const torch::Tensor& feat_lens,
                          const std::vector<std::vector<int64_t>>& targets);

  ConformerEncoder encoder{nullptr};
  BiTransformerDecoder decoder{nullptr};
  Ctc ctc{nullptr};

 private:
  AsrConfig config_;
};

}  // namespace moekit
