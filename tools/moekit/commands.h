#pragma once
// Subcommands of the `moekit` CLI. Each adds itself to the app; its callback
// throws on error and main() turns that into a one-line message + exit code.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "moekit/decode/recognizer.h"
#include "moekit/decode/translator.h"
#include "moekit/train/trainer.h"

namespace moekit::cli {

// Options every command shares (runtime settings, not model hyperparameters).
struct GlobalOptions {
  int threads = 0;             // 0 = all hardware threads
  std::string device = "cpu";  // cpu | cuda | cuda:N: where models run
  double dist_timeout_s = 1800;  // distributed runs: rendezvous and collective timeout
};

// A training command joins the distributed run its environment describes
// (RANK, WORLD_SIZE, ... as torchrun or `moekit launch` set them; none set:
// one process). With --threads 0 each of a host's processes takes an equal
// share of its cores.
void join_run(const GlobalOptions& global);
// --device for a training command (after join_run): "cuda" in a run of
// several processes means each process's own GPU (cuda:LOCAL_RANK).
torch::Device training_device(const GlobalOptions& global);

void add_info_command(CLI::App& app, const GlobalOptions& global);
void add_bench_command(CLI::App& app, const GlobalOptions& global);
void add_bench_asr_command(CLI::App& bench, const GlobalOptions& global);
void add_bench_lm_command(CLI::App& bench, const GlobalOptions& global);
void add_bench_kernels_command(CLI::App& bench, const GlobalOptions& global);
void add_import_command(CLI::App& app, const GlobalOptions& global);
void add_transcribe_command(CLI::App& app, const GlobalOptions& global);
void add_train_command(CLI::App& app, const GlobalOptions& global);
void add_eval_command(CLI::App& app, const GlobalOptions& global);
void add_tokenizer_command(CLI::App& app, const GlobalOptions& global);
void add_train_lm_command(CLI::App& train, const GlobalOptions& global);
void add_generate_command(CLI::App& app, const GlobalOptions& global);
void add_scale_commands(CLI::App& app, const GlobalOptions& global);  // grow, upcycle, export
void add_import_hf_command(CLI::App& import, const GlobalOptions& global);
void add_quantize_command(CLI::App& app, const GlobalOptions& global);
void add_train_seq2seq_command(CLI::App& train, const GlobalOptions& global);
void add_translate_command(CLI::App& app, const GlobalOptions& global);
void add_extract_command(CLI::App& app, const GlobalOptions& global);
void add_distill_command(CLI::App& app, const GlobalOptions& global);
void add_bench_seq2seq_command(CLI::App& bench, const GlobalOptions& global);
void add_serve_command(CLI::App& app, const GlobalOptions& global);  // serve asr
void add_launch_command(CLI::App& app, const GlobalOptions& global);
void add_consolidate_command(CLI::App& app, const GlobalOptions& global);

// The search options `translate` and `eval` share: --beam, --length-penalty,
// --max-length, --max-length-ratio, --batch-size, --max-input-tokens, --refuse-long.
void add_search_options(CLI::App& cmd, TranslateOptions& options);
// `eval` on a seq2seq model: BLEU and chrF per task of a parallel TSV file
// (or, with `reference`, of the source file `data` against it, all of
// `task`) and their average; the translations written to hyp_out when given.
void run_translation_eval(const std::string& model_dir, const std::string& data, const TranslateOptions& options,
                          const std::string& hyp_out, bool json_output, const torch::Device& device,
                          const std::string& reference, const std::string& task);

// The decoding options `transcribe` and `eval` share: --beam, --chunk-size,
// --left-chunks, --ctc-weight, --reverse-weight, --max-segment (defaults
// from `decode`).
void add_decode_options(CLI::App& cmd, DecodeOptions& decode);

// --force: replace an existing output (written whole in a temporary
// sibling, renamed into place; never the command's own input).
void add_force_flag(CLI::App& cmd, bool& force);

// Prints how a `train` command ended (stdout, one line).
void print_train_summary(const TrainSummary& summary);
// The tokenizer file a training run reads. A new run keeps a copy of
// `given` in its experiment directory (as `kept_name`, with the `siblings`
// found beside it, such as an HF tokenizer_config.json); a resumed run reads
// its kept copy, so it encodes its data as the run it continues did, and a
// `given` file that differs from that copy is an error (`option` names the
// command and flag). Returns the kept copy, or `given` where nothing is kept
// (none given, a run that kept none, a directory with checkpoints that a
// start without --resume will be refused).
std::string run_tokenizer_file(const std::string& exp_dir, bool resume, const std::string& given,
                               const std::string& kept_name, const std::string& option,
                               const std::vector<std::string>& siblings = {});

// A command's JSON output. File names are bytes, not always UTF-8 (a
// Latin-1 name from an old archive): their bytes that are not UTF-8 come
// out as U+FFFD rather than failing the command after its work is done.
inline std::string json_text(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

// Applies --threads to LibTorch and the BLAS. With two or more threads it
// may first start the program over with the thread pools' wait settings
// (apply_thread_wait_settings in core/runtime.h), so call it before any
// output or side effect.
void apply_runtime(const GlobalOptions& global);

}  // namespace moekit::cli
