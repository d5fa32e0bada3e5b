#include <map>

#include "moekit/core/check.h"
#include "moekit/core/model_dir.h"
#include "moekit/models/asr/asr_model.h"
#include "moekit/models/ffn_stack/ffn_stack.h"
#include "moekit/models/lm/lm_model.h"
#include "moekit/models/model.h"
#include "moekit/models/seq2seq/seq2seq_model.h"
#include "moekit/moe/moe_layer.h"

namespace moekit {
namespace {

const std::map<std::string, ModelFactory>& factories() {
  static const std::map<std::string, ModelFactory> table = {
      {"asr",
       [](const YAML::Node& arch, const std::string& where) -> std::shared_ptr<Model> {
         return std::make_shared<AsrModel>(AsrConfig::from_yaml(arch, where));
       }},
      {"ffn_stack",
       [](const YAML::Node& arch, const std::string& where) -> std::shared_ptr<Model> {
         return std::make_shared<FfnStack>(FfnStackOptions::from_yaml(arch, where));
       }},
      {"lm",
       [](const YAML::Node& arch, const std::string& where) -> std::shared_ptr<Model> {
         return std::make_shared<LmModel>(LmConfig::from_yaml(arch, where));
       }},
      {"seq2seq",
       [](const YAML::Node& arch, const std::string& where) -> std::shared_ptr<Model> {
         return std::make_shared<Seq2seqModel>(Seq2seqConfig::from_yaml(arch, where));
       }},
  };
  return table;
}

}  // namespace

std::vector<std::string> registered_model_types() {
  std::vector<std::string> types;
  for (const auto& [name, factory] : factories()) types.push_back(name);
  return types;
}

std::shared_ptr<Model> create_model(const std::string& model_type, const YAML::Node& architecture,
                                    const std::string& where) {
  auto it = factories().find(model_type);
  if (it == factories().end()) {
    std::string known;
    for (const auto& name : registered_model_types()) known += (known.empty() ? "" : ", ") + name;
    throw std::invalid_argument(
        str_cat(where, ": unknown model_type '", model_type, "' (this build knows: ", known, ")"));
  }
  return it->second(architecture, where);
}

void save_model(const std::string& dir, const Model& model) {
  YAML::Node config;
  config["model_type"] = model.model_type();
  config["architecture"] = model.architecture();
  save_model_dir(dir, config, module_state(model));
}

std::shared_ptr<Model> load_model(const std::string& dir) {
  const YAML::Node config = read_model_config(dir);
  const std::string where = dir + "/" + kConfigFile;
  MOEKIT_CHECK_ARG(config["architecture"].IsMap(), where, ": missing or invalid 'architecture'");
  std::shared_ptr<Model> model;
  {
    SkipExpertInit skip;  // every weight is loaded next (a missing one is an error)
    model = create_model(config["model_type"].as<std::string>(), config["architecture"], where);
  }
  load_module_state(*model, read_model_weights(dir), dir + "/" + kWeightsFile);
  model->eval();
  return model;
}

ParameterCount count_parameters(const torch::nn::Module& model) {
  ParameterCount count;
  for (const auto& p : model.parameters()) count.total += p.numel();
  count.active = count.total;
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (const auto* moe = dynamic_cast<const MoELayerImpl*>(m.get())) {
      int64_t expert_params = 0;
      for (const auto& p : moe->experts->parameters()) expert_params += p.numel();
      const MoEOptions& o = moe->options();
      count.active -= expert_params / o.num_experts * (o.num_experts - o.top_k);
    }
  }
  return count;
}

}  // namespace moekit
