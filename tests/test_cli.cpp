// The moekit binary end to end: exit codes, one-line errors, info output.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include <cmath>
#include <regex>
#include <sstream>

#include "asr_test_util.h"
#include "cli_test_util.h"
#include "test_util.h"
#include "moekit/audio/audio_file.h"
#include "moekit/core/file_io.h"
#include "moekit/data/sentencepiece.h"
#include "moekit/models/asr/wenet_import.h"
#include "moekit/models/ffn_stack/ffn_stack.h"

namespace moekit {
namespace {

TEST(Cli, VersionAndHelpSucceed) {
  const CliRun version = run_cli("--version");
  EXPECT_EQ(version.exit_code, 0);
  EXPECT_NE(version.output.find("moekit 0."), std::string::npos) << version.output;
  const CliRun help = run_cli("bench moe --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--tokens"), std::string::npos);
  EXPECT_NE(help.output.find("16 256 4096"), std::string::npos) << "help must show real defaults:\n" << help.output;
}

TEST(Cli, InfoDescribesAModelDirectory) {
  const std::string dir = temp_dir("cli_info") + "/model";
  save_model(dir, FfnStack(small_stack_options(8, 2)));
  const CliRun run = run_cli("info --json " + dir);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto j = nlohmann::json::parse(run.output);
  EXPECT_EQ(j["model_type"], "ffn_stack");
  const int64_t per_expert = 16 * 8 + 16 + 8 * 16 + 8;
  EXPECT_EQ(j["parameters"]["total"], 2 * (2 * 8 + 4 * 8 + 4 * per_expert));
  EXPECT_EQ(j["parameters"]["active_per_token"], 2 * (2 * 8 + 4 * 8 + 2 * per_expert));
  ASSERT_EQ(j["moe_layers"].size(), 2u);
  EXPECT_EQ(j["moe_layers"][0]["name"], "layers.0.ffn");
  EXPECT_EQ(j["moe_layers"][0]["routing"], "token");
  EXPECT_EQ(j["moe_layers"][1]["top_k"], 2);
}

TEST(Cli, ErrorsAreOneLineWithNonZeroExit) {
  for (const std::string& args : {std::string("info /nonexistent/model"), std::string("info"),
                                  std::string("frobnicate"), std::string("bench moe --tokens abc"),
                                  std::string("bench moe --variants nothing --tokens 4 --rounds 1")}) {
    const CliRun run = run_cli(args);
    EXPECT_NE(run.exit_code, 0) << args;
    EXPECT_EQ(lines(run.output), 1) << args << ":\n" << run.output;
    EXPECT_EQ(run.output.rfind("moekit: error: ", 0), 0u) << args << ":\n" << run.output;
  }
}

}  // namespace
}  // namespace moekit

// Speech recognition end to end through the CLI, on a small random model.
namespace moekit {
namespace {

std::string asr_model_dir(bool with_decoder = true) {
  const std::string dir = temp_dir(with_decoder ? "cli_asr" : "cli_asr_ctc");
  AsrConfig c = tiny_asr_config(6);
  if (!with_decoder) {
    c.decoder.num_blocks = c.decoder.r_num_blocks = 0;
    c.reverse_weight = 0.0;
    c.ctc_weight = 1.0;
  }
  AsrModel model(c);
  save_asr_model(dir, model, Units({"<blank>", "<unk>", "a", "b", "\xe2\x96\x81", "<sos/eos>"}));
  return dir;
}

}  // namespace

TEST(Cli, TranscribeGoesOnPastBadFilesAndFailsAtTheEnd) {
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  const std::string dir = asr_model_dir();
  std::vector<float> tone(16000), silence(8000, 0.0f);
  for (size_t i = 0; i < tone.size(); ++i) tone[i] = 0.3f * std::sin(0.05f * static_cast<float>(i));
  write_wav16(dir + "/tone.wav", tone, 16000);
  write_wav16(dir + "/silence.wav", silence, 8000);  // other rate: resampled
  write_wav16(dir + "/short.wav", std::vector<float>(100, 0.1f), 16000);
  write_file_atomic(dir + "/notes.txt", "hello");
  const CliRun run = run_cli("transcribe " + dir + " " + dir + "/tone.wav " + dir + "/notes.txt " + dir +
                             "/silence.wav " + dir + "/short.wav --json");
  EXPECT_EQ(run.exit_code, 1) << run.output;
  std::vector<nlohmann::json> rows;
  std::istringstream in(run.output);
  std::string line;
  int errors = 0;
  while (std::getline(in, line)) {
    if (line.rfind("{", 0) == 0) rows.push_back(nlohmann::json::parse(line));
    if (line.rfind("moekit: error:", 0) == 0) ++errors;
  }
  ASSERT_EQ(rows.size(), 4u) << run.output;
  EXPECT_FALSE(rows[0].contains("error")) << rows[0];
  EXPECT_NE(rows[1]["error"].get<std::string>().find("notes.txt: not a readable audio file"), std::string::npos);
  EXPECT_FALSE(rows[2].contains("error")) << rows[2];
  EXPECT_NE(rows[3]["error"].get<std::string>().find("too short"), std::string::npos) << rows[3];
  EXPECT_EQ(errors, 3) << run.output;  // two files + the summary line
  // File names are bytes: one in Latin-1 is decoded, and the JSON names it
  // with U+FFFD for the byte that is not UTF-8 (the command used to fail
  // printing it); a missing one is reported the same way.
  write_wav16(dir + "/caf\xe9.wav", tone, 16000);
  const CliRun latin1 =
      run_cli("transcribe " + dir + " '" + dir + "/caf\xe9.wav' '" + dir + "/gon\xe9.wav' --json");
  EXPECT_EQ(latin1.exit_code, 1) << latin1.output;
  std::vector<nlohmann::json> named;
  std::istringstream latin1_lines(latin1.output);
  while (std::getline(latin1_lines, line))
    if (line.rfind("{", 0) == 0) named.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(named.size(), 2u) << latin1.output;
  EXPECT_EQ(named[0]["file"], dir + "/caf\xef\xbf\xbd.wav") << named[0];
  EXPECT_EQ(named[0]["text"], rows[0]["text"]) << named[0];
  EXPECT_NE(named[1]["error"].get<std::string>().find("gon\xef\xbf\xbd.wav"), std::string::npos) << named[1];

  const CliRun streaming = run_cli("transcribe " + dir + " " + dir + "/tone.wav --chunk-size 2 --streaming");
  EXPECT_EQ(streaming.exit_code, 0) << streaming.output;
  const CliRun bad_mode = run_cli("transcribe " + dir + " " + dir + "/tone.wav --mode beam");
  EXPECT_EQ(bad_mode.exit_code, 1);
  EXPECT_NE(bad_mode.output.find("unknown decoding mode 'beam'"), std::string::npos) << bad_mode.output;
  EXPECT_EQ(lines(bad_mode.output), 1);
  const CliRun no_model = run_cli("transcribe " + dir + "/nowhere " + dir + "/tone.wav");
  EXPECT_EQ(no_model.exit_code, 1);
  EXPECT_EQ(lines(no_model.output), 1) << no_model.output;
}

TEST(Cli, QuantizeWritesInt8AndBf16ModelsThatDecode) {
  const std::string dir = asr_model_dir(), out = dir + "-int8";
  std::filesystem::remove_all(out);
  const CliRun run = run_cli("quantize " + dir + " " + out + " --experts int8");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("experts of 2 MoE layers to int8"), std::string::npos) << run.output;
  EXPECT_TRUE(std::filesystem::exists(out + "/units.txt"));
  const CliRun info = run_cli("info --json " + out);
  ASSERT_EQ(info.exit_code, 0) << info.output;
  const nlohmann::json described = nlohmann::json::parse(info.output);
  ASSERT_EQ(described["moe_layers"].size(), 2u);
  EXPECT_EQ(described["moe_layers"][0]["expert_weights"], "int8");
  EXPECT_EQ(nlohmann::json::parse(run_cli("info --json " + dir).output)["moe_layers"][0]["expert_weights"], "float32");
  if (have_audio_files()) {
    std::vector<float> tone(16000);
    for (size_t i = 0; i < tone.size(); ++i) tone[i] = 0.3f * std::sin(0.05f * static_cast<float>(i));
    write_wav16(out + "/tone.wav", tone, 16000);
    const CliRun streaming = run_cli("transcribe " + out + " " + out + "/tone.wav --chunk-size 2 --streaming");
    EXPECT_EQ(streaming.exit_code, 0) << streaming.output;
  }
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"quantize " + dir + " " + out + " --experts int8", "exists"},
           {"quantize " + out + " " + out + "-again --experts int8", "quantized already"},
           {"quantize " + dir + " " + out + "-4 --experts int4", "--experts"},
       }) {
    const CliRun bad = run_cli(args);
    EXPECT_NE(bad.exit_code, 0) << args;
    EXPECT_NE(bad.output.find(message), std::string::npos) << args << ": " << bad.output;
    EXPECT_EQ(lines(bad.output), 1) << bad.output;
  }
  // bf16 experts: half the bytes, described as such, decoded like the others.
  const std::string bf16 = dir + "-bf16";
  std::filesystem::remove_all(bf16);
  const CliRun to_bf16 = run_cli("quantize " + dir + " " + bf16 + " --experts bf16");
  ASSERT_EQ(to_bf16.exit_code, 0) << to_bf16.output;
  EXPECT_NE(to_bf16.output.find("experts of 2 MoE layers to bf16"), std::string::npos) << to_bf16.output;
  EXPECT_EQ(nlohmann::json::parse(run_cli("info --json " + bf16).output)["moe_layers"][0]["expert_weights"],
            "bfloat16");
  EXPECT_NE(run_cli("info " + bf16).output.find("bf16 experts"), std::string::npos);
  if (have_audio_files()) {
    const CliRun streaming = run_cli("transcribe " + bf16 + " " + out + "/tone.wav --chunk-size 2 --streaming");
    EXPECT_EQ(streaming.exit_code, 0) << streaming.output;
  }
  std::filesystem::remove_all(out);
}

TEST(Cli, EvalScoresReadableUtterancesAndReportsTheRest) {
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  const std::string dir = asr_model_dir();
  std::vector<float> tone(16000);
  for (size_t i = 0; i < tone.size(); ++i) tone[i] = 0.3f * std::sin(0.05f * static_cast<float>(i));
  write_wav16(dir + "/a.wav", tone, 16000);
  write_file_atomic(dir + "/good.list", "{\"key\": \"a\", \"wav\": \"a.wav\", \"txt\": \"ab ba\"}\n");
  write_file_atomic(dir + "/mixed.list", "{\"key\": \"a\", \"wav\": \"a.wav\", \"txt\": \"ab ba\"}\n"
                                         "{\"key\": \"b\", \"wav\": \"missing.wav\", \"txt\": \"a\"}\n");
  const CliRun good = run_cli("eval " + dir + " " + dir + "/good.list --mode ctc_greedy_search --json");
  ASSERT_EQ(good.exit_code, 0) << good.output;
  const auto j = nlohmann::json::parse(good.output);
  EXPECT_EQ(j[0]["utterances"], 1);
  EXPECT_EQ(j[0]["chars"], 4);
  const CliRun mixed = run_cli("eval " + dir + " " + dir + "/mixed.list --mode ctc_greedy_search");
  EXPECT_EQ(mixed.exit_code, 1) << mixed.output;
  EXPECT_NE(mixed.output.find("b: "), std::string::npos) << mixed.output;
  EXPECT_NE(mixed.output.find("CER"), std::string::npos) << mixed.output;
}

TEST(Cli, DefaultDecodingModeFitsTheModel) {
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  for (bool with_decoder : {true, false}) {
    const std::string dir = asr_model_dir(with_decoder);
    std::vector<float> tone(16000);
    for (size_t i = 0; i < tone.size(); ++i) tone[i] = 0.3f * std::sin(0.05f * static_cast<float>(i));
    write_wav16(dir + "/a.wav", tone, 16000);
    write_file_atomic(dir + "/good.list", "{\"key\": \"a\", \"wav\": \"a.wav\", \"txt\": \"ab ba\"}\n");
    // No --mode: attention rescoring with a decoder, CTC prefix beam without.
    const CliRun eval = run_cli("eval " + dir + " " + dir + "/good.list --json");
    ASSERT_EQ(eval.exit_code, 0) << eval.output;
    EXPECT_EQ(nlohmann::json::parse(eval.output)[0]["mode"],
              with_decoder ? "attention_rescoring" : "ctc_prefix_beam_search");
    const CliRun transcribe = run_cli("transcribe " + dir + " " + dir + "/a.wav");
    EXPECT_EQ(transcribe.exit_code, 0) << transcribe.output;
    // Asked for explicitly, rescoring without a decoder is a one-line error.
    const CliRun explicit_rescoring = run_cli("transcribe " + dir + " " + dir + "/a.wav --mode attention_rescoring");
    if (with_decoder) {
      EXPECT_EQ(explicit_rescoring.exit_code, 0) << explicit_rescoring.output;
    } else {
      EXPECT_EQ(explicit_rescoring.exit_code, 1);
      EXPECT_NE(explicit_rescoring.output.find("attention_rescoring needs a model with an attention decoder"),
                std::string::npos)
          << explicit_rescoring.output;
    }
  }
  const CliRun bad = run_cli("eval /nonexistent /nonexistent.list --mode beam");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("unknown decoding mode 'beam'"), std::string::npos) << bad.output;
}

TEST(Cli, ImportWenetNeedsAWenetDirectory) {
  const std::string dir = asr_model_dir();
  const CliRun run = run_cli("import wenet " + dir + " " + dir + "/out");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("no final.pt"), std::string::npos) << run.output;
  EXPECT_EQ(lines(run.output), 1);
}

// A run on SentencePiece pieces keeps its model beside units.txt, so a
// resumed run tokenizes its transcripts as the run it continues did (it used
// to fall back to characters when --bpe-model was not given again).
TEST(Cli, PaddedMoeDispatchUnderRowBudgetsTrainsAsTheSortedOne) {
  // train_conf.moe_dispatch: padded runs dropless MoE layers under row
  // budgets (the GPU's sync-free training path). With moe_row_margin 1 a
  // batch whose busiest expert outgrows the last one's runs again; with
  // dropout and SpecAugment drawing random numbers, the losses still equal
  // the sorted dispatch's only if the rerun draws the same ones.
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  const std::string d = temp_dir("cli_asr_row_budget");
  const std::vector<std::string> words = {"ab", "cd", "abc", "dab", "cab", "bad"};
  std::string list;
  for (int i = 0; i < 12; ++i) {
    const std::string txt = words[(i * 5) % words.size()] + " " + words[(i * 5 + 2) % words.size()];
    const std::string wav = d + "/utt" + std::to_string(i) + ".wav";
    write_tone_wav(wav, txt);
    list += nlohmann::json{{"key", "utt" + std::to_string(i)}, {"wav", wav}, {"txt", txt}}.dump() + "\n";
  }
  write_file_atomic(d + "/train.list", list);
  std::string model_conf = deterministic_asr_train_yaml(/*moe=*/true);
  for (const std::string from : {"dropout_rate: 0.0", "spec_aug: false"}) {
    const std::string to = from == "spec_aug: false" ? "spec_aug: true" : "dropout_rate: 0.1";
    for (size_t at = model_conf.find(from); at != std::string::npos; at = model_conf.find(from, at + to.size()))
      model_conf.replace(at, from.size(), to);
  }
  ASSERT_EQ(model_conf.find("dropout_rate: 0.0"), std::string::npos);
  const std::string schedule = "epochs: 2, lr: 0.002, warmup_steps: 2, total_steps: 10, log_interval: 1, average_last: 1";
  write_file_atomic(d + "/sorted.yaml", model_conf + "train_conf: {" + schedule + ", moe_dispatch: sorted}\n");
  write_file_atomic(d + "/padded.yaml",
                    model_conf + "train_conf: {" + schedule + ", moe_dispatch: padded, moe_row_margin: 1.0}\n");
  auto train = [&](const std::string& name) {
    return run_cli("--threads 1 train asr --config " + d + "/" + name + ".yaml --train-data " + d +
                   "/train.list --cv-data " + d + "/train.list --exp-dir " + d + "/" + name);
  };
  CliRun run = train("sorted");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.output.find("MoE row budgets"), std::string::npos) << run.output;
  run = train("padded");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::smatch reruns;  // some batch ran again
  ASSERT_TRUE(std::regex_search(run.output, reruns, std::regex("rows per routed assignment; (\\d+) batch forward")))
      << run.output;
  EXPECT_GT(std::stoi(reruns[1]), 0) << run.output;
  const std::vector<double> sorted = logged_losses(d + "/sorted"), padded = logged_losses(d + "/padded");
  ASSERT_EQ(sorted.size(), 10u);
  ASSERT_EQ(padded.size(), sorted.size());
  for (size_t i = 0; i < sorted.size(); ++i) EXPECT_NEAR(padded[i], sorted[i], 1e-4 * sorted[i]) << "step " << i + 1;
  // Paused at step 5 and resumed, the run keeps its budgets: the same
  // losses, reruns and rows as the run that went through.
  const std::regex budget_line("computed ([0-9.]+) rows per routed assignment; (\\d+)");
  std::smatch found;
  ASSERT_TRUE(std::regex_search(run.output, found, budget_line));
  const std::string whole_rows = found[1], whole_reruns = found[2];
  write_file_atomic(d + "/paused.yaml", model_conf + "train_conf: {" + schedule +
                                            ", max_steps: 5, moe_dispatch: padded, moe_row_margin: 1.0}\n");
  run = run_cli("--threads 1 train asr --config " + d + "/paused.yaml --train-data " + d + "/train.list --cv-data " +
                d + "/train.list --exp-dir " + d + "/resumed");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  run = run_cli("--threads 1 train asr --config " + d + "/padded.yaml --train-data " + d + "/train.list --cv-data " +
                d + "/train.list --exp-dir " + d + "/resumed --resume");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  ASSERT_TRUE(std::regex_search(run.output, found, budget_line)) << run.output;
  EXPECT_EQ(found[1], whole_rows) << run.output;
  EXPECT_EQ(found[2], whole_reruns) << run.output;
  const std::vector<double> resumed = logged_losses(d + "/resumed");
  ASSERT_EQ(resumed.size(), padded.size());
  for (size_t i = 0; i < padded.size(); ++i) EXPECT_NEAR(resumed[i], padded[i], 1e-5 * padded[i]) << "step " << i + 1;
  write_file_atomic(d + "/bad.yaml", model_conf + "train_conf: {" + schedule + ", moe_row_margin: 0.5}\n");
  run = train("bad");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("moe_row_margin"), std::string::npos) << run.output;
}

TEST(Cli, TrainAsrOnPiecesResumesWithTheRunsOwnSentencePieceModel) {
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  if (!have_sentencepiece() || std::system("command -v spm_train > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "SentencePiece tools (package sentencepiece) not installed";
  const std::string d = temp_dir("cli_asr_pieces");
  // Tone words of two or three letters.
  const std::vector<std::string> words = {"ab", "cd", "abc", "dab", "cab"};
  std::string list, text;
  for (int i = 0; i < 12; ++i) {
    const std::string txt = words[(i * 3) % words.size()] + " " + words[(i * 3 + 1) % words.size()];
    const std::string wav = d + "/utt" + std::to_string(i) + ".wav";
    write_tone_wav(wav, txt);
    list += nlohmann::json{{"key", "utt" + std::to_string(i)}, {"wav", wav}, {"txt", txt}}.dump() + "\n";
    text += txt + "\n";
  }
  write_file_atomic(d + "/train.list", list);
  write_file_atomic(d + "/text.txt", text);
  for (const auto& [name, vocab] : std::vector<std::pair<std::string, int>>{{"bpe", 12}, {"other", 10}}) {
    const std::string cmd = "spm_train --input=" + d + "/text.txt --model_prefix=" + d + "/" + name +
                            " --vocab_size=" + std::to_string(vocab) + " --model_type=bpe --minloglevel=2 > /dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  const SentencePieceTokenizer spm(d + "/bpe.model");
  // No randomness in the loss, so a resumed run logs the whole run's losses.
  const std::string model_conf = deterministic_asr_train_yaml(/*moe=*/false);
  const std::string schedule = "epochs: 3, lr: 0.002, warmup_steps: 2, total_steps: 6, log_interval: 1, average_last: 1";
  write_file_atomic(d + "/whole.yaml", model_conf + "train_conf: {" + schedule + "}\n");
  write_file_atomic(d + "/paused.yaml", model_conf + "train_conf: {" + schedule + ", max_steps: 3}\n");
  auto train = [&](const std::string& config, const std::string& exp, const std::string& extra) {
    return run_cli("--threads 1 train asr --config " + d + "/" + config + " --train-data " + d +
                   "/train.list --cv-data " + d + "/train.list --exp-dir " + d + "/" + exp + extra);
  };
  const std::string bpe = " --bpe-model " + d + "/bpe.model";
  CliRun run = train("whole.yaml", "whole", bpe);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  run = train("paused.yaml", "paused", bpe);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(read_file(d + "/paused/tokenizer.model"), read_file(d + "/bpe.model"));
  EXPECT_EQ(read_file(d + "/paused/units.txt"), spm.units().serialize());

  // Options that disagree with the run's own tokenizer are errors; a fresh
  // start into the directory is refused and leaves its files alone.
  run = train("whole.yaml", "paused", " --resume --bpe-model " + d + "/other.model");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("is not the tokenizer the run in"), std::string::npos) << run.output;
  EXPECT_EQ(lines(run.output), 1) << run.output;
  write_file_atomic(d + "/chars.txt", "<blank> 0\n<unk> 1\na 2\nb 3\nc 4\nd 5\n\xe2\x96\x81 6\n<sos/eos> 7\n");
  run = train("whole.yaml", "paused", " --resume --units " + d + "/chars.txt");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("is not the units table of the run"), std::string::npos) << run.output;
  run = train("whole.yaml", "paused", " --bpe-model " + d + "/other.model");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("--resume"), std::string::npos) << run.output;
  EXPECT_EQ(read_file(d + "/paused/tokenizer.model"), read_file(d + "/bpe.model"));
  EXPECT_EQ(read_file(d + "/paused/units.txt"), spm.units().serialize());

  // Resumed without --bpe-model: the pieces again, so the whole run's losses.
  run = train("whole.yaml", "paused", " --resume");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const std::vector<double> whole = logged_losses(d + "/whole"), resumed = logged_losses(d + "/paused");
  ASSERT_EQ(whole.size(), 6u);
  ASSERT_EQ(resumed.size(), whole.size());
  for (size_t i = 0; i < whole.size(); ++i) EXPECT_NEAR(resumed[i], whole[i], 1e-5 * std::abs(whole[i])) << "step " << i + 1;
  EXPECT_EQ(read_file(d + "/paused/final/tokenizer.model"), read_file(d + "/bpe.model"));
  EXPECT_EQ(read_file(d + "/paused/final/units.txt"), spm.units().serialize());
  // A run that kept no model (written before runs kept it) names the fix,
  // and resumes on the pieces once given its --bpe-model.
  run = train("paused.yaml", "legacy", bpe);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  std::filesystem::remove(d + "/legacy/tokenizer.model");
  run = train("whole.yaml", "legacy", " --resume");
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_NE(run.output.find("keeps no tokenizer.model: resume with its --bpe-model"), std::string::npos) << run.output;
  run = train("whole.yaml", "legacy", " --resume" + bpe);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(logged_losses(d + "/legacy"), resumed);
  // Its text comes back as words: the pieces' boundaries are spaces.
  run = run_cli("transcribe " + d + "/paused/final " + d + "/utt0.wav --mode ctc_greedy_search");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(run.output.find("\xe2\x96\x81"), std::string::npos) << run.output;
}

}  // namespace moekit
