// The CLI's thread-pool wait settings (core/runtime.h): applied by starting
// the program over when two or more threads run, never overriding a user's
// own setting, and never repeating output; the weight-panel switch.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <string>

#include "cli_test_util.h"
#include "moekit/core/runtime.h"

namespace moekit {
namespace {

// Runs moekit with the wait variables cleared, then `assignments` set.
CliRun run_clean(const std::string& assignments, const std::string& args) {
  return run_cli(args,
                 "env -u GOMP_SPINCOUNT -u OMP_WAIT_POLICY -u OPENBLAS_THREAD_TIMEOUT -u GOTO_THREAD_TIMEOUT "
                 "-u MOEKIT_THREAD_WAIT " + assignments);
}

nlohmann::json thread_wait(const CliRun& run) {
  EXPECT_EQ(run.exit_code, 0) << run.output;
  return nlohmann::json::parse(run.output).at("thread_wait");
}

TEST(CliRuntime, TwoThreadsGetTheWaitSettings) {
  const nlohmann::json wait = thread_wait(run_clean("", "--threads 2 info --system --json"));
  EXPECT_EQ(wait.value("GOMP_SPINCOUNT", ""), "3000");
  EXPECT_EQ(wait.value("OPENBLAS_THREAD_TIMEOUT", ""), "10");
}

TEST(CliRuntime, OneThreadKeepsTheLibraryDefaults) {
  EXPECT_TRUE(thread_wait(run_clean("", "--threads 1 info --system --json")).empty());
}

TEST(CliRuntime, UserSettingsAndTheOptOutAreKept) {
  nlohmann::json wait = thread_wait(run_clean("GOMP_SPINCOUNT=5", "--threads 2 info --system --json"));
  EXPECT_EQ(wait.value("GOMP_SPINCOUNT", ""), "5");
  EXPECT_EQ(wait.value("OPENBLAS_THREAD_TIMEOUT", ""), "10");
  wait = thread_wait(run_clean("OMP_WAIT_POLICY=active", "--threads 2 info --system --json"));
  EXPECT_EQ(wait.value("OMP_WAIT_POLICY", ""), "active");
  EXPECT_FALSE(wait.contains("GOMP_SPINCOUNT"));
  EXPECT_TRUE(thread_wait(run_clean("MOEKIT_THREAD_WAIT=1", "--threads 2 info --system --json")).empty());
}

TEST(CliRuntime, WeightPanelsAreOnUnlessTheEnvironmentSaysZero) {
  auto panels = [](const std::string& env) {
    const CliRun run = run_cli("--threads 1 info --system --json", "env -u MOEKIT_WEIGHT_PANELS " + env);
    EXPECT_EQ(run.exit_code, 0) << run.output;
    return nlohmann::json::parse(run.output).at("weight_panels").get<bool>();
  };
  EXPECT_TRUE(panels(""));
  EXPECT_TRUE(panels("MOEKIT_WEIGHT_PANELS=1"));
  EXPECT_FALSE(panels("MOEKIT_WEIGHT_PANELS=0"));
}

TEST(Runtime, OpenBlasFallbackCoresAreReplacedByWhatTheCpuRuns) {
  const CpuFeatures none, avx2{true, true, false}, avx512{true, true, true};
  EXPECT_EQ(blas_core_upgrade("Prescott", avx512), "SkylakeX");
  EXPECT_EQ(blas_core_upgrade("Prescott", avx2), "Haswell");
  EXPECT_EQ(blas_core_upgrade("Sandybridge", avx2), "Haswell");
  EXPECT_EQ(blas_core_upgrade("Prescott", none), "");
  EXPECT_EQ(blas_core_upgrade("Haswell", avx512), "");  // an AVX2 choice stays
  EXPECT_EQ(blas_core_upgrade("Zen", avx512), "");
  EXPECT_EQ(blas_core_upgrade("SkylakeX", avx512), "");
  EXPECT_EQ(blas_core_upgrade("", avx512), "");  // not OpenBLAS
}

TEST(CliRuntime, OpenBlasRunsTheBestCoreItHasUnlessTheUserChose) {
  auto blas = [](const std::string& env) {
    const CliRun run = run_cli("--threads 1 info --system --json", "env -u OPENBLAS_CORETYPE " + env);
    EXPECT_EQ(run.exit_code, 0) << run.output;
    return nlohmann::json::parse(run.output).at("blas");
  };
  const nlohmann::json chosen = blas("");
  if (chosen.at("name") != "OpenBLAS") GTEST_SKIP() << "the BLAS here is " << chosen.at("name");
  // Whatever OpenBLAS picked by itself, what runs needs no upgrade.
  EXPECT_EQ(blas_core_upgrade(chosen.at("core").get<std::string>(), cpu_features()), "") << chosen.dump();
  EXPECT_EQ(blas("OPENBLAS_CORETYPE=Prescott").at("core"), "Prescott");
}

TEST(CliRuntime, DeviceErrorsAreOneLine) {
  const std::string bench = " bench moe --d-model 16 --hidden 32 --experts 4 --tokens 4 --rounds 1 --sample-seconds 0.001";
  CliRun run = run_cli("--device tpu" + bench);
  EXPECT_NE(run.exit_code, 0);
  EXPECT_EQ(run.output, "moekit: error: unknown device 'tpu' (cpu, cuda or cuda:N)\n");
  run = run_cli("--device cpu" + bench + " --dtype bfloat16");
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.output.find("--dtype bfloat16 is for --device cuda"), std::string::npos) << run.output;
  const std::string f = " " + std::string(MOEKIT_CLI_PATH);  // any existing file: the device is checked first
  run = run_cli("--device cuda train lm --config" + f + " --train-text" + f + " --valid-text" + f + " --tokenizer" + f +
                " --exp-dir /nonexistent/e");
  EXPECT_NE(run.exit_code, 0);
  if (!torch::cuda::is_available()) {
    EXPECT_NE(run.output.find("this LibTorch sees no CUDA device"), std::string::npos) << run.output;
    run = run_cli("--device cuda" + bench);
    EXPECT_NE(run.exit_code, 0);
    EXPECT_NE(run.output.find("this LibTorch sees no CUDA device"), std::string::npos) << run.output;
  }
}

TEST(CliRuntime, BenchmarkOverSeveralThreadCountsPrintsOnce) {
  const CliRun run = run_clean("", "bench moe --d-model 16 --hidden 32 --experts 4 --tokens 4 --bench-threads 1 2 "
                                   "--rounds 1 --sample-seconds 0.001 --variants moekit --forward-only");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const nlohmann::json j = nlohmann::json::parse(run.output);
  EXPECT_EQ(j.at("benchmark"), "moe_layer");
  EXPECT_EQ(j.at("layer").size(), 2u);
  // Which kernels MoEKit's own choice ran (here the CPU inference loop form).
  EXPECT_EQ(j.at("layer")[0].at("moekit_fast_paths").at("forward").value("moe.cpu_inference", 0), 1);
}

}  // namespace
}  // namespace moekit
