// The trainer's parts, each alone: the learning-rate schedules against their
// formulas, the metrics log and progress line, and the checkpoint store
// (what counts as a checkpoint, pruning, an exact round trip of weights,
// optimizer moments and the random generator).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <sstream>
#include <tuple>

#include "moekit/core/file_io.h"
#include "moekit/models/ffn_stack/ffn_stack.h"
#include "moekit/train/checkpoint_store.h"
#include "moekit/train/metrics_log.h"
#include "moekit/train/optimizer_state.h"
#include "moekit/train/schedule.h"
#include "test_util.h"

namespace moekit {
namespace {

TEST(Schedule, WarmupLrFollowsWeNetsFormulaAndPeaksAtTheWarmupStep) {
  TrainerOptions o;
  o.lr = 0.002;
  o.warmup_steps = 100;
  for (int64_t s : {1, 10, 50, 100, 101, 400, 10000}) {
    const double want = 0.002 * std::sqrt(100.0) * std::min(1 / std::sqrt(double(s)), s * std::pow(100.0, -1.5));
    EXPECT_NEAR(scheduled_lr(o, s, 0), want, 1e-15) << s;
  }
  EXPECT_NEAR(scheduled_lr(o, 100, 0), 0.002, 1e-15);
  EXPECT_NEAR(scheduled_lr(o, 400, 0), 0.001, 1e-15);  // decays as 1/sqrt(step)
  o.warmup_steps = 0;
  EXPECT_EQ(scheduled_lr(o, 7, 0), 0.002);
}

TEST(Schedule, CosineWarmsUpLinearlyThenFallsToMinLrAtTheHorizon) {
  TrainerOptions o;
  o.scheduler = "cosine";
  o.lr = 1.0;
  o.min_lr = 0.1;
  o.warmup_steps = 10;
  EXPECT_NEAR(scheduled_lr(o, 5, 110), 0.5, 1e-12);
  EXPECT_NEAR(scheduled_lr(o, 10, 110), 1.0, 1e-12);
  EXPECT_NEAR(scheduled_lr(o, 60, 110), 0.55, 1e-12);  // halfway: the mean of lr and min_lr
  EXPECT_NEAR(scheduled_lr(o, 110, 110), 0.1, 1e-12);
  EXPECT_NEAR(scheduled_lr(o, 500, 110), 0.1, 1e-12);  // past the horizon
}

TEST(MetricsLog, AppendsOneJsonObjectPerLine) {
  const std::string dir = temp_dir("metrics_log");
  {
    MetricsLog log(dir + "/metrics.jsonl");
    log.write({{"step", 1}, {"loss", 2.5}});
  }
  {
    MetricsLog log(dir + "/metrics.jsonl");  // a resumed run appends
    log.write({{"step", 2}});
  }
  std::istringstream lines(read_file(dir + "/metrics.jsonl"));
  std::string line;
  std::vector<nlohmann::json> records;
  while (std::getline(lines, line)) records.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0]["loss"].get<double>(), 2.5);
  EXPECT_EQ(records[1]["step"].get<int>(), 2);
  EXPECT_THROW(MetricsLog(dir + "/no/such/dir/metrics.jsonl"), std::runtime_error);
}

TEST(MetricsLog, ProgressLineAndRecordCarryTheSameFigures) {
  ProgressReport r;
  r.epoch = 2;
  r.epochs = 5;
  r.batch = 10;
  r.batches = 40;
  r.step = 50;
  r.means = {{"loss", 1.25}, {"ctc", 2.0}};
  r.lr = 1e-3;
  r.grad_norm = 0.5;
  r.units_name = "tokens";
  r.units_per_s = 1234.4;
  r.mfu = 0.031;
  r.elapsed_s = 62;
  r.done = 0.25;
  EXPECT_EQ(progress_line(r),
            "epoch 2/5 batch 10/40 step 50 ctc 2.000 loss 1.250 lr 1.00e-03 tokens/s 1234 mfu 3.1% elapsed 0:01:02 "
            "eta 0:03:06");
  const nlohmann::json j = progress_record(r);
  EXPECT_EQ(j["step"].get<int>(), 50);
  EXPECT_EQ(j["tokens_per_s"].get<double>(), 1234.4);
  EXPECT_EQ(j["loss"].get<double>(), 1.25);
  EXPECT_EQ(j["mfu"].get<double>(), 0.031);
  r.mfu = -1;  // not measured: left out of both
  EXPECT_EQ(progress_line(r).find("mfu"), std::string::npos);
  EXPECT_FALSE(progress_record(r).contains("mfu"));
  EXPECT_EQ(validation_line(7, {{"loss", 0.5}, {"wer", 0.25}}), "step 7 validation: loss 0.5000 wer 0.2500");
  EXPECT_EQ(format_duration(3725), "1:02:05");
}

FfnStackOptions tiny_stack() { return small_stack_options(8, 1); }

TEST(CheckpointStore, RoundTripsWeightsOptimizerAndGeneratorAndPrunesTheOldest) {
  const std::string dir = temp_dir("checkpoint_store");
  CheckpointStore store(dir + "/checkpoints");
  torch::manual_seed(3);
  FfnStack model(tiny_stack());
  torch::optim::Adam adam(model.parameters(), torch::optim::AdamOptions(0.1));
  const auto step = [&] {
    adam.zero_grad();
    model.forward(torch::randn({2, 3, 8})).square().sum().backward();
    adam.step();
  };
  std::vector<std::string> assets;
  for (int64_t s = 1; s <= 4; ++s) {
    step();
    TrainerState state;
    state.step = s;
    state.epoch = s / 2;
    state.next_batch = s % 2;
    state.units_total = 10 * s;
    // Row budgets: one layer that has not routed yet, doubles that need all 17 digits.
    state.moe_load_estimates = {{1.0 / 3.0, 2.5 + 1e-13, 0.5}, {}};
    state.moe_reruns = s;
    state.moe_budget_rows = 1.0 / 7.0 * static_cast<double>(s);
    state.moe_budget_assignments = 123456789.0;
    store.save(state, model, adam, [&](const std::string& d) { assets.push_back(d); }, /*keep=*/2);
  }
  ASSERT_EQ(store.list(), (std::vector<std::string>{dir + "/checkpoints/step_3", dir + "/checkpoints/step_4"}));
  EXPECT_EQ(assets.size(), 4u);
  const TrainerState s4 = CheckpointStore::read_state(dir + "/checkpoints/step_4");
  EXPECT_EQ(s4.units_total, 40);
  EXPECT_EQ(s4.moe_load_estimates, (std::vector<std::vector<double>>{{1.0 / 3.0, 2.5 + 1e-13, 0.5}, {}}));
  EXPECT_EQ(s4.moe_reruns, 4);
  EXPECT_EQ(s4.moe_budget_rows, 1.0 / 7.0 * 4.0);
  EXPECT_EQ(s4.moe_budget_assignments, 123456789.0);
  // A malformed budget record is named, not read as something else.
  make_dirs(dir + "/bad");
  for (const std::string budgets : {"3", "{load_estimates: x}", "{load_estimates: [[1, a]]}", "{reruns: [1]}"}) {
    write_file_atomic(dir + "/bad/trainer_state.yaml", "step: 8\nepoch: 1\nnext_batch: 0\nmoe_row_budgets: " + budgets + "\n");
    try {
      CheckpointStore::read_state(dir + "/bad");
      ADD_FAILURE() << budgets << " was read";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("trainer_state.yaml"), std::string::npos) << e.what();
      EXPECT_TRUE(std::string(e.what()).find("moe_row_budgets") != std::string::npos ||
                  std::string(e.what()).find("load_estimates") != std::string::npos ||
                  std::string(e.what()).find("reruns") != std::string::npos)
          << e.what();
    }
  }
  EXPECT_TRUE(s4.averageable());                                                   // next_batch 0
  EXPECT_FALSE(CheckpointStore::read_state(dir + "/checkpoints/step_3").averageable());  // mid-epoch
  // A directory without trainer_state.yaml (a save killed half-way) is not a checkpoint.
  make_dirs(dir + "/checkpoints/step_9");
  write_file_atomic(dir + "/checkpoints/step_9/model.safetensors", "partial");
  EXPECT_EQ(store.list().back(), dir + "/checkpoints/step_4");

  // What the next step does after step 4, from the live run...
  const torch::Tensor rng_after_save = at::detail::getDefaultCPUGenerator().get_state();
  step();
  std::vector<torch::Tensor> want;
  for (const auto& p : model.parameters()) want.push_back(p.detach().clone());
  // ...and from a fresh model restored from step 4.
  torch::manual_seed(99);
  FfnStack restored(tiny_stack());
  torch::optim::Adam adam2(restored.parameters(), torch::optim::AdamOptions(0.1));
  const TrainerState loaded = store.load(dir + "/checkpoints/step_4", restored, adam2);
  EXPECT_EQ(loaded.step, 4);
  EXPECT_TRUE(torch::equal(at::detail::getDefaultCPUGenerator().get_state(), rng_after_save));
  adam2.zero_grad();
  restored.forward(torch::randn({2, 3, 8})).square().sum().backward();
  adam2.step();
  const auto got = restored.parameters();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(torch::equal(got[i], want[i])) << i;
}


// Adam's state of each parameter, in parameter order: step, exp_avg, exp_avg_sq.
std::vector<std::tuple<int64_t, torch::Tensor, torch::Tensor>> adam_state(torch::optim::Adam& adam,
                                                                          const std::vector<torch::Tensor>& params) {
  std::vector<std::tuple<int64_t, torch::Tensor, torch::Tensor>> out;
  for (const auto& p : params) {
    auto& s = static_cast<torch::optim::AdamParamState&>(*adam.state().at(optimizer_state_key(p)));
    out.emplace_back(s.step(), s.exp_avg(), s.exp_avg_sq());
  }
  return out;
}

TEST(CheckpointStore, MomentsAreStoredByNameTheEarlierArchiveLoadsAndBadMomentsAreNamed) {
  const std::string dir = temp_dir("checkpoint_moments");
  CheckpointStore store(dir + "/checkpoints");
  torch::manual_seed(5);
  FfnStack model(tiny_stack());
  torch::optim::Adam adam(model.parameters(), torch::optim::AdamOptions(0.1));
  for (int i = 0; i < 2; ++i) {
    adam.zero_grad();
    model.forward(torch::randn({2, 3, 8})).square().sum().backward();
    adam.step();
  }
  TrainerState state;
  state.step = 2;
  store.save(state, model, adam, [](const std::string&) {}, 2);
  const std::string ckpt = dir + "/checkpoints/step_2";
  const TensorMap moments = read_safetensors(ckpt + "/optimizer.safetensors").tensors;
  const auto named = model.named_parameters();
  ASSERT_GT(named.size(), 0u);
  for (const auto& p : named) {
    ASSERT_TRUE(moments.count(p.key() + ".exp_avg")) << p.key();
    EXPECT_EQ(moments.at(p.key() + ".step").item<int64_t>(), 2) << p.key();
  }
  const auto want = adam_state(adam, model.parameters());
  auto expect_restored = [&](const std::string& what) {
    FfnStack restored(tiny_stack());
    torch::optim::Adam adam2(restored.parameters(), torch::optim::AdamOptions(0.1));
    store.load(ckpt, restored, adam2);
    const auto got = adam_state(adam2, restored.parameters());
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(std::get<0>(got[i]), std::get<0>(want[i])) << what << " " << i;
      EXPECT_TRUE(torch::equal(std::get<1>(got[i]), std::get<1>(want[i]))) << what << " " << i;
      EXPECT_TRUE(torch::equal(std::get<2>(got[i]), std::get<2>(want[i]))) << what << " " << i;
    }
  };
  expect_restored("by name");

  // A moment of no parameter, one of the wrong shape: named, nothing loaded.
  const auto refused = [&](TensorMap bad, const std::string& message) {
    write_safetensors(ckpt + "/optimizer.safetensors", bad);
    FfnStack restored(tiny_stack());
    torch::optim::Adam adam2(restored.parameters(), torch::optim::AdamOptions(0.1));
    try {
      store.load(ckpt, restored, adam2);
      ADD_FAILURE() << "loaded: " << message;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
    EXPECT_TRUE(adam2.state().empty());
  };
  TensorMap extra = moments;
  extra["nope.exp_avg"] = torch::zeros({2});
  refused(extra, "'nope.exp_avg' belongs to no parameter of the model");
  TensorMap misshaped = moments;
  const std::string first = named[0].key();
  misshaped[first + ".exp_avg"] = torch::zeros({3});
  refused(misshaped, "'" + first + ".exp_avg' has shape [3]");

  // The earlier format: one torch archive (optimizer.pt).
  std::remove((ckpt + "/optimizer.safetensors").c_str());
  torch::serialize::OutputArchive archive;
  adam.save(archive);
  archive.save_to(ckpt + "/optimizer.pt");
  expect_restored("optimizer.pt");
}

}  // namespace
}  // namespace moekit
