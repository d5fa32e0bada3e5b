#pragma once
// The parts of a Hugging Face LLaMA-family directory that are plain data:
// config.json as an LmConfig, and the list of weight files. Kept apart from
// the tensor mapping (hf_llama.h) so that reading them needs no model code.
#include <string>
#include <vector>

#include "moekit/models/lm/lm_config.h"

namespace moekit {

struct HfConfig {
  LmConfig config;
  std::string model_type;  // llama | mistral | mixtral | qwen2
};

// Reads dir/config.json. Refuses, by name, options MoEKit does not implement
// (rope_scaling, attention/mlp biases beyond QKV, sliding windows shorter
// than the context, other activations) and sizes outside LmConfig's limits.
HfConfig read_hf_config(const std::string& dir);

// dir/model.safetensors, or the shards dir/model.safetensors.index.json
// names: plain file names only, each a regular file inside `dir` (a shard
// symlinked out of the directory is refused).
std::vector<std::string> hf_weight_files(const std::string& dir);

}  // namespace moekit
