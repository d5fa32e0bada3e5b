#pragma once
// The Hugging Face layout of LLaMA-family checkpoints: config.json +
// model.safetensors (or sharded model-XXXXX-of-YYYYY.safetensors with
// model.safetensors.index.json), tensor names as transformers writes them.
//   dense, no QKV bias  -> LlamaForCausalLM   (model_type "llama")
//   dense, QKV bias     -> Qwen2ForCausalLM   (model_type "qwen2": q/k/v bias, no o bias)
//   MoE in every layer  -> MixtralForCausalLM (model_type "mixtral")
// Mixtral's router (softmax over all experts, top-k, renormalised) equals
// MoEKit's top-k softmax gating, so the weights carry over unchanged.
#include <string>

#include "moekit/models/lm/lm_model.h"

namespace moekit {

// Writes config.json and model.safetensors into `dir`. Throws
// std::invalid_argument for what the HF classes cannot express (MoE in only
// some layers, QKV bias with MoE).
void export_hf_llama(const LmWeights& model, const std::string& dir);

// Reads an HF llama / qwen2 / mistral / mixtral directory (config and weight
// files as hf_config.h reads them); refuses tensors the architecture does
// not have, and expert indices beyond num_local_experts, by name.
LmWeights import_hf_llama(const std::string& dir);

}  // namespace moekit
