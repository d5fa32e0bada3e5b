#include "moekit/models/asr/encoder.h"

#include <cmath>

#include "moekit/core/check.h"
#include "moekit/kernels/row_kernels.h"
#include "moekit/nn/norm.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/linear.h"

namespace moekit {

torch::Tensor subsequent_chunk_mask(int64_t size, int64_t chunk_size, int64_t left_chunks, const torch::Device& device) {
  MOEKIT_CHECK_ARG(chunk_size > 0, "chunk mask: chunk_size must be positive, got ", chunk_size);
  const auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  const torch::Tensor i = torch::arange(size, opts).unsqueeze(1);
  const torch::Tensor j = torch::arange(size, opts).unsqueeze(0);
  const torch::Tensor chunk = torch::div(i, chunk_size, "floor");
  const torch::Tensor ending = torch::clamp_max((chunk + 1) * chunk_size, size);
  torch::Tensor mask = j < ending;
  if (left_chunks >= 0) mask = mask & (j >= torch::clamp_min((chunk - left_chunks) * chunk_size, 0));
  return mask;
}

GlobalCmvnImpl::GlobalCmvnImpl(int64_t dim) {
  mean = register_buffer("mean", torch::zeros({dim}));
  istd = register_buffer("istd", torch::ones({dim}));
}

ConformerLayerImpl::ConformerLayerImpl(const ConformerEncoderConfig& c) : config_(c) {
  namespace nn = torch::nn;
  const int64_t d = c.output_size;
  AttentionOptions att;
  att.heads = c.attention_heads;
  att.d_model = d;
  att.dropout = c.attention_dropout_rate;
  att.rel_pos = c.rel_pos;
  self_attn = register_module("self_attn", MultiHeadedAttention(att));
  feed_forward.create(*this, "feed_forward", d, c.ffn);
  if (c.macaron_style) feed_forward_macaron.create(*this, "feed_forward_macaron", d, c.ffn);
  if (c.use_cnn_module) {
    ConvModuleOptions conv;
    conv.channels = d;
    conv.kernel_size = c.cnn_module_kernel;
    conv.activation = c.ffn.activation;
    conv.layer_norm = c.cnn_layer_norm;
    conv.causal = c.causal;
    conv_module = register_module("conv_module", ConvModule(conv));
  }
  auto norm = [&](const char* name) {
    return register_module(name, nn::LayerNorm(nn::LayerNormOptions({d}).eps(c.norm_eps)));
  };
  norm_ff = norm("norm_ff");
  norm_mha = norm("norm_mha");
  if (c.macaron_style) norm_ff_macaron = norm("norm_ff_macaron");
  if (c.use_cnn_module) {
    norm_conv = norm("norm_conv");
    norm_final = norm("norm_final");
  }
  dropout_ = register_module("dropout", nn::Dropout(c.dropout_rate));
}

bool ConformerLayerImpl::in_place_applies(const torch::Tensor& x) const {
  return !torch::GradMode::is_enabled() && !is_training() && config_.normalize_before && x.device().is_cpu() &&
         x.scalar_type() == torch::kFloat;
}

torch::Tensor ConformerLayerImpl::sublayer(torch::nn::LayerNorm& norm, const torch::Tensor& x,
                                           const std::function<torch::Tensor(const torch::Tensor&)>& body,
                                           double scale, bool in_place) {
  if (in_place) {
    // Inference on a CPU float32 x this layer owns: the norm through the row
    // kernel, the residual added into x (no dropout, no temporaries).
    const torch::Tensor y = body(fast_layer_norm(norm, x)).contiguous();
    MOEKIT_CHECK(y.sizes() == x.sizes(), "conformer layer: a sublayer returned ", y.sizes(), " for ", x.sizes());
    detail::add_scaled(y.data_ptr<float>(), static_cast<float>(scale), x.data_ptr<float>(), x.numel());
    return x;
  }
  torch::Tensor y = config_.normalize_before ? norm->forward(x) : x;
  y = dropout_->forward(body(y));
  torch::Tensor out = x.add(y, scale);
  return config_.normalize_before ? out : norm->forward(out);
}

torch::Tensor ConformerLayerImpl::forward(const torch::Tensor& input, const torch::Tensor& att_mask,
                                          const torch::Tensor& pos_emb, const torch::Tensor& mask_pad,
                                          ConformerLayerCache* cache) {
  const double ff_scale = feed_forward_macaron.defined() ? 0.5 : 1.0;
  const bool in_place = in_place_applies(input);
  if (in_place) MOEKIT_FAST_PATH("conformer.in_place");
  // In place, the residual stream is a copy this layer owns.
  torch::Tensor x = in_place ? input.contiguous().clone() : input;
  if (feed_forward_macaron.defined())
    x = sublayer(norm_ff_macaron, x, [&](const torch::Tensor& h) { return feed_forward_macaron.forward(h, mask_pad); },
                 ff_scale, in_place);
  x = sublayer(norm_mha, x,
               [&](const torch::Tensor& h) {
                 return self_attn->forward(h, h, h, att_mask, pos_emb, cache ? &cache->att : nullptr);
               },
               1.0, in_place);
  if (conv_module)
    x = sublayer(norm_conv, x,
                 [&](const torch::Tensor& h) { return conv_module->forward(h, mask_pad, cache ? &cache->cnn : nullptr); },
                 1.0, in_place);
  x = sublayer(norm_ff, x, [&](const torch::Tensor& h) { return feed_forward.forward(h, mask_pad); }, ff_scale,
               in_place);
  if (conv_module) x = in_place ? fast_layer_norm(norm_final, x, &x) : norm_final->forward(x);
  return x;
}

torch::Tensor ConformerLayerImpl::forward_streams(const torch::Tensor& input, const std::vector<int64_t>& lengths,
                                                  const std::vector<torch::Tensor>& pos_embs,
                                                  const std::vector<ConformerLayerCache*>& caches) {
  MOEKIT_CHECK_ARG(lengths.size() == pos_embs.size() && lengths.size() == caches.size(),
                   "conformer layer: ", lengths.size(), " stream lengths for ", pos_embs.size(), " position tables and ",
                   caches.size(), " caches");
  if (lengths.size() == 1) return forward(input, {}, pos_embs[0], {}, caches[0]);
  const double ff_scale = feed_forward_macaron.defined() ? 0.5 : 1.0;
  const bool in_place = in_place_applies(input);
  const torch::Tensor no_mask;
  torch::Tensor x = in_place ? input.contiguous().clone() : input;
  auto ffn = [&](FfnSlot& slot) { return [&slot, &no_mask](const torch::Tensor& h) { return slot.forward(h, no_mask); }; };
  if (feed_forward_macaron.defined()) x = sublayer(norm_ff_macaron, x, ffn(feed_forward_macaron), ff_scale, in_place);
  // Attention and convolution keep a cache per stream; their norms and
  // position-wise maps run over every stream's rows at once.
  std::vector<KvCache*> att_caches;
  std::vector<torch::Tensor*> cnn_caches;
  for (ConformerLayerCache* cache : caches) {
    att_caches.push_back(&cache->att);
    cnn_caches.push_back(&cache->cnn);
  }
  x = sublayer(norm_mha, x,
               [&](const torch::Tensor& h) { return self_attn->self_attention_streams(h, lengths, pos_embs, att_caches); },
               1.0, in_place);
  if (conv_module)
    x = sublayer(norm_conv, x, [&](const torch::Tensor& h) { return conv_module->forward_streams(h, lengths, cnn_caches); },
                 1.0, in_place);
  x = sublayer(norm_ff, x, ffn(feed_forward), ff_scale, in_place);
  if (conv_module) x = in_place ? fast_layer_norm(norm_final, x, &x) : norm_final->forward(x);
  return x;
}

ConformerEncoderImpl::ConformerEncoderImpl(const ConformerEncoderConfig& c) : config_(c) {
  namespace nn = torch::nn;
  global_cmvn = register_module("global_cmvn", GlobalCmvn(c.input_dim));
  embed = register_module("embed", Conv2dSubsampling(c.input_dim, c.output_size, c.subsampling_rate));
  encoders = register_module("encoders", nn::ModuleList());
  for (int64_t i = 0; i < c.num_blocks; ++i) encoders->push_back(ConformerLayer(c));
  after_norm = register_module("after_norm", nn::LayerNorm(nn::LayerNormOptions({c.output_size}).eps(c.norm_eps)));
  pos_dropout_ = register_module("pos_dropout", nn::Dropout(c.positional_dropout_rate));
}

std::pair<torch::Tensor, torch::Tensor> ConformerEncoderImpl::embed_input(const torch::Tensor& feats, int64_t offset) {
  torch::Tensor x = embed->forward(global_cmvn->forward(feats));
  const double xscale = std::sqrt(static_cast<double>(config_.output_size));
  torch::Tensor pos = sinusoid_positions(offset, x.size(1), config_.output_size, x.device());
  x = config_.rel_pos ? x * xscale : x * xscale + pos;
  return {pos_dropout_->forward(x), pos_dropout_->forward(pos)};
}

std::pair<torch::Tensor, torch::Tensor> ConformerEncoderImpl::forward(const torch::Tensor& feats,
                                                                      const torch::Tensor& lens, int64_t chunk_size,
                                                                      int64_t left_chunks) {
  MOEKIT_CHECK_ARG(feats.dim() == 3 && feats.size(2) == config_.input_dim, "encoder: features must be [B, T, ",
                   config_.input_dim, "], got ", feats.sizes());
  MOEKIT_CHECK_ARG(lens.dim() == 1 && lens.size(0) == feats.size(0), "encoder: lens must be [B]");
  MOEKIT_CHECK_ARG(embed->output_length(feats.size(1)) > 0, "encoder: ", feats.size(1),
                   " feature frames are too few for x", embed->rate(), " subsampling (need at least ",
                   right_context() + 1, ")");
  const torch::Tensor frames = torch::arange(feats.size(1), lens.options().dtype(torch::kLong)).unsqueeze(0);
  torch::Tensor mask = embed->subsample_mask(frames < lens.to(torch::kLong).unsqueeze(1));  // [B, T']
  auto [x, pos] = embed_input(feats, 0);
  const int64_t t = x.size(1);
  // WeNet's add_optional_chunk_mask.
  torch::Tensor att_mask = mask.unsqueeze(1);  // [B, 1, T']
  int64_t chunk = -1, left = -1;
  if (config_.use_dynamic_chunk) {
    if (chunk_size < 0) {
      chunk = t;
    } else if (chunk_size > 0) {
      chunk = chunk_size;
      left = left_chunks;
    } else {
      const int64_t max_chunk = 100 / embed->rate();
      chunk = t > 1 ? torch::randint(1, t, {1}).item<int64_t>() : 1;
      if (chunk > t / 2) {
        chunk = t;
      } else {
        chunk = chunk % max_chunk + 1;
        if (config_.use_dynamic_left_chunk) {
          const int64_t max_left = (t - 1) / chunk;
          left = max_left > 0 ? torch::randint(0, max_left, {1}).item<int64_t>() : 0;
        }
      }
    }
  } else if (config_.static_chunk_size > 0) {
    chunk = config_.static_chunk_size;
    left = left_chunks;
  } else if (chunk_size > 0) {
    // A model trained without chunks can still be run chunk-masked on request.
    chunk = chunk_size;
    left = left_chunks;
  }
  if (chunk > 0) att_mask = att_mask & subsequent_chunk_mask(t, chunk, left, mask.device()).unsqueeze(0);
  // Inference on CPU with nothing to mask (every frame valid; full context
  // for the attention mask): the layers get no mask and take their unmasked
  // paths (the MoE layer's and conv module's inference forms). A mask of all
  // true changes no value. Not while recording gradients, so training runs
  // as it did.
  torch::Tensor pad_mask = mask, layer_att_mask = att_mask;
  if (!torch::GradMode::is_enabled() && mask.device().is_cpu()) {
    if (mask.all().item<bool>()) pad_mask = torch::Tensor();
    if (att_mask.all().item<bool>()) layer_att_mask = torch::Tensor();
    if (!pad_mask.defined() && !layer_att_mask.defined()) MOEKIT_FAST_PATH("encoder.unmasked");
  }
  for (const auto& layer : *encoders) x = layer->as<ConformerLayer>()->forward(x, layer_att_mask, pos, pad_mask);
  if (config_.normalize_before) x = fast_layer_norm(after_norm, x);
  return {x, mask};
}

torch::Tensor ConformerEncoderImpl::forward_chunk(const torch::Tensor& feats, EncoderStreamCache& cache,
                                                  int64_t cache_frames) {
  return forward_chunks({feats}, {&cache}, {cache_frames})[0];
}

std::vector<torch::Tensor> ConformerEncoderImpl::forward_chunks(const std::vector<torch::Tensor>& feats,
                                                                const std::vector<EncoderStreamCache*>& caches,
                                                                const std::vector<int64_t>& cache_frames) {
  const size_t n = feats.size();
  MOEKIT_CHECK_ARG(n > 0 && caches.size() == n && cache_frames.size() == n, "encoder chunks: ", n,
                   " feature chunks for ", caches.size(), " caches and ", cache_frames.size(), " cache sizes");
  for (const torch::Tensor& f : feats) {
    MOEKIT_CHECK_ARG(f.dim() == 3 && f.size(0) == 1 && f.size(2) == config_.input_dim,
                     "encoder chunk: features must be [1, T, ", config_.input_dim, "], got ", f.sizes());
    MOEKIT_CHECK_ARG(embed->output_length(f.size(1)) > 0, "encoder chunk: ", f.size(1),
                     " frames are fewer than one output needs (", right_context() + 1, ")");
  }
  // Subsampling: one batch when every chunk has the same length (the
  // steady state), else stream by stream.
  std::vector<torch::Tensor> xs(n);
  bool same_length = true;
  for (const torch::Tensor& f : feats) same_length = same_length && f.size(1) == feats[0].size(1);
  if (n > 1 && same_length) {
    const torch::Tensor x = embed->forward(global_cmvn->forward(torch::cat(feats, 0)));
    const double xscale = std::sqrt(static_cast<double>(config_.output_size));
    for (size_t i = 0; i < n; ++i) {
      torch::Tensor xi = x.narrow(0, static_cast<int64_t>(i), 1);
      xs[i] = config_.rel_pos
                  ? xi * xscale
                  : xi * xscale + sinusoid_positions(caches[i]->offset, xi.size(1), config_.output_size, xi.device());
      xs[i] = pos_dropout_->forward(xs[i]);
    }
  } else {
    for (size_t i = 0; i < n; ++i) xs[i] = embed_input(feats[i], caches[i]->offset).first;
  }
  std::vector<int64_t> lengths(n);
  std::vector<torch::Tensor> pos(n);
  for (size_t i = 0; i < n; ++i) {
    EncoderStreamCache& cache = *caches[i];
    if (cache.layers.empty()) cache.layers.resize(encoders->size());
    lengths[i] = xs[i].size(1);
    const int64_t cached = cache.layers[0].att.size();
    pos[i] = sinusoid_positions(cache.offset - cached, cached + lengths[i], config_.output_size, xs[i].device());
  }
  torch::Tensor x = n == 1 ? xs[0] : torch::cat(xs, 1);
  std::vector<ConformerLayerCache*> layer_caches(n);
  for (size_t l = 0; l < encoders->size(); ++l) {
    for (size_t i = 0; i < n; ++i) layer_caches[i] = &caches[i]->layers[l];
    x = encoders[l]->as<ConformerLayer>()->forward_streams(x, lengths, pos, layer_caches);
    for (size_t i = 0; i < n; ++i) layer_caches[i]->att.keep_last(cache_frames[i]);
  }
  if (config_.normalize_before) x = fast_layer_norm(after_norm, x);
  std::vector<torch::Tensor> outputs(n);
  int64_t start = 0;
  for (size_t i = 0; i < n; ++i) {
    outputs[i] = n == 1 ? x : x.narrow(1, start, lengths[i]);
    start += lengths[i];
    caches[i]->offset += lengths[i];
  }
  return outputs;
}

}  // namespace moekit
