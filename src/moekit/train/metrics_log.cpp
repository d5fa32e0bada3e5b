#include "moekit/train/metrics_log.h"

#include <iomanip>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"

namespace moekit {

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds);
  std::ostringstream out;
  out << s / 3600 << ":" << std::setw(2) << std::setfill('0') << (s / 60) % 60 << ":" << std::setw(2)
      << std::setfill('0') << s % 60;
  return out.str();
}

std::string progress_line(const ProgressReport& r) {
  std::ostringstream line;
  line << "epoch " << r.epoch << "/" << r.epochs << " batch " << r.batch << "/" << r.batches << " step " << r.step;
  for (const auto& [k, v] : r.means) line << " " << k << " " << std::fixed << std::setprecision(3) << v;
  line << " lr " << std::scientific << std::setprecision(2) << r.lr << std::fixed << " " << r.units_name << "/s "
       << std::setprecision(0) << r.units_per_s;
  if (r.mfu >= 0) line << " mfu " << std::setprecision(1) << 100 * r.mfu << "%";
  if (r.comm >= 0) line << " comm " << std::setprecision(0) << 100 * r.comm << "%";
  line << " elapsed " << format_duration(r.elapsed_s);
  if (r.done > 0) line << " eta " << format_duration(r.elapsed_s / r.done * (1 - r.done));
  return line.str();
}

nlohmann::json progress_record(const ProgressReport& r) {
  nlohmann::json j = {{"step", r.step},
                      {"epoch", r.epoch},
                      {"lr", r.lr},
                      {"grad_norm", r.grad_norm},
                      {r.units_name + "_per_s", r.units_per_s}};
  for (const auto& [k, v] : r.means) j[k] = v;
  if (r.mfu >= 0) j["mfu"] = r.mfu;
  if (r.comm >= 0) j["comm"] = r.comm;
  return j;
}

std::string validation_line(int64_t step, const std::map<std::string, double>& values) {
  std::ostringstream line;
  line << "step " << step << " validation:";
  for (const auto& [k, v] : values) line << " " << k << " " << std::fixed << std::setprecision(4) << v;
  return line.str();
}

MetricsLog::MetricsLog(const std::string& path) : path_(path), out_(path, std::ios::app) {
  MOEKIT_CHECK(out_.good(), "cannot open '", path, "' for appending");
}

void MetricsLog::keep_through_step(int64_t step) {
  out_.close();
  std::string kept;
  if (step > 0) {
    std::istringstream in(read_file(path_));
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      // A line cut short by the kill is dropped with the rest.
      if (j.is_discarded() || !j.is_object()) continue;
      if (j.contains("step") && j["step"].is_number_integer() && j["step"].get<int64_t>() > step) continue;
      kept += line + "\n";
    }
  }
  write_file_atomic(path_, kept);
  out_.open(path_, std::ios::app);
  MOEKIT_CHECK(out_.good(), "cannot open '", path_, "' for appending");
}

void MetricsLog::write(const nlohmann::json& record) {
  out_ << record.dump() << "\n" << std::flush;
  MOEKIT_CHECK(out_.good(), "cannot write to '", path_, "'");
}

}  // namespace moekit
