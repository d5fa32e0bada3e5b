// The language-model commands:
//   moekit tokenizer train --input corpus.txt --output tokenizer.model --vocab-size 8000
//   moekit train lm --config lm.yaml --train-text train.txt --valid-text valid.txt --tokenizer tok.model --exp-dir exp
//   moekit generate <model_dir> --prompt "..." [--temperature --top-k --top-p --max-new-tokens]
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/runtime.h"
#include "moekit/data/lm_tokenizer.h"
#include "moekit/decode/lm_generate.h"
#include "moekit/models/lm/lm_model.h"
#include "moekit/train/lm_task.h"

namespace moekit::cli {

void add_tokenizer_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* tok = app.add_subcommand("tokenizer", "SentencePiece tokenizers for language and seq2seq models");
  tok->require_subcommand(1);
  auto o = std::make_shared<TokenizerTrainOptions>();
  CLI::App* train = tok->add_subcommand("train", "Train a SentencePiece model (BPE or unigram, byte fallback) on a text file");
  train->add_option("--input", o->input, "Text, one sentence or document per line")->required()->check(CLI::ExistingFile);
  train->add_option("--output", o->output, "tokenizer.model to write")->required();
  train->add_option("--vocab-size", o->vocab_size, "Pieces, specials included")->capture_default_str();
  train->add_option("--model-type", o->model_type, "bpe | unigram")->capture_default_str();
  train->add_option("--character-coverage", o->character_coverage, "Share of characters given their own piece")
      ->capture_default_str();
  train->add_option("--input-sentence-size", o->input_sentence_size, "Lines sampled for training (0 = all)")
      ->capture_default_str();
  train->add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
  train->add_flag("--split-digits", o->split_digits,
                  "No piece holds two digits: numbers are read digit by digit, as LLaMA's tokenizer reads them");
  train->add_option("--user-symbols", o->user_defined_symbols,
                    "Pieces kept whole, e.g. the task tags of a seq2seq model: --user-symbols '<2de>' '<2fr>'");
  auto force = std::make_shared<bool>(false);
  add_force_flag(*train, *force);
  train->callback([o, force, &global] {
    apply_runtime(global);
    MOEKIT_CHECK_ARG(!path_exists(o->output) || (*force && !std::filesystem::equivalent(o->output, o->input)), "'",
                     o->output, "' exists already",
                     path_exists(o->output) && std::filesystem::equivalent(o->output, o->input)
                         ? " and is the --input"
                         : "; pass --force to replace it");
    train_tokenizer(*o);
    const LmTokenizer tokenizer(o->output);
    std::cout << "tokenizer " << o->output << ": " << tokenizer.vocab_size() << " pieces (" << o->model_type << ")\n";
  });
}

void add_train_lm_command(CLI::App& train, const GlobalOptions& global) {
  struct Options {
    std::string config, train_text, valid_text, tokenizer, exp_dir, init;
    bool resume = false;
    double flops_budget = 0;
    int64_t total_steps = -1;
  };
  auto o = std::make_shared<Options>();
  CLI::App* lm = train.add_subcommand(
      "lm", "LLaMA-style language model (dense or MoE): config sections model (or --init), data, train_conf");
  lm->add_option("--config", o->config, "Training config (YAML)")->required()->check(CLI::ExistingFile);
  lm->add_option("--train-text", o->train_text, "Training text, one document per line")->required()->check(CLI::ExistingFile);
  lm->add_option("--valid-text", o->valid_text, "Validation text, one document per line")->required()->check(CLI::ExistingFile);
  lm->add_option("--tokenizer", o->tokenizer,
                 "SentencePiece .model or HF tokenizer.json (default: the --init model's; a resumed run reads the "
                 "copy it keeps in --exp-dir)");
  lm->add_option("--exp-dir", o->exp_dir, "Experiment directory (checkpoints/, metrics.jsonl, final/)")->required();
  lm->add_option("--init", o->init, "Start from this model directory (a grown or upcycled model): its architecture "
                                    "and weights replace the config's model section");
  lm->add_option("--flops-budget", o->flops_budget, "Training FLOPs of the run: sets train_conf.total_steps");
  lm->add_option("--total-steps", o->total_steps, "Override train_conf.total_steps (the run's length)");
  lm->add_flag("--resume", o->resume, "Continue from the newest checkpoint in --exp-dir");
  lm->callback([o, &global] {
    apply_runtime(global);
    join_run(global);
    const torch::Device device = training_device(global);
    const YAML::Node y = load_yaml_file(o->config);
    for (const auto& kv : y) {
      const std::string key = kv.first.as<std::string>();
      MOEKIT_CHECK_ARG(key == "model" || key == "data" || key == "train_conf", o->config, ": unknown section '", key,
                       "' (expected model, data, train_conf)");
    }
    std::string tokenizer_path = o->tokenizer;
    if (tokenizer_path.empty() && !o->init.empty()) {
      try {
        tokenizer_path = find_lm_tokenizer(o->init);
      } catch (const std::invalid_argument&) {
      }
    }
    // The run keeps its tokenizer (tokenizer.json or tokenizer.model, as
    // given); a resumed run reads the one it kept.
    const bool kept_json = path_exists(o->exp_dir + "/tokenizer.json");
    const bool json = o->resume && (kept_json || path_exists(o->exp_dir + "/tokenizer.model"))
                          ? kept_json
                          : tokenizer_path.size() >= 5 && tokenizer_path.compare(tokenizer_path.size() - 5, 5, ".json") == 0;
    tokenizer_path = json ? run_tokenizer_file(o->exp_dir, o->resume, tokenizer_path, "tokenizer.json",
                                               "train lm: --tokenizer", {"tokenizer_config.json"})
                          : run_tokenizer_file(o->exp_dir, o->resume, tokenizer_path, "tokenizer.model",
                                               "train lm: --tokenizer");
    MOEKIT_CHECK_ARG(!tokenizer_path.empty(),
                     "train lm: no tokenizer: pass --tokenizer (a tokenizer.json, or moekit tokenizer train makes one)");
    const LmTokenizer tokenizer(tokenizer_path);
    std::shared_ptr<LmModel> model;
    if (!o->init.empty()) {
      model = load_lm_model(o->init);
      model->train();
      check_tokenizer_fits(tokenizer, tokenizer_path, model->config().vocab_size);
    } else {
      MOEKIT_CHECK_ARG(y["model"].IsMap(), o->config, ": no 'model' section (or pass --init)");
      MOEKIT_CHECK_ARG(!y["model"]["vocab_size"].IsDefined(), o->config,
                       ": model.vocab_size comes from the tokenizer; remove it");
    }
    const LmDataOptions data = LmDataOptions::from_yaml(y["data"], o->config + ": data");
    TrainerOptions trainer = TrainerOptions::from_yaml(y["train_conf"], o->config + ": train_conf");
    if (o->total_steps >= 0) trainer.total_steps = o->total_steps;
    if (!model) {
      YAML::Node arch = YAML::Clone(y["model"]);
      arch["vocab_size"] = tokenizer.vocab_size();
      torch::manual_seed(trainer.seed);
      model = std::make_shared<LmModel>(LmConfig::from_yaml(arch, o->config + ": model"));
    }
    std::vector<int64_t> train_ids = tokenizer.encode_file(o->train_text);
    std::vector<int64_t> valid_ids = tokenizer.encode_file(o->valid_text);
    const ParameterCount count = count_parameters(*model);
    std::cerr << "lm: " << model->config().to_string() << "\n"
              << "lm: " << count.total << " parameters, " << count.active << " active per token; " << train_ids.size()
              << " training / " << valid_ids.size() << " validation tokens\n";
    make_dirs(o->exp_dir);
    LmTrainTask task(model, std::move(train_ids), std::move(valid_ids), data, trainer.seed, tokenizer_path);
    if (o->flops_budget > 0) {
      const double per_step = task.flops_per_unit() * static_cast<double>(task.tokens_per_batch() * trainer.accum_grad);
      trainer.total_steps = std::max<int64_t>(1, static_cast<int64_t>(o->flops_budget / per_step));
      std::cerr << "lm: a budget of " << o->flops_budget << " FLOPs is " << trainer.total_steps << " steps of "
                << per_step << " FLOPs\n";
    }
    const TrainSummary summary = moekit::train(task, trainer, o->exp_dir, o->resume, device);
    print_train_summary(summary);
  });
}

void add_generate_command(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string model_dir, prompt, tokenizer;
    std::string weight_dtype = "auto";
    SamplingOptions sampling;
  };
  auto o = std::make_shared<Options>();
  CLI::App* gen = app.add_subcommand("generate", "Continue a prompt with a language model (KV cache, tokens streamed)");
  gen->add_option("model_dir", o->model_dir, "LM model directory (with tokenizer.model or tokenizer.json)")->required()->check(CLI::ExistingDirectory);
  gen->add_option("--prompt", o->prompt, "Text to continue")->required();
  gen->add_option("--tokenizer", o->tokenizer, "SentencePiece .model or HF tokenizer.json (default: the model directory's)");
  gen->add_option("--max-new-tokens", o->sampling.max_new_tokens, "Tokens to generate at most")->capture_default_str();
  gen->add_option("--temperature", o->sampling.temperature, "0 = greedy")->capture_default_str();
  gen->add_option("--top-k", o->sampling.top_k, "Sample among the k most likely tokens (0 = all)")->capture_default_str();
  gen->add_option("--top-p", o->sampling.top_p, "Nucleus sampling threshold")->capture_default_str();
  gen->add_option("--seed", o->sampling.seed, "Sampling seed")->capture_default_str();
  gen->add_option("--dtype", o->weight_dtype,
                  "Weight matrices in auto | fp32 | bf16 (auto: bf16 where the model directory stores bf16; "
                  "activations stay float32)")
      ->capture_default_str();
  gen->callback([o, &global] {
    apply_runtime(global);
    o->sampling.validate();
    const std::string tok_path = find_lm_tokenizer(o->model_dir, o->tokenizer);
    const LmTokenizer tokenizer(tok_path);
    const torch::Device device = parse_device(global.device);
    const auto model = load_lm_model(o->model_dir, parse_weight_dtype(o->weight_dtype, device), WeightStorage::kMap);
    model->to(device);
    check_tokenizer_fits(tokenizer, tok_path, model->config().vocab_size);
    // A Hub model's embedding may have rows past the tokenizer's ids: never chosen.
    o->sampling.vocab_limit = tokenizer.vocab_size();
    MOEKIT_CHECK_ARG(o->prompt.find('\n') == std::string::npos, "generate: the prompt holds a line break");
    std::vector<int64_t> prompt = tokenizer.encode({o->prompt}).at(0);
    if (tokenizer.bos_id() >= 0) prompt.insert(prompt.begin(), tokenizer.bos_id());
    check_prompt(model->config(), prompt);
    // Stream: print what the text gained with each token.
    std::vector<int64_t> generated;
    size_t printed = 0;
    const std::string prefix = tokenizer.decode(prompt);
    std::cout << o->prompt << std::flush;
    generate(*model, prompt, o->sampling, tokenizer.eos_id(), [&](int64_t id) {
      generated.push_back(id);
      std::vector<int64_t> all = prompt;
      all.insert(all.end(), generated.begin(), generated.end());
      const std::string text = tokenizer.decode(all);
      const std::string tail = text.size() > prefix.size() ? text.substr(prefix.size()) : std::string();
      if (tail.size() > printed) {
        std::cout << tail.substr(printed) << std::flush;
        printed = tail.size();
      }
    });
    std::cout << "\n";
  });
}

}  // namespace moekit::cli
