#include "moekit/scale/grow.h"

#include "moekit/core/check.h"

namespace moekit {

WidthGrowth parse_width_growth(const std::string& name) {
  if (name == "fpi") return WidthGrowth::Fpi;
  if (name == "aki") return WidthGrowth::Aki;
  throw std::invalid_argument("grow: unknown width method '" + name + "' (expected fpi or aki)");
}

DepthGrowth parse_depth_growth(const std::string& name) {
  if (name == "stack") return DepthGrowth::Stack;
  if (name == "interpolate") return DepthGrowth::Interpolate;
  throw std::invalid_argument("grow: unknown depth method '" + name + "' (expected stack or interpolate)");
}

namespace {

// New unit j of a grown dimension reads old unit index[j]; scale[j] = 1 / copies(index[j]).
struct UnitMap {
  torch::Tensor index;  // [new] int64
  torch::Tensor scale;  // [new] fp32
  int64_t old_size = 0, new_size = 0;
};

UnitMap make_map(const torch::Tensor& index, int64_t old_size) {
  UnitMap m;
  m.index = index;
  m.old_size = old_size;
  m.new_size = index.size(0);
  const torch::Tensor copies = torch::bincount(index, {}, old_size).to(torch::kFloat);
  m.scale = 1.0 / copies.index_select(0, index);
  return m;
}

UnitMap cyclic_map(int64_t old_size, int64_t new_size) {
  return make_map(torch::arange(new_size, torch::kLong).remainder(old_size), old_size);
}

// Query units grow head by head inside each KV group: new head (group, g) copies
// old head (group, g mod G_old); every head keeps its head_dim units.
UnitMap head_map(int64_t kv_groups, int64_t old_heads, int64_t new_heads, int64_t head_dim) {
  const int64_t old_g = old_heads / kv_groups, new_g = new_heads / kv_groups;
  std::vector<int64_t> index;
  for (int64_t group = 0; group < kv_groups; ++group)
    for (int64_t g = 0; g < new_g; ++g)
      for (int64_t t = 0; t < head_dim; ++t) index.push_back((group * old_g + g % old_g) * head_dim + t);
  return make_map(torch::tensor(index, torch::kLong), old_heads * head_dim);
}

// Rows along `dim` expanded by `map`; with `next` (AKI), the rows beyond the old size come from it.
torch::Tensor expand_out(const torch::Tensor& w, const torch::Tensor* next, int64_t dim, const UnitMap& map) {
  torch::Tensor out = w.index_select(dim, map.index);
  if (next != nullptr && map.new_size > map.old_size) {
    const int64_t added = map.new_size - map.old_size;
    out.narrow(dim, map.old_size, added).copy_(next->index_select(dim, map.index.narrow(0, map.old_size, added)));
  }
  return out;
}

// Columns along `dim` that read a grown dimension: copied and divided by the copy count.
torch::Tensor split_in(const torch::Tensor& w, int64_t dim, const UnitMap& map) {
  std::vector<int64_t> shape(static_cast<size_t>(w.dim()), 1);
  shape[static_cast<size_t>(dim)] = map.new_size;
  return w.index_select(dim, map.index) * map.scale.to(w.scalar_type()).view(shape);
}

const torch::Tensor& get(const TensorMap& weights, const std::string& name) {
  auto it = weights.find(name);
  MOEKIT_CHECK_ARG(it != weights.end(), "grow: the model has no tensor '", name, "'");
  return it->second;
}

}  // namespace

LmWeights grow_lm(const LmWeights& model, const GrowOptions& o) {
  const LmConfig& old = model.config;
  MOEKIT_CHECK_ARG(!old.moe.enabled(), "grow: the model has MoE layers (moe.num_experts=", old.moe.num_experts,
                   "); grow the dense model first (Scale-Up), then upcycle it (Scale-Out)");
  LmConfig c = old;
  c.d_model = o.d_model > 0 ? o.d_model : old.d_model;
  c.n_heads = o.n_heads > 0 ? o.n_heads : c.d_model / old.head_dim();
  c.n_kv_heads = old.kv_heads();
  c.d_ffn = o.d_ffn > 0 ? o.d_ffn : old.d_ffn;
  c.n_layers = o.n_layers > 0 ? o.n_layers : old.n_layers;
  MOEKIT_CHECK_ARG(c.d_model >= old.d_model, "grow: d_model ", c.d_model, " is smaller than the model's ", old.d_model);
  MOEKIT_CHECK_ARG(c.d_ffn >= old.d_ffn, "grow: d_ffn ", c.d_ffn, " is smaller than the model's ", old.d_ffn);
  MOEKIT_CHECK_ARG(c.n_layers >= old.n_layers, "grow: n_layers ", c.n_layers, " is smaller than the model's ",
                   old.n_layers);
  MOEKIT_CHECK_ARG(c.n_heads >= old.n_heads, "grow: n_heads ", c.n_heads, " is smaller than the model's ", old.n_heads);
  MOEKIT_CHECK_ARG(c.d_model % c.n_heads == 0 && c.d_model / c.n_heads == old.head_dim(), "grow: d_model ", c.d_model,
                   " with n_heads ", c.n_heads, " changes head_dim ", old.head_dim(),
                   "; heads are added, so d_model / n_heads must stay ", old.head_dim());
  MOEKIT_CHECK_ARG(c.n_heads % c.kv_heads() == 0, "grow: n_heads ", c.n_heads, " is not divisible by the ",
                   c.kv_heads(), " KV groups (heads grow inside each group; the group count is kept)");
  c.validate();

  const int64_t hd = old.head_dim();
  const UnitMap width = cyclic_map(old.d_model, c.d_model);
  const UnitMap heads = head_map(old.kv_heads(), old.n_heads, c.n_heads, hd);
  const UnitMap ffn = cyclic_map(old.d_ffn, c.d_ffn);
  const bool aki = o.width == WidthGrowth::Aki;

  TensorMap wide;
  wide["embed_tokens.weight"] = expand_out(get(model.weights, "embed_tokens.weight"), nullptr, 1, width);
  torch::Tensor final_norm = expand_out(get(model.weights, "norm.weight"), nullptr, 0, width);
  if (old.tie_embeddings) {
    // lm_head is embed_tokens (copied, not divided): the final norm, read only by it, takes the division.
    final_norm = final_norm * width.scale;
  } else {
    wide["lm_head.weight"] = split_in(get(model.weights, "lm_head.weight"), 1, width);
  }
  wide["norm.weight"] = final_norm;
  for (int64_t l = 0; l < old.n_layers; ++l) {
    const std::string prefix = "layers." + std::to_string(l) + ".";
    const std::string next_prefix = "layers." + std::to_string(aki ? std::min(l + 1, old.n_layers - 1) : l) + ".";
    auto out_in = [&](const std::string& name, const UnitMap* out, const UnitMap* in) {
      const torch::Tensor w = get(model.weights, prefix + name);
      const torch::Tensor next = get(model.weights, next_prefix + name);
      torch::Tensor grown = out ? expand_out(w, aki ? &next : nullptr, 0, *out) : w.clone();
      if (in) grown = split_in(grown, 1, *in);
      wide[prefix + name] = grown;
    };
    out_in("input_layernorm.weight", &width, nullptr);
    out_in("post_attention_layernorm.weight", &width, nullptr);
    out_in("self_attn.q_proj.weight", &heads, &width);
    out_in("self_attn.k_proj.weight", nullptr, &width);
    out_in("self_attn.v_proj.weight", nullptr, &width);
    out_in("self_attn.o_proj.weight", &width, &heads);
    if (old.qkv_bias) {
      out_in("self_attn.q_proj.bias", &heads, nullptr);
      out_in("self_attn.k_proj.bias", nullptr, nullptr);
      out_in("self_attn.v_proj.bias", nullptr, nullptr);
    }
    out_in("mlp.w1.weight", &ffn, &width);
    out_in("mlp.w3.weight", &ffn, &width);
    out_in("mlp.w2.weight", &width, &ffn);
  }
  // Depth: every new block copies one old block.
  LmWeights out;
  out.config = c;
  for (auto& [name, t] : wide) {
    if (name.rfind("layers.", 0) != 0) out.weights[name] = t;
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const int64_t source =
        o.depth == DepthGrowth::Stack ? i % old.n_layers : i * old.n_layers / c.n_layers;
    const std::string from = "layers." + std::to_string(source) + ".";
    const std::string to = "layers." + std::to_string(i) + ".";
    for (const auto& [name, t] : wide)
      if (name.rfind(from, 0) == 0) out.weights[to + name.substr(from.size())] = t.clone();
  }
  return out;
}

}  // namespace moekit
