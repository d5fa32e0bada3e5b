#pragma once
// The Hugging Face layout of LLaMA-family checkpoints: config.json +
// model.safetensors (or sharded model-XXXXX-of-YYYYY.safetensors with
// model.safetensors.index.json), tensor names as transformers writes them.
//   dense, no QKV bias  -> LlamaForCausalLM   (model_type "llama")
//   dense, QKV bias     -> Qwen2ForCausalLM   (model_type "qwen2": q/k/v bias, no o bias)
//   MoE in every layer  -> MixtralForCausalLM (model_type "mixtral")
// Mixtral's router (softmax over all experts, top-k, renormalised) equals
// MoEKit's top-k softmax gating, so the weights carry over unchanged.
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "moekit/models/lm/lm_model.h"

namespace moekit {

// How HF weight files are written.
struct HfWriteOptions {
  std::optional<torch::ScalarType> dtype;  // none: every tensor keeps its dtype
  uint64_t max_shard_bytes = 5000000000;   // transformers' default max_shard_size, "5GB"
};

// "bf16" / "bfloat16", "fp16" / "float16", "fp32" / "float32" (throws naming
// the text otherwise), and the config.json spelling of a dtype.
torch::ScalarType parse_hf_dtype(const std::string& text);
std::string hf_dtype_name(torch::ScalarType dtype);

// Writes config.json and the weights (model.safetensors, or shards with
// model.safetensors.index.json) into `dir`. Throws std::invalid_argument for
// what the HF classes cannot express (MoE in only some layers, QKV bias with
// MoE).
void export_hf_llama(const LmWeights& model, const std::string& dir, const HfWriteOptions& options = {});

// The MoEKit name of a dense model's HF tensor ("model.layers.0.mlp.gate_proj.weight"
// -> "layers.0.mlp.w1.weight"), and back.
std::string moekit_tensor_name(const std::string& hf_name);
std::string hf_tensor_name(const std::string& moekit_name);

// Every tensor of the HF form of `config` (llama / qwen2 / mixtral naming)
// with its shape, in the order transformers builds the model.
std::vector<std::pair<std::string, std::vector<int64_t>>> hf_tensor_shapes(const LmConfig& config);

// Reads an HF llama / qwen2 / mistral / mixtral directory (config and weight
// files as hf_config.h reads them); refuses tensors the architecture does
// not have, and expert indices beyond num_local_experts, by name.
LmWeights import_hf_llama(const std::string& dir);

}  // namespace moekit
