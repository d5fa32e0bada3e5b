#pragma once
// The Conformer encoder of WeNet's U2/U2++ (ConformerEncoder): global CMVN,
// Conv2d subsampling, positional scaling, blocks of macaron FFN / (rel-pos)
// self-attention / convolution module / FFN / final norm, and a last
// LayerNorm. Full-context, chunk-masked and chunk-by-chunk streaming
// forwards give the same numbers as WeNet's.
#include <torch/torch.h>

#include <vector>

#include "moekit/models/asr/asr_config.h"
#include "moekit/models/asr/ffn_slot.h"
#include "moekit/nn/attention.h"
#include "moekit/nn/conv_module.h"
#include "moekit/nn/subsampling.h"

namespace moekit {

// WeNet's subsequent_chunk_mask: [size, size] bool, row i sees the chunks up
// to its own (and at most `left_chunks` before it; < 0 = all).
torch::Tensor subsequent_chunk_mask(int64_t size, int64_t chunk_size, int64_t left_chunks,
                                    const torch::Device& device = torch::kCPU);

class GlobalCmvnImpl : public torch::nn::Module {
 public:
  explicit GlobalCmvnImpl(int64_t dim);
  torch::Tensor forward(const torch::Tensor& x) { return (x - mean) * istd; }
  torch::Tensor mean, istd;  // buffers [dim]
};
TORCH_MODULE(GlobalCmvn);

struct ConformerLayerCache {
  KvCache att;
  torch::Tensor cnn;  // [1, C, kernel-1]
};

class ConformerLayerImpl : public torch::nn::Module {
 public:
  explicit ConformerLayerImpl(const ConformerEncoderConfig& config);
  // x [B, T, D]; att_mask bool [B, T|1, T2] or undefined; pos_emb [1, T2, D];
  // mask_pad bool [B, T] or undefined.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& att_mask, const torch::Tensor& pos_emb,
                        const torch::Tensor& mask_pad, ConformerLayerCache* cache = nullptr);
  // One streaming step of several streams at once: x [1, sum of lengths, D]
  // holds the streams' chunks one after another (stream i: lengths[i] rows,
  // its positions pos_embs[i], its cache caches[i]). The feed-forward
  // sublayers (where an MoE layer reads its experts) run once over all
  // rows; attention over each stream's cache and the convolution module run
  // per stream. Each stream's rows equal forward() on that stream alone.
  torch::Tensor forward_streams(const torch::Tensor& x, const std::vector<int64_t>& lengths,
                                const std::vector<torch::Tensor>& pos_embs,
                                const std::vector<ConformerLayerCache*>& caches);

  MultiHeadedAttention self_attn{nullptr};
  FfnSlot feed_forward, feed_forward_macaron;
  ConvModule conv_module{nullptr};
  torch::nn::LayerNorm norm_ff{nullptr}, norm_mha{nullptr}, norm_ff_macaron{nullptr}, norm_conv{nullptr},
      norm_final{nullptr};

 private:
  torch::Tensor sublayer(torch::nn::LayerNorm& norm, const torch::Tensor& x,
                         const std::function<torch::Tensor(const torch::Tensor&)>& body, double scale,
                         bool in_place);
  // No gradient, pre-norm, CPU float32: the residual stream is updated in
  // place and norms run through the row kernel.
  bool in_place_applies(const torch::Tensor& x) const;
  ConformerEncoderConfig config_;
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(ConformerLayer);

// Per-stream encoder state for chunk-by-chunk decoding.
struct EncoderStreamCache {
  std::vector<ConformerLayerCache> layers;
  int64_t offset = 0;  // encoder frames emitted so far
};

class ConformerEncoderImpl : public torch::nn::Module {
 public:
  explicit ConformerEncoderImpl(const ConformerEncoderConfig& config);

  // feats [B, T, F], lens [B] -> (out [B, T', D], mask bool [B, T']).
  // chunk_size: < 0 full context; > 0 chunk-masked with `left_chunks` chunks
  // of left context (< 0 all); 0 (training) draws a dynamic chunk as WeNet.
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& feats, const torch::Tensor& lens,
                                                  int64_t chunk_size = -1, int64_t left_chunks = -1);

  // One streaming step: feats [1, t, F] (a decoding window, see
  // window_frames) -> [1, t', D]; keeps at most `cache_frames` frames of
  // attention context (< 0: all).
  torch::Tensor forward_chunk(const torch::Tensor& feats, EncoderStreamCache& cache, int64_t cache_frames);
  // One streaming step of several independent streams: feats[i] [1, t_i, F]
  // with its own caches[i] and cache_frames[i] -> outputs[i] [1, t_i', D],
  // each what forward_chunk gives for that stream alone (up to rounding:
  // the feed-forward sublayers see all streams' rows at once, so an MoE
  // layer reads each expert once per step rather than once per stream).
  std::vector<torch::Tensor> forward_chunks(const std::vector<torch::Tensor>& feats,
                                            const std::vector<EncoderStreamCache*>& caches,
                                            const std::vector<int64_t>& cache_frames);

  int64_t subsampling_rate() const { return embed->rate(); }
  int64_t right_context() const { return embed->right_context(); }
  // Feature frames for one streaming window producing `chunk_size` outputs.
  int64_t window_frames(int64_t chunk_size) const {
    return (chunk_size - 1) * subsampling_rate() + right_context() + 1;
  }
  const ConformerEncoderConfig& config() const { return config_; }

  GlobalCmvn global_cmvn{nullptr};
  Conv2dSubsampling embed{nullptr};
  torch::nn::ModuleList encoders{nullptr};
  torch::nn::LayerNorm after_norm{nullptr};

 private:
  // Subsampled, scaled input and the position table from `offset`.
  std::pair<torch::Tensor, torch::Tensor> embed_input(const torch::Tensor& feats, int64_t offset);
  ConformerEncoderConfig config_;
  torch::nn::Dropout pos_dropout_{nullptr};
};
TORCH_MODULE(ConformerEncoder);

}  // namespace moekit
