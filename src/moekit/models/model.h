#pragma once
// The interface every model family implements, and the registry that builds
// a model from its model directory by `model_type`.
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moekit/core/model_dir.h"

namespace moekit {

class ExpertsImpl;

class Model : public torch::nn::Module {
 public:
  // The registry key ("ffn_stack", later "asr", "seq2seq", "lm").
  virtual std::string model_type() const = 0;
  // Hyperparameters that rebuild this model (config.yaml's `architecture`).
  virtual YAML::Node architecture() const = 0;
};

// Builds a model from `architecture`; `where` names the config for errors.
using ModelFactory = std::function<std::shared_ptr<Model>(const YAML::Node& architecture, const std::string& where)>;

std::vector<std::string> registered_model_types();
std::shared_ptr<Model> create_model(const std::string& model_type, const YAML::Node& architecture,
                                    const std::string& where);

// Saves config.yaml + model.safetensors.
void save_model(const std::string& dir, const Model& model);
// Builds the model from config.yaml and loads its weights, with errors that
// name every mismatching tensor. WeightStorage::kMap for inference only
// (model_dir.h). `before_weights`, where given, runs on the built model
// before its weights are loaded (e.g. to store its matrices as bf16, which
// the float32 weights are then converted into, one tensor at a time).
std::shared_ptr<Model> load_model(const std::string& dir, WeightStorage storage = WeightStorage::kCopy,
                                  const std::function<void(Model&)>& before_weights = {});

// The models' set_weight_dtype: each of `matrices`, and the weights of each
// of `experts` (ExpertsImpl::set_weight_dtype), stored in `dtype`, float32
// or bfloat16; every other parameter and buffer of `model` held in bf16 or
// half (norms, biases, routers; a model built with bf16 as the default
// dtype) widened to float32. `what` names the model in the error for
// another dtype.
void store_weight_matrices(torch::nn::Module& model, const std::vector<torch::Tensor*>& matrices,
                           const std::vector<ExpertsImpl*>& experts, torch::ScalarType dtype, const char* what);

// The commands' --dtype for the weight matrices of an LM or seq2seq model:
// "auto" (nullopt: as the directory stores them), "fp32"/"float32",
// "bf16"/"bfloat16"; throws naming the choices otherwise. On a device other
// than the CPU "auto" is float32: bf16 matrices are read by the CPU's panel
// kernel, and elsewhere they would be widened per call.
c10::optional<torch::ScalarType> parse_weight_dtype(const std::string& text,
                                                    const torch::Device& device = torch::kCPU);

// config.yaml's `quantization` entry: {experts: int8} for a model whose MoE
// experts are stored as int8 (experts.w1 int8 + experts.w1_scale, ...). Makes
// the model's experts int8 storage, ready for its weights to be loaded;
// nothing when the entry is absent. Errors name `where` and the field.
void apply_quantization(const YAML::Node& config, torch::nn::Module& model, const std::string& where);

// `moekit quantize`: the model of model_dir with its MoE experts in int8
// (per-output-channel symmetric, ops/int8_weights.h) or bf16 (`experts` =
// "int8" | "bf16"; ExpertsImpl::to_bf16), written to out_dir: config.yaml
// with the quantization entry, model.safetensors, and every other file of
// model_dir (units.txt, tokenizer files) copied.
struct QuantizeReport {
  int64_t layers = 0;                            // MoE layers whose experts were quantized
  int64_t float_bytes = 0, quantized_bytes = 0;  // the experts' weights before / after (scales included)
};
QuantizeReport quantize_model_dir(const std::string& model_dir, const std::string& out_dir,
                                  const std::string& experts = "int8");

struct ParameterCount {
  int64_t total = 0;   // every parameter
  int64_t active = 0;  // parameters one token uses: only top_k of each MoE layer's experts
};
ParameterCount count_parameters(const torch::nn::Module& model);

}  // namespace moekit
