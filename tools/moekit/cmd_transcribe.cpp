// `moekit transcribe <model_dir> a.wav [b.wav ...]`: one line per file.
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moekit/audio/audio_file.h"
#include "moekit/core/check.h"
#include "moekit/core/mapped_tensors.h"
#include "moekit/core/runtime.h"
#include "moekit/decode/recognizer.h"
#include "moekit/models/asr/wenet_import.h"

namespace moekit::cli {

void add_decode_options(CLI::App& cmd, DecodeOptions& decode) {
  cmd.add_option("--beam", decode.beam_size, "CTC prefix beam size")->capture_default_str();
  cmd.add_option("--chunk-size", decode.chunk_size, "Encoder frames per chunk (-1 = full context)")
      ->capture_default_str();
  cmd.add_option("--left-chunks", decode.left_chunks, "Chunks of left context (-1 = all)")->capture_default_str();
  cmd.add_option("--ctc-weight", decode.ctc_weight, "Attention rescoring: weight of the CTC score")
      ->capture_default_str();
  cmd.add_option("--reverse-weight", decode.reverse_weight,
                 "Attention rescoring: weight of the right-to-left decoder (-1 = the model's)")
      ->capture_default_str();
  cmd.add_option("--max-segment", decode.max_segment_seconds,
                 "Long audio, seconds: whole-file decoding splits longer audio at its quietest points; streaming "
                 "keeps this much left context (with --left-chunks -1) and restarts rescoring at the first 0.5 s "
                 "pause after 2/3 of it. Memory and time stay linear in the audio's length (0 = never split)")
      ->capture_default_str();
  cmd.add_option("--lexicon", decode.lexicon,
                 "Word list (first field per line, as WeNet's words.txt): the beam search and attention rescoring "
                 "output only these words (a closed-vocabulary task); CTC greedy search ignores it")
      ->check(CLI::ExistingFile);
  cmd.add_option("--lm", decode.lm,
                 "Word n-gram language model (ARPA, as SRILM/KenLM/IRSTLM write it) fused into the beam search; "
                 "needs --lexicon")
      ->check(CLI::ExistingFile);
  cmd.add_option("--lm-weight", decode.lm_weight, "--lm: weight of the language model's log-probabilities")
      ->capture_default_str();
  cmd.add_option("--word-bonus", decode.word_bonus, "--lexicon: log-score added per output word")
      ->capture_default_str();
}

void add_transcribe_command(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string model_dir;
    std::vector<std::string> files;
    std::string mode = "auto";
    DecodeOptions decode;
    bool streaming = false;
    bool json_output = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("transcribe", "Speech to text with an asr model; one line per file");
  cmd->add_option("model_dir", o->model_dir, "Model directory (moekit import wenet / moekit train)")->required();
  cmd->add_option("files", o->files, "Audio files (any format libsndfile reads; resampled, mixed to mono)")->required();
  cmd->add_option("--mode", o->mode,
                  "ctc_greedy_search | ctc_prefix_beam_search | attention_rescoring | auto (attention_rescoring, or "
                  "ctc_prefix_beam_search for a model without attention decoder)")
      ->capture_default_str();
  add_decode_options(*cmd, o->decode);
  cmd->add_flag("--streaming", o->streaming, "Decode through a streaming session (needs --chunk-size > 0)");
  cmd->add_flag("--json", o->json_output, "One JSON object per line (file, text, tokens, score, error)");
  cmd->callback([o, &global] {
    apply_runtime(global);
    check_decode_mode_name(o->mode);  // a bad name or option fails before the model loads
    o->decode.validate();
    MOEKIT_CHECK_ARG(!o->streaming || o->decode.chunk_size > 0, "--streaming needs --chunk-size > 0");
    const torch::Device device = parse_device(global.device);
    LoadedAsr loaded = load_asr_model(o->model_dir, WeightStorage::kMap);
    loaded.model->to(device);
    o->decode.mode = resolve_decode_mode(o->mode, *loaded.model);
    const Recognizer recognizer(loaded.model, loaded.units, o->decode);
    const int sample_rate = loaded.model->config().fbank.sample_rate;
    int failures = 0;
    for (const std::string& path : o->files) {
      // Each file on its own: a bad one is reported and the rest go on.
      try {
        Recognition r;
        if (o->streaming) {
          // 100 ms pieces read from the file as they are decoded.
          AudioReader reader(path, sample_rate);
          StreamingSession session(recognizer);
          std::vector<float> piece;
          while (piece.clear(), reader.read(piece, static_cast<size_t>(sample_rate / 10)) > 0)
            session.accept_waveform(piece.data(), piece.size());
          r = session.finish();
          if (loaded.units.size() > 0) r.text = loaded.units.to_text(r.tokens);
        } else {
          r = recognizer.recognize_file(path);
        }
        check_mapped_files_unchanged("transcribe");
        const std::string text = loaded.units.size() > 0 ? r.text : [&] {
          std::string ids;
          for (int64_t t : r.tokens) ids += (ids.empty() ? "" : " ") + std::to_string(t);
          return ids;
        }();
        if (o->json_output) {
          nlohmann::json j = {{"file", path}, {"text", text}, {"tokens", r.tokens}, {"score", r.score}};
          std::cout << json_text(j) << "\n";
        } else {
          std::cout << path << "\t" << text << "\n";
        }
      } catch (const std::exception& e) {
        // A model file rewritten in place ends the command: every later
        // file would be decoded with a mix of two models' weights.
        check_mapped_files_unchanged("transcribe");
        ++failures;
        std::string message = e.what();
        message = message.substr(0, message.find('\n'));
        if (message.rfind(path, 0) != 0) message = path + ": " + message;
        if (o->json_output) std::cout << json_text({{"file", path}, {"error", message}}) << "\n";
        std::cerr << "moekit: error: " << message << "\n";
      }
      std::cout.flush();
    }
    MOEKIT_CHECK(failures == 0, failures, " of ", o->files.size(), " files failed");
  });
}

}  // namespace moekit::cli
