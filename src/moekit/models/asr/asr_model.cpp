#include "moekit/models/asr/asr_model.h"

#include "moekit/core/check.h"

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
  const torch::Tensor memory_mask = torch::ones({n, 1, encoder_out.size(1)}, torch::kBool);
  auto [ys, lens] = decoder_inputs(hyps, config_.sos_id(), config_.eos_id(), false);
  torch::Tensor left = torch::log_softmax(decoder->left_decoder->forward(memory, memory_mask, ys, lens), -1);
  torch::Tensor right;
  if (decoder->has_right()) {
    auto [r_ys, r_lens] = decoder_inputs(hyps, config_.sos_id(), config_.eos_id(), true);
    right = torch::log_softmax(decoder->right_decoder->forward(memory, memory_mask, r_ys, r_lens), -1);
  }
  return {left, right};
}

}  // namespace moekit
