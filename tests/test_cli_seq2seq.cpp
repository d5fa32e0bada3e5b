// The seq2seq commands end to end, as a user runs them: a tokenizer with
// task tags, training, translate (streamed, bad lines answered in place),
// extract (the sub-network translates as the full model does), eval, and
// one-line errors for bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_test_util.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/data/sentencepiece.h"
#include "test_util.h"

using namespace moekit;

namespace {

// A toy two-task corpus: English number phrases into pseudo-German and
// pseudo-French (word-by-word substitutions), enough for the plumbing.
std::string toy_corpus(int count, int offset) {
  const std::vector<std::string> en = {"one", "two", "three", "four", "five", "red", "blue", "cat", "dog", "house"};
  const std::vector<std::string> de = {"eins", "zwei", "drei", "vier", "fuenf", "rot", "blau", "katze", "hund", "haus"};
  const std::vector<std::string> fr = {"un", "deux", "trois", "quatre", "cinq", "rouge", "bleu", "chat", "chien", "maison"};
  std::string out;
  for (int i = 0; i < count; ++i) {
    const int n = i + offset;
    std::string s, t;
    const bool german = n % 2 == 0;
    for (int w = 0; w < 3 + n % 3; ++w) {
      const size_t k = static_cast<size_t>((n * 7 + w * 3) % 10);
      s += (w ? " " : "") + en[k];
      t += (w ? " " : "") + (german ? de[k] : fr[k]);
    }
    out += std::string(german ? "de" : "fr") + "\t" + s + "\t" + t + "\n";
  }
  return out;
}

// The corpus's sources and targets written to d/text.txt and the shared
// tokenizer trained on them: d/tok.model, 320 pieces with the task tags.
CliRun train_toy_tokenizer(const std::string& d, const std::string& tsv) {
  std::string text;
  for (size_t at = 0; at < tsv.size();) {
    const size_t end = tsv.find('\n', at);
    const std::string line = tsv.substr(at, end - at);
    const size_t a = line.find('\t'), b = line.find('\t', a + 1);
    text += line.substr(a + 1, b - a - 1) + "\n" + line.substr(b + 1) + "\n";
    at = end + 1;
  }
  write_file_atomic(d + "/text.txt", text);
  return run_cli("tokenizer train --input " + d + "/text.txt --output " + d +
                 "/tok.model --vocab-size 320 --user-symbols '<2de>' '<2fr>'");
}

}  // namespace

TEST(CliSeq2seq, TrainTranslateExtractEval) {
  if (!have_sentencepiece() || std::system("command -v spm_train > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "SentencePiece tools (package sentencepiece) not installed";
  const std::string d = temp_dir("cli_seq2seq");
  const std::string train_tsv = toy_corpus(300, 0), valid_tsv = toy_corpus(20, 1000);
  write_file_atomic(d + "/train.tsv", train_tsv);
  write_file_atomic(d + "/valid.tsv", valid_tsv);
  CliRun r = train_toy_tokenizer(d, train_tsv);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  write_file_atomic(d + "/s2s.yaml",
                    "model: {d_model: 32, heads: 4, ffn_hidden: 48, encoder_layers: 2, decoder_layers: 2, dropout: 0,\n"
                    "        moe: {num_experts: 4, top_k: 2, every: 2, encoder_routing: token, decoder_routing: task}}\n"
                    "data: {max_tokens: 400}\n"
                    "train_conf: {epochs: 50, lr: 0.003, scheduler: cosine, warmup_steps: 5, total_steps: 30, "
                    "log_interval: 10, average_last: 1}\n");
  const std::string train = "--threads 1 train seq2seq --config " + d + "/s2s.yaml --train-data " + d +
                            "/train.tsv --valid-data " + d + "/valid.tsv --tokenizer " + d + "/tok.model --exp-dir " +
                            d + "/exp";
  r = run_cli(train);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("tokens/s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("task sampling (T = 5): de 0.5 fr 0.5"), std::string::npos) << r.output;
  const std::string model = d + "/exp/final";
  ASSERT_TRUE(path_exists(model + "/tokenizer.model"));
  // The run keeps its tokenizer: a resumed run reads that copy, another one
  // is refused by name, and a new run needs --tokenizer.
  EXPECT_EQ(read_file(d + "/exp/tokenizer.model"), read_file(d + "/tok.model"));
  r = run_cli("tokenizer train --input " + d + "/text.txt --output " + d +
              "/retrained.model --vocab-size 300 --user-symbols '<2de>' '<2fr>'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string untokenized = "--threads 1 train seq2seq --config " + d + "/s2s.yaml --train-data " + d +
                                  "/train.tsv --valid-data " + d + "/valid.tsv --exp-dir " + d;
  r = run_cli(untokenized + "/exp --resume --tokenizer " + d + "/retrained.model");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("is not the tokenizer the run in"), std::string::npos) << r.output;
  r = run_cli(untokenized + "/exp_new");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("--tokenizer is required"), std::string::npos) << r.output;

  r = run_cli("info " + model);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("routing task"), std::string::npos) << r.output;

  // One output line per input line; a bad line is answered with an empty
  // line and an error naming it, the others are translated.
  write_file_atomic(d + "/in.txt", "one two three\n\nred cat\nblue \xff dog\nfour five\n");
  r = run_cli("--threads 1 translate " + model + " --task de --beam 3 < " + d + "/in.txt", "");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("line 2: empty line"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("line 4: invalid UTF-8"), std::string::npos) << r.output;
  int translated_lines = 0;  // stdout's lines (run_cli merges stderr, whose lines start "moekit: ")
  for (size_t at = 0; at < r.output.size();) {
    const size_t end = r.output.find('\n', at);
    if (r.output.compare(at, 8, "moekit: ") != 0) ++translated_lines;
    at = end == std::string::npos ? r.output.size() : end + 1;
  }
  EXPECT_EQ(translated_lines, 5) << r.output;

  // Over-long input: truncated with a warning by default, refused by option.
  write_file_atomic(d + "/long.txt", "one two three four five red blue cat dog house one two three\nred cat\n");
  r = run_cli("--threads 1 translate " + model + " --task de --max-input-tokens 6 < " + d + "/long.txt");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: line 1: truncated to 6 tokens"), std::string::npos) << r.output;
  r = run_cli("--threads 1 translate " + model + " --task de --max-input-tokens 6 --refuse-long < " + d + "/long.txt");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("error: line 1: the input has"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("line 2:"), std::string::npos) << r.output;  // the short line is translated
  r = run_cli("translate " + model + " --task de --beam 0 < " + d + "/long.txt");
  EXPECT_NE(r.output.find("beam"), std::string::npos) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;
  r = run_cli("translate " + model + " --task de --min-length -1 < " + d + "/long.txt");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("min_length"), std::string::npos) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;

  r = run_cli("--threads 1 translate " + model + " --task xx < " + d + "/in.txt");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("unknown task 'xx' (the model's tasks: de, fr)"), std::string::npos) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;

  // The extracted sub-network translates exactly as the full model does.
  r = run_cli("extract " + model + " --task de --out " + d + "/de");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("decoder.layers.1.ffn: experts"), std::string::npos) << r.output;
  write_file_atomic(d + "/good.txt", "one two three\nred cat\nfour five\nthe house\n");
  for (const char* beam : {"1", "4"}) {
    const CliRun full = run_cli("--threads 1 translate " + model + " --task de --beam " + beam + " < " + d + "/good.txt");
    const CliRun sub = run_cli("--threads 1 translate " + d + "/de --task de --beam " + beam + " < " + d + "/good.txt");
    ASSERT_EQ(full.exit_code, 0) << full.output;
    ASSERT_EQ(sub.exit_code, 0) << sub.output;
    EXPECT_EQ(sub.output, full.output) << "beam " << beam;
    EXPECT_EQ(lines(full.output), 4);
  }
  // bf16 matrices: a line per line (the tokens may differ where the
  // rounding tips a choice); a dtype it does not have is refused by name.
  r = run_cli("--threads 1 translate " + model + " --task de --dtype bf16 < " + d + "/good.txt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(lines(r.output), 4) << r.output;
  r = run_cli("--threads 1 eval " + model + " " + d + "/valid.tsv --dtype bf16 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"bleu_avg\""), std::string::npos) << r.output;
  r = run_cli("translate " + model + " --task de --dtype fp16 < " + d + "/good.txt");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("weight dtype 'fp16' is not one of auto, fp32, bf16"), std::string::npos) << r.output;
  r = run_cli("--threads 1 translate " + d + "/de --task fr < " + d + "/good.txt");
  EXPECT_NE(r.output.find("sub-network of task 'de'"), std::string::npos) << r.output;
  r = run_cli("extract " + model + " --task it --out " + d + "/it");
  EXPECT_NE(r.output.find("unknown task 'it'"), std::string::npos) << r.output;
  EXPECT_FALSE(path_exists(d + "/it"));
  r = run_cli("info " + d + "/de");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  r = run_cli("--threads 1 eval " + model + " " + d + "/valid.tsv --beam 2 --hyp-out " + d + "/hyp.txt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("de       BLEU"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("average  BLEU"), std::string::npos) << r.output;
  EXPECT_EQ(lines(read_file(d + "/hyp.txt")), 20);
  r = run_cli("--threads 1 eval " + model + " " + d + "/valid.tsv --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\"bleu_avg\""), std::string::npos) << r.output;
  // Exact matches: the share of outputs equal to their reference. With the
  // beam-2 outputs as references every output matches and the CER is 0;
  // against the real references the share is what a count gives.
  {
    std::istringstream valid(read_file(d + "/valid.tsv")), hyp(read_file(d + "/hyp.txt"));
    std::string row, h, own;
    int matches = 0, rows = 0;
    while (std::getline(valid, row) && std::getline(hyp, h)) {
      const size_t tab = row.find('\t', row.find('\t') + 1);
      own += row.substr(0, tab) + "\t" + h + "\n";
      matches += row.substr(tab + 1) == h;
      ++rows;
    }
    ASSERT_EQ(rows, 20);
    write_file_atomic(d + "/own.tsv", own);
    r = run_cli("--threads 1 eval " + model + " " + d + "/own.tsv --beam 2 --json");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const nlohmann::json self = nlohmann::json::parse(r.output);
    EXPECT_DOUBLE_EQ(self["exact_avg"].get<double>(), 1.0) << r.output;
    EXPECT_DOUBLE_EQ(self["cer_avg"].get<double>(), 0.0) << r.output;
    r = run_cli("--threads 1 eval " + model + " " + d + "/valid.tsv --beam 2 --json");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const nlohmann::json real = nlohmann::json::parse(r.output);
    double counted = 0;
    for (const auto& task : real["tasks"]) counted += task["exact"].get<double>() * task["sentences"].get<double>();
    EXPECT_NEAR(counted, matches, 1e-9) << r.output;
  }

  // Distillation into a dense student, word- and sequence-level; the
  // teacher's translations are cached for a resumed run.
  write_file_atomic(d + "/distill.yaml",
                    "data: {max_tokens: 400}\n"
                    "train_conf: {epochs: 50, lr: 0.003, warmup_steps: 2, total_steps: 4, average_last: 1}\n");
  r = run_cli("--threads 1 distill " + model + " --config " + d + "/distill.yaml --train-data " + d +
              "/valid.tsv --valid-data " + d + "/valid.tsv --exp-dir " + d + "/student --sequence --beam 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("initialised from the teacher"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("trained 4 steps"), std::string::npos) << r.output;
  EXPECT_EQ(lines(read_file(d + "/student/teacher_targets.txt")), 20);
  r = run_cli("info " + d + "/student/final");
  EXPECT_NE(r.output.find("MoE layers: 0"), std::string::npos) << r.output;
  r = run_cli("distill " + d + "/de --config " + d + "/distill.yaml --train-data " + d + "/valid.tsv --valid-data " +
              d + "/valid.tsv --exp-dir " + d + "/student2");
  EXPECT_NE(r.output.find("not a teacher"), std::string::npos) << r.output;

  // A tokenizer that is not the model's; a vocabulary too small for the text.
  r = run_cli("tokenizer train --input " + d + "/text.txt --output " + d + "/tiny.model --vocab-size 60");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("Vocabulary size is smaller than required_chars"), std::string::npos) << r.output;
  r = run_cli("tokenizer train --input " + d + "/text.txt --output " + d + "/other.model --vocab-size 300");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::filesystem::copy(d + "/de", d + "/mismatch", std::filesystem::copy_options::recursive);
  std::filesystem::copy_file(d + "/other.model", d + "/mismatch/tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing);
  r = run_cli("translate " + d + "/mismatch --task de < " + d + "/good.txt");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("not the model's tokenizer"), std::string::npos) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;

  // Data errors name the file and line.
  write_file_atomic(d + "/bad.tsv", "de\tone\teins\nfr\ttwo\n");
  r = run_cli("eval " + model + " " + d + "/bad.tsv");
  EXPECT_NE(r.output.find("bad.tsv:2: expected task<TAB>source<TAB>target"), std::string::npos) << r.output;
  write_file_atomic(d + "/src.txt", "one two\nred cat\nfour\n");
  write_file_atomic(d + "/ref.txt", "eins zwei\nrot katze\n");
  r = run_cli("eval " + model + " " + d + "/src.txt --ref " + d + "/ref.txt --task de");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("src.txt has 3 lines but"), std::string::npos) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;
  write_file_atomic(d + "/ref.txt", "eins zwei\nrot katze\nvier\n");
  r = run_cli("--threads 1 eval " + model + " " + d + "/src.txt --ref " + d + "/ref.txt --task de");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  write_file_atomic(d + "/it.tsv", "it\tone\tuno\n");
  r = run_cli("train seq2seq --config " + d + "/s2s.yaml --train-data " + d + "/train.tsv --valid-data " + d +
              "/it.tsv --tokenizer " + d + "/tok.model --exp-dir " + d + "/exp2");
  EXPECT_NE(r.output.find("task 'it' is not one of the model's tasks"), std::string::npos) << r.output;
}

// `translate` maps the model file; one rewritten in place (cp over it)
// while lines are still coming ends the command, naming the file, after
// the lines it answered with the model it loaded.
TEST(CliSeq2seq, TranslateStopsWhenItsModelFileIsRewrittenInPlace) {
  if (!have_sentencepiece() || std::system("command -v spm_train > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "SentencePiece tools (package sentencepiece) not installed";
  if (!map_weights_enabled()) GTEST_SKIP() << "MOEKIT_MAP_WEIGHTS=0";
  const std::string d = temp_dir("cli_seq2seq_rewritten");
  const std::string train_tsv = toy_corpus(60, 0);
  write_file_atomic(d + "/train.tsv", train_tsv);
  CliRun r = train_toy_tokenizer(d, train_tsv);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // A 320 x 64 float embedding (80 KiB) is mapped.
  write_file_atomic(d + "/s2s.yaml",
                    "model: {d_model: 64, heads: 4, ffn_hidden: 64, encoder_layers: 1, decoder_layers: 1}\n"
                    "data: {max_tokens: 400}\n"
                    "train_conf: {epochs: 5, total_steps: 2, log_interval: 1, average_last: 1}\n");
  r = run_cli("--threads 1 train seq2seq --config " + d + "/s2s.yaml --train-data " + d + "/train.tsv --valid-data " +
              d + "/train.tsv --tokenizer " + d + "/tok.model --exp-dir " + d + "/exp");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string model = d + "/exp/final", out = d + "/out.txt";
  // The second line is sent once the first one's translation is out, after
  // the model file was rewritten in place with its own bytes.
  const std::string input = "{ echo 'one two'; i=0; while [ ! -s " + out + " ] && [ $i -lt 1200 ]; do sleep 0.05; " +
                            "i=$((i+1)); done; cp " + model + "/model.safetensors " + d + "/copy && cp " + d +
                            "/copy " + model + "/model.safetensors; echo 'three four'; } | ";
  const int status = std::system((input + MOEKIT_CLI_PATH + " --threads 1 translate " + model +
                                   " --task de --batch-size 1 > " + out + " 2> " + d + "/err.txt")
                                      .c_str());
  const std::string errors = read_file(d + "/err.txt");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status << " " << errors;
  EXPECT_NE(errors.find("moekit: error: the model file " + model +
                        "/model.safetensors was rewritten in place while translate was using it"),
            std::string::npos)
      << errors;
  const std::string translated = read_file(out);
  EXPECT_EQ(std::count(translated.begin(), translated.end(), '\n'), 1) << translated;
  // --no-mmap reads the file into memory: the rewrite cannot reach what
  // translate holds, and every line is answered.
  std::remove(out.c_str());
  const int copy_status = std::system((input + MOEKIT_CLI_PATH + " --threads 1 --no-mmap translate " + model +
                                       " --task de --batch-size 1 > " + out + " 2> " + d + "/err.txt")
                                          .c_str());
  EXPECT_TRUE(WIFEXITED(copy_status) && WEXITSTATUS(copy_status) == 0) << copy_status << read_file(d + "/err.txt");
  const std::string all = read_file(out);
  EXPECT_EQ(std::count(all.begin(), all.end(), '\n'), 2) << all;
  EXPECT_EQ(all.substr(0, all.find('\n') + 1), translated);
}

TEST(CliSeq2seq, BenchTimesEveryModelOrOneWithItsResidentMemory) {
  const std::string small =
      "bench seq2seq --d-model 32 --heads 2 --ffn 64 --layers 2 --experts 4 --vocab 100 --rounds 1 --steps 2 "
      "--source-len 3 --batch 1 2";
  auto records = [](const std::string& output) {
    std::vector<nlohmann::json> out;
    std::istringstream lines(output);
    std::string line;
    while (std::getline(lines, line))
      if (!line.empty() && line[0] == '{') out.push_back(nlohmann::json::parse(line));
    return out;
  };
  const CliRun all = run_cli(small);
  ASSERT_EQ(all.exit_code, 0) << all.output;
  const auto a = records(all.output);
  ASSERT_EQ(a.size(), 8u) << all.output;  // 2 batches x 4 models
  const CliRun one = run_cli(small + " --only task_extracted");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const auto b = records(one.output);
  ASSERT_EQ(b.size(), 3u) << one.output;  // 2 batches + the memory record
  EXPECT_EQ(b[0]["model"], "task_extracted");
  EXPECT_FALSE(b[0].contains("vs_token_moe"));
  // The same model as in the run of all four (built from the same draws).
  EXPECT_EQ(b[0]["weights_mb"], a[2]["weights_mb"]);
  EXPECT_EQ(b[2]["model"], "task_extracted");
  EXPECT_GT(b[2]["resident_mb"].get<double>(), 0.0);
  EXPECT_GE(b[2]["peak_resident_mb"].get<double>(), b[2]["resident_mb"].get<double>());
  const CliRun bad = run_cli(small + " --only sparse");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("--only"), std::string::npos) << bad.output;
  // Beam search: batch x beam rows per step, the sentences' tokens counted.
  const CliRun beam = run_cli(small + " --beam 3");
  ASSERT_EQ(beam.exit_code, 0) << beam.output;
  const auto c = records(beam.output);
  ASSERT_EQ(c.size(), 8u) << beam.output;
  for (const auto& r : c) EXPECT_EQ(r["beam"], 3) << r.dump();
  EXPECT_EQ(c[2]["weights_mb"], a[2]["weights_mb"]);
  for (const std::string& wrong :
       std::vector<std::string>{" --beam 0", " --beam 101", " --beam 2 --save-dir " + temp_dir("bench_beam")}) {
    const CliRun refused = run_cli(small + wrong);
    EXPECT_NE(refused.exit_code, 0) << wrong;
    EXPECT_NE(refused.output.find("--beam"), std::string::npos) << refused.output;
  }
}
