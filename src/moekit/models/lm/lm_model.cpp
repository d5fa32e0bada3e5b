#include "moekit/models/lm/lm_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "moekit/core/check.h"
#include "moekit/core/cpu_allocator.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/safetensors_stream.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/linear.h"

namespace moekit {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

namespace {

// CPU float inference: one loop per row in place of the eight LibTorch ops
// below, whose dispatch costs more than their arithmetic in batch-1
// decoding. The same operations in the same order, the sum
// of squares accumulated in float as LibTorch's mean does (in another
// order, so the last bit may differ).
torch::Tensor rms_norm_rows(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  MOEKIT_FAST_PATH("lm.rms_norm");
  const int64_t n = x.size(-1), rows = x.numel() / n;
  torch::Tensor y = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * n;
    float* yr = yp + r * n;
    float squares = 0.f;
    for (int64_t i = 0; i < n; ++i) squares += xr[i] * xr[i];
    const float scale = 1.f / std::sqrt(squares / static_cast<float>(n) + static_cast<float>(eps));
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * w[i];
  }
  return y;
}

}  // namespace

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // CPU inference: the loop form at every row count, so that a batch gives
  // its sequences' values alone bit for bit.
  if (x.dim() >= 1 && cpu_float_inference({&x, &weight})) return rms_norm_rows(x, weight, eps_);
  // fp32 statistics for half types; fp64 stays fp64 (gradient checks).
  const torch::Tensor x32 = x.scalar_type() == torch::kDouble ? x : x.to(torch::kFloat);
  const torch::Tensor normed = x32 * torch::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return normed.to(x.scalar_type()) * weight;
}

RotaryTables rotary_tables(int64_t offset, int64_t length, int64_t head_dim, double theta) {
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat);
  // inv_freq_i = theta^(-2i / head_dim), as HF computes it (fp32 exponent).
  const torch::Tensor inv_freq =
      1.0 / torch::pow(theta, torch::arange(0, head_dim, 2, torch::TensorOptions().dtype(torch::kLong)).to(torch::kFloat) /
                                  static_cast<double>(head_dim));
  const torch::Tensor positions = torch::arange(offset, offset + length, f32);
  const torch::Tensor freqs = torch::outer(positions, inv_freq);  // [T, hd/2]
  const torch::Tensor emb = torch::cat({freqs, freqs}, -1);       // [T, hd]
  return {emb.cos(), emb.sin()};
}

torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& tables) {
  const int64_t half = x.size(-1) / 2;
  // CPU float inference: one loop over x's strides (x is a transposed view
  // of a projection) in place of the seven LibTorch ops below; the same
  // products and sum, so the same values bit for bit.
  if (x.dim() == 4 && x.stride(3) == 1 && !torch::GradMode::is_enabled() && x.device().is_cpu() &&
      x.scalar_type() == torch::kFloat && cpu_float_inference({&tables.cos, &tables.sin}) &&
      tables.cos.size(0) == x.size(2)) {
    MOEKIT_FAST_PATH("lm.rotary");
    const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3);
    torch::Tensor out = torch::empty({B, H, T, D}, x.options());
    const float* xp = x.data_ptr<float>();
    const float* cp = tables.cos.data_ptr<float>();
    const float* sp = tables.sin.data_ptr<float>();
    float* op = out.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t) {
          const float* xr = xp + b * x.stride(0) + h * x.stride(1) + t * x.stride(2);
          const float* c = cp + t * D;
          const float* sn = sp + t * D;
          float* o = op + ((b * H + h) * T + t) * D;
          for (int64_t i = 0; i < half; ++i) {
            o[i] = xr[i] * c[i] + -xr[i + half] * sn[i];
            o[i + half] = xr[i + half] * c[i + half] + xr[i] * sn[i + half];
          }
        }
    return out;
  }
  const torch::Tensor rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * tables.cos.to(x.scalar_type()) + rotated * tables.sin.to(x.scalar_type());
}

// One decoding step's attention on the CPU (T = 1, float, no gradients):
// each head's scores over the cached keys, their softmax and the weighted
// sum of the values in one loop, in place of the dozen LibTorch ops (and
// their temporaries) of the general form below. q: [B, H, 1, hd]
// contiguous; caches [B, KV, S_max, hd], the first `keys` positions filled.
// Returns [B, 1, H * hd].
torch::Tensor LmAttentionImpl::attend_one_step(const torch::Tensor& q, const torch::Tensor& k_cache,
                                               const torch::Tensor& v_cache, int64_t keys) const {
  MOEKIT_FAST_PATH("lm.attention_step");
  const int64_t B = q.size(0), G = heads_ / kv_heads_, D = head_dim_, s_max = k_cache.size(2);
  torch::Tensor out = torch::empty({B, 1, heads_ * D}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float scale = static_cast<float>(std::sqrt(static_cast<double>(D)));  // as the general form divides
  std::vector<float> p(static_cast<size_t>(keys));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < heads_; ++h) {
      const float* qh = qp + (b * heads_ + h) * D;
      const float* kh = kp + (b * kv_heads_ + h / G) * s_max * D;
      const float* vh = vp + (b * kv_heads_ + h / G) * s_max * D;
      float top = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < keys; ++j) {
        float dot = 0.f;
        for (int64_t d = 0; d < D; ++d) dot += qh[d] * kh[j * D + d];
        p[j] = dot / scale;
        top = std::max(top, p[j]);
      }
      float total = 0.f;
      for (int64_t j = 0; j < keys; ++j) total += (p[j] = std::exp(p[j] - top));
      float* o = op + (b * heads_ + h) * D;
      std::fill(o, o + D, 0.f);
      for (int64_t j = 0; j < keys; ++j) {
        const float w = p[j] / total;
        for (int64_t d = 0; d < D; ++d) o[d] += w * vh[j * D + d];
      }
    }
  return out;
}

LmAttentionImpl::LmAttentionImpl(const LmConfig& c)
    : heads_(c.n_heads), kv_heads_(c.kv_heads()), head_dim_(c.head_dim()) {
  const int64_t q_width = heads_ * head_dim_, kv_width = kv_heads_ * head_dim_;
  q_proj = register_module("q_proj", PackedLinear(torch::nn::LinearOptions(c.d_model, q_width).bias(c.qkv_bias)));
  k_proj = register_module("k_proj", PackedLinear(torch::nn::LinearOptions(c.d_model, kv_width).bias(c.qkv_bias)));
  v_proj = register_module("v_proj", PackedLinear(torch::nn::LinearOptions(c.d_model, kv_width).bias(c.qkv_bias)));
  o_proj = register_module("o_proj", PackedLinear(torch::nn::LinearOptions(q_width, c.d_model).bias(false)));
}

torch::Tensor LmAttentionImpl::forward(const torch::Tensor& x, const RotaryTables& rope, int64_t offset,
                                       torch::Tensor* k_cache, torch::Tensor* v_cache) {
  const int64_t B = x.size(0), T = x.size(1), G = heads_ / kv_heads_;
  torch::Tensor q = apply_rotary(q_proj(x).view({B, T, heads_, head_dim_}).transpose(1, 2), rope);      // [B, H, T, hd]
  torch::Tensor k = apply_rotary(k_proj(x).view({B, T, kv_heads_, head_dim_}).transpose(1, 2), rope);   // [B, KV, T, hd]
  torch::Tensor v = v_proj(x).view({B, T, kv_heads_, head_dim_}).transpose(1, 2);                       // [B, KV, T, hd]
  int64_t keys = T;
  if (k_cache != nullptr) {
    k_cache->narrow(2, offset, T).copy_(k);
    v_cache->narrow(2, offset, T).copy_(v);
    keys = offset + T;
    k = k_cache->narrow(2, 0, keys);
    v = v_cache->narrow(2, 0, keys);
  }
  if (T == 1 && k_cache != nullptr && cpu_float_inference({&q, k_cache, v_cache})) {
    return o_proj(attend_one_step(q, *k_cache, *v_cache, keys));
  }
  // The G query heads of a KV group attend together: [B, KV, G*T, hd] x [B, KV, hd, S].
  const torch::Tensor grouped = q.reshape({B, kv_heads_, G * T, head_dim_});
  torch::Tensor scores = torch::matmul(grouped, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(head_dim_));
  if (T > 1) {
    // Query t (absolute position offset + t) sees keys 0 .. offset + t.
    const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(x.device());
    const torch::Tensor query_pos = torch::arange(offset, offset + T, long_opts).repeat({G});  // [G*T]
    const torch::Tensor key_pos = torch::arange(0, keys, long_opts);                           // [S]
    const torch::Tensor future = key_pos.unsqueeze(0) > query_pos.unsqueeze(1);               // [G*T, S]
    scores = scores.masked_fill(future, -std::numeric_limits<float>::infinity());
  }
  const torch::Tensor probs = torch::softmax(scores, -1);
  const torch::Tensor out = torch::matmul(probs, v)                // [B, KV, G*T, hd]
                                .view({B, heads_, T, head_dim_})
                                .transpose(1, 2)
                                .reshape({B, T, heads_ * head_dim_});
  return o_proj(out);
}

LmBlockImpl::LmBlockImpl(const LmConfig& c, int64_t layer) {
  input_layernorm = register_module("input_layernorm", RMSNorm(c.d_model, c.norm_eps));
  self_attn = register_module("self_attn", LmAttention(c));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.d_model, c.norm_eps));
  if (c.is_moe_layer(layer)) {
    MoEOptions o;
    o.d_model = c.d_model;
    o.d_hidden = c.expert_hidden();
    o.num_experts = c.moe.num_experts;
    o.top_k = c.moe.top_k;
    o.activation = Activation::SwiGLU;
    o.gating = Gating::TopKSoftmax;  // = Mixtral's softmax, top-k, renormalise
    o.aux_loss_coef = c.moe.aux_loss_coef;
    o.z_loss_coef = c.moe.z_loss_coef;
    o.expert_bias = false;
    moe_mlp = register_module("mlp", MoELayer(o));
  } else {
    FeedForwardOptions o;
    o.d_model = c.d_model;
    o.d_hidden = c.d_ffn;
    o.activation = Activation::SwiGLU;
    o.bias = false;
    dense_mlp = register_module("mlp", FeedForward(o));
  }
}

torch::Tensor LmBlockImpl::forward(const torch::Tensor& x, const RotaryTables& rope, int64_t offset,
                                   torch::Tensor* k_cache, torch::Tensor* v_cache) {
  torch::Tensor h = x + self_attn->forward(input_layernorm(x), rope, offset, k_cache, v_cache);
  const torch::Tensor normed = post_attention_layernorm(h);
  return h + (moe_mlp ? moe_mlp->forward(normed) : dense_mlp->forward(normed));
}

LmModel::LmModel(const LmConfig& config, bool initialize) : config_(config) {
  config_.validate();
  embed_tokens = register_module("embed_tokens", PackedEmbedding(config_.vocab_size, config_.d_model));
  layer_list_ = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < config_.n_layers; ++l) {
    layers.push_back(LmBlock(config_, l));
    layer_list_->push_back(layers.back());
  }
  norm = register_module("norm", RMSNorm(config_.d_model, config_.norm_eps));
  if (!config_.tie_embeddings)
    lm_head = register_module("lm_head",
                              PackedLinear(torch::nn::LinearOptions(config_.d_model, config_.vocab_size).bias(false)));
  if (initialize) reset_parameters();
}

void LmModel::set_weight_dtype(torch::ScalarType dtype) {
  std::vector<torch::Tensor*> matrices = {&embed_tokens->weight};
  std::vector<ExpertsImpl*> experts;
  if (lm_head) matrices.push_back(&lm_head->weight);
  for (auto& layer : layers) {
    for (PackedLinear* p : {&layer->self_attn->q_proj, &layer->self_attn->k_proj, &layer->self_attn->v_proj,
                            &layer->self_attn->o_proj})
      matrices.push_back(&(*p)->weight);
    if (layer->moe_mlp) {
      experts.push_back(layer->moe_mlp->experts.get());
    } else {
      for (PackedLinear* p : {&layer->dense_mlp->w1, &layer->dense_mlp->w2, &layer->dense_mlp->w3})
        if (*p) matrices.push_back(&(*p)->weight);
    }
  }
  store_weight_matrices(*this, matrices, experts, dtype, "lm");
}

void LmModel::reset_parameters() {
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    if (p.dim() >= 2) p.normal_(0.0, config_.init_std);
    else if (name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0) p.fill_(1.0);  // RMSNorm
    else p.zero_();                                                                           // biases
  }
}

torch::Tensor LmModel::forward(const torch::Tensor& tokens, LmKvCache* cache, bool last_only) {
  MOEKIT_CHECK_ARG(tokens.dim() == 2 && tokens.scalar_type() == torch::kLong, "lm: tokens must be int64 [B, T], got ",
                   tokens.sizes(), " ", tokens.scalar_type());
  const int64_t T = tokens.size(1);
  MOEKIT_CHECK_ARG(T >= 1, "lm: no tokens");
  const int64_t offset = cache ? cache->length : 0;
  const int64_t limit = cache ? cache->capacity : config_.max_seq_len;
  MOEKIT_CHECK_ARG(offset + T <= limit, "lm: ", offset + T, " positions exceed the ",
                   cache ? "cache capacity " : "context length max_seq_len ", limit);
  if (cache) MOEKIT_CHECK_ARG(cache->k.size() == layers.size() && cache->k[0].size(0) == tokens.size(0),
                              "lm: the KV cache was made for another model or batch size");
  torch::Tensor h = embed_tokens(tokens);
  // Activations in the norms' dtype (float32 under bf16 matrices).
  if (h.scalar_type() != norm->weight.scalar_type()) h = h.to(norm->weight.scalar_type());
  RotaryTables rope = rotary_tables(offset, T, config_.head_dim(), config_.rope_theta);
  rope.cos = rope.cos.to(h.device());
  rope.sin = rope.sin.to(h.device());
  for (size_t l = 0; l < layers.size(); ++l)
    h = layers[l]->forward(h, rope, offset, cache ? &cache->k[l] : nullptr, cache ? &cache->v[l] : nullptr);
  if (cache) cache->length += T;
  if (last_only) h = h.narrow(1, T - 1, 1);
  h = norm(h);
  const torch::Tensor logits =
      config_.tie_embeddings ? embed_tokens->as_output(h) : lm_head(h);
  return logits.scalar_type() == torch::kDouble ? logits : logits.to(torch::kFloat);
}

LmLoss LmModel::loss(const torch::Tensor& tokens) {
  MOEKIT_CHECK_ARG(tokens.dim() == 2 && tokens.size(1) >= 2, "lm: loss needs tokens [B, T + 1] with T >= 1, got ",
                   tokens.sizes());
  const int64_t T = tokens.size(1) - 1;
  const torch::Tensor logits = forward(tokens.narrow(1, 0, T));
  LmLoss out;
  out.ce = torch::nn::functional::cross_entropy(logits.reshape({-1, config_.vocab_size}),
                                                tokens.narrow(1, 1, T).reshape({-1}));
  out.aux = collect_moe_aux_loss(*this);
  if (!out.aux.defined()) out.aux = torch::zeros({}, out.ce.options());
  out.loss = out.ce + out.aux;
  return out;
}

LmKvCache LmModel::make_cache(int64_t batch, int64_t capacity) const {
  MOEKIT_CHECK_ARG(capacity >= 1 && capacity <= config_.max_seq_len, "lm: cache capacity ", capacity,
                   " must be in [1, max_seq_len=", config_.max_seq_len, "]");
  LmKvCache cache;
  cache.capacity = capacity;
  const auto opts = norm->weight.options().requires_grad(false);  // the activations' dtype
  for (size_t l = 0; l < layers.size(); ++l) {
    cache.k.push_back(torch::zeros({batch, config_.kv_heads(), capacity, config_.head_dim()}, opts));
    cache.v.push_back(torch::zeros({batch, config_.kv_heads(), capacity, config_.head_dim()}, opts));
  }
  return cache;
}

namespace {

LmConfig read_lm_config(const YAML::Node& config, const std::string& dir, bool allow_quantized) {
  const std::string type = config["model_type"].as<std::string>();
  MOEKIT_CHECK_ARG(type == "lm", dir, " holds an '", type, "' model, not an 'lm' (language model)");
  const std::string where = dir + "/" + kConfigFile;
  MOEKIT_CHECK_ARG(allow_quantized || !config["quantization"], dir,
                   " is quantized (int8 experts, for inference): grow, upcycle and export take the float model it "
                   "was quantized from");
  MOEKIT_CHECK_ARG(config["architecture"].IsMap(), where, ": missing or invalid 'architecture'");
  return LmConfig::from_yaml(config["architecture"], where);
}

LmWeights read_lm_weights(const std::string& dir, bool allow_quantized) {
  LmWeights out;
  out.config = read_lm_config(read_model_config(dir), dir, allow_quantized);
  out.weights = read_model_weights(dir);
  return out;
}

// Tensors made while it lives default to `dtype`.
class DefaultDtypeGuard {
 public:
  explicit DefaultDtypeGuard(torch::ScalarType dtype) : saved_(torch::get_default_dtype()) {
    torch::set_default_dtype(c10::scalarTypeToTypeMeta(dtype));
  }
  ~DefaultDtypeGuard() { torch::set_default_dtype(saved_); }
  DefaultDtypeGuard(const DefaultDtypeGuard&) = delete;
  DefaultDtypeGuard& operator=(const DefaultDtypeGuard&) = delete;

 private:
  caffe2::TypeMeta saved_;
};

}  // namespace

LmWeights read_lm_dir(const std::string& dir) { return read_lm_weights(dir, /*allow_quantized=*/false); }

void save_lm_dir(const LmWeights& model, const std::string& dir) {
  LmModel built(model.config);
  load_module_state(built, model.weights, dir);
  save_model(dir, built);
}

std::shared_ptr<LmModel> load_lm_model(const std::string& dir, c10::optional<torch::ScalarType> weight_dtype,
                                       WeightStorage storage) {
  const YAML::Node yaml = read_model_config(dir);
  const LmConfig config = read_lm_config(yaml, dir, /*allow_quantized=*/true);
  const std::string weights = dir + "/" + kWeightsFile;
  MOEKIT_CHECK_ARG(path_exists(weights), "model directory '", dir, "' has no ", kWeightsFile);
  if (!weight_dtype) {
    const MappedSafetensors file(weights);
    const auto& entries = file.header().entries;
    const auto stored = entries.find("embed_tokens.weight");
    const bool bf16 = stored != entries.end() && stored->second.dtype == torch::kBFloat16;
    weight_dtype = bf16 ? torch::kBFloat16 : torch::kFloat;
  }
  // Built in the weights' dtype (a bf16 model never exists in float32, at
  // twice its size, on the way; int8 experts are quantized from float32),
  // then filled tensor by tensor from the mapped file: loading holds the
  // model and one tensor.
  std::shared_ptr<LmModel> model;
  {
    const bool quantized = static_cast<bool>(yaml["quantization"]);
    DefaultDtypeGuard guard(quantized ? torch::kFloat : *weight_dtype);
    model = std::make_shared<LmModel>(config, /*initialize=*/false);
  }
  apply_quantization(yaml, *model, dir + "/" + kConfigFile);
  // Before the weights are copied in: bf16 ones then stay as stored.
  model->set_weight_dtype(*weight_dtype);
  load_module_state_from_dir(*model, dir, storage);
  model->eval();
  // Mapped weights replaced the tensors the model was built with: their
  // blocks go back rather than wait, unused, in the allocator's cache.
  if (storage == WeightStorage::kMap) release_cpu_memory();
  return model;
}

}  // namespace moekit
