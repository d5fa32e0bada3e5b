#include "moekit/models/asr/decoder.h"

#include <algorithm>
#include <cmath>

#include "moekit/core/check.h"

namespace moekit {

DecoderLayerImpl::DecoderLayerImpl(int64_t d, const TransformerDecoderConfig& c) : normalize_before_(c.normalize_before) {
  namespace nn = torch::nn;
  AttentionOptions self;
  self.heads = c.attention_heads;
  self.d_model = d;
  self.dropout = c.self_attention_dropout_rate;
  self_attn = register_module("self_attn", MultiHeadedAttention(self));
  AttentionOptions src = self;
  src.dropout = c.src_attention_dropout_rate;
  src_attn = register_module("src_attn", MultiHeadedAttention(src));
  feed_forward.create(*this, "feed_forward", d, c.ffn);
  norm1 = register_module("norm1", nn::LayerNorm(nn::LayerNormOptions({d}).eps(1e-5)));
  norm2 = register_module("norm2", nn::LayerNorm(nn::LayerNormOptions({d}).eps(1e-5)));
  norm3 = register_module("norm3", nn::LayerNorm(nn::LayerNormOptions({d}).eps(1e-5)));
  dropout_ = register_module("dropout", nn::Dropout(c.dropout_rate));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& tgt, const torch::Tensor& tgt_mask,
                                        const torch::Tensor& memory, const torch::Tensor& memory_mask,
                                        const torch::Tensor& token_mask) {
  auto block = [&](torch::nn::LayerNorm& norm, const torch::Tensor& x, auto&& body) {
    torch::Tensor y = normalize_before_ ? norm->forward(x) : x;
    torch::Tensor out = x + dropout_->forward(body(y));
    return normalize_before_ ? out : norm->forward(out);
  };
  torch::Tensor x = block(norm1, tgt, [&](const torch::Tensor& h) { return self_attn->forward(h, h, h, tgt_mask); });
  x = block(norm2, x, [&](const torch::Tensor& h) { return src_attn->forward(h, memory, memory, memory_mask); });
  return block(norm3, x, [&](const torch::Tensor& h) { return feed_forward.forward(h, token_mask); });
}

OutputLayerImpl::OutputLayerImpl(int64_t in, int64_t out, torch::Tensor tied_weight) {
  // torch::nn::Linear's initialisation for what is ours.
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  if (tied_weight.defined()) {
    MOEKIT_CHECK_ARG(tied_weight.dim() == 2 && tied_weight.size(0) == out && tied_weight.size(1) == in,
                     "decoder: a tied output weight must be [", out, ", ", in, "], got ", tied_weight.sizes());
    weight = tied_weight;
  } else {
    weight = register_parameter("weight", torch::empty({out, in}));
    torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  }
  bias = register_parameter("bias", torch::empty({out}));
  torch::nn::init::uniform_(bias, -bound, bound);
}

TransformerDecoderImpl::TransformerDecoderImpl(int64_t vocab, int64_t d, int64_t num_blocks,
                                               const TransformerDecoderConfig& c)
    : d_model_(d), normalize_before_(c.normalize_before) {
  namespace nn = torch::nn;
  embedding_ = nn::Embedding(vocab, d);
  embed = register_module("embed", nn::Sequential(embedding_));
  decoders = register_module("decoders", nn::ModuleList());
  for (int64_t i = 0; i < num_blocks; ++i) decoders->push_back(DecoderLayer(d, c));
  after_norm = register_module("after_norm", nn::LayerNorm(nn::LayerNormOptions({d}).eps(1e-5)));
  output_layer = register_module(
      "output_layer", OutputLayer(d, vocab, c.tie_word_embedding ? embedding_->weight : torch::Tensor()));
  pos_dropout_ = register_module("pos_dropout", nn::Dropout(c.positional_dropout_rate));
}

torch::Tensor TransformerDecoderImpl::forward(const torch::Tensor& memory, const torch::Tensor& memory_mask,
                                              const torch::Tensor& ys_in, const torch::Tensor& ys_lens) {
  const int64_t length = ys_in.size(1);
  const torch::Tensor positions = torch::arange(length, ys_in.options().dtype(torch::kLong));
  const torch::Tensor token_mask = positions.unsqueeze(0) < ys_lens.to(torch::kLong).unsqueeze(1);  // [B, L]
  const torch::Tensor causal = positions.unsqueeze(1) >= positions.unsqueeze(0);                  // [L, L]
  const torch::Tensor tgt_mask = token_mask.unsqueeze(1) & causal.unsqueeze(0);                   // [B, L, L]
  torch::Tensor x = embedding_->forward(ys_in) * std::sqrt(static_cast<double>(d_model_)) +
                    sinusoid_positions(0, length, d_model_, ys_in.device());
  x = pos_dropout_->forward(x);
  // Every position goes through the FFN, padding included, as in WeNet: the
  // rows past a hypothesis' end are then the same numbers WeNet gives.
  const torch::Tensor route_all;
  for (const auto& layer : *decoders)
    x = layer->as<DecoderLayer>()->forward(x, tgt_mask, memory, memory_mask, route_all);
  if (normalize_before_) x = after_norm->forward(x);
  return output_layer->forward(x);
}

BiTransformerDecoderImpl::BiTransformerDecoderImpl(int64_t vocab, int64_t d, const TransformerDecoderConfig& c) {
  left_decoder = register_module("left_decoder", TransformerDecoder(vocab, d, c.num_blocks, c));
  if (c.r_num_blocks > 0) right_decoder = register_module("right_decoder", TransformerDecoder(vocab, d, c.r_num_blocks, c));
}

std::pair<torch::Tensor, torch::Tensor> decoder_inputs(const std::vector<std::vector<int64_t>>& hyps, int64_t sos,
                                                       int64_t eos, bool reverse) {
  size_t max_len = 0;
  for (const auto& h : hyps) max_len = std::max(max_len, h.size());
  const int64_t n = static_cast<int64_t>(hyps.size());
  torch::Tensor ys = torch::full({n, static_cast<int64_t>(max_len) + 1}, eos, torch::kLong);
  torch::Tensor lens = torch::empty({n}, torch::kLong);
  auto ys_a = ys.accessor<int64_t, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const auto& h = hyps[i];
    ys_a[i][0] = sos;
    for (size_t j = 0; j < h.size(); ++j) ys_a[i][j + 1] = reverse ? h[h.size() - 1 - j] : h[j];
    lens[i] = static_cast<int64_t>(h.size()) + 1;
  }
  return {ys, lens};
}

}  // namespace moekit
