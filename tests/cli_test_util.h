#pragma once
// Runs the moekit binary (MOEKIT_CLI_PATH) the way a user does.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "moekit/core/file_io.h"

namespace moekit {

struct CliRun {
  int exit_code;
  std::string output;  // stdout + stderr
};

// `prefix` goes before the binary's path (e.g. "env -u VAR NAME=value").
inline CliRun run_cli(const std::string& args, const std::string& prefix = "") {
  const std::string command = prefix + " " + std::string(MOEKIT_CLI_PATH) + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  std::string output;
  std::array<char, 4096> buffer{};
  size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

inline int lines(const std::string& text) {
  int count = 0;
  for (char c : text) count += c == '\n';
  return count;
}

// The loss of every step a training run logged (<exp_dir>/metrics.jsonl).
inline std::vector<double> logged_losses(const std::string& exp_dir) {
  std::vector<double> losses;
  std::istringstream in(read_file(exp_dir + "/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss")) losses.push_back(j["loss"].get<double>());
  }
  return losses;
}

}  // namespace moekit
