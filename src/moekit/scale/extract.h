#pragma once
// Task sub-network extraction (task-level MoE): in a task-routed MoE layer
// every token of a task goes to the same k experts with the same gate
// weights, so for one task the layer is a fixed sum of k FFNs,
//   y = sum_i g_i (W2_i act(W1_i x + b1_i) + b2_i),
// which is one dense FFN of width k * H exactly: W1 and b1 (and SwiGLU's W3)
// stacked, W2_i scaled by g_i and placed side by side, b2 = sum_i g_i b2_i.
// The extracted model keeps every other weight (token- and sentence-routed
// layers whole) and drops the other experts, the routers and the task
// embeddings.
#include <memory>
#include <string>
#include <vector>

#include "moekit/models/seq2seq/seq2seq_model.h"

namespace moekit {

struct ExtractedLayer {
  std::string name;              // the FFN's module path, e.g. "decoder.layers.1.ffn"
  std::vector<int64_t> experts;  // the task's k experts
  std::vector<double> weights;   // their gate weights
};

struct Extraction {
  std::shared_ptr<Seq2seqModel> model;  // eval mode
  std::vector<ExtractedLayer> layers;
};

// Throws std::invalid_argument for a task the model does not list, a model
// without a task-routed layer, or a model that is already extracted.
Extraction extract_task(Seq2seqModel& model, const std::string& task);

// extract_task on a model directory, written to `out_dir` with the source
// directory's tokenizer.model.
Extraction extract_task_dir(const std::string& model_dir, const std::string& task, const std::string& out_dir);

}  // namespace moekit
