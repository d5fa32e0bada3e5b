// Parallel data and seq2seq training: file errors, batches, task sampling,
// exact resume.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <random>
#include <set>

#include "moekit/core/file_io.h"
#include "moekit/data/parallel_data.h"
#include "moekit/train/seq2seq_task.h"
#include "resume_test_util.h"
#include "seq2seq_test_util.h"
#include "test_util.h"

namespace moekit {
namespace {

TEST(ParallelData, FileErrorsNameTheLine) {
  const std::string dir = temp_dir("parallel");
  auto error_for = [&](const std::string& text) {
    write_file_atomic(dir + "/p.tsv", text);
    return error_of<std::invalid_argument>([&] { read_parallel_tsv(dir + "/p.tsv"); });
  };
  EXPECT_EQ(error_for("de\tHello\tHallo\n\nfr\tYes\tOui\n"), "");
  EXPECT_NE(error_for("de\tHello\tHallo\nfr\tYes\n").find("p.tsv:2: expected task<TAB>source<TAB>target, got 2 fields"),
            std::string::npos);
  EXPECT_NE(error_for("de\t\tHallo\n").find("p.tsv:1: empty source"), std::string::npos);
  EXPECT_NE(error_for("de\tHello\tHal\xff" "lo\n").find("p.tsv:1: invalid UTF-8"), std::string::npos);
  EXPECT_NE(error_for("\n\n").find("no sentence pairs"), std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] { read_parallel_tsv(dir + "/missing.tsv"); }).find("no such file"),
            std::string::npos);
  const std::vector<ParallelLine> lines = read_parallel_tsv((error_for("de\tA\tB\r\nfr\tC\tD\nde\tE\tF\n"), dir + "/p.tsv"));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].target, "B");  // CRLF line ends
  EXPECT_EQ(tasks_of(lines), (std::vector<std::string>{"de", "fr"}));
  write_file_atomic(dir + "/a.txt", "x\ny\n");
  write_file_atomic(dir + "/b.txt", "x\n");
  EXPECT_NE(error_of<std::invalid_argument>([&] { read_aligned_lines(dir + "/a.txt", dir + "/b.txt"); })
                .find("has 2 lines but"),
            std::string::npos);
}

TEST(ParallelData, Utf8Validation) {
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("Größe 5€ \xF0\x9F\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xC3"));                // truncated
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));            // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));        // surrogate
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));    // past U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\x80"));
}

// Pairs of a copy task: the target is the source's tokens (ids 3..39) reversed.
std::vector<ParallelExample> copy_pairs(int64_t count, uint64_t seed, const std::vector<int64_t>& task_weights) {
  std::mt19937_64 rng(seed);
  std::vector<ParallelExample> out;
  for (int64_t i = 0; i < count; ++i) {
    ParallelExample e;
    int64_t draw = static_cast<int64_t>(rng() % 100), task = 0;
    while (draw >= task_weights[static_cast<size_t>(task)]) draw -= task_weights[static_cast<size_t>(task++)];
    e.task = task;
    const int64_t len = 2 + static_cast<int64_t>(rng() % 6);
    e.source.push_back(3 + task);  // the task tag
    for (int64_t t = 0; t < len; ++t) e.source.push_back(6 + static_cast<int64_t>(rng() % 30));
    e.target.assign(e.source.rbegin(), e.source.rend() - 1);
    e.source.push_back(2);
    e.target.push_back(2);
    out.push_back(std::move(e));
  }
  return out;
}

TEST(Seq2seqTraining, BatchesKeepTheTokenBudgetAndSampleTasksByTemperature) {
  auto model = std::make_shared<Seq2seqModel>(tiny_seq2seq_config());
  Seq2seqDataOptions o;
  o.max_tokens = 64;
  o.max_source_len = 8;  // sources of 9 tokens are left out
  o.max_target_len = 16;
  o.temperature = 5.0;
  const auto train = copy_pairs(600, 1, {80, 15, 5});
  Seq2seqTrainTask task(model, train, copy_pairs(20, 2, {34, 33, 33}), o, 7, "");
  int64_t too_long = 0;
  std::vector<int64_t> per_task(3, 0);
  for (const auto& e : train) {
    if (e.source.size() > 8) ++too_long;
    else ++per_task[static_cast<size_t>(e.task)];
  }
  EXPECT_EQ(task.skipped_too_long(), too_long);
  // p_t proportional to n_t^(1/5).
  const std::vector<double> p = task.task_probabilities();
  double z = 0;
  for (int64_t n : per_task) z += std::pow(static_cast<double>(n), 0.2);
  for (size_t t = 0; t < 3; ++t) EXPECT_NEAR(p[t], std::pow(static_cast<double>(per_task[t]), 0.2) / z, 1e-12);
  // One epoch draws as many pairs as are usable, in batches within budget,
  // tasks near their probabilities; the same epoch gives the same batches.
  const auto batches = task.batches(0);
  std::vector<int64_t> drawn(3, 0);
  int64_t total = 0;
  for (const auto& b : batches) {
    size_t src = 0, tgt = 0;
    for (int64_t i : b) {
      src = std::max(src, train[static_cast<size_t>(i)].source.size());
      tgt = std::max(tgt, train[static_cast<size_t>(i)].target.size());
      EXPECT_LE(train[static_cast<size_t>(i)].source.size(), 8u);
      ++drawn[static_cast<size_t>(train[static_cast<size_t>(i)].task)];
    }
    EXPECT_LE(static_cast<int64_t>(b.size() * (src + tgt)), o.max_tokens);
    total += static_cast<int64_t>(b.size());
  }
  EXPECT_EQ(total, 600 - too_long);
  for (size_t t = 0; t < 3; ++t) EXPECT_NEAR(static_cast<double>(drawn[t]) / total, p[t], 0.06) << "task " << t;
  const auto again = task.batches(0);
  EXPECT_EQ(again, batches);
  EXPECT_NE(task.batches(1), again);
}

TEST(Seq2seqTraining, KilledRunResumesToTheSameWeights) {
  const std::string dir = temp_dir("seq2seq_resume");
  Seq2seqConfig c = tiny_seq2seq_config(Routing::Token, Routing::Task);
  const auto train_pairs = copy_pairs(160, 3, {40, 30, 30});
  const auto valid_pairs = copy_pairs(24, 4, {34, 33, 33});
  Seq2seqDataOptions data;
  data.max_tokens = 160;
  data.max_source_len = 16;
  data.max_target_len = 16;
  TrainerOptions o;
  o.epochs = 100;
  o.lr = 3e-3;
  o.scheduler = "cosine";
  o.warmup_steps = 5;
  o.total_steps = 40;
  o.eval_interval = 20;
  o.log_interval = 100;
  o.average_last = 1;
  o.seed = 5;
  auto run = [&](const std::string& exp, int64_t max_steps, bool resume) {
    torch::manual_seed(o.seed);
    auto model = std::make_shared<Seq2seqModel>(c);
    Seq2seqTrainTask task(model, train_pairs, valid_pairs, data, o.seed, "");
    TrainerOptions oo = o;
    oo.max_steps = max_steps;
    return train(task, oo, exp, resume);
  };
  TrainSummary whole;
  expect_killed_run_resumes(dir, 23, 40, run, &whole);
  EXPECT_LT(whole.last_validation.at("loss"), std::log(40.0) - 0.25);  // below uniform over the vocabulary: it learned
  const std::string metrics = read_file(dir + "/whole/metrics.jsonl");
  EXPECT_NE(metrics.find("\"tokens\""), std::string::npos);
}

TEST(Seq2seqDistill, WordLevelLossMixesTheLabelLossWithKlToTheTeacher) {
  Seq2seqConfig tc = tiny_seq2seq_config(Routing::Token, Routing::Task);
  tc.moe.capacity_factor = 0;
  torch::manual_seed(1);
  auto teacher = std::make_shared<Seq2seqModel>(tc);
  Seq2seqConfig sc = tc;
  sc.moe.num_experts = 0;  // the dense student
  auto student = std::make_shared<Seq2seqModel>(sc);
  const std::vector<std::string> copied = init_student_from_teacher(*student, *teacher);
  // Embeddings, attention and norms come from the teacher; the MoE positions' dense FFNs do not exist there.
  EXPECT_TRUE(std::find(copied.begin(), copied.end(), "embed_tokens.weight") != copied.end());
  EXPECT_TRUE(std::find(copied.begin(), copied.end(), "decoder.layers.0.ffn.w1.weight") != copied.end());
  EXPECT_TRUE(std::find(copied.begin(), copied.end(), "decoder.layers.1.ffn.w1.weight") == copied.end());
  EXPECT_TRUE(torch::equal(student->embed_tokens->weight, teacher->embed_tokens->weight));

  const auto pairs = copy_pairs(40, 3, {40, 30, 30});
  Seq2seqDataOptions data;
  data.max_tokens = 2000;
  data.label_smoothing = 0.0;
  const double w = 0.3;
  Seq2seqTrainTask plain(student, pairs, pairs, data, 1, "");
  Seq2seqTrainTask distilled(student, pairs, pairs, data, 1, "");
  distilled.set_teacher(teacher, w);
  student->train();
  const BatchLoss a = plain.train_batch(0, 0), b = distilled.train_batch(0, 0);
  ASSERT_TRUE(b.parts.count("kl"));
  EXPECT_GT(b.parts.at("kl"), 0.0);
  // With no label smoothing and a dense student (no aux loss): (1 - w) CE + w KL.
  EXPECT_NEAR(b.loss.item<double>(), (1 - w) * a.loss.item<double>() + w * b.parts.at("kl"), 1e-4);
  EXPECT_NE(error_of<std::invalid_argument>([&] { distilled.set_teacher(teacher, 0.0); }).find("(0, 1]"),
            std::string::npos);
}

TEST(Seq2seqDistill, SequenceLevelTargetsAreTheTeachersTranslations) {
  torch::manual_seed(2);
  auto teacher = std::make_shared<Seq2seqModel>(tiny_seq2seq_config(Routing::Token, Routing::Task));
  teacher->eval();
  const auto pairs = copy_pairs(12, 5, {40, 30, 30});
  SearchOptions search;
  search.beam = 2;
  search.max_length = 8;
  const auto distilled = teacher_targets(*teacher, pairs, search, 5);
  ASSERT_EQ(distilled.size(), pairs.size());
  for (size_t i = 0; i < pairs.size(); ++i) {
    EXPECT_EQ(distilled[i].source, pairs[i].source);
    const auto& e = pairs[i];
    const auto hyps = translate_batch(*teacher, torch::tensor(e.source, torch::kLong).unsqueeze(0),
                                      torch::tensor({static_cast<int64_t>(e.source.size())}, torch::kLong),
                                      torch::tensor({e.task}, torch::kLong), search);
    std::vector<int64_t> want = hyps[0][0].tokens.empty() ? e.target : hyps[0][0].tokens;
    if (!hyps[0][0].tokens.empty()) want.push_back(2);
    EXPECT_EQ(distilled[i].target, want) << i;
  }
}

TEST(Seq2seqTraining, DataThatDoesNotFitTheModelIsRefused) {
  auto model = std::make_shared<Seq2seqModel>(tiny_seq2seq_config());
  auto bad = copy_pairs(10, 1, {100, 0, 0});
  bad[3].target[0] = 40;  // outside the vocabulary
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              Seq2seqTrainTask(model, bad, copy_pairs(5, 2, {100, 0, 0}), {}, 1, "");
            }).find("token id 40 is outside"),
            std::string::npos);
  auto wrong_task = copy_pairs(10, 1, {100, 0, 0});
  wrong_task[0].task = 3;
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              Seq2seqTrainTask(model, wrong_task, copy_pairs(5, 2, {100, 0, 0}), {}, 1, "");
            }).find("task id 3"),
            std::string::npos);
  Seq2seqDataOptions tiny;
  tiny.max_source_len = 2;
  EXPECT_NE(error_of<std::invalid_argument>([&] {
              Seq2seqTrainTask(model, copy_pairs(10, 1, {100, 0, 0}), copy_pairs(5, 2, {100, 0, 0}), tiny, 1, "");
            }).find("no training pair fits"),
            std::string::npos);
}

}  // namespace
}  // namespace moekit
