#pragma once
// A Hugging Face LLaMA-family checkpoint opened for reading tensor by tensor:
// its shards memory-mapped, every tensor checked against the architecture
// config.json describes before any is used.
#include <map>
#include <memory>
#include <string>

#include "moekit/core/safetensors_stream.h"
#include "moekit/models/lm/hf_config.h"

namespace moekit {

class HfCheckpoint {
 public:
  // Throws std::invalid_argument naming the file and tensor for a truncated
  // or malformed shard, a tensor in two shards, an index entry naming a shard
  // that does not hold the tensor, and for any tensor the architecture lacks,
  // has in another shape or stores in a non-float dtype, or a missing one.
  explicit HfCheckpoint(const std::string& dir);

  const HfConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }
  bool contains(const std::string& name) const { return where_.count(name) > 0; }
  torch::ScalarType dtype(const std::string& name) const;
  // MappedSafetensors::view / release of the shard holding `name`.
  torch::Tensor view(const std::string& name) const;
  void release(const std::string& name) const;

 private:
  const MappedSafetensors& shard_of(const std::string& name) const;

  std::string dir_;
  HfConfig config_;
  std::vector<std::unique_ptr<MappedSafetensors>> shards_;
  std::map<std::string, const MappedSafetensors*> where_;
};

}  // namespace moekit
