#include "moekit/models/lm/hf_import.h"

#include <limits>
#include <map>
#include <regex>
#include <vector>

#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/safetensors_stream.h"
#include "moekit/models/lm/hf_checkpoint.h"
#include "moekit/models/lm/hf_llama.h"

namespace moekit {

HfImportReport import_hf_dir(const std::string& in_dir, const std::string& out_dir,
                             std::optional<torch::ScalarType> dtype) {
  const HfCheckpoint in(in_dir);
  const LmConfig& c = in.config().config;
  MOEKIT_CHECK_ARG(!dtype || c10::isFloatingType(*dtype), "import hf: --dtype must be a float dtype");
  auto release = [&in](std::vector<std::string> names) -> std::function<void()> {
    return [&in, names = std::move(names)] {
      for (const std::string& n : names) in.release(n);
    };
  };
  // The plan in hf_tensor_shapes' order; a Mixtral layer's experts
  // (model.layers.L.block_sparse_moe.experts.E.wN.weight) become one stacked
  // tensor, planned where its expert 0 comes.
  static const std::regex expert(R"(^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$)");
  std::vector<PlannedTensor> plan;
  HfImportReport report;
  report.config = c;
  for (const auto& [name, shape] : hf_tensor_shapes(c)) {
    std::smatch m;
    if (!std::regex_match(name, m, expert)) {
      plan.push_back({moekit_tensor_name(name), dtype.value_or(in.dtype(name)), shape,
                      [&in, name = name] { return in.view(name); }, release({name})});
      continue;
    }
    if (m[2].str() != "0") continue;
    const std::string prefix = "model.layers." + m[1].str() + ".block_sparse_moe.experts.";
    const std::string suffix = "." + m[3].str() + ".weight";
    std::vector<std::string> sources;
    for (int64_t e = 0; e < c.moe.num_experts; ++e) sources.push_back(prefix + std::to_string(e) + suffix);
    std::vector<int64_t> stacked = {c.moe.num_experts};
    stacked.insert(stacked.end(), shape.begin(), shape.end());
    // The experts' dtype is the first one's; the writer converts any other.
    plan.push_back({"layers." + m[1].str() + ".mlp.experts." + m[3].str(), dtype.value_or(in.dtype(sources[0])),
                    stacked,
                    [&in, sources] {
                      std::vector<torch::Tensor> views;
                      for (const std::string& s : sources) views.push_back(in.view(s));
                      return torch::stack(views);
                    },
                    release(sources)});
  }
  for (const PlannedTensor& t : plan) {
    uint64_t n = c10::elementSize(t.dtype);
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    report.bytes += n;
  }
  report.tensors = static_cast<int64_t>(plan.size());
  // One file, as save_model_dir writes it: weights first, then config.yaml
  // (a directory whose config.yaml exists is complete).
  write_sharded_safetensors(out_dir, plan, std::numeric_limits<uint64_t>::max(),
                            {{"format", "pt"}, {"moekit_format_version", std::to_string(kModelFormatVersion)}});
  YAML::Node config;
  config["model_type"] = "lm";
  config["architecture"] = c.to_yaml();
  config["format_version"] = kModelFormatVersion;
  write_yaml_file(out_dir + "/" + kConfigFile, config);
  return report;
}

}  // namespace moekit
