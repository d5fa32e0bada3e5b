#pragma once
// A Hugging Face LLaMA / Mistral / Qwen2 / Mixtral directory into a MoEKit
// model directory, tensor by tensor: the input shards are memory maps
// (HfCheckpoint, every tensor checked before any is used), each output
// tensor is made when its turn comes (a Mixtral layer's per-expert
// matrices stacked into MoEKit's [E, ...] tensors), written, and its
// sources' pages handed back; so peak memory is a few of the largest
// tensors, not the model. The result equals import_hf_llama's (hf_llama.h)
// tensor for tensor.
#include <cstdint>
#include <optional>
#include <string>

#include "moekit/models/lm/lm_config.h"

namespace moekit {

struct HfImportReport {
  LmConfig config;
  int64_t tensors = 0;
  uint64_t bytes = 0;  // tensor bytes written
};

// Writes model.safetensors, then config.yaml, into out_dir (which must
// exist): every tensor in its stored dtype, or in `dtype` when given (a
// float dtype). Throws std::invalid_argument naming the file and tensor for
// what HfCheckpoint refuses.
HfImportReport import_hf_dir(const std::string& in_dir, const std::string& out_dir,
                             std::optional<torch::ScalarType> dtype = std::nullopt);

}  // namespace moekit
