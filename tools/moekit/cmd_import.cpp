// `moekit import wenet <wenet_dir> <model_dir>`: WeNet checkpoints into MoEKit model directories.
#include <iostream>

#include "commands.h"
#include "moekit/core/file_io.h"
#include "moekit/models/asr/wenet_import.h"
#include "moekit/models/model.h"

namespace moekit::cli {

void add_import_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* import = app.add_subcommand("import", "Convert another toolkit's model into a MoEKit model directory");
  import->require_subcommand(1);
  struct Options {
    std::string wenet_dir, out_dir;
    WenetFiles files;
    bool force = false;
  };
  auto options = std::make_shared<Options>();
  CLI::App* wenet = import->add_subcommand(
      "wenet", "A WeNet U2/U2++ Conformer (dense or MoE FFNs): final.pt + train.yaml [+ global_cmvn, units.txt]");
  wenet->add_option("wenet_dir", options->wenet_dir, "WeNet experiment directory")->required()->check(CLI::ExistingDirectory);
  wenet->add_option("model_dir", options->out_dir, "Output MoEKit model directory")->required();
  wenet->add_option("--checkpoint", options->files.checkpoint, "Checkpoint (default: final.pt in wenet_dir)");
  wenet->add_option("--config", options->files.config, "train.yaml (default: in wenet_dir)");
  wenet->add_option("--cmvn", options->files.cmvn, "global_cmvn (default: in wenet_dir if present)");
  wenet->add_option("--units", options->files.units, "units.txt (default: in wenet_dir if present)");
  add_force_flag(*wenet, options->force);
  add_import_hf_command(*import, global);
  wenet->callback([options, &global] {
    apply_runtime(global);
    WenetFiles files = WenetFiles::from_dir(options->wenet_dir);
    if (!options->files.checkpoint.empty()) files.checkpoint = options->files.checkpoint;
    if (!options->files.config.empty()) files.config = options->files.config;
    if (!options->files.cmvn.empty()) files.cmvn = options->files.cmvn;
    if (!options->files.units.empty()) files.units = options->files.units;
    OutputDir out(options->out_dir, options->force, {options->wenet_dir});
    const ImportedAsr imported = import_wenet(files);
    save_asr_model(out.path(), *imported.model, imported.units);
    out.commit();
    const ParameterCount count = count_parameters(*imported.model);
    std::cout << "imported " << files.checkpoint << " -> " << options->out_dir << " (asr, " << count.total
              << " parameters, " << count.active << " active per frame"
              << (imported.units.size() > 0 ? ", " + std::to_string(imported.units.size()) + " units" : ", no units")
              << ")\n";
  });
}

}  // namespace moekit::cli
