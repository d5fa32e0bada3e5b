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

namespace moekit {

class CtcImpl : public torch::nn::Module {
 public:
  CtcImpl(int64_t d_model, int64_t vocab_size) {
    ctc_lo = register_module("ctc_lo", torch::nn::Linear(d_model, vocab_size));
  }
  torch::Tensor log_probs(const torch::Tensor& x) { return torch::log_softmax(ctc_lo->forward(x), -1); }
  torch::nn::Linear ctc_lo{nullptr};
};
TORCH_MODULE(Ctc);

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

  ConformerEncoder encoder{nullptr};
  BiTransformerDecoder decoder{nullptr};
  Ctc ctc{nullptr};

 private:
  AsrConfig config_;
};

}  // namespace moekit
