// `moekit eval <model_dir> <data>`: CER/WER of an asr model on a data list,
// BLEU/chrF of a seq2seq model on a parallel TSV file, perplexity of an lm
// on a text file.
#include <chrono>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moekit/audio/audio_file.h"
#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/mapped_tensors.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/process_memory.h"
#include "moekit/core/runtime.h"
#include "moekit/data/asr_data.h"
#include "moekit/data/lm_tokenizer.h"
#include "moekit/decode/lexicon.h"
#include "moekit/decode/lm_perplexity.h"
#include "moekit/decode/recognizer.h"
#include "moekit/models/asr/wenet_import.h"
#include "moekit/train/asr_task.h"

namespace moekit::cli {

namespace {

void run_perplexity_eval(const std::string& model_dir, const std::string& text, const std::string& tokenizer_path,
                         const PerplexityOptions& options, const std::string& weight_dtype, bool json_output,
                         torch::Device device) {
  const std::string tok_path = find_lm_tokenizer(model_dir, tokenizer_path);
  const LmTokenizer tokenizer(tok_path);
  const auto model = load_lm_model(model_dir, parse_weight_dtype(weight_dtype, device), WeightStorage::kMap);
  options.validate(model->config());  // before the text is tokenized
  check_tokenizer_fits(tokenizer, tok_path, model->config().vocab_size);
  model->to(device);
  const std::vector<int64_t> ids = tokenizer.encode_file(text);
  PerplexityResult r;
  try {
    r = lm_perplexity(*model, ids, options);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(text + ": " + e.what());
  }
  check_mapped_files_unchanged("eval");
  const double tokens_per_s = r.seconds > 0 ? static_cast<double>(r.tokens) / r.seconds : 0.0;
  if (json_output) {
    const nlohmann::json j = {{"nll", r.nll},
                              {"perplexity", r.perplexity},
                              {"tokens", r.tokens},
                              {"windows", r.windows},
                              {"window", r.window},
                              {"stride", r.stride},
                              {"tokens_per_s", tokens_per_s},
                              {"peak_memory_mb", peak_resident_bytes() >> 20}};
    std::cout << json_text(j) << "\n";
    return;
  }
  std::cout << std::fixed << std::setprecision(4) << "perplexity " << r.perplexity << "  nll " << r.nll
            << " nats/token  (" << r.tokens << " tokens scored, window " << r.window << ", stride " << r.stride
            << ", " << std::setprecision(1) << tokens_per_s << " tokens/s)\n";
}

}  // namespace

void add_eval_command(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string model_dir, data;
    std::vector<std::string> modes = {"auto"};
    DecodeOptions decode;
    bool streaming = false;
    bool json_output = false;
    TranslateOptions translate;
    std::string hyp_out, reference, task;
    PerplexityOptions perplexity;
    std::string tokenizer;
    std::string weight_dtype = "auto";
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Error rates (CER, WER) of an asr model on a data list or Kaldi dir; BLEU, chrF, CER and exact "
              "matches per task of a seq2seq model on a parallel file; perplexity of an lm on a text file");
  cmd->add_option("model_dir", o->model_dir, "Model directory")->required();
  cmd->add_option("data", o->data,
                  "asr: WeNet data.list or Kaldi data directory; seq2seq: task<TAB>source<TAB>target lines; lm: text, "
                  "each line followed by </s> as in training")
      ->required();
  cmd->add_option("--mode", o->modes,
                  "Decoding modes (several allowed): ctc_greedy_search | ctc_prefix_beam_search | "
                  "attention_rescoring | "
                  "auto (attention_rescoring, or ctc_prefix_beam_search for a model without attention decoder)")
      ->capture_default_str();
  add_decode_options(*cmd, o->decode);
  cmd->add_option("--length-penalty", o->translate.search.length_penalty, "seq2seq: score = log p / length^penalty")
      ->capture_default_str();
  cmd->add_option("--batch-size", o->translate.batch_size,
                  "seq2seq: sentences searched together; lm: windows run together (default 4)")
      ->capture_default_str();
  cmd->add_option("--window", o->perplexity.window, "lm: tokens per window (0 = the model's max_seq_len)")
      ->capture_default_str();
  cmd->add_option("--stride", o->perplexity.stride,
                  "lm: tokens between window starts; each token is scored once, with at least window - stride "
                  "tokens of context (0 = half the window)")
      ->capture_default_str();
  cmd->add_option("--tokenizer", o->tokenizer, "lm: SentencePiece .model or HF tokenizer.json (default: the model directory's)");
  cmd->add_option("--dtype", o->weight_dtype,
                  "lm and seq2seq: weight matrices in auto | fp32 | bf16 (auto: as the model directory stores "
                  "them; activations stay float32)")
      ->capture_default_str();
  cmd->add_option("--max-length", o->translate.search.max_length, "seq2seq: output tokens at most")
      ->capture_default_str();
  cmd->add_option("--min-length", o->translate.search.min_length, "seq2seq: output tokens at least before </s>")
      ->capture_default_str();
  cmd->add_option("--hyp-out", o->hyp_out, "seq2seq: write the translations here, one per line of the data");
  cmd->add_option("--ref", o->reference,
                  "seq2seq: references, line by line with `data` as a plain source file (needs --task)");
  cmd->add_option("--task", o->task, "seq2seq: the task of --ref's lines");
  cmd->add_flag("--json", o->json_output, "Print one JSON object");
  cmd->callback([o, &global, cmd] {
    apply_runtime(global);
    for (const std::string& mode : o->modes) check_decode_mode_name(mode);  // before any model loads
    o->decode.validate();
    const std::string family = read_model_config(o->model_dir)["model_type"].as<std::string>("");
    MOEKIT_CHECK_ARG(family == "lm" || family == "seq2seq" || cmd->get_option("--dtype")->count() == 0,
                     "eval: --dtype applies to language and seq2seq models; ", o->model_dir, " holds a ", family, " model");
    if (family == "lm") {
      if (cmd->get_option("--batch-size")->count() > 0) o->perplexity.batch_size = o->translate.batch_size;
      run_perplexity_eval(o->model_dir, o->data, o->tokenizer, o->perplexity, o->weight_dtype, o->json_output,
                          parse_device(global.device));
      return;
    }
    if (family == "seq2seq") {
      TranslateOptions t = o->translate;
      if (cmd->get_option("--beam")->count() > 0) t.search.beam = o->decode.beam_size;  // else the seq2seq default
      t.weight_dtype = parse_weight_dtype(o->weight_dtype, parse_device(global.device));
      run_translation_eval(o->model_dir, o->data, t, o->hyp_out, o->json_output, parse_device(global.device),
                           o->reference, o->task);
      return;
    }
    const torch::Device device = parse_device(global.device);
    LoadedAsr loaded = load_asr_model(o->model_dir, WeightStorage::kMap);
    loaded.model->to(device);
    MOEKIT_CHECK_ARG(loaded.units.size() > 0, o->model_dir, ": no units.txt, cannot compare with transcripts");
    const auto data = read_asr_data(o->data);
    const int rate = loaded.model->config().fbank.sample_rate;
    nlohmann::json results = nlohmann::json::array();
    int64_t total_failed = 0;
    for (const std::string& mode : o->modes) {
      DecodeOptions d = o->decode;
      d.mode = resolve_decode_mode(mode, *loaded.model);
      const std::string mode_name = decode_mode_name(d.mode);
      const Recognizer recognizer(loaded.model, loaded.units, d);
      ErrorRates rates;
      int64_t failed = 0;
      double audio_seconds = 0, decode_seconds = 0;
      for (const auto& u : data) {
        try {
          const Audio audio = load_audio(u.wav, rate);
          const auto start = std::chrono::steady_clock::now();
          const Recognition r = recognizer.recognize(audio.samples);  // ends with its results on the CPU
          decode_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
          audio_seconds += static_cast<double>(audio.samples.size()) / rate;
          rates.add(u.text, r.text);
        } catch (const std::invalid_argument& e) {
          ++failed;
          std::cerr << "moekit: error: " << u.key << ": " << e.what() << "\n";
        }
      }
      check_mapped_files_unchanged("eval");
      nlohmann::json j = {{"mode", mode_name},      {"chunk_size", d.chunk_size}, {"utterances", data.size()},
                          {"failed", failed},       {"cer", rates.cer()},         {"wer", rates.wer()},
                          {"chars", rates.chars},   {"words", rates.words},
                          {"rtf", audio_seconds > 0 ? decode_seconds / audio_seconds : 0.0},
                          {"lexicon_words", recognizer.lexicon() && d.mode != DecodeMode::CtcGreedy
                                                ? static_cast<int64_t>(recognizer.lexicon()->size())
                                                : int64_t{0}}};
      results.push_back(j);
      total_failed += failed;
      if (!o->json_output)
        std::cout << std::left << std::setw(24) << mode_name << " chunk " << std::setw(3) << d.chunk_size << " CER "
                  << std::fixed << std::setprecision(2) << 100 * rates.cer() << "%  WER " << 100 * rates.wer()
                  << "%  (" << data.size() - failed << " utterances, RTF " << std::setprecision(4)
                  << j["rtf"].get<double>() << ")\n";
    }
    if (o->json_output) std::cout << json_text(results) << "\n";
    // Error rates cover the readable utterances; the exit code says some were not.
    MOEKIT_CHECK(total_failed == 0, total_failed, " utterance decodes failed (see above)");
  });
}

}  // namespace moekit::cli
