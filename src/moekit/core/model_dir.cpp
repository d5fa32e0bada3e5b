#include "moekit/core/model_dir.h"

#include <cstdlib>
#include <map>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/core/mapped_tensors.h"
#include "moekit/core/safetensors_stream.h"

namespace moekit {

void save_model_dir(const std::string& dir, YAML::Node config, const TensorMap& weights) {
  MOEKIT_CHECK_ARG(config["model_type"].IsDefined(), "model config lacks 'model_type'");
  config["format_version"] = kModelFormatVersion;
  make_dirs(dir);
  // Weights first: a directory whose config.yaml exists is complete.
  write_safetensors(dir + "/" + kWeightsFile, weights,
                    {{"format", "pt"}, {"moekit_format_version", std::to_string(kModelFormatVersion)}});
  write_yaml_file(dir + "/" + kConfigFile, config);
}

YAML::Node read_model_config(const std::string& dir) {
  MOEKIT_CHECK_ARG(is_directory(dir), "'", dir, "' is not a model directory (it does not exist or is a file)");
  const std::string path = dir + "/" + kConfigFile;
  MOEKIT_CHECK_ARG(path_exists(path), "'", dir, "' is not a model directory: it has no ", kConfigFile);
  YAML::Node config = load_yaml_file(path);
  MOEKIT_CHECK_ARG(config.IsMap(), path, ": expected a mapping at the top level");
  const int version = yaml_get<int>(config, "format_version", path);
  MOEKIT_CHECK_ARG(version >= 1 && version <= kModelFormatVersion, path, ": format_version ", version,
                   " is not supported by this MoEKit (reads 1..", kModelFormatVersion, "); upgrade MoEKit");
  yaml_get<std::string>(config, "model_type", path);
  return config;
}

TensorMap read_model_weights(const std::string& dir) {
  const std::string path = dir + "/" + kWeightsFile;
  MOEKIT_CHECK_ARG(path_exists(path), "model directory '", dir, "' has no ", kWeightsFile);
  return read_safetensors(path).tensors;
}

TensorMap module_state(const torch::nn::Module& module) {
  TensorMap state;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) state[item.key()] = item.value();
  for (const auto& item : module.named_buffers(/*recurse=*/true)) state[item.key()] = item.value();
  return state;
}

namespace {

std::string shape_string(torch::IntArrayRef shape) {
  std::ostringstream out;
  out << shape;
  return out.str();
}

// Floating point to floating point, integer to integer, bool to bool.
bool same_kind(torch::ScalarType a, torch::ScalarType b) {
  if (c10::isFloatingType(a) || c10::isFloatingType(b)) return c10::isFloatingType(a) && c10::isFloatingType(b);
  if (a == torch::kBool || b == torch::kBool) return a == b;
  return c10::isIntegralType(a, false) && c10::isIntegralType(b, false);
}

// Joins up to `limit` names, then "... (N more)".
std::string name_list(const std::vector<std::string>& names, size_t limit = 6) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < limit; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > limit) out += str_cat(", ... (", names.size() - limit, " more)");
  return out;
}

// What a stored tensor is, without its values.
struct StoredTensor {
  std::vector<int64_t> shape;
  torch::ScalarType dtype;
};

// Every missing, unexpected, mis-shaped and mistyped tensor by name in one
// error naming `source`.
void check_state(const TensorMap& targets, const std::map<std::string, StoredTensor>& stored,
                 const std::string& source) {
  std::vector<std::string> missing, unexpected, mis_shaped, mis_typed;
  for (const auto& [name, target] : targets) {
    auto it = stored.find(name);
    if (it == stored.end()) {
      missing.push_back(name);
    } else if (torch::IntArrayRef(it->second.shape) != target.sizes()) {
      mis_shaped.push_back(str_cat(name, " ", shape_string(it->second.shape), " (model expects ",
                                   shape_string(target.sizes()), ")"));
    } else if (!same_kind(it->second.dtype, target.scalar_type())) {
      // Float widths convert (a bf16 checkpoint into fp32 weights); an
      // integer tensor where the model holds floats is a damaged or foreign
      // file, and casting it would load garbage without a word.
      mis_typed.push_back(str_cat(name, " ", c10::toString(it->second.dtype), " (model expects ",
                                  c10::toString(target.scalar_type()), ")"));
    }
  }
  for (const auto& [name, value] : stored) {
    if (targets.find(name) == targets.end()) unexpected.push_back(name);
  }
  if (!missing.empty() || !unexpected.empty() || !mis_shaped.empty() || !mis_typed.empty()) {
    std::string message = str_cat(source, ": weights do not match the model:");
    if (!missing.empty()) message += str_cat(" missing ", missing.size(), " [", name_list(missing), "];");
    if (!unexpected.empty()) message += str_cat(" unexpected ", unexpected.size(), " [", name_list(unexpected), "];");
    if (!mis_shaped.empty()) message += str_cat(" mis-shaped ", mis_shaped.size(), " [", name_list(mis_shaped), "];");
    if (!mis_typed.empty()) message += str_cat(" wrong dtype ", mis_typed.size(), " [", name_list(mis_typed), "];");
    message.pop_back();
    throw std::invalid_argument(message);
  }
}

}  // namespace

void load_module_state(torch::nn::Module& module, const TensorMap& weights, const std::string& source) {
  TensorMap targets = module_state(module);
  std::map<std::string, StoredTensor> stored;
  for (const auto& [name, value] : weights) stored[name] = {value.sizes().vec(), value.scalar_type()};
  check_state(targets, stored, source);
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) target.copy_(weights.at(name));
}

bool map_weights_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("MOEKIT_MAP_WEIGHTS");
    return v == nullptr || std::string(v) != "0";
  }();
  return enabled;
}

void load_module_state_from_dir(torch::nn::Module& module, const std::string& dir, WeightStorage storage) {
  const std::string path = dir + "/" + kWeightsFile;
  MOEKIT_CHECK_ARG(path_exists(path), "model directory '", dir, "' has no ", kWeightsFile);
  const bool map = storage == WeightStorage::kMap && map_weights_enabled();
  const MappedSafetensors file(path, /*copy_on_write=*/map);
  TensorMap targets = module_state(module);
  std::map<std::string, StoredTensor> stored;
  for (const auto& [name, entry] : file.header().entries) stored[name] = {entry.shape, entry.dtype};
  check_state(targets, stored, path);
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : targets) {
    const SafetensorsEntry& entry = file.entry(name);
    if (map && target.device().is_cpu() && entry.dtype == target.scalar_type() &&
        entry.end - entry.begin >= kMinMappedTensorBytes) {
      const torch::Tensor mapped = file.share(name);
      if (mapped.defined()) {
        adopt_mapped_tensor(target, mapped);
        continue;
      }
    }
    target.copy_(file.view(name));
    file.release(name);
  }
}

}  // namespace moekit
