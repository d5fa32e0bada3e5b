#include "moekit/models/seq2seq/seq2seq_model.h"

#include <cmath>

#include "moekit/core/check.h"
#include "moekit/nn/norm.h"
#include "moekit/ops/linear.h"

namespace moekit {
namespace {

torch::nn::LayerNorm layer_norm(int64_t d) { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({d}).eps(1e-5)); }

AttentionOptions attention_options(const Seq2seqConfig& c) {
  AttentionOptions o;
  o.heads = c.heads;
  o.d_model = c.d_model;
  o.dropout = c.attention_dropout;
  return o;
}

// [B, T] bool: position t < lens[b].
torch::Tensor length_mask(const torch::Tensor& lens, int64_t time) {
  return torch::arange(time, lens.options()).unsqueeze(0) < lens.unsqueeze(1);
}

void check_ids(const torch::Tensor& ids, const torch::Tensor& lens, int64_t vocab, const char* what) {
  MOEKIT_CHECK_ARG(ids.dim() == 2 && ids.scalar_type() == torch::kLong, "seq2seq: ", what,
                   " must be int64 [B, T], got ", ids.scalar_type(), " ", ids.sizes());
  MOEKIT_CHECK_ARG(lens.dim() == 1 && lens.size(0) == ids.size(0) && lens.scalar_type() == torch::kLong,
                   "seq2seq: ", what, " lengths must be int64 [B=", ids.size(0), "], got ", lens.sizes());
  if (ids.numel() == 0) return;
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  MOEKIT_CHECK_ARG(lo >= 0 && hi < vocab, "seq2seq: ", what, " id ", lo < 0 ? lo : hi, " is outside [0, vocab_size=",
                   vocab, ")");
  const int64_t shortest = lens.min().item<int64_t>(), longest = lens.max().item<int64_t>();
  MOEKIT_CHECK_ARG(shortest >= 1 && longest <= ids.size(1), "seq2seq: ", what, " lengths must be in [1, ",
                   ids.size(1), "], got ", shortest < 1 ? shortest : longest);
}

}  // namespace

void Seq2seqFfn::create(torch::nn::Module& parent, const Seq2seqConfig& config, bool decoder, int64_t layer) {
  const bool moe_layer = config.is_moe_layer(layer);
  const MoEOptions moe_options = config.moe_options(decoder);
  if (moe_layer && !(moe_options.routing == Routing::Task && !config.extracted_task.empty())) {
    moe = parent.register_module("ffn", MoELayer(moe_options));
    return;
  }
  FeedForwardOptions o;
  o.d_model = config.d_model;
  o.activation = config.activation;
  o.bias = true;
  // A task-routed layer of an extracted model: the task's k experts side by side.
  o.d_hidden = moe_layer ? config.moe.top_k * config.expert_hidden() : config.ffn_hidden;
  dense = parent.register_module("ffn", FeedForward(o));
}

torch::Tensor Seq2seqFfn::forward(const torch::Tensor& x, const Seq2seqRoute& route) {
  if (dense) return dense->forward(x);
  RouteInput r;
  r.mask = route.mask;
  r.task = route.task;
  r.sentence = route.sentence;
  return moe->forward(x, r);
}

Seq2seqEncoderLayerImpl::Seq2seqEncoderLayerImpl(const Seq2seqConfig& config, int64_t layer) {
  self_attn_layer_norm = register_module("self_attn_layer_norm", layer_norm(config.d_model));
  self_attn = register_module("self_attn", MultiHeadedAttention(attention_options(config)));
  final_layer_norm = register_module("final_layer_norm", layer_norm(config.d_model));
  ffn.create(*this, config, /*decoder=*/false, layer);
  dropout_ = register_module("dropout", torch::nn::Dropout(config.dropout));
}

torch::Tensor Seq2seqEncoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& attn_mask,
                                               const Seq2seqRoute& route) {
  torch::Tensor h = fast_layer_norm(self_attn_layer_norm, x);
  torch::Tensor y = x + dropout_(self_attn(h, h, h, attn_mask));
  h = fast_layer_norm(final_layer_norm, y);
  return y + dropout_(ffn.forward(h, route));
}

Seq2seqDecoderLayerImpl::Seq2seqDecoderLayerImpl(const Seq2seqConfig& config, int64_t layer) {
  self_attn_layer_norm = register_module("self_attn_layer_norm", layer_norm(config.d_model));
  self_attn = register_module("self_attn", MultiHeadedAttention(attention_options(config)));
  encoder_attn_layer_norm = register_module("encoder_attn_layer_norm", layer_norm(config.d_model));
  encoder_attn = register_module("encoder_attn", MultiHeadedAttention(attention_options(config)));
  final_layer_norm = register_module("final_layer_norm", layer_norm(config.d_model));
  ffn.create(*this, config, /*decoder=*/true, layer);
  dropout_ = register_module("dropout", torch::nn::Dropout(config.dropout));
}

torch::Tensor Seq2seqDecoderLayerImpl::forward(const torch::Tensor& y, const torch::Tensor& self_mask,
                                               const ProjectedMemory& memory, const torch::Tensor& memory_mask,
                                               const Seq2seqRoute& route, KvCache* cache) {
  torch::Tensor h = fast_layer_norm(self_attn_layer_norm, y);
  torch::Tensor out = y + dropout_(self_attn->forward(h, h, h, self_mask, torch::Tensor(), cache));
  h = fast_layer_norm(encoder_attn_layer_norm, out);
  out = out + dropout_(encoder_attn->attend(h, memory, memory_mask));
  h = fast_layer_norm(final_layer_norm, out);
  return out + dropout_(ffn.forward(h, route));
}

Seq2seqModel::Seq2seqModel(const Seq2seqConfig& config) : config_(config) {
  config_.validate();
  embed_tokens = register_module("embed_tokens", PackedEmbedding(config_.vocab_size, config_.d_model));
  auto encoder = register_module("encoder", std::make_shared<torch::nn::Module>());
  auto encoder_list = encoder->register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < config_.encoder_layers; ++l) {
    encoder_layers.push_back(Seq2seqEncoderLayer(config_, l));
    encoder_list->push_back(encoder_layers.back());
  }
  encoder_norm = encoder->register_module("layer_norm", layer_norm(config_.d_model));
  auto decoder = register_module("decoder", std::make_shared<torch::nn::Module>());
  auto decoder_list = decoder->register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < config_.decoder_layers; ++l) {
    decoder_layers.push_back(Seq2seqDecoderLayer(config_, l));
    decoder_list->push_back(decoder_layers.back());
  }
  decoder_norm = decoder->register_module("layer_norm", layer_norm(config_.d_model));
  dropout_ = register_module("dropout", torch::nn::Dropout(config_.dropout));
  reset_parameters();
}

void Seq2seqModel::reset_parameters() {
  torch::NoGradGuard no_grad;
  embed_tokens->weight.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(config_.d_model)));
}

void Seq2seqModel::set_weight_dtype(torch::ScalarType dtype) {
  std::vector<torch::Tensor*> matrices = {&embed_tokens->weight};
  std::vector<ExpertsImpl*> experts;
  auto attention = [&](MultiHeadedAttentionImpl& a) {
    for (PackedLinear* p : {&a.linear_q, &a.linear_k, &a.linear_v, &a.linear_out}) matrices.push_back(&(*p)->weight);
  };
  auto ffn = [&](Seq2seqFfn& f) {
    if (f.moe) {
      experts.push_back(f.moe->experts.get());
    } else {
      for (PackedLinear* p : {&f.dense->w1, &f.dense->w2, &f.dense->w3})
        if (*p) matrices.push_back(&(*p)->weight);
    }
  };
  for (auto& layer : encoder_layers) {
    attention(*layer->self_attn);
    ffn(layer->ffn);
  }
  for (auto& layer : decoder_layers) {
    attention(*layer->self_attn);
    attention(*layer->encoder_attn);
    ffn(layer->ffn);
  }
  store_weight_matrices(*this, matrices, experts, dtype, "seq2seq");
}

torch::Tensor Seq2seqModel::embed(const torch::Tensor& tokens, int64_t offset) {
  torch::Tensor e = embed_tokens(tokens);
  // Activations in the norms' dtype (float32 under bf16 matrices).
  if (e.scalar_type() != decoder_norm->weight.scalar_type()) e = e.to(decoder_norm->weight.scalar_type());
  e = e * std::sqrt(static_cast<double>(config_.d_model));
  return dropout_(e + sinusoid_positions(offset, tokens.size(1), config_.d_model, e.device()).to(e.dtype()));
}

torch::Tensor Seq2seqModel::output_logits(const torch::Tensor& y) {
  const torch::Tensor h = fast_layer_norm(decoder_norm, y);
  const torch::Tensor logits = embed_tokens->as_output(h);
  return logits.scalar_type() == torch::kDouble ? logits : logits.to(torch::kFloat);
}

Seq2seqEncoded Seq2seqModel::encode(const torch::Tensor& src, const torch::Tensor& src_lens,
                                    const torch::Tensor& task) {
  check_ids(src, src_lens, config_.vocab_size, "source");
  Seq2seqEncoded out;
  if (task.defined()) {
    MOEKIT_CHECK_ARG(task.dim() == 1 && task.size(0) == src.size(0) && task.scalar_type() == torch::kLong,
                     "seq2seq: task ids must be int64 [B=", src.size(0), "], got ", task.sizes());
    if (task.numel() > 0) {
      const int64_t lo = task.min().item<int64_t>(), hi = task.max().item<int64_t>();
      MOEKIT_CHECK_ARG(lo >= 0 && hi < static_cast<int64_t>(config_.tasks.size()), "seq2seq: task id ",
                       lo < 0 ? lo : hi, " is outside the model's ", config_.tasks.size(), " tasks");
    }
    out.task = task;
  } else {
    MOEKIT_CHECK_ARG(!config_.uses_task_routing() || !config_.extracted_task.empty(),
                     "seq2seq: this model routes by task; give the task of each source");
  }
  out.mask = length_mask(src_lens.to(src.device()), src.size(1));
  Seq2seqRoute route;
  route.mask = out.mask;
  route.task = out.task;
  const torch::Tensor attn_mask = out.mask.unsqueeze(1);  // [B, 1, S]
  torch::Tensor x = embed(src, 0);
  for (auto& layer : encoder_layers) x = layer->forward(x, attn_mask, route);
  out.memory = fast_layer_norm(encoder_norm, x);
  if (config_.moe.enabled() && config_.moe.decoder_routing == Routing::Sentence) {
    const torch::Tensor m = out.mask.to(out.memory.scalar_type()).unsqueeze(-1);
    out.sentence = (out.memory * m).sum(1) / m.sum(1).clamp_min(1.0);
  }
  return out;
}

Seq2seqRoute Seq2seqModel::decoder_route(const Seq2seqEncoded& encoded) const {
  Seq2seqRoute route;
  route.task = encoded.task;
  route.sentence = encoded.sentence;
  return route;
}

torch::Tensor Seq2seqModel::decode(const Seq2seqEncoded& encoded, const torch::Tensor& tgt_in,
                                   const torch::Tensor& tgt_lens) {
  check_ids(tgt_in, tgt_lens, config_.vocab_size, "target");
  MOEKIT_CHECK_ARG(tgt_in.size(0) == encoded.memory.size(0), "seq2seq: ", tgt_in.size(0), " targets for ",
                   encoded.memory.size(0), " sources");
  const int64_t length = tgt_in.size(1);
  Seq2seqRoute route = decoder_route(encoded);
  route.mask = length_mask(tgt_lens.to(tgt_in.device()), length);
  const torch::Tensor causal =
      torch::ones({length, length}, route.mask.options()).tril().unsqueeze(0);  // [1, L, L]
  const torch::Tensor self_mask = causal.logical_and(route.mask.unsqueeze(1));   // [B, L, L]
  const torch::Tensor memory_mask = encoded.mask.unsqueeze(1);
  torch::Tensor y = embed(tgt_in, 0);
  for (auto& layer : decoder_layers) {
    const ProjectedMemory memory = layer->encoder_attn->project_memory(encoded.memory);
    y = layer->forward(y, self_mask, memory, memory_mask, route);
  }
  return output_logits(y);
}

Seq2seqLoss Seq2seqModel::loss(const torch::Tensor& src, const torch::Tensor& src_lens, const torch::Tensor& task,
                               const torch::Tensor& tgt, const torch::Tensor& tgt_lens, double label_smoothing) {
  MOEKIT_CHECK_ARG(label_smoothing >= 0.0 && label_smoothing < 1.0, "seq2seq: label_smoothing must be in [0, 1), got ",
                   label_smoothing);
  check_ids(tgt, tgt_lens, config_.vocab_size, "target");
  const int64_t batch = tgt.size(0), length = tgt.size(1);
  const torch::Tensor tgt_in =
      torch::cat({torch::full({batch, 1}, config_.bos_id, tgt.options()), tgt.narrow(1, 0, length - 1)}, 1);
  const Seq2seqEncoded encoded = encode(src, src_lens, task);
  const torch::Tensor logits = decode(encoded, tgt_in, tgt_lens).reshape({batch * length, config_.vocab_size});
  const torch::Tensor valid = length_mask(tgt_lens.to(tgt.device()), length).reshape(-1);
  const torch::Tensor target = tgt.reshape(-1).masked_fill(valid.logical_not(), -100);
  namespace F = torch::nn::functional;
  Seq2seqLoss out;
  out.tokens = tgt_lens.sum().item<int64_t>();
  out.nll = F::cross_entropy(logits, target, F::CrossEntropyFuncOptions().ignore_index(-100));
  const torch::Tensor smoothed =
      label_smoothing > 0.0
          ? F::cross_entropy(logits, target,
                             F::CrossEntropyFuncOptions().ignore_index(-100).label_smoothing(label_smoothing))
          : out.nll;
  out.aux = collect_moe_aux_loss(*this);
  if (!out.aux.defined()) out.aux = torch::zeros({}, smoothed.options());
  out.loss = smoothed + out.aux;
  out.logits = logits;
  out.valid = valid;
  return out;
}

Seq2seqDecoderState Seq2seqModel::start_decoding(const Seq2seqEncoded& encoded) {
  Seq2seqDecoderState state;
  state.self.resize(decoder_layers.size());
  for (auto& layer : decoder_layers) state.cross.push_back(layer->encoder_attn->project_memory(encoded.memory));
  state.memory_mask = encoded.mask.unsqueeze(1);
  state.route = decoder_route(encoded);
  return state;
}

torch::Tensor Seq2seqModel::step(Seq2seqDecoderState& state, const torch::Tensor& tokens) {
  MOEKIT_CHECK_ARG(tokens.dim() == 1 && tokens.scalar_type() == torch::kLong &&
                       tokens.size(0) == state.memory_mask.size(0),
                   "seq2seq: step takes int64 tokens [B=", state.memory_mask.size(0), "], got ", tokens.sizes());
  MOEKIT_CHECK_ARG(state.self.size() == decoder_layers.size(), "seq2seq: the decoding state is for another model");
  torch::Tensor y = embed(tokens.unsqueeze(1), state.length);  // [B, 1, D]
  for (size_t l = 0; l < decoder_layers.size(); ++l) {
    y = decoder_layers[l]->forward(y, {}, state.cross[l], state.memory_mask, state.route, &state.self[l]);
  }
  ++state.length;
  return output_logits(y).squeeze(1);
}

void Seq2seqModel::select(Seq2seqDecoderState& state, const torch::Tensor& index) {
  for (KvCache& cache : state.self) cache.select(index);
  for (ProjectedMemory& m : state.cross) {
    m.k = m.k.index_select(0, index);
    m.v = m.v.index_select(0, index);
  }
  state.memory_mask = state.memory_mask.index_select(0, index);
  if (state.route.task.defined()) state.route.task = state.route.task.index_select(0, index);
  if (state.route.sentence.defined()) state.route.sentence = state.route.sentence.index_select(0, index);
}

std::shared_ptr<Seq2seqModel> load_seq2seq_model(const std::string& dir, WeightStorage storage,
                                                 c10::optional<torch::ScalarType> weight_dtype) {
  // The matrices take their dtype before the weights are loaded: float32
  // weights are converted as they are copied in (a mapped file's pages of a
  // converted tensor go back at once).
  std::shared_ptr<Model> model = load_model(dir, storage, [&](Model& m) {
    auto* seq2seq = dynamic_cast<Seq2seqModel*>(&m);
    MOEKIT_CHECK_ARG(seq2seq, dir, " holds a ", m.model_type(), " model, not a seq2seq model");
    if (weight_dtype) seq2seq->set_weight_dtype(*weight_dtype);
  });
  return std::dynamic_pointer_cast<Seq2seqModel>(model);
}

}  // namespace moekit
