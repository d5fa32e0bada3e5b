#pragma once
// Scale-Up (AquilaMoE EfficientScale, after bert2BERT): a trained dense LM
// grown into a wider and/or deeper one whose weights are derived from it.
//
// Width (d_model, n_heads, d_ffn), index maps: new unit j of a dimension of
// old size n copies old unit j mod n ("copies" c(i) = how many new units copy i).
//   fpi  new output units copy the old rows; weights that read a grown
//        dimension are divided by the copy count of what they read. Exact
//        (same logits) when every grown width is a multiple of the old one.
//   aki  as fpi, but the rows of new output units of block l come from block
//        l + 1 (the last block uses itself): breaks the symmetry of copies.
// Heads grow inside each KV group (group count kept, head_dim kept).
// Depth (n_layers), applied after width:
//   stack        new block i = old block i mod L
//   interpolate  new block i = old block floor(i * L / L_new)
// AKI-Pro (AquilaMoE) = aki + interpolate.
#include <memory>
#include <string>
#include <vector>

#include "moekit/models/lm/lm_model.h"

namespace moekit {

enum class WidthGrowth { Fpi, Aki };
enum class DepthGrowth { Stack, Interpolate };
WidthGrowth parse_width_growth(const std::string& name);  // fpi | aki
DepthGrowth parse_depth_growth(const std::string& name);  // stack | interpolate

struct GrowOptions {
  int64_t d_model = 0;   // new width (0 = keep)
  int64_t n_heads = 0;   // new query heads (0 = d_model / old head_dim)
  int64_t d_ffn = 0;     // new FFN hidden width (0 = keep)
  int64_t n_layers = 0;  // new depth (0 = keep)
  WidthGrowth width = WidthGrowth::Fpi;
  DepthGrowth depth = DepthGrowth::Stack;
};

// Grows a dense model. Throws std::invalid_argument naming the field when the
// target is smaller, changes head_dim or the KV group count, or the model is MoE.
LmWeights grow_lm(const LmWeights& model, const GrowOptions& options);

// grow_lm one tensor at a time, for writers that go tensor by tensor
// (scale/hf_scale.h). Tensor names are MoEKit's ("layers.3.mlp.w1.weight").
class GrowPlan {
 public:
  // Checks the options against `old` as grow_lm does.
  GrowPlan(const LmConfig& old, const GrowOptions& options);
  ~GrowPlan();
  GrowPlan(const GrowPlan&) = delete;
  GrowPlan& operator=(const GrowPlan&) = delete;

  const LmConfig& config() const { return config_; }  // the grown model's
  // The old tensors the grown tensor `name` is made from,
  std::vector<std::string> sources(const std::string& name) const;
  // and the tensor, given them in that order.
  torch::Tensor make(const std::string& name, const std::vector<torch::Tensor>& sources) const;

 private:
  struct Maps;
  LmConfig old_, config_;
  GrowOptions options_;
  std::unique_ptr<Maps> maps_;
};

}  // namespace moekit
