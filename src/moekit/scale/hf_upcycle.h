#pragma once
// Scale-Out on a Hugging Face checkpoint of any size: a dense LLaMA / Mistral
// directory (config.json + model.safetensors or shards with their index)
// becomes a Mixtral directory tensor by tensor. Input shards are memory
// maps; each output tensor is produced when its turn comes, written, and its
// source pages handed back, so peak memory is a few of the largest tensors,
// not the model. The experts and routers are upcycle_lm's (scale/upcycle.h):
// importing the result equals upcycling the imported dense model.
#include <cstdint>
#include <string>
#include <vector>

#include "moekit/models/lm/hf_llama.h"
#include "moekit/scale/upcycle.h"

namespace moekit {

// A directory of Hugging Face's layout (config.json) rather than a MoEKit
// model directory (config.yaml).
bool is_hf_model_dir(const std::string& dir);

struct HfUpcycleReport {
  LmConfig config;                 // the MoE model
  std::vector<std::string> files;  // weight files written
  int64_t tensors = 0;
  uint64_t bytes = 0;              // tensor bytes written
};

// Writes the upcycled model's config.json and weights into `out_dir`
// (which must exist). The config keeps every field of the input's
// (token ids, rope settings, ...) and gains Mixtral's. Throws
// std::invalid_argument naming the file and tensor for a tensor the
// architecture lacks, has in another shape or a non-float dtype, a missing
// tensor, a truncated shard, an index that names a shard or tensor not
// there; and for what Mixtral cannot express (QKV biases, MoE in only some
// layers).
HfUpcycleReport upcycle_hf_dir(const std::string& in_dir, const std::string& out_dir, const UpcycleOptions& options,
                               const HfWriteOptions& write = {});

}  // namespace moekit
