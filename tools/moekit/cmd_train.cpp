// `moekit train asr --config train.yaml --train-data train.list --cv-data cv.list --exp-dir exp/`
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <thread>

#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/core/runtime.h"
#include "moekit/data/asr_data.h"
#include "moekit/data/sentencepiece.h"
#include "moekit/data/units.h"
#include "moekit/core/model_dir.h"
#include "moekit/dist/process_group.h"
#include "moekit/dist/sharded_checkpoint.h"
#include "moekit/models/asr/wenet_import.h"
#include "moekit/models/model.h"
#include "moekit/train/asr_task.h"
#include "moekit/train/checkpoint_store.h"
#include "moekit/train/trainer.h"

namespace moekit::cli {

void join_run(const GlobalOptions& global) {
  const auto world =
      dist::init_from_environment(std::chrono::milliseconds(static_cast<int64_t>(global.dist_timeout_s * 1000)));
  if (world->size() == 1 || global.threads > 0) return;
  const char* local = std::getenv("LOCAL_WORLD_SIZE");
  const int per_host = local != nullptr ? std::max(1, std::atoi(local)) : 1;
  set_num_threads(std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / per_host));
}

torch::Device training_device(const GlobalOptions& global) {
  torch::Device device = parse_device(global.device);
  // Each process of a run on one host takes its own GPU, as torchrun's
  // LOCAL_RANK means, unless the command names one.
  if (device.is_cuda() && !device.has_index() && dist::world()->size() > 1) {
    const char* local = std::getenv("LOCAL_RANK");
    const int index = local != nullptr ? std::atoi(local) : 0;
    MOEKIT_CHECK_ARG(index < static_cast<int>(torch::cuda::device_count()), "train: LOCAL_RANK ", index,
                     " has no GPU of its own (", torch::cuda::device_count(), " here)");
    device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  return device;
}

namespace {

// Whether a units table holds SentencePiece pieces (a unit of several
// characters other than the specials), not characters.
bool has_pieces(const Units& units) {
  for (int64_t id = 0; id < units.size(); ++id) {
    const std::string& s = units.symbol(id);
    if (s.size() > 2 && s.front() == '<' && s.back() == '>') continue;
    if (text_to_chars(s).size() > 1) return true;
  }
  return false;
}

bool holds_checkpoints(const std::string& exp_dir) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(exp_dir + "/checkpoints", ec))
    if (entry.path().filename().string().rfind("step_", 0) == 0) return true;
  return false;
}

struct AsrRunUnits {
  Units units;
  std::shared_ptr<const SentencePieceTokenizer> sentencepiece;  // null: character units
};

// The output units an ASR run trains on, and the SentencePiece model that
// turns its transcripts into them. A new run takes --units, else the
// --bpe-model pieces, else the characters of the training transcripts, and
// keeps them in its directory (units.txt; tokenizer.model for pieces). A
// resumed run reads them back from there, so it tokenizes its transcripts
// as the run it continues did, with or without the options; options that
// disagree with them are errors.
AsrRunUnits asr_run_units(const std::string& exp_dir, bool resume, const std::string& units_path,
                          const std::string& bpe_model, const std::vector<Utterance>& train_data) {
  const std::string run_units = exp_dir + "/units.txt";
  AsrRunUnits r;
  if (resume && path_exists(run_units)) {
    r.units = Units::read(run_units);
    if (!units_path.empty())
      MOEKIT_CHECK_ARG(Units::read(units_path).serialize() == r.units.serialize(), "train asr: --units ", units_path,
                       " is not the units table of the run in ", exp_dir, " (", run_units,
                       "); resume without --units");
    const bool kept = path_exists(exp_dir + "/tokenizer.model");
    // A run started before runs kept their SentencePiece model: its units tell.
    MOEKIT_CHECK_ARG(kept || bpe_model.empty() ||
                         SentencePieceTokenizer(bpe_model).units().serialize() == r.units.serialize(),
                     "train asr: --bpe-model ", bpe_model, " does not make the units of the run in ", exp_dir, " (",
                     run_units, "); resume with the one it started with");
    MOEKIT_CHECK_ARG(kept || !bpe_model.empty() || !units_path.empty() || !has_pieces(r.units),
                     "train asr: the units of the run in ", exp_dir, " (", run_units,
                     ") are SentencePiece pieces but it keeps no tokenizer.model: resume with its --bpe-model (or "
                     "with --units ", run_units, " if it trained on characters)");
    const std::string model =
        run_tokenizer_file(exp_dir, true, bpe_model, "tokenizer.model", "train asr: --bpe-model");
    if (!model.empty()) r.sentencepiece = std::make_shared<SentencePieceTokenizer>(model);
    return r;
  }
  const std::string model = run_tokenizer_file(exp_dir, false, bpe_model, "tokenizer.model", "train asr: --bpe-model");
  if (!model.empty()) r.sentencepiece = std::make_shared<SentencePieceTokenizer>(model);
  r.units = !units_path.empty()  ? Units::read(units_path)
            : r.sentencepiece ? r.sentencepiece->units()
                              : build_char_units(train_data);
  // A directory with checkpoints belongs to a run the trainer will refuse
  // to start over (without --resume): its files stay as they are.
  if (!holds_checkpoints(exp_dir)) write_file_atomic(run_units, r.units.serialize());
  return r;
}

}  // namespace

std::string run_tokenizer_file(const std::string& exp_dir, bool resume, const std::string& given,
                               const std::string& kept_name, const std::string& option,
                               const std::vector<std::string>& siblings) {
  const std::string kept = exp_dir + "/" + kept_name;
  // A sibling file's content, or nullopt where it is absent.
  auto content = [](const std::string& path) {
    return path_exists(path) ? std::optional<std::string>(read_file(path)) : std::nullopt;
  };
  auto sibling = [&](const std::string& name) {
    return content((std::filesystem::path(given).parent_path() / name).string());
  };
  auto kept_sibling = [&](const std::string& name) { return content(exp_dir + "/" + name); };
  if (resume && path_exists(kept)) {
    bool same = given.empty() || read_file(given) == read_file(kept);
    for (const std::string& name : siblings) same = same && (given.empty() || sibling(name) == kept_sibling(name));
    MOEKIT_CHECK_ARG(same, option, " ", given, " is not the tokenizer the run in ", exp_dir, " trains with (", kept,
                     "); resume without it");
    return kept;
  }
  // Nothing to keep, or a directory with checkpoints the trainer will
  // refuse to start over (without --resume), or a run that kept nothing.
  if (given.empty() || holds_checkpoints(exp_dir)) return given;
  make_dirs(exp_dir);
  for (const std::string& name : siblings) {
    if (const auto found = sibling(name)) {
      write_file_atomic(exp_dir + "/" + name, *found);
    } else {
      remove_path(exp_dir + "/" + name);  // a stale one from an earlier start
    }
  }
  write_file_atomic(kept, read_file(given));
  return kept;
}

void print_train_summary(const TrainSummary& summary) {
  if (dist::world()->rank() != 0) return;  // one report per run
  if (!summary.completed) {
    std::cout << "stopped after " << summary.steps << " steps (max_steps); rerun with --resume to continue\n";
    return;
  }
  std::cout << "trained " << summary.steps << " steps; validation";
  for (const auto& [k, v] : summary.last_validation) std::cout << " " << k << " " << v;
  std::cout << "; final model " << summary.final_dir << "\n";
}

void add_train_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* train = app.add_subcommand("train", "Train a model (checkpoints, exact resume, averaged final model)");
  train->require_subcommand(1);
  struct Options {
    std::string config, train_data, cv_data, exp_dir, units, bpe_model;
    bool resume = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* asr = train->add_subcommand(
      "asr", "U2++ Conformer (dense or MoE) from a WeNet-style config: encoder_conf, decoder_conf, model_conf, "
             "dataset_conf (fbank_conf, batch_size, max_frames_in_batch, spec_aug_conf), train_conf");
  asr->add_option("--config", o->config, "Training config (YAML)")->required()->check(CLI::ExistingFile);
  asr->add_option("--train-data", o->train_data, "WeNet data.list (JSON lines: key, wav, txt) or Kaldi data dir")
      ->required();
  asr->add_option("--cv-data", o->cv_data, "Validation data, same formats")->required();
  asr->add_option("--exp-dir", o->exp_dir, "Experiment directory (checkpoints/, metrics.jsonl, final/)")->required();
  asr->add_option("--units", o->units,
                  "units.txt (default: the --bpe-model pieces, else the characters of the training transcripts; "
                  "a resumed run keeps its own)");
  asr->add_option("--bpe-model", o->bpe_model,
                  "SentencePiece model: transcripts become its pieces (WeNet's bpe_model; kept in --exp-dir, so "
                  "--resume needs it no more)");
  asr->add_flag("--resume", o->resume, "Continue from the newest checkpoint in --exp-dir");
  add_train_lm_command(*train, global);
  add_train_seq2seq_command(*train, global);
  asr->callback([o, &global] {
    apply_runtime(global);
    join_run(global);
    const torch::Device device = training_device(global);
    const YAML::Node y = load_yaml_file(o->config);
    const std::vector<Utterance> train_data = read_asr_data(o->train_data);
    const std::vector<Utterance> cv_data = read_asr_data(o->cv_data);
    make_dirs(o->exp_dir);
    const AsrRunUnits run_units = asr_run_units(o->exp_dir, o->resume, o->units, o->bpe_model, train_data);
    const Units& units = run_units.units;
    YAML::Node arch;
    for (const char* key : {"encoder_conf", "decoder_conf", "model_conf"})
      if (y[key].IsDefined()) arch[key] = y[key];
    arch["vocab_size"] = units.size();
    const YAML::Node dataset = y["dataset_conf"];
    if (dataset.IsDefined() && dataset["fbank_conf"].IsDefined()) {
      arch["fbank_conf"] = dataset["fbank_conf"];
      arch["input_dim"] = dataset["fbank_conf"]["num_mel_bins"].IsDefined() ? dataset["fbank_conf"]["num_mel_bins"]
                                                                            : YAML::Node(80);
    }
    const AsrConfig config = AsrConfig::from_yaml(arch, o->config);
    YAML::Node data_conf;
    if (dataset.IsDefined())
      for (const auto& kv : dataset)
        if (kv.first.as<std::string>() != "fbank_conf") data_conf[kv.first.as<std::string>()] = kv.second;
    const AsrDataOptions data_options = AsrDataOptions::from_yaml(data_conf, o->config + ": dataset_conf");
    const TrainerOptions trainer = TrainerOptions::from_yaml(y["train_conf"], o->config + ": train_conf");
    torch::manual_seed(trainer.seed);
    auto model = std::make_shared<AsrModel>(config);
    const ParameterCount count = count_parameters(*model);
    std::cerr << "asr model: " << count.total << " parameters, " << count.active << " active per frame; "
              << train_data.size() << " training / " << cv_data.size() << " validation utterances\n";
    AsrTrainTask task(model, units, train_data, cv_data, data_options, trainer.seed, run_units.sentencepiece);
    const TrainSummary summary = moekit::train(task, trainer, o->exp_dir, o->resume, device);
    print_train_summary(summary);
  });
}

void add_consolidate_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* cmd = app.add_subcommand(
      "consolidate", "One ordinary model directory from a training checkpoint (an expert-parallel run's shards "
                     "joined; the optimizer and generator states left out)");
  struct Options {
    std::string checkpoint, out;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  cmd->add_option("checkpoint", o->checkpoint, "A checkpoint directory (<exp_dir>/checkpoints/step_<N>)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("out", o->out, "The model directory to write")->required();
  cmd->add_flag("--force", o->force, "Replace `out` if it exists");
  cmd->callback([o, &global] {
    apply_runtime(global);
    const std::string& dir = o->checkpoint;
    MOEKIT_CHECK_ARG(path_exists(dir + "/trainer_state.yaml"), dir,
                     ": not a training checkpoint (no trainer_state.yaml); consolidate takes a directory "
                     "<exp_dir>/checkpoints/step_<N>");
    const YAML::Node config = read_model_config(dir);
    const auto manifest = dist::read_shard_manifest(dir);
    const TensorMap weights = CheckpointStore::read_weights(dir);
    OutputDir out(o->out, o->force, {dir});
    // The task's assets (units.txt, tokenizer files): every file that is
    // not part of the training state or the weights.
    namespace fs = std::filesystem;
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      const bool state = name == kConfigFile || name == kWeightsFile || name == dist::kShardManifestFile ||
                         name == "trainer_state.yaml" || name == "rng.safetensors" ||
                         name.rfind("optimizer.", 0) == 0 || name.rfind("experts.shard", 0) == 0;
      if (state || !entry.is_regular_file()) continue;
      write_file_atomic(out.path() + "/" + name, read_file(entry.path().string()));
    }
    save_model_dir(out.path(), config, weights);
    load_model(out.path());  // the names and shapes its model type expects
    out.commit();
    int64_t values = 0;
    for (const auto& [name, t] : weights) values += t.numel();
    std::cout << "consolidated " << dir << (manifest ? str_cat(" (", manifest->shards, " expert shards)") : "")
              << " -> " << out.target() << ": " << weights.size() << " tensors, " << values << " values\n";
  });
}

}  // namespace moekit::cli
