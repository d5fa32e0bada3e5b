#pragma once
// What a training run reports: a progress line on stderr and the same
// figures as one JSON object per line in <exp_dir>/metrics.jsonl.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <map>
#include <string>

namespace moekit {

// One progress report: means over the optimizer steps since the last one.
struct ProgressReport {
  int64_t epoch = 0, epochs = 0;    // 1-based epoch of the total
  int64_t batch = 0, batches = 0;   // 1-based batch of the epoch's
  int64_t step = 0;                 // optimizer steps taken
  std::map<std::string, double> means;  // loss and its parts
  double lr = 0.0;
  double grad_norm = 0.0;
  std::string units_name = "frames";
  double units_per_s = 0.0;
  double mfu = -1.0;                // model FLOPs utilization, < 0: not reported
  double comm = -1.0;               // distributed runs: share of the time in collectives, < 0: not reported
  double elapsed_s = 0.0;
  double done = 0.0;                // fraction of the run done, for the ETA (0: none)
};

// "epoch 2/5 batch 10/40 step 50 loss 1.234 lr 1.00e-03 frames/s 1234 mfu 3.1% elapsed 0:01:02 eta 0:03:00"
std::string progress_line(const ProgressReport& r);
// {"step":50,"epoch":2,"lr":...,"grad_norm":...,"frames_per_s":...,"loss":...,"mfu":...}
nlohmann::json progress_record(const ProgressReport& r);
// "step 50 validation: loss 1.2345 wer 0.5000"
std::string validation_line(int64_t step, const std::map<std::string, double>& values);
// h:mm:ss
std::string format_duration(double seconds);

// Appends JSON lines to a file, each flushed as written (a killed run keeps
// every line it reported; a resumed run appends after them).
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path);
  void write(const nlohmann::json& record);
  // Drops the records of steps after `step` (all records when `step` is 0:
  // a run starting over), rewriting the file atomically. A run resumed
  // from the checkpoint of step N calls it with N, so the steps a killed
  // run logged after that checkpoint do not appear twice.
  void keep_through_step(int64_t step);

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace moekit
