#pragma once
// The killed-run-resumes check every training test shares.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
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
  // What a kill also leaves: records logged after the last checkpoint (the
  // last line cut short), a checkpoint half-written by an older writer and
  // a staging temporary.
  {
    std::ofstream log(dir + "/killed/metrics.jsonl", std::ios::app);
    log << "{\"step\": " << stop_at + 1 << ", \"loss\": 1.0}\n{\"step\": " << stop_at + 2;
  }
  const std::string half = dir + "/killed/checkpoints/step_" + std::to_string(stop_at + 1);
  const std::string staging = dir + "/killed/checkpoints/.step_" + std::to_string(stop_at + 1) + ".tmp.Ab12Cd";
  make_dirs(half);
  make_dirs(staging);
  const TrainSummary rest = run(dir + "/killed", 0, true);
  EXPECT_FALSE(path_exists(half));
  EXPECT_FALSE(path_exists(staging));
  // The resumed run's log holds each step once, as the whole run's does.
  const auto steps_of = [](const std::string& path) {
    std::vector<int64_t> steps;
    std::istringstream in(read_file(path));
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      steps.push_back(j.value("step", int64_t{-1}));
    }
    return steps;
  };
  EXPECT_EQ(steps_of(dir + "/killed/metrics.jsonl"), steps_of(dir + "/whole/metrics.jsonl"));
  EXPECT_TRUE(rest.completed);
  EXPECT_EQ(rest.steps, total_steps);
  const TensorMap a = read_model_weights(whole.final_dir), b = read_model_weights(rest.final_dir);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  // A directory holding a finished model but no checkpoints is not trained into.
  make_dirs(dir + "/finished/final");
  EXPECT_NE(error_of<std::invalid_argument>([&] { run(dir + "/finished", 0, false); }).find("final/"),
            std::string::npos);
  if (whole_summary != nullptr) *whole_summary = whole;
}

}  // namespace moekit
