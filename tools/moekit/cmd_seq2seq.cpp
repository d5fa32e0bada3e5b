// Seq2seq commands: `train seq2seq`, `translate`, `extract`, and the
// translation half of `eval` (BLEU and chrF per task).
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/data/parallel_data.h"
#include "moekit/decode/translator.h"
#include "moekit/eval/mt_metrics.h"
#include "moekit/scale/extract.h"
#include "moekit/train/seq2seq_task.h"

namespace moekit::cli {

void add_search_options(CLI::App& cmd, TranslateOptions& o) {
  cmd.add_option("--beam", o.search.beam, "Beam size (1 = greedy)")->capture_default_str();
  cmd.add_option("--length-penalty", o.search.length_penalty, "Score = log p / length^penalty")->capture_default_str();
  cmd.add_option("--max-length", o.search.max_length, "Output tokens at most (</s> included); also at most "
                                                       "max-length-ratio x input + 10")->capture_default_str();
  cmd.add_option("--max-length-ratio", o.search.max_length_ratio, "Output length limit per input token")
      ->capture_default_str();
  cmd.add_option("--batch-size", o.batch_size, "Sentences searched together")->capture_default_str();
  cmd.add_option("--max-input-tokens", o.max_input_tokens, "Input pieces at most (task tag and </s> included)")
      ->capture_default_str();
  cmd.add_flag("!--refuse-long", o.truncate,
               "Refuse inputs over --max-input-tokens (an error for that line) instead of truncating them");
}

void add_train_seq2seq_command(CLI::App& train, const GlobalOptions& global) {
  struct Options {
    std::string config, train_data, valid_data, tokenizer, exp_dir;
    bool resume = false;
    int64_t total_steps = -1;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = train.add_subcommand(
      "seq2seq", "Transformer encoder-decoder (dense or MoE routed by token, sentence or task): config sections "
                 "model, data, train_conf");
  cmd->add_option("--config", o->config, "Training config (YAML)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--train-data", o->train_data, "Training pairs: task<TAB>source<TAB>target per line")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--valid-data", o->valid_data, "Validation pairs, same format")->required()->check(CLI::ExistingFile);
  cmd->add_option("--tokenizer", o->tokenizer,
                  "SentencePiece model shared by sources and targets, with a <2task> piece per task")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--exp-dir", o->exp_dir, "Experiment directory (checkpoints/, metrics.jsonl, final/)")->required();
  cmd->add_option("--total-steps", o->total_steps, "Override train_conf.total_steps (the run's length)");
  cmd->add_flag("--resume", o->resume, "Continue from the newest checkpoint in --exp-dir");
  cmd->callback([o, &global] {
    apply_runtime(global);
    MOEKIT_CHECK_ARG(global.device == "cpu", "train: --device ", global.device,
                     " is not supported: training runs on the CPU (decoding and the benchmarks take --device)");
    const YAML::Node y = load_yaml_file(o->config);
    check_known_keys(y, {"model", "data", "train_conf"}, o->config);
    MOEKIT_CHECK_ARG(y["model"].IsMap(), o->config, ": no 'model' section");
    for (const char* key : {"vocab_size", "pad_id", "bos_id", "eos_id"}) {
      MOEKIT_CHECK_ARG(!y["model"][key].IsDefined(), o->config, ": model.", key, " comes from the tokenizer; remove it");
    }
    const LmTokenizer tokenizer(o->tokenizer);
    MOEKIT_CHECK_ARG(tokenizer.bos_id() >= 0 && tokenizer.eos_id() >= 0, o->tokenizer, ": needs <s> and </s> pieces");
    const std::vector<ParallelLine> train_lines = read_parallel_tsv(o->train_data);
    const std::vector<ParallelLine> valid_lines = read_parallel_tsv(o->valid_data);
    YAML::Node arch = YAML::Clone(y["model"]);
    arch["vocab_size"] = tokenizer.vocab_size();
    arch["pad_id"] = tokenizer.id_of("<unk>") >= 0 ? tokenizer.id_of("<unk>") : 0;
    arch["bos_id"] = tokenizer.bos_id();
    arch["eos_id"] = tokenizer.eos_id();
    if (!arch["tasks"].IsDefined()) arch["tasks"] = tasks_of(train_lines);
    const Seq2seqDataOptions data = Seq2seqDataOptions::from_yaml(y["data"], o->config + ": data");
    TrainerOptions trainer = TrainerOptions::from_yaml(y["train_conf"], o->config + ": train_conf");
    if (o->total_steps >= 0) trainer.total_steps = o->total_steps;
    torch::manual_seed(trainer.seed);
    auto model = std::make_shared<Seq2seqModel>(Seq2seqConfig::from_yaml(arch, o->config + ": model"));
    const auto& tasks = model->config().tasks;
    std::vector<ParallelExample> train = encode_parallel(train_lines, tokenizer, tasks, o->train_data);
    std::vector<ParallelExample> valid = encode_parallel(valid_lines, tokenizer, tasks, o->valid_data);
    const ParameterCount count = count_parameters(*model);
    std::cerr << "seq2seq: " << model->config().to_string() << "\n"
              << "seq2seq: " << count.total << " parameters, " << count.active << " active per token; "
              << train.size() << " training / " << valid.size() << " validation pairs\n";
    make_dirs(o->exp_dir);
    Seq2seqTrainTask task(model, std::move(train), std::move(valid), data, trainer.seed, o->tokenizer);
    if (task.skipped_too_long() > 0) {
      std::cerr << "seq2seq: " << task.skipped_too_long() << " training pairs longer than max_source_len / "
                << "max_target_len are left out\n";
    }
    const std::vector<double> p = task.task_probabilities();
    std::cerr << "seq2seq: task sampling (T = " << data.temperature << "):";
    for (size_t t = 0; t < p.size() && t < tasks.size(); ++t) std::cerr << " " << tasks[t] << " " << std::setprecision(3) << p[t];
    std::cerr << "\n";
    const TrainSummary summary = moekit::train(task, trainer, o->exp_dir, o->resume);
    print_train_summary(summary);
  });
}

void add_translate_command(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string model_dir, task;
    TranslateOptions translate;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "translate", "Translate stdin to stdout with a seq2seq model, one output line per input line");
  cmd->add_option("model_dir", o->model_dir, "Model directory (a full model or an extracted sub-network)")->required();
  cmd->add_option("--task", o->task, "Target task (language), e.g. de")->required();
  add_search_options(*cmd, o->translate);
  cmd->callback([o, &global] {
    apply_runtime(global);
    Translator translator = load_translator(o->model_dir, o->translate, parse_device(global.device));
    translator.check_task(o->task);
    // Lines are read a batch at a time and answered before the next batch
    // is read, so an interactive user (or --batch-size 1) gets each line back
    // as it is entered.
    int64_t number = 0, failed = 0;
    std::string line;
    bool more = true;
    while (more) {
      std::vector<std::string> lines;
      while (static_cast<int64_t>(lines.size()) < o->translate.batch_size && (more = static_cast<bool>(std::getline(std::cin, line)))) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        lines.push_back(line);
      }
      if (lines.empty()) break;
      const std::vector<Translation> out = translator.translate(lines, o->task);
      for (size_t i = 0; i < out.size(); ++i) {
        ++number;
        if (!out[i].error.empty()) {
          ++failed;
          std::cerr << "moekit: error: line " << number << ": " << out[i].error << "\n";
        } else if (out[i].truncated) {
          std::cerr << "moekit: warning: line " << number << ": truncated to " << o->translate.max_input_tokens
                    << " tokens\n";
        }
        std::cout << out[i].text << "\n";
      }
      std::cout.flush();
    }
    MOEKIT_CHECK(failed == 0, failed, " of ", number, " lines were not translated (empty lines in their place)");
  });
}

void add_extract_command(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string model_dir, task, out;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "extract", "The sub-network of one task of a task-routed seq2seq model, as a standalone model directory");
  cmd->add_option("model_dir", o->model_dir, "Model directory with task-routed MoE layers")->required();
  cmd->add_option("--task", o->task, "The task to keep")->required();
  cmd->add_option("--out", o->out, "Model directory to write")->required();
  cmd->callback([o, &global] {
    apply_runtime(global);
    const Extraction e = extract_task_dir(o->model_dir, o->task, o->out);
    const ParameterCount count = count_parameters(*e.model);
    std::cout << "task " << o->task << ": " << e.layers.size() << " task-routed layers folded into dense FFNs; "
              << count.total << " parameters (" << count.active << " active per token) in " << o->out << "\n";
    for (const ExtractedLayer& l : e.layers) {
      std::cout << "  " << l.name << ": experts";
      for (size_t i = 0; i < l.experts.size(); ++i) {
        std::cout << " " << l.experts[i] << " (" << std::fixed << std::setprecision(3) << l.weights[i] << ")";
      }
      std::cout << "\n";
    }
  });
}

void run_translation_eval(const std::string& model_dir, const std::string& data, const TranslateOptions& options,
                          const std::string& hyp_out, bool json_output, const torch::Device& device) {
  Translator translator = load_translator(model_dir, options, device);
  const std::vector<ParallelLine> lines = read_parallel_tsv(data);
  std::map<std::string, std::vector<size_t>> by_task;
  std::vector<std::string> order;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (!by_task.count(lines[i].task)) order.push_back(lines[i].task);
    by_task[lines[i].task].push_back(i);
  }
  for (const std::string& task : order) translator.check_task(task);
  std::vector<std::string> hyps(lines.size());
  nlohmann::json results = nlohmann::json::array();
  double bleu_sum = 0, chrf_sum = 0;
  int64_t failed = 0;
  for (const std::string& task : order) {
    std::vector<std::string> sources, refs, task_hyps;
    for (size_t i : by_task[task]) sources.push_back(lines[i].source);
    const std::vector<Translation> out = translator.translate(sources, task);
    for (size_t j = 0; j < out.size(); ++j) {
      if (!out[j].error.empty()) {
        ++failed;
        std::cerr << "moekit: error: " << data << ":" << lines[by_task[task][j]].line << ": " << out[j].error << "\n";
      }
      hyps[by_task[task][j]] = out[j].text;
      task_hyps.push_back(out[j].text);
      refs.push_back(lines[by_task[task][j]].target);
    }
    const BleuStats bleu = corpus_bleu(task_hyps, {refs});
    const ChrfStats chrf = corpus_chrf(task_hyps, refs);
    bleu_sum += bleu.score();
    chrf_sum += chrf.score();
    results.push_back({{"task", task}, {"sentences", sources.size()}, {"bleu", bleu.score()}, {"chrf", chrf.score()},
                       {"brevity_penalty", bleu.brevity_penalty()}});
    if (!json_output) {
      std::cout << std::left << std::setw(8) << task << " BLEU " << std::fixed << std::setprecision(2) << bleu.score()
                << "  chrF " << chrf.score() << "  (" << sources.size() << " sentences, BP "
                << std::setprecision(3) << bleu.brevity_penalty() << ")\n";
    }
  }
  const double n = static_cast<double>(order.size());
  if (json_output) {
    std::cout << nlohmann::json{{"tasks", results}, {"bleu_avg", bleu_sum / n}, {"chrf_avg", chrf_sum / n},
                                {"failed", failed}}.dump()
              << "\n";
  } else {
    std::cout << std::left << std::setw(8) << "average" << " BLEU " << std::fixed << std::setprecision(2)
              << bleu_sum / n << "  chrF " << chrf_sum / n << "\n";
  }
  if (!hyp_out.empty()) {
    std::string text;
    for (const std::string& h : hyps) text += h + "\n";
    write_file_atomic(hyp_out, text);
  }
  MOEKIT_CHECK(failed == 0, failed, " lines were not translated (scored as empty; see above)");
}

}  // namespace moekit::cli
