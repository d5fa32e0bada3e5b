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
  return w.index_select(dim, map.index).mul_(map.scale.to(w.scalar_type()).view(shape));
}

// How a layer tensor grows: the unit maps of its rows (out) and columns (in),
// each null when that side keeps its size.
struct LayerRule {
  const char* suffix;
  int out;  // 0 none, 1 width, 2 heads, 3 ffn
  int in;
};

constexpr LayerRule kLayerRules[] = {
    {"input_layernorm.weight", 1, 0},  {"post_attention_layernorm.weight", 1, 0}, {"self_attn.q_proj.weight", 2, 1},
    {"self_attn.k_proj.weight", 0, 1}, {"self_attn.v_proj.weight", 0, 1},          {"self_attn.o_proj.weight", 1, 2},
    {"self_attn.q_proj.bias", 2, 0},   {"self_attn.k_proj.bias", 0, 0},            {"self_attn.v_proj.bias", 0, 0},
    {"mlp.w1.weight", 3, 1},           {"mlp.w3.weight", 3, 1},                    {"mlp.w2.weight", 1, 3},
};

// "layers.<i>.<suffix>" -> (i, suffix); (-1, name) for other names.
std::pair<int64_t, std::string> split_layer(const std::string& name) {
  if (name.rfind("layers.", 0) != 0) return {-1, name};
  const size_t dot = name.find('.', 7);
  MOEKIT_CHECK_ARG(dot != std::string::npos && dot > 7 && name.find_first_not_of("0123456789", 7) == dot,
                   "grow: '", name, "' is not a layer tensor name");
  return {std::stoll(name.substr(7, dot - 7)), name.substr(dot + 1)};
}

}  // namespace

struct GrowPlan::Maps {
  UnitMap width, heads, ffn;
  const UnitMap* of(int which) const { return which == 1 ? &width : which == 2 ? &heads : which == 3 ? &ffn : nullptr; }
};

GrowPlan::GrowPlan(const LmConfig& old, const GrowOptions& o) : old_(old), options_(o) {
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
  config_ = c;
  maps_ = std::make_unique<Maps>(Maps{cyclic_map(old.d_model, c.d_model),
                                      head_map(old.kv_heads(), old.n_heads, c.n_heads, old.head_dim()),
                                      cyclic_map(old.d_ffn, c.d_ffn)});
}

GrowPlan::~GrowPlan() = default;

std::vector<std::string> GrowPlan::sources(const std::string& name) const {
  const auto [layer, suffix] = split_layer(name);
  if (layer < 0) {
    MOEKIT_CHECK_ARG(name == "embed_tokens.weight" || name == "norm.weight" || (name == "lm_head.weight" && !old_.tie_embeddings),
                     "grow: the grown model has no tensor '", name, "'");
    return {name};
  }
  MOEKIT_CHECK_ARG(layer < config_.n_layers, "grow: the grown model has ", config_.n_layers, " layers; '", name,
                   "' is beyond them");
  // Depth: every new block copies one old block (after width growth).
  const int64_t source = options_.depth == DepthGrowth::Stack ? layer % old_.n_layers
                                                               : layer * old_.n_layers / config_.n_layers;
  std::vector<std::string> out = {"layers." + std::to_string(source) + "." + suffix};
  // AKI: the rows of new output units come from the next block (the last from itself).
  if (options_.width == WidthGrowth::Aki)
    out.push_back("layers." + std::to_string(std::min(source + 1, old_.n_layers - 1)) + "." + suffix);
  return out;
}

torch::Tensor GrowPlan::make(const std::string& name, const std::vector<torch::Tensor>& sources) const {
  MOEKIT_CHECK_ARG(!sources.empty(), "grow: no source tensor for '", name, "'");
  const Maps& m = *maps_;
  const torch::Tensor& w = sources[0];
  if (name == "embed_tokens.weight") return expand_out(w, nullptr, 1, m.width);
  if (name == "lm_head.weight") return split_in(w, 1, m.width);
  if (name == "norm.weight") {
    const torch::Tensor norm = expand_out(w, nullptr, 0, m.width);
    // Tied: lm_head is embed_tokens (copied, not divided), so the final
    // norm, read only by it, takes the division.
    return old_.tie_embeddings ? norm * m.width.scale.to(norm.scalar_type()) : norm;
  }
  const std::string suffix = split_layer(name).second;
  for (const LayerRule& rule : kLayerRules) {
    if (suffix != rule.suffix) continue;
    const UnitMap* out = m.of(rule.out);
    const UnitMap* in = m.of(rule.in);
    const torch::Tensor* next = sources.size() > 1 ? &sources[1] : nullptr;
    torch::Tensor grown = out ? expand_out(w, next, 0, *out) : w.clone();
    return in ? split_in(grown, 1, *in) : grown;
  }
  throw std::invalid_argument(str_cat("grow: the grown model has no tensor '", name, "'"));
}

LmWeights grow_lm(const LmWeights& model, const GrowOptions& o) {
  const GrowPlan plan(model.config, o);
  auto get = [&](const std::string& name) -> const torch::Tensor& {
    auto it = model.weights.find(name);
    MOEKIT_CHECK_ARG(it != model.weights.end(), "grow: the model has no tensor '", name, "'");
    return it->second;
  };
  // The grown model's names: the old model's, its layer-0 tensors repeated for every new layer.
  std::vector<std::string> names;
  for (const auto& [name, t] : model.weights) {
    const auto [layer, suffix] = split_layer(name);
    if (layer < 0) names.push_back(name);
    if (layer != 0) continue;
    for (int64_t i = 0; i < plan.config().n_layers; ++i) names.push_back("layers." + std::to_string(i) + "." + suffix);
  }
  LmWeights out;
  out.config = plan.config();
  for (const std::string& name : names) {
    std::vector<torch::Tensor> sources;
    for (const std::string& s : plan.sources(name)) sources.push_back(get(s));
    out.weights[name] = plan.make(name, sources);
  }
  return out;
}

}  // namespace moekit
