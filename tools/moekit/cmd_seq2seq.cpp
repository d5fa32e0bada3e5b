// Seq2seq commands: `train seq2seq`, `translate`, `extract`, and the
// translation half of `eval` (BLEU and chrF per task).

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/core/cpu_allocator.h"
#include "moekit/core/process_memory.h"
#include "moekit/core/config.h"
#include "moekit/core/fields.h"
#include "moekit/core/file_io.h"
#include "moekit/core/mapped_tensors.h"
#include "moekit/core/runtime.h"
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
  cmd.add_option("--min-length", o.search.min_length,
                 "Output tokens at least before </s> (unless the length limit comes first)")
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
                  "SentencePiece model shared by sources and targets, with a <2task> piece per task (a resumed run "
                  "reads the copy it keeps in --exp-dir)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--exp-dir", o->exp_dir, "Experiment directory (checkpoints/, metrics.jsonl, final/)")->required();
  cmd->add_option("--total-steps", o->total_steps, "Override train_conf.total_steps (the run's length)");
  cmd->add_flag("--resume", o->resume, "Continue from the newest checkpoint in --exp-dir");
  cmd->callback([o, &global] {
    apply_runtime(global);
    join_run(global);
    const torch::Device device = training_device(global);
    const YAML::Node y = load_yaml_file(o->config);
    check_known_keys(y, {"model", "data", "train_conf"}, o->config);
    MOEKIT_CHECK_ARG(y["model"].IsDefined() && y["model"].IsMap(), o->config, ": no 'model' section");
    for (const char* key : {"vocab_size", "pad_id", "bos_id", "eos_id"}) {
      MOEKIT_CHECK_ARG(!y["model"][key].IsDefined(), o->config, ": model.", key, " comes from the tokenizer; remove it");
    }
    const std::string tokenizer_path =
        run_tokenizer_file(o->exp_dir, o->resume, o->tokenizer, "tokenizer.model", "train seq2seq: --tokenizer");
    MOEKIT_CHECK_ARG(!tokenizer_path.empty(), "train seq2seq: --tokenizer is required (a SentencePiece model with a "
                                              "<2task> piece per task; moekit tokenizer train makes one)");
    const LmTokenizer tokenizer(tokenizer_path);
    MOEKIT_CHECK_ARG(tokenizer.bos_id() >= 0 && tokenizer.eos_id() >= 0, tokenizer_path, ": needs <s> and </s> pieces");
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
    Seq2seqTrainTask task(model, std::move(train), std::move(valid), data, trainer.seed, tokenizer_path);
    if (task.skipped_too_long() > 0) {
      std::cerr << "seq2seq: " << task.skipped_too_long() << " training pairs longer than max_source_len / "
                << "max_target_len are left out\n";
    }
    const std::vector<double> p = task.task_probabilities();
    std::cerr << "seq2seq: task sampling (T = " << data.temperature << "):";
    for (size_t t = 0; t < p.size() && t < tasks.size(); ++t) std::cerr << " " << tasks[t] << " " << std::setprecision(3) << p[t];
    std::cerr << "\n";
    const TrainSummary summary = moekit::train(task, trainer, o->exp_dir, o->resume, device);
    print_train_summary(summary);
  });
}

void add_distill_command(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string teacher, config, train_data, valid_data, exp_dir;
    double word_weight = 0.5;
    bool sequence = false, resume = false;
    TranslateOptions search;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "distill", "Train a dense student from a seq2seq teacher: word-level (KL to the teacher) and/or "
                 "sequence-level (the teacher's translations as targets) distillation");
  cmd->add_option("teacher_dir", o->teacher, "The teacher model directory (its tokenizer.model is used)")->required();
  cmd->add_option("--config", o->config,
                  "Training config: data, train_conf, and optionally model (the student; default: the teacher's "
                  "architecture without MoE)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--train-data", o->train_data, "Training pairs: task<TAB>source<TAB>target")->required();
  cmd->add_option("--valid-data", o->valid_data, "Validation pairs")->required();
  cmd->add_option("--exp-dir", o->exp_dir, "Experiment directory")->required();
  cmd->add_option("--word-weight", o->word_weight,
                  "Weight of the word-level KL term (0: none; 1: KL only)")->capture_default_str();
  cmd->add_flag("--sequence", o->sequence, "Sequence-level: train on the teacher's beam translations of the sources");
  cmd->add_option("--beam", o->search.search.beam, "Teacher beam size for --sequence")->capture_default_str();
  cmd->add_option("--batch-size", o->search.batch_size, "Teacher batch size for --sequence")->capture_default_str();
  cmd->add_flag("--resume", o->resume, "Continue from the newest checkpoint in --exp-dir");
  cmd->callback([o, &global] {
    apply_runtime(global);
    join_run(global);
    MOEKIT_CHECK_ARG(global.device == "cpu", "distill: --device ", global.device,
                     " is not supported: distillation runs on the CPU (train seq2seq, lm and asr take --device cuda)");
    MOEKIT_CHECK_ARG(o->word_weight >= 0.0 && o->word_weight <= 1.0, "distill: --word-weight must be in [0, 1], got ",
                     o->word_weight);
    MOEKIT_CHECK_ARG(o->word_weight > 0.0 || o->sequence, "distill: nothing to distill (--word-weight 0 and no --sequence)");
    const YAML::Node y = load_yaml_file(o->config);
    check_known_keys(y, {"model", "data", "train_conf"}, o->config);
    std::shared_ptr<Seq2seqModel> teacher = load_seq2seq_model(o->teacher, WeightStorage::kMap);
    MOEKIT_CHECK_ARG(teacher->config().extracted_task.empty(), o->teacher, ": an extracted sub-network is not a teacher");
    const std::string tokenizer_path = o->teacher + "/tokenizer.model";
    const LmTokenizer tokenizer(tokenizer_path);
    YAML::Node arch = teacher->config().to_yaml();
    arch.remove("moe");
    if (y["model"].IsDefined()) {
      MOEKIT_CHECK_ARG(y["model"].IsMap(), o->config, ": 'model' must be a mapping");
      for (const auto& kv : y["model"]) arch[kv.first.as<std::string>()] = kv.second;
    }
    const Seq2seqDataOptions data = Seq2seqDataOptions::from_yaml(y["data"], o->config + ": data");
    const TrainerOptions trainer = TrainerOptions::from_yaml(y["train_conf"], o->config + ": train_conf");
    torch::manual_seed(trainer.seed);
    auto student = std::make_shared<Seq2seqModel>(Seq2seqConfig::from_yaml(arch, o->config + ": model"));
    const std::vector<std::string> copied = init_student_from_teacher(*student, *teacher);
    const auto& tasks = teacher->config().tasks;
    std::vector<ParallelExample> train = encode_parallel(read_parallel_tsv(o->train_data), tokenizer, tasks, o->train_data);
    std::vector<ParallelExample> valid = encode_parallel(read_parallel_tsv(o->valid_data), tokenizer, tasks, o->valid_data);
    std::cerr << "distill: student " << student->config().to_string() << "\n"
              << "distill: " << copied.size() << " of " << student->named_parameters().size()
              << " student tensors initialised from the teacher\n";
    make_dirs(o->exp_dir);
    if (o->sequence) {
      // The teacher's translations, kept in the experiment directory so a
      // resumed run trains on the same targets without translating again.
      const std::string cache = o->exp_dir + "/teacher_targets.txt";
      std::vector<std::string> cached;
      if (path_exists(cache)) {
        std::istringstream in(read_file(cache));
        for (std::string line; std::getline(in, line);) cached.push_back(line);
      }
      if (cached.size() == train.size()) {
        for (size_t i = 0; i < train.size(); ++i) {
          std::istringstream ids(cached[i]);
          std::vector<int64_t> target;
          for (int64_t id; ids >> id;) target.push_back(id);
          train[i].target = std::move(target);
        }
        std::cerr << "distill: teacher translations from " << cache << "\n";
      } else {
        std::cerr << "distill: translating " << train.size() << " training sources with the teacher (beam "
                  << o->search.search.beam << ")\n";
        train = teacher_targets(*teacher, train, o->search.search, o->search.batch_size);
        check_mapped_files_unchanged("distill");
        std::string text;
        for (const auto& e : train) {
          for (size_t i = 0; i < e.target.size(); ++i) text += (i ? " " : "") + std::to_string(e.target[i]);
          text += "\n";
        }
        write_file_atomic(cache, text);
      }
    }
    Seq2seqTrainTask task(student, std::move(train), std::move(valid), data, trainer.seed, tokenizer_path);
    if (o->word_weight > 0.0) task.set_teacher(teacher, o->word_weight);
    const TrainSummary summary = moekit::train(task, trainer, o->exp_dir, o->resume);
    print_train_summary(summary);
  });
}

void add_translate_command(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string model_dir, task, weight_dtype = "auto";
    TranslateOptions translate;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "translate", "Translate stdin to stdout with a seq2seq model, one output line per input line");
  cmd->add_option("model_dir", o->model_dir, "Model directory (a full model or an extracted sub-network)")->required();
  cmd->add_option("--task", o->task, "Target task (language), e.g. de")->required();
  add_search_options(*cmd, o->translate);
  cmd->add_option("--dtype", o->weight_dtype,
                  "Weight matrices in auto | fp32 | bf16 (bf16: half the bytes per decoding step, read by the CPU "
                  "kernels in bf16 and widened; activations stay float32; auto: as the model directory stores them)")
      ->capture_default_str();
  cmd->callback([o, &global] {
    apply_runtime(global);
    o->translate.weight_dtype = parse_weight_dtype(o->weight_dtype, parse_device(global.device));
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
      // Checked before each batch, reading stdin may go on for days.
      check_mapped_files_unchanged("translate");
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
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "extract", "The sub-network of one task of a task-routed seq2seq model, as a standalone model directory");
  cmd->add_option("model_dir", o->model_dir, "Model directory with task-routed MoE layers")->required();
  cmd->add_option("--task", o->task, "The task to keep")->required();
  cmd->add_option("--out", o->out, "Model directory to write")->required();
  add_force_flag(*cmd, o->force);
  cmd->callback([o, &global] {
    apply_runtime(global);
    OutputDir out(o->out, o->force, {o->model_dir});
    const Extraction e = extract_task_dir(o->model_dir, o->task, out.path());
    out.commit();
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
                          const std::string& hyp_out, bool json_output, const torch::Device& device,
                          const std::string& reference, const std::string& task) {
  Translator translator = load_translator(model_dir, options, device);
  std::vector<ParallelLine> lines;
  if (reference.empty()) {
    lines = read_parallel_tsv(data);
  } else {
    // A source file and a reference file, line by line, all of one task.
    MOEKIT_CHECK_ARG(!task.empty(), "eval: --ref needs --task");
    const auto [sources, targets] = read_aligned_lines(data, reference);
    for (size_t i = 0; i < sources.size(); ++i) {
      lines.push_back({task, sources[i], targets[i], static_cast<int64_t>(i + 1)});
    }
    MOEKIT_CHECK_ARG(!lines.empty(), data, ": no lines");
  }
  std::map<std::string, std::vector<size_t>> by_task;
  std::vector<std::string> order;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (!by_task.count(lines[i].task)) order.push_back(lines[i].task);
    by_task[lines[i].task].push_back(i);
  }
  for (const std::string& task : order) translator.check_task(task);
  std::vector<std::string> hyps(lines.size());
  nlohmann::json results = nlohmann::json::array();
  double bleu_sum = 0, chrf_sum = 0, cer_sum = 0, exact_sum = 0;
  int64_t failed = 0;
  for (const std::string& task : order) {
    std::vector<std::string> sources, refs, task_hyps;
    for (size_t i : by_task[task]) sources.push_back(lines[i].source);
    const std::vector<Translation> out = translator.translate(sources, task);
    check_mapped_files_unchanged("eval");
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
    EditStats edits;
    // Exact: the share of outputs equal to their reference, the sentence
    // (or word) accuracy that G2P and text normalization report.
    size_t equal = 0;
    for (size_t j = 0; j < refs.size(); ++j) {
      edits.add(char_edit_stats(task_hyps[j], refs[j]));
      equal += task_hyps[j] == refs[j];
    }
    const double exact = static_cast<double>(equal) / static_cast<double>(refs.size());
    bleu_sum += bleu.score();
    chrf_sum += chrf.score();
    cer_sum += edits.rate();
    exact_sum += exact;
    results.push_back({{"task", task}, {"sentences", sources.size()}, {"bleu", bleu.score()}, {"chrf", chrf.score()},
                       {"cer", edits.rate()}, {"exact", exact}, {"brevity_penalty", bleu.brevity_penalty()}});
    if (!json_output) {
      std::cout << std::left << std::setw(8) << task << " BLEU " << std::fixed << std::setprecision(2) << bleu.score()
                << "  chrF " << chrf.score() << "  CER " << 100 * edits.rate() << "%  exact " << 100 * exact << "%  ("
                << sources.size() << " sentences, BP " << std::setprecision(3) << bleu.brevity_penalty() << ")\n";
    }
  }
  const double n = static_cast<double>(order.size());
  if (json_output) {
    const nlohmann::json j = {{"tasks", results},      {"bleu_avg", bleu_sum / n},   {"chrf_avg", chrf_sum / n},
                              {"cer_avg", cer_sum / n}, {"exact_avg", exact_sum / n}, {"failed", failed}};
    std::cout << json_text(j) << "\n";
  } else {
    std::cout << std::left << std::setw(8) << "average" << " BLEU " << std::fixed << std::setprecision(2)
              << bleu_sum / n << "  chrF " << chrf_sum / n << "  CER " << 100 * cer_sum / n << "%  exact "
              << 100 * exact_sum / n << "%\n";
  }
  if (!hyp_out.empty()) {
    std::string text;
    for (const std::string& h : hyps) text += h + "\n";
    write_file_atomic(hyp_out, text);
  }
  MOEKIT_CHECK(failed == 0, failed, " lines were not translated (scored as empty; see above)");
}

}  // namespace moekit::cli

// `moekit bench seq2seq`: decoding throughput (target tokens/s) of four
// models of the same active width, side by side, per batch size: a
// token-routed MoE, a token/task-routed MoE, that model's extracted
// sub-network for one task, and the dense model (a task/task model with
// every MoE layer folded: a dense FFN of width top_k x d_hidden wherever
// the MoE models have an MoE layer). Each timed call is translate's search
// (translate_batch: encoder, decoder steps with the KV caches, greedy or a
// beam of --beam hypotheses per sentence) over a batch of random sources,
// held to exactly `steps` positions per sentence (eos is not a candidate
// before the last), so every model produces the same number of tokens.
namespace moekit::cli {

void add_bench_seq2seq_command(CLI::App& bench, const GlobalOptions& global) {
  struct Options {
    int64_t d_model = 256, heads = 4, ffn = 1024, layers = 4, experts = 32, vocab = 8000;
    int64_t source_len = 24, steps = 24, rounds = 3, beam = 1;
    std::vector<int64_t> batches = {1, 8, 32, 64, 256};
    std::vector<std::string> dtypes = {"fp32"};
    uint64_t seed = 1;
    std::string save_dir, only;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand(
      "seq2seq", "Decoding tokens/s: token-MoE, task-MoE, its extracted sub-network and dense, per batch (JSON)");
  cmd->add_option("--d-model", o->d_model, "Width")->capture_default_str();
  cmd->add_option("--heads", o->heads, "Attention heads")->capture_default_str();
  cmd->add_option("--ffn", o->ffn, "FFN hidden width (dense layers and each expert)")->capture_default_str();
  cmd->add_option("--layers", o->layers, "Encoder layers = decoder layers (every second one MoE)")->capture_default_str();
  cmd->add_option("--experts", o->experts, "Experts per MoE layer (top-2)")->capture_default_str();
  cmd->add_option("--vocab", o->vocab, "Vocabulary")->capture_default_str();
  cmd->add_option("--source-len", o->source_len, "Source tokens per sentence")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Target positions decoded per sentence (eos the last)")->capture_default_str();
  cmd->add_option("--batch", o->batches, "Batch sizes (sentences)")->capture_default_str();
  cmd->add_option("--beam", o->beam,
                  "Hypotheses per sentence (1 = greedy); a step then runs batch x beam rows, and tokens/s counts "
                  "the sentences' target tokens")
      ->capture_default_str();
  cmd->add_option("--rounds", o->rounds, "Timed rounds (models interleaved); medians are reported")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the random models and data")->capture_default_str();
  cmd->add_option("--dtype", o->dtypes,
                  "Weight matrices in fp32 and/or bf16: each model is timed in each, side by side (a bf16 model "
                  "is named <model>_bf16)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--save-dir", o->save_dir,
                  "Also write each model (DIR/<name>) with the first batch's sources and greedy output "
                  "(check.txt), for bench/seq2seq_pytorch.py");
  cmd->add_option("--only", o->only,
                  "Build and time one model (token_moe, task_moe, task_extracted or dense) and report this process's "
                  "resident memory after the runs (the model a server would hold, nothing else)")
      ->check(CLI::IsMember({"token_moe", "task_moe", "task_extracted", "dense"}));
  cmd->callback([o, &global] {
    apply_runtime(global);
    MOEKIT_CHECK_ARG(o->rounds >= 1 && o->steps >= 1 && o->source_len >= 1 && o->beam >= 1,
                     "bench seq2seq: --rounds, --steps, --source-len and --beam must be >= 1");
    MOEKIT_CHECK_ARG(o->beam <= o->vocab, "bench seq2seq: --beam ", o->beam, " exceeds the vocabulary (", o->vocab, ")");
    MOEKIT_CHECK_ARG(o->save_dir.empty() || o->beam == 1,
                     "bench seq2seq: --save-dir writes the greedy output for the PyTorch peer; leave out --beam");
    const bool with_fp32 = std::count(o->dtypes.begin(), o->dtypes.end(), "fp32") > 0;
    const bool with_bf16 = std::count(o->dtypes.begin(), o->dtypes.end(), "bf16") > 0;
    MOEKIT_CHECK_ARG(o->save_dir.empty() || !with_bf16,
                     "bench seq2seq: --save-dir writes float32 models for the PyTorch peer; leave out --dtype bf16");
    MOEKIT_CHECK_ARG(o->only.empty() || o->dtypes.size() == 1, "bench seq2seq: --only times one model in one --dtype");
    auto config = [&](Routing enc, Routing dec) {
      Seq2seqConfig c;
      c.vocab_size = o->vocab;
      c.d_model = o->d_model;
      c.heads = o->heads;
      c.ffn_hidden = o->ffn;
      c.encoder_layers = c.decoder_layers = o->layers;
      c.dropout = 0;
      c.tasks = {"xx", "yy"};
      c.moe.num_experts = o->experts;
      c.moe.top_k = 2;
      c.moe.every = 2;
      c.moe.encoder_routing = enc;
      c.moe.decoder_routing = dec;
      return c;
    };
    torch::manual_seed(o->seed);
    std::vector<std::pair<std::string, std::shared_ptr<Seq2seqModel>>> models;
    auto wanted = [&](const char* name) { return o->only.empty() || o->only == name; };
    {
      // Built in one order whatever is kept, so every model has the same
      // weights with and without --only; a model kept from an extraction
      // does not keep its source.
      auto token_moe = std::make_shared<Seq2seqModel>(config(Routing::Token, Routing::Token));
      if (wanted("token_moe")) models.emplace_back("token_moe", token_moe);
      auto task_moe = std::make_shared<Seq2seqModel>(config(Routing::Token, Routing::Task));
      if (wanted("task_moe")) models.emplace_back("task_moe", task_moe);
      if (wanted("task_extracted")) models.emplace_back("task_extracted", extract_task(*task_moe, "xx").model);
      auto task_task = std::make_shared<Seq2seqModel>(config(Routing::Task, Routing::Task));
      if (wanted("dense")) models.emplace_back("dense", extract_task(*task_task, "xx").model);
    }
    // One model alone is measured as a server holds it: saved, then loaded
    // back from its directory (weights mapped, mapped_tensors.h), the model
    // it was built as and the ones it was made from gone.
    std::unique_ptr<ScratchDir> served;
    if (!o->only.empty()) {
      served = std::make_unique<ScratchDir>("moekit_bench_seq2seq");
      save_model(served->path() + "/model", *models.front().second);
      models.front().second = load_seq2seq_model(
          served->path() + "/model", WeightStorage::kMap,
          with_bf16 ? c10::optional<torch::ScalarType>(torch::kBFloat16) : c10::nullopt);
      if (with_bf16) models.front().first += "_bf16";
      release_cpu_memory();
    } else if (with_bf16) {
      // The same weights with bf16 matrices, beside (or instead of) the
      // float32 models.
      const size_t built = models.size();
      for (size_t i = 0; i < built; ++i) {
        auto copy = std::make_shared<Seq2seqModel>(models[i].second->config());
        load_module_state(*copy, module_state(*models[i].second), models[i].first);
        copy->set_weight_dtype(torch::kBFloat16);
        models.emplace_back(models[i].first + "_bf16", copy);
      }
      if (!with_fp32) models.erase(models.begin(), models.begin() + static_cast<std::ptrdiff_t>(built));
    }
    for (auto& [name, m] : models) m->eval();
    torch::NoGradGuard no_grad;
    // translate's search, made to decode exactly --steps positions per
    // sentence: eos is not a candidate before the last, where the length
    // limit forces it.
    SearchOptions search;
    search.beam = o->beam;
    search.nbest = 1;
    search.max_length = o->steps;
    search.max_length_ratio = 0;
    search.max_length_offset = o->steps;
    search.min_length = o->steps - 1;
    nlohmann::json results = nlohmann::json::array();
    for (int64_t batch : o->batches) {
      MOEKIT_CHECK_ARG(batch >= 1, "bench seq2seq: batch sizes must be >= 1");
      const torch::Tensor src = torch::randint(3, o->vocab, {batch, o->source_len}, torch::kLong);
      const torch::Tensor lens = torch::full({batch}, o->source_len, torch::kLong);
      const torch::Tensor task = torch::zeros({batch}, torch::kLong);
      std::map<std::string, std::vector<double>> seconds;
      for (int64_t round = 0; round <= o->rounds; ++round) {  // round 0 warms up
        for (size_t i = 0; i < models.size(); ++i) {
          // Alternate the order each round so no model always runs first.
          auto& [name, m] = models[round % 2 ? models.size() - 1 - i : i];
          const auto start = Clock::now();
          const auto hyps = translate_batch(*m, src, lens, task, search);
          const double s = std::chrono::duration<double>(Clock::now() - start).count();
          if (round > 0) seconds[name].push_back(s);
          for (const auto& sentence : hyps)
            MOEKIT_CHECK(sentence.size() == 1 && static_cast<int64_t>(sentence[0].tokens.size()) == o->steps - 1,
                         "bench seq2seq: the search did not decode ", o->steps, " positions per sentence");
          if (round == 0 && !o->save_dir.empty() && batch == o->batches.front()) {
            // The sources (a row per sentence), the plain greedy tokens (eos
            // allowed, no search) and the first step's logits, for the peer
            // to compare.
            Seq2seqDecoderState state = m->start_decoding(m->encode(src, lens, task));
            torch::Tensor prev = torch::full({batch}, m->config().bos_id, torch::kLong), first_logits;
            std::vector<torch::Tensor> produced;
            for (int64_t t = 0; t < o->steps; ++t) {
              const torch::Tensor logits = m->step(state, prev);
              if (t == 0) first_logits = logits;
              prev = logits.argmax(-1);
              produced.push_back(prev);
            }
            const torch::Tensor out = torch::stack(produced, 1);
            std::ostringstream text;
            text.precision(9);
            for (const torch::Tensor& rows : {src, out, first_logits}) {
              const torch::Tensor r = rows.to(torch::kDouble);
              for (int64_t b = 0; b < batch; ++b) {
                for (int64_t j = 0; j < r.size(1); ++j) text << (j ? " " : "") << r[b][j].item<double>();
                text << "\n";
              }
            }
            save_model(o->save_dir + "/" + name, *m);
            write_file_atomic(o->save_dir + "/" + name + "/check.txt", text.str());
          }
        }
      }
      const char* reference = with_fp32 ? "token_moe" : "token_moe_bf16";
      const double token_moe = o->only.empty()
                                   ? static_cast<double>(batch * o->steps) / median(seconds[reference])
                                   : std::nan("");
      for (auto& [name, m] : models) {
        const double tps = static_cast<double>(batch * o->steps) / median(seconds[name]);
        int64_t bytes = 0;
        for (const auto& p : m->parameters()) bytes += p.numel() * static_cast<int64_t>(p.element_size());
        results.push_back({{"batch", batch},
                           {"beam", o->beam},
                           {"model", name},
                           {"tokens_per_s", tps},
                           {"vs_token_moe", tps / token_moe},
                           {"weights_mb", static_cast<double>(bytes) / 1e6}});
        if (!o->only.empty()) results.back().erase("vs_token_moe");
        std::cout << json_text(results.back()) << std::endl;
      }
    }
    if (!o->only.empty()) {
      // What stays resident while serving: the weights, their panels, the
      // code; the freed decoding buffers given back first.
      release_cpu_memory();
      const nlohmann::json j = {{"model", o->only},
                                {"resident_mb", static_cast<double>(resident_bytes()) / 1e6},
                                {"peak_resident_mb", static_cast<double>(peak_resident_bytes()) / 1e6}};
      std::cout << json_text(j) << std::endl;
    }
  });
}

}  // namespace moekit::cli
