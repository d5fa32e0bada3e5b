#pragma once
// WeNet's attention decoders: TransformerDecoder (embedding + absolute
// positions, pre-LN self-attention / cross-attention / FFN layers,
// after_norm, output projection) and the U2++ pair of a left-to-right and a
// right-to-left decoder (BiTransformerDecoder's left_decoder/right_decoder).
#include <torch/torch.h>

#include "moekit/models/asr/asr_config.h"
#include "moekit/models/asr/ffn_slot.h"
#include "moekit/nn/attention.h"

namespace moekit {

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(int64_t d_model, const TransformerDecoderConfig& config);
  // tgt [B, L, D], tgt_mask bool [B, L, L]; memory [B, T, D], memory_mask bool [B, 1, T].
  torch::Tensor forward(const torch::Tensor& tgt, const torch::Tensor& tgt_mask, const torch::Tensor& memory,
                        const torch::Tensor& memory_mask, const torch::Tensor& token_mask);

  MultiHeadedAttention self_attn{nullptr}, src_attn{nullptr};
  FfnSlot feed_forward;
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};

 private:
  bool normalize_before_;
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(DecoderLayer);

// The decoder's output projection, named like torch::nn::Linear (weight,
// bias). Tied: `weight` is not a parameter here but the given tensor (the
// token embedding's), so parameters(), checkpoints and optimizers see it once.
class OutputLayerImpl : public torch::nn::Module {
 public:
  OutputLayerImpl(int64_t in, int64_t out, torch::Tensor tied_weight = {});
  torch::Tensor forward(const torch::Tensor& x) { return torch::nn::functional::linear(x, weight, bias); }

  torch::Tensor weight, bias;
};
TORCH_MODULE(OutputLayer);

class TransformerDecoderImpl : public torch::nn::Module {
 public:
  TransformerDecoderImpl(int64_t vocab_size, int64_t d_model, int64_t num_blocks, const TransformerDecoderConfig& config);
  // ys_in [B, L] (padding may hold any id), ys_lens [B] -> logits [B, L, V].
  torch::Tensor forward(const torch::Tensor& memory, const torch::Tensor& memory_mask, const torch::Tensor& ys_in,
                        const torch::Tensor& ys_lens);

  torch::nn::Sequential embed{nullptr};  // embed.0 = token embedding
  torch::nn::ModuleList decoders{nullptr};
  torch::nn::LayerNorm after_norm{nullptr};
  OutputLayer output_layer{nullptr};

 private:
  int64_t d_model_;
  bool normalize_before_;
  torch::nn::Embedding embedding_{nullptr};
  torch::nn::Dropout pos_dropout_{nullptr};
};
TORCH_MODULE(TransformerDecoder);

class BiTransformerDecoderImpl : public torch::nn::Module {
 public:
  BiTransformerDecoderImpl(int64_t vocab_size, int64_t d_model, const TransformerDecoderConfig& config);
  bool has_right() const { return static_cast<bool>(right_decoder); }

  TransformerDecoder left_decoder{nullptr};
  TransformerDecoder right_decoder{nullptr};  // null when r_num_blocks == 0
};
TORCH_MODULE(BiTransformerDecoder);

// Decoder input for hypotheses as WeNet's attention rescoring builds it:
// [sos, tokens..., eos padding] for left-to-right, and the reversed tokens
// for right-to-left. Returns (ys_in [N, Lmax + 1], lens [N] = len + 1).
std::pair<torch::Tensor, torch::Tensor> decoder_inputs(const std::vector<std::vector<int64_t>>& hyps, int64_t sos,
                                                       int64_t eos, bool reverse);

}  // namespace moekit
