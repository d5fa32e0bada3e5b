// `moekit info --system` and `moekit info <model_dir>`.
#include <torch/torch.h>
#include <torch/version.h>

#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/core/process_memory.h"
#include "moekit/core/runtime.h"
#include "moekit/core/version.h"
#include "moekit/kernels/int8_kernel.h"
#include "moekit/kernels/panel_kernel.h"
#include "moekit/kernels/small_rows_kernel.h"
#include "moekit/models/model.h"
#include "moekit/models/seq2seq/seq2seq_model.h"
#include "moekit/moe/moe_layer.h"

namespace moekit::cli {
namespace {

using json = nlohmann::json;

struct InfoOptions {
  std::string model_dir;
  bool system = false;
  bool json_output = false;
};

json system_info() {
  const BlasInfo blas = blas_info();
  json j;
  j["moekit_version"] = MOEKIT_VERSION;
  j["libtorch_version"] = TORCH_VERSION;
  j["cuda_available"] = torch::cuda::is_available();
  j["cuda_devices"] = torch::cuda::is_available() ? torch::cuda::device_count() : 0;
  j["hardware_threads"] = std::thread::hardware_concurrency();
  j["intra_op_threads"] = num_threads();
  j["blas"] = {{"name", blas.name}, {"library", blas.library}, {"config", blas.config},
               {"threads", blas.threads}, {"reference_blas", blas.reference}};
  json wait = json::object();
  for (const ThreadWaitSetting& s : kThreadWaitSettings) {
    for (const char* name : {s.variable, s.unless_set}) {
      if (const char* value = std::getenv(name)) wait[name] = value;
    }
  }
  j["thread_wait"] = wait;
  j["blas"]["core"] = openblas_core();
  const char* replaced = std::getenv("MOEKIT_SET_OPENBLAS_CORETYPE");
  j["blas"]["core_replaced"] = replaced != nullptr && std::getenv("OPENBLAS_CORETYPE") != nullptr ? replaced : "";
  j["weight_panels"] = weight_panels_enabled();
  j["small_rows_kernels"] = {{"panels", detail::panel_variants().front().first},
                             {"rows", detail::small_rows_variants().front().first},
                             {"int8", detail::int8_panel_variants().front().first}};
  j["gemm_probe"] = {{"shape", "512x512x512 fp32"}, {"gflops", gemm_gflops(512, 0.3)}};
  j["peak_resident_bytes"] = peak_resident_bytes();
  return j;
}

void print_system(const json& j) {
  std::cout << "moekit " << j["moekit_version"].get<std::string>() << "\n"
            << "LibTorch " << j["libtorch_version"].get<std::string>()
            << (j["cuda_available"].get<bool>() ? ", CUDA devices: " + std::to_string(j["cuda_devices"].get<int>())
                                                : ", CUDA: not available")
            << "\n"
            << "threads: intra-op " << j["intra_op_threads"] << " (hardware " << j["hardware_threads"] << ")";
  if (j["blas"]["threads"].get<int>() >= 0) std::cout << ", BLAS " << j["blas"]["threads"];
  std::cout << "\nBLAS: " << j["blas"]["name"].get<std::string>() << " (" << j["blas"]["library"].get<std::string>()
            << ")";
  if (!j["blas"]["config"].get<std::string>().empty()) std::cout << " " << j["blas"]["config"].get<std::string>();
  if (!j["blas"]["core_replaced"].get<std::string>().empty()) {
    std::cout << "\nBLAS core: " << j["blas"]["core"].get<std::string>() << " (OpenBLAS picked "
              << j["blas"]["core_replaced"].get<std::string>()
              << " for this CPU; moekit set OPENBLAS_CORETYPE: set it yourself to choose)";
  }
  std::cout << "\nthread pool wait:";
  if (j["thread_wait"].empty()) std::cout << " library defaults";
  for (const auto& [name, value] : j["thread_wait"].items()) std::cout << " " << name << "=" << value.get<std::string>();
  std::cout << "\nsmall-rows kernels: " << j["small_rows_kernels"]["panels"].get<std::string>()
            << "; inference weight panels: "
            << (j["weight_panels"].get<bool>() ? "on (MOEKIT_WEIGHT_PANELS=0 turns them off)" : "off");
  const std::string int8 = j["small_rows_kernels"]["int8"].get<std::string>();
  std::cout << "\nint8 experts kernel: " << int8
            << (int8 == "generic" ? " (no AVX2 on this CPU: int8 experts run slower than float32 here)" : "");
  std::cout << "\nGEMM probe: " << std::fixed << std::setprecision(1) << j["gemm_probe"]["gflops"].get<double>()
            << " GFLOP/s (512x512x512 fp32)\n";
  if (j["peak_resident_bytes"].get<int64_t>() >= 0)
    std::cout << "memory: " << j["peak_resident_bytes"].get<int64_t>() / 1000000
              << " MB resident at peak (this process, LibTorch loaded)\n";
  if (j["blas"]["reference_blas"].get<bool>()) {
    std::cout << "warning: the slow reference BLAS is active; install libopenblas0-pthread "
                 "(scripts/setup-deps.sh) for ~20x faster matrix products\n";
  }
}

// How a layer's experts are stored: int8 (quantized), float32, bfloat16, float16.
std::string expert_weights(const ExpertsImpl& experts) {
  if (experts.int8()) return "int8";
  switch (experts.w1.scalar_type()) {
    case torch::kFloat: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kHalf: return "float16";
    default: return c10::toString(experts.w1.scalar_type());
  }
}

json model_info(const std::string& dir) {
  std::shared_ptr<Model> model = load_model(dir, WeightStorage::kMap);
  const ParameterCount count = count_parameters(*model);
  json j;
  j["model_dir"] = dir;
  j["model_type"] = model->model_type();
  j["parameters"] = {{"total", count.total}, {"active_per_token", count.active}};
  json layers = json::array();
  for (const auto& item : model->named_modules("", /*include_self=*/false)) {
    const auto* moe = dynamic_cast<const MoELayerImpl*>(item.value().get());
    if (moe == nullptr) continue;
    const MoEOptions& o = moe->options();
    layers.push_back({{"name", item.key()}, {"num_experts", o.num_experts}, {"top_k", o.top_k},
                      {"routing", routing_name(o.routing)}, {"gating", gating_name(o.gating)},
                      {"d_hidden", o.d_hidden}, {"activation", activation_name(o.activation)},
                      {"capacity_factor", o.capacity_factor}, {"num_tasks", o.num_tasks},
                      {"expert_weights", expert_weights(*moe->experts)}});
  }
  j["moe_layers"] = layers;
  if (const auto seq2seq = std::dynamic_pointer_cast<Seq2seqModel>(model)) {
    j["tasks"] = seq2seq->config().tasks;
    if (!seq2seq->config().extracted_task.empty()) j["extracted_task"] = seq2seq->config().extracted_task;
  }
  return j;
}

std::string millions(int64_t n) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(2) << static_cast<double>(n) / 1e6 << "M";
  return out.str();
}

void print_model(const json& j) {
  std::cout << j["model_dir"].get<std::string>() << ": " << j["model_type"].get<std::string>() << "\n"
            << "parameters: " << millions(j["parameters"]["total"].get<int64_t>()) << " total, "
            << millions(j["parameters"]["active_per_token"].get<int64_t>()) << " active per token\n"
            << "MoE layers: " << j["moe_layers"].size() << "\n";
  if (j.contains("tasks")) {
    std::cout << "tasks:";
    for (const json& t : j["tasks"]) std::cout << " " << t.get<std::string>();
    std::cout << "\n";
  }
  if (j.contains("extracted_task")) {
    std::cout << "the sub-network of task " << j["extracted_task"].get<std::string>()
              << " (its task-routed layers are dense FFNs)\n";
  }
  for (const json& l : j["moe_layers"]) {
    std::cout << "  " << l["name"].get<std::string>() << ": " << l["num_experts"] << " experts, top-" << l["top_k"]
              << ", routing " << l["routing"].get<std::string>() << ", gating " << l["gating"].get<std::string>()
              << ", d_hidden " << l["d_hidden"] << ", " << l["activation"].get<std::string>();
    if (l["capacity_factor"].get<double>() > 0) std::cout << ", capacity factor " << l["capacity_factor"];
    if (l["expert_weights"] == "int8") std::cout << ", int8 experts";
    if (l["expert_weights"] == "bfloat16") std::cout << ", bf16 experts";
    std::cout << "\n";
  }
}

}  // namespace

void add_info_command(CLI::App& app, const GlobalOptions& global) {
  auto options = std::make_shared<InfoOptions>();
  CLI::App* cmd = app.add_subcommand("info", "Describe a model directory, or this system (--system)");
  cmd->add_option("model_dir", options->model_dir, "Model directory (config.yaml + model.safetensors)");
  cmd->add_flag("--system", options->system, "Versions, threads, the BLAS in use and a GEMM speed probe");
  cmd->add_flag("--json", options->json_output, "Print JSON");
  cmd->callback([options, &global] {
    apply_runtime(global);
    MOEKIT_CHECK_ARG(options->system != !options->model_dir.empty(),
                     "info needs either a model directory or --system");
    const json j = options->system ? system_info() : model_info(options->model_dir);
    if (options->json_output) {
      std::cout << json_text(j, 2) << "\n";
    } else if (options->system) {
      print_system(j);
    } else {
      print_model(j);
    }
  });
}

}  // namespace moekit::cli
