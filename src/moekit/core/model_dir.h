#pragma once
// The model directory, MoEKit's one on-disk format:
//   model_dir/config.yaml        format_version, model_type, architecture, ...
//   model_dir/model.safetensors  weights named after the module tree
//   model_dir/<assets>           units.txt, tokenizer.model, ...
// Every file is written atomically.
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <string>

#include "moekit/core/safetensors.h"

namespace moekit {

constexpr int kModelFormatVersion = 1;
constexpr const char* kConfigFile = "config.yaml";
constexpr const char* kWeightsFile = "model.safetensors";

// Writes config.yaml (adding format_version) and model.safetensors.
void save_model_dir(const std::string& dir, YAML::Node config, const TensorMap& weights);

// Reads and checks config.yaml: exists, is a mapping, has model_type, and a
// format_version this build can read. Errors name the file and field.
YAML::Node read_model_config(const std::string& dir);

// Reads model.safetensors of a model directory.
TensorMap read_model_weights(const std::string& dir);

// Parameters and buffers by their module-tree names.
TensorMap module_state(const torch::nn::Module& module);

// Copies `weights` into the module's parameters and buffers. Reports every
// missing, unexpected and mis-shaped tensor by name in one error (naming
// `source`); converts dtypes. Nothing is modified when anything mismatches.
void load_module_state(torch::nn::Module& module, const TensorMap& weights, const std::string& source);

// How a loaded model holds its weights.
enum class WeightStorage {
  // Copied into the module's own tensors: for models that train or are
  // changed and saved.
  kCopy,
  // Wherever the stored dtype is the module's (and the tensor is not small),
  // the module's tensor becomes a copy-on-write view of the file's memory
  // map (mapped_tensors.h), whose pages go back once the weight is packed
  // for the kernels: for inference,
  // where a copy would be a third of a serving process's weight memory held
  // for nothing. The file must not be truncated or rewritten in place while
  // the model lives (MoEKit's own saves replace files by rename, which is
  // safe). MOEKIT_MAP_WEIGHTS=0 in the environment makes it kCopy.
  kMap,
};
// Whether kMap maps (MOEKIT_MAP_WEIGHTS, default on).
bool map_weights_enabled();

// load_module_state from `dir`'s model.safetensors through a memory map, one
// tensor at a time, each copied tensor's pages given back once copied:
// loading holds the model and one tensor, not the file's contents beside
// the model. The same checks and errors, naming the file.
void load_module_state_from_dir(torch::nn::Module& module, const std::string& dir,
                                WeightStorage storage = WeightStorage::kCopy);

}  // namespace moekit
