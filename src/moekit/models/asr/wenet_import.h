#pragma once
// `moekit import wenet`: a WeNet U2/U2++ Conformer checkpoint (final.pt +
// train.yaml, optional global_cmvn and units.txt; dense or MoE FFNs) into a
// MoEKit model directory. Options MoEKit does not implement are refused by
// name rather than approximated.
#include <memory>
#include <string>

#include "moekit/core/safetensors.h"
#include "moekit/data/units.h"
#include "moekit/models/asr/asr_model.h"

namespace moekit {

struct WenetFiles {
  std::string checkpoint;  // final.pt (torch.save of the state dict)
  std::string config;      // train.yaml
  std::string cmvn;        // global_cmvn (JSON or Kaldi text); empty: from the checkpoint or train.yaml
  std::string units;       // units.txt; empty: none
  // Fills unset paths from a WeNet experiment directory.
  static WenetFiles from_dir(const std::string& dir);
};

// train.yaml -> AsrConfig, refusing unsupported options by name.
AsrConfig wenet_config(const YAML::Node& train_yaml, const std::string& where);

// WeNet state-dict names/shapes -> MoEKit's (experts stacked, FFN renamed).
TensorMap map_wenet_weights(const TensorMap& wenet, const AsrConfig& config, const std::string& where);

// WeNet's JSON CMVN stats (mean_stat, var_stat, frame_num) or Kaldi text
// stats -> (mean, istd) as WeNet's load_cmvn computes them.
std::pair<torch::Tensor, torch::Tensor> read_wenet_cmvn(const std::string& path);

struct ImportedAsr {
  std::shared_ptr<AsrModel> model;
  Units units;  // empty when no units file was given
};
ImportedAsr import_wenet(const WenetFiles& files);

// Model directory: config.yaml + model.safetensors + units.txt.
void save_asr_model(const std::string& dir, const AsrModel& model, const Units& units);
struct LoadedAsr {
  std::shared_ptr<AsrModel> model;
  Units units;
};
LoadedAsr load_asr_model(const std::string& dir, WeightStorage storage = WeightStorage::kCopy);

}  // namespace moekit
