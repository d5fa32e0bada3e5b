#pragma once
// The killed-run-resumes check every training test shares.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>

#include "moekit/core/model_dir.h"
#include "moekit/train/trainer.h"
#include "test_util.h"

namespace moekit {

// run(exp_dir, max_steps, resume) trains a fresh model and task the same
// way each call (max_steps 0: to the end). Checks that a whole run takes
// `total_steps`; that a run stopped after `stop_at` steps (a killed run's
// last checkpoint) is not complete, refuses to start over without
// --resume, and resumed ends with exactly the whole run's final weights.
inline void expect_killed_run_resumes(const std::string& dir, int64_t stop_at, int64_t total_steps,
                                      const std::function<TrainSummary(const std::string&, int64_t, bool)>& run,
                                      TrainSummary* whole_summary = nullptr) {
  const TrainSummary whole = run(dir + "/whole", 0, false);
  EXPECT_TRUE(whole.completed);
  EXPECT_EQ(whole.steps, total_steps);
  const TrainSummary first = run(dir + "/killed", stop_at, false);
  EXPECT_FALSE(first.completed);
  EXPECT_EQ(first.steps, stop_at);
  EXPECT_NE(error_of<std::invalid_argument>([&] { run(dir + "/killed", 0, false); }).find("--resume"),
            std::string::npos);
  const TrainSummary rest = run(dir + "/killed", 0, true);
  EXPECT_TRUE(rest.completed);
  EXPECT_EQ(rest.steps, total_steps);
  const TensorMap a = read_model_weights(whole.final_dir), b = read_model_weights(rest.final_dir);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  if (whole_summary != nullptr) *whole_summary = whole;
}

}  // namespace moekit
