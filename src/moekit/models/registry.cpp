#include <filesystem>
#include <map>
#include <unordered_set>

#include "moekit/core/check.h"
#include "moekit/core/cpu_allocator.h"
#include "moekit/core/file_io.h"
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

void store_weight_matrices(torch::nn::Module& model, const std::vector<torch::Tensor*>& matrices,
                           const std::vector<ExpertsImpl*>& experts, torch::ScalarType dtype, const char* what) {
  MOEKIT_CHECK_ARG(dtype == torch::kFloat || dtype == torch::kBFloat16, what,
                   ": weight matrices are stored in float32 or bfloat16, not ", dtype);
  torch::NoGradGuard no_grad;
  std::unordered_set<const c10::TensorImpl*> stored;
  for (torch::Tensor* w : matrices) {
    if (w->scalar_type() != dtype) w->set_data(w->to(dtype));
    stored.insert(w->unsafeGetTensorImpl());
  }
  for (ExpertsImpl* e : experts) {
    e->set_weight_dtype(dtype);
    for (const torch::Tensor* w : {&e->w1, &e->w3, &e->w2})
      if (w->defined()) stored.insert(w->unsafeGetTensorImpl());
  }
  auto widen = [&](torch::Tensor& t) {
    if ((t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kHalf) &&
        stored.count(t.unsafeGetTensorImpl()) == 0)
      t.set_data(t.to(torch::kFloat));
  };
  for (auto& p : model.parameters()) widen(p);
  for (auto& b : model.buffers()) widen(b);
}

c10::optional<torch::ScalarType> parse_weight_dtype(const std::string& text, const torch::Device& device) {
  if (text == "auto") return device.is_cpu() ? c10::nullopt : c10::optional<torch::ScalarType>(torch::kFloat);
  if (text == "fp32" || text == "float32") return torch::kFloat;
  if (text == "bf16" || text == "bfloat16") return torch::kBFloat16;
  throw std::invalid_argument(str_cat("weight dtype '", text, "' is not one of auto, fp32, bf16"));
}

std::shared_ptr<Model> load_model(const std::string& dir, WeightStorage storage,
                                  const std::function<void(Model&)>& before_weights) {
  const YAML::Node config = read_model_config(dir);
  const std::string where = dir + "/" + kConfigFile;
  MOEKIT_CHECK_ARG(config["architecture"].IsMap(), where, ": missing or invalid 'architecture'");
  std::shared_ptr<Model> model;
  {
    SkipExpertInit skip;  // every weight is loaded next (a missing one is an error)
    model = create_model(config["model_type"].as<std::string>(), config["architecture"], where);
  }
  apply_quantization(config, *model, where);
  if (before_weights) before_weights(*model);
  // Each tensor copied from the mapped file straight into its parameter
  // (no second copy of the whole file in memory), or mapped.
  load_module_state_from_dir(*model, dir, storage);
  model->eval();
  // For quantized experts, loading freed the float32 weights they replaced:
  // kept in the caching CPU allocator (and glibc's heap) they would stay
  // resident, unused, for the life of the process.
  release_cpu_memory();
  return model;
}

void apply_quantization(const YAML::Node& config, torch::nn::Module& model, const std::string& where) {
  const YAML::Node q = config["quantization"];
  if (!q) return;
  MOEKIT_CHECK_ARG(q.IsMap(), where, ": 'quantization' must be a mapping such as {experts: int8}");
  for (const auto& item : q) {
    const std::string key = item.first.as<std::string>();
    MOEKIT_CHECK_ARG(key == "experts", where, ": unknown quantization entry '", key, "' (known: experts)");
    MOEKIT_CHECK_ARG(item.second.IsScalar() &&
                         (item.second.as<std::string>() == "int8" || item.second.as<std::string>() == "bf16"),
                     where, ": quantization.experts must be int8 or bf16");
  }
  if (!q["experts"]) return;
  const bool int8 = q["experts"].as<std::string>() == "int8";
  MOEKIT_CHECK_ARG((int8 ? experts_to_int8(model, /*quantize=*/false) : experts_to_bf16(model)) > 0, where,
                   ": quantization.experts is set but the model has no MoE layers");
}

QuantizeReport quantize_model_dir(const std::string& model_dir, const std::string& out_dir,
                                  const std::string& experts) {
  MOEKIT_CHECK_ARG(experts == "int8" || experts == "bf16", "quantize: experts are stored as int8 or bf16, not '",
                   experts, "'");
  YAML::Node config = read_model_config(model_dir);
  const std::string where = model_dir + "/" + kConfigFile;
  MOEKIT_CHECK_ARG(!config["quantization"], where, ": the model is quantized already");
  std::shared_ptr<Model> model = load_model(model_dir);
  QuantizeReport report;
  auto expert_bytes = [&] {
    int64_t bytes = 0;
    for (const MoELayerImpl* moe : moe_layers(*model)) {
      for (const auto& t : moe->experts->named_parameters())
        if (t.key() != "b1" && t.key() != "b2") bytes += t.value().nbytes();
      for (const auto& t : moe->experts->named_buffers()) bytes += t.value().nbytes();
    }
    return bytes;
  };
  for (const auto& p : model->parameters()) {
    MOEKIT_CHECK_ARG(p.scalar_type() == torch::kFloat, where, ": quantize needs a float32 model, this one holds ",
                     p.scalar_type(), " weights");
  }
  report.float_bytes = expert_bytes();
  report.layers = experts == "int8" ? experts_to_int8(*model) : experts_to_bf16(*model);
  MOEKIT_CHECK_ARG(report.layers > 0, model_dir, ": the model has no MoE layers: nothing to quantize");
  report.quantized_bytes = expert_bytes();
  config.remove("format_version");
  config["quantization"]["experts"] = experts;
  save_model_dir(out_dir, config, module_state(*model));
  for (const auto& entry : std::filesystem::directory_iterator(model_dir)) {
    const std::string name = entry.path().filename().string();
    if (name == kConfigFile || name == kWeightsFile || !entry.is_regular_file()) continue;
    check_inside_dir(entry.path().string(), model_dir);  // a link out of model_dir is not copied along
    write_file_atomic(out_dir + "/" + name, read_file(entry.path().string()));
  }
  return report;
}

ParameterCount count_parameters(const torch::nn::Module& model) {
  ParameterCount count;
  for (const auto& p : model.parameters()) count.total += p.numel();
  count.active = count.total;
  for (const MoELayerImpl* moe : moe_layers(model)) {
    int64_t expert_params = 0;
    for (const auto& p : moe->experts->parameters()) expert_params += p.numel();
    const MoEOptions& o = moe->options();
    count.active -= expert_params / o.num_experts * (o.num_experts - o.top_k);
  }
  return count;
}

}  // namespace moekit
