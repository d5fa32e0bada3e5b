#include "moekit/models/lm/hf_checkpoint.h"

#include <nlohmann/json.hpp>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/json_error.h"
#include "moekit/models/lm/hf_llama.h"

namespace moekit {

using json = nlohmann::json;

HfCheckpoint::HfCheckpoint(const std::string& dir) : dir_(dir), config_(read_hf_config(dir)) {
  for (const std::string& file : hf_weight_files(dir)) {
    shards_.push_back(std::make_unique<MappedSafetensors>(file));
    for (const auto& [name, entry] : shards_.back()->header().entries) {
      const auto [it, fresh] = where_.emplace(name, shards_.back().get());
      MOEKIT_CHECK_ARG(fresh, dir, ": tensor '", name, "' is in both ", it->second->path(), " and ", file);
    }
  }
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (shards_.size() > 1 && path_exists(index_path)) {
    json index;
    try {
      index = json::parse(read_file(index_path));
    } catch (const json::exception& e) {
      throw std::invalid_argument(index_path + ": invalid JSON: " + json_error_reason(e));
    }
    for (const auto& [name, shard] : index["weight_map"].items()) {
      const auto it = where_.find(name);
      MOEKIT_CHECK_ARG(it != where_.end() && it->second->path() == dir + "/" + shard.get<std::string>(), index_path,
                       ": names tensor '", name, "' in ", shard.get<std::string>(), ", which does not hold it");
    }
  }
  // Every tensor the architecture has, present, in its shape, a float.
  const auto expected = hf_tensor_shapes(config_.config);
  const std::map<std::string, std::vector<int64_t>> shape_of(expected.begin(), expected.end());
  std::vector<std::string> unexpected;
  for (auto it = where_.begin(); it != where_.end();) {
    const auto& [name, shard] = *it;
    const auto want = shape_of.find(name);
    if (want == shape_of.end()) {
      if (name.find("rotary_emb.inv_freq") == std::string::npos) unexpected.push_back(name);
      it = where_.erase(it);  // buffers transformers may save: not weights
      continue;
    }
    const SafetensorsEntry& e = shard->entry(name);
    MOEKIT_CHECK_ARG(e.shape == want->second, shard->path(), ": tensor '", name, "' has shape ", c10::IntArrayRef(e.shape),
                     ", config.json says ", c10::IntArrayRef(want->second));
    MOEKIT_CHECK_ARG(e.dtype == torch::kBFloat16 || e.dtype == torch::kFloat16 || e.dtype == torch::kFloat32 ||
                         e.dtype == torch::kFloat64,
                     shard->path(), ": tensor '", name, "' is ", safetensors_dtype_name(e.dtype),
                     "; weights are floating point (F32, F16, BF16)");
    ++it;
  }
  if (!unexpected.empty()) {
    std::string list;
    for (size_t i = 0; i < unexpected.size() && i < 5; ++i) list += (i ? ", " : "") + unexpected[i];
    throw std::invalid_argument(str_cat(dir, ": ", unexpected.size(), " tensors this ", config_.model_type,
                                        " architecture does not have: ", list));
  }
  for (const auto& [name, shape] : expected) MOEKIT_CHECK_ARG(where_.count(name), dir, ": tensor '", name, "' is missing");
}

const MappedSafetensors& HfCheckpoint::shard_of(const std::string& name) const {
  const auto it = where_.find(name);
  MOEKIT_CHECK_ARG(it != where_.end(), dir_, ": has no tensor '", name, "'");
  return *it->second;
}

torch::ScalarType HfCheckpoint::dtype(const std::string& name) const { return shard_of(name).entry(name).dtype; }
torch::Tensor HfCheckpoint::view(const std::string& name) const { return shard_of(name).view(name); }
void HfCheckpoint::release(const std::string& name) const { shard_of(name).release(name); }

}  // namespace moekit
