#pragma once
// Scale-Up and Scale-Out on a Hugging Face checkpoint of any size: a dense
// LLaMA / Mistral / Qwen2 directory (config.json + model.safetensors, or
// shards with their index) is grown into a bigger dense one, or upcycled
// into a Mixtral one, tensor by tensor. Input shards are memory maps; each
// output tensor is produced when its turn comes, written, and its sources'
// pages handed back, so peak memory is a few of the largest tensors, not
// the model. The tensors are grow_lm's and upcycle_lm's (scale/grow.h,
// scale/upcycle.h): importing the result equals growing or upcycling the
// imported model.
#include <cstdint>
#include <string>
#include <vector>

#include "moekit/models/lm/hf_llama.h"
#include "moekit/scale/grow.h"
#include "moekit/scale/upcycle.h"

namespace moekit {

// A directory of Hugging Face's layout (config.json) rather than a MoEKit
// model directory (config.yaml).
bool is_hf_model_dir(const std::string& dir);

struct HfScaleReport {
  LmConfig config;                 // the model written
  std::vector<std::string> files;  // weight files written
  int64_t tensors = 0;
  uint64_t bytes = 0;              // tensor bytes written
};

// Both write config.json (the input's, every field kept: token ids, rope
// settings, ..., with the new sizes) and the weights into `out_dir`, which
// must exist. They throw std::invalid_argument naming the file and tensor
// for what HfCheckpoint refuses (hf_checkpoint.h), and for what the output
// cannot express.

// Mixtral has no QKV biases and MoE in every layer: a Qwen2 input, or
// --first-layer / --every that leave dense layers, are refused.
HfScaleReport upcycle_hf_dir(const std::string& in_dir, const std::string& out_dir, const UpcycleOptions& options,
                             const HfWriteOptions& write = {});

HfScaleReport grow_hf_dir(const std::string& in_dir, const std::string& out_dir, const GrowOptions& options,
                          const HfWriteOptions& write = {});

}  // namespace moekit
