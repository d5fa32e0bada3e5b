// The moekit binary end to end: exit codes, one-line errors, info output.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "moekit/models/ffn_stack/ffn_stack.h"

namespace moekit {
namespace {

struct CliRun {
  int exit_code;
  std::string output;  // stdout + stderr
};

CliRun run_cli(const std::string& args) {
  const std::string command = std::string(MOEKIT_CLI_PATH) + " " + args + " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  std::string output;
  std::array<char, 4096> buffer{};
  size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

int lines(const std::string& text) {
  int count = 0;
  for (char c : text) count += c == '\n';
  return count;
}

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
  const auto dir = std::filesystem::temp_directory_path() / ("moekit-cli-" + std::to_string(::getpid()));
  FfnStackOptions o;
  o.d_model = 8;
  o.d_hidden = 16;
  o.num_layers = 2;
  o.moe_options.num_experts = 4;
  o.moe_options.top_k = 2;
  save_model(dir.string(), FfnStack(o));
  const CliRun run = run_cli("info --json " + dir.string());
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
