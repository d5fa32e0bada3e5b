#include "moekit/scale/extract.h"

#include <map>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/moe/router.h"

namespace moekit {

Extraction extract_task(Seq2seqModel& model, const std::string& task) {
  const Seq2seqConfig& config = model.config();
  MOEKIT_CHECK_ARG(config.extracted_task.empty(), "extract: the model is already the sub-network of task '",
                   config.extracted_task, "'");
  MOEKIT_CHECK_ARG(config.uses_task_routing(), "extract: the model has no task-routed layer (encoder routing ",
                   routing_name(config.moe.encoder_routing), ", decoder routing ",
                   routing_name(config.moe.decoder_routing), "); only task routing gives a fixed sub-network");
  const int64_t task_id = config.task_id(task);
  if (task_id < 0) {
    std::string known;
    for (const auto& t : config.tasks) known += (known.empty() ? "" : ", ") + t;
    throw std::invalid_argument(str_cat("extract: unknown task '", task, "' (the model's tasks: ", known, ")"));
  }
  torch::NoGradGuard no_grad;
  Seq2seqConfig out_config = config;
  out_config.extracted_task = task;
  Extraction out;
  {
    SkipExpertInit skip;  // every weight is set below
    out.model = std::make_shared<Seq2seqModel>(out_config);
  }

  // The folded FFN of every task-routed layer, by parameter name.
  std::map<std::string, torch::Tensor> folded;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    const auto* moe = dynamic_cast<const MoELayerImpl*>(item.value().get());
    if (!moe || moe->options().routing != Routing::Task) continue;
    const MoEOptions& o = moe->options();
    const torch::Tensor logits = torch::nn::functional::linear(
        moe->task_embedding.to(torch::kFloat32)[task_id].unsqueeze(0), moe->gate->weight.to(torch::kFloat32));
    const GateDecision d = gate_top_k(logits, o.top_k, o.gating, o.renormalize);
    ExtractedLayer layer;
    layer.name = item.key();
    const auto& experts = moe->experts;
    MOEKIT_CHECK_ARG(!experts->int8(), layer.name,
                     ": the experts are int8; extract from the float model");
    std::vector<torch::Tensor> w1, b1, w3, w2;
    torch::Tensor b2 = torch::zeros({o.d_model}, experts->w2.options());
    for (int64_t i = 0; i < o.top_k; ++i) {
      const int64_t e = d.expert_index[0][i].item<int64_t>();
      const double g = d.expert_weight[0][i].item<double>();
      layer.experts.push_back(e);
      layer.weights.push_back(g);
      w1.push_back(experts->w1[e]);
      if (experts->w3.defined()) w3.push_back(experts->w3[e]);
      w2.push_back(experts->w2[e] * g);
      if (experts->b1.defined()) b1.push_back(experts->b1[e]);
      if (experts->b2.defined()) b2 += experts->b2[e] * g;
    }
    const std::string p = layer.name + ".";
    folded[p + "w1.weight"] = torch::cat(w1, 0);
    folded[p + "w1.bias"] = b1.empty() ? torch::zeros({o.top_k * o.d_hidden}, experts->w1.options()) : torch::cat(b1, 0);
    if (!w3.empty()) folded[p + "w3.weight"] = torch::cat(w3, 0);
    folded[p + "w2.weight"] = torch::cat(w2, 1);
    folded[p + "w2.bias"] = b2;
    out.layers.push_back(std::move(layer));
  }

  const auto source = model.named_parameters();
  for (auto& item : out.model->named_parameters()) {
    const auto f = folded.find(item.key());
    const torch::Tensor* from = f != folded.end() ? &f->second : source.find(item.key());
    MOEKIT_CHECK(from && from->sizes() == item.value().sizes(), "extract: no source for ", item.key());
    item.value().copy_(*from);
  }
  out.model->eval();
  return out;
}

Extraction extract_task_dir(const std::string& model_dir, const std::string& task, const std::string& out_dir) {
  std::shared_ptr<Seq2seqModel> model = load_seq2seq_model(model_dir);
  Extraction out = extract_task(*model, task);
  save_model(out_dir, *out.model);
  const std::string tokenizer = model_dir + "/tokenizer.model";
  if (path_exists(tokenizer)) write_file_atomic(out_dir + "/tokenizer.model", read_file(tokenizer));
  return out;
}

}  // namespace moekit
