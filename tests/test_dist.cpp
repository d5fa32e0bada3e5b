// Distributed runs on localhost with Gloo: two processes started by
// `moekit launch`, each this test binary running DistWorker.Run with a
// scenario named by MOEKIT_DIST_SCENARIO; they write what they computed to
// MOEKIT_DIST_OUT, and the test compares it with one process doing the same.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "asr_test_util.h"
#include "cli_test_util.h"
#include "moekit/audio/audio_file.h"
#include "moekit/core/model_dir.h"
#include "moekit/data/sentencepiece.h"
#include "moekit/core/safetensors.h"
#include "moekit/dist/all_to_all.h"
#include "moekit/dist/sharded_checkpoint.h"
#include "moekit/dist/grad_sync.h"
#include "moekit/dist/process_group.h"
#include "moekit/moe/moe_layer.h"
#include "test_util.h"

namespace moekit {
namespace {

// Environment variables set for one scope, restored after.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::map<std::string, std::string>& set) {
    for (const char* n : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) {
      const char* v = std::getenv(n);
      saved_[n] = v ? std::optional<std::string>(v) : std::nullopt;
      ::unsetenv(n);
    }
    for (const auto& [k, v] : set) ::setenv(k.c_str(), v.c_str(), 1);
  }
  ~ScopedEnv() {
    for (const auto& [k, v] : saved_) {
      if (v) {
        ::setenv(k.c_str(), v->c_str(), 1);
      } else {
        ::unsetenv(k.c_str());
      }
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

std::string launch_error(const std::map<std::string, std::string>& env) {
  ScopedEnv scoped(env);
  return error_of<std::invalid_argument>([] { dist::LaunchEnv::from_environment(); });
}

TEST(Dist, LaunchEnvironmentIsReadAsTorchrunSetsItAndRefusedWhenIncomplete) {
  {
    ScopedEnv none({});
    const dist::LaunchEnv env = dist::LaunchEnv::from_environment();
    EXPECT_EQ(env.world_size, 1);
    EXPECT_FALSE(env.distributed());
  }
  {
    ScopedEnv full({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.2"},
                    {"MASTER_PORT", "29400"}});
    const dist::LaunchEnv env = dist::LaunchEnv::from_environment();
    EXPECT_EQ(env.rank, 1);
    EXPECT_EQ(env.world_size, 4);
    EXPECT_EQ(env.master_addr, "10.0.0.2");
    EXPECT_EQ(env.master_port, 29400);
  }
  EXPECT_NE(launch_error({{"RANK", "0"}}).find("WORLD_SIZE is not set"), std::string::npos);
  EXPECT_EQ(launch_error({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "1"}}),
            "launch environment: RANK='2' is not an integer in [0, 1]");
  EXPECT_EQ(launch_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "29500"}}),
            "launch environment: MASTER_ADDR is not set (WORLD_SIZE is 2)");
  EXPECT_EQ(launch_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "x"}, {"MASTER_PORT", "70000"}}),
            "launch environment: MASTER_PORT='70000' is not an integer in [1, 65535]");
  EXPECT_EQ(launch_error({{"RANK", "zero"}, {"WORLD_SIZE", "1"}}),
            "launch environment: RANK='zero' is not an integer in [0, 0]");
}

// A checkpoint's shard manifest that is not what write_shard_manifest
// writes is refused with one line naming the file: a version given as a
// huge float or a string included (never converted or thrown as a JSON
// type error).
TEST(Dist, AMalformedShardManifestIsRefusedByName) {
  const std::string dir = temp_dir("dist_manifest");
  dist::ShardManifest written;
  written.shards = 2;
  written.sharded["layers.0.mlp.experts.w1"] = {8, 16, 32};
  dist::write_shard_manifest(dir, written);
  const auto read = dist::read_shard_manifest(dir);
  ASSERT_TRUE(read.has_value());
  EXPECT_EQ(read->shards, 2);
  EXPECT_EQ(read->sharded, written.sharded);
  const std::string path = dir + "/" + dist::kShardManifestFile;
  const std::string good = read_file(path);
  for (const char* version : {"1e300", "\"1\"", "2", "null"}) {
    nlohmann::json j = nlohmann::json::parse(good);
    j["format_version"] = nlohmann::json::parse(version);
    write_file_atomic(path, j.dump());
    const std::string error = error_of<std::invalid_argument>([&] { dist::read_shard_manifest(dir); });
    EXPECT_NE(error.find("not a shard manifest of format_version 1"), std::string::npos) << version << ": " << error;
    EXPECT_EQ(error.rfind(path, 0), 0u) << error;
  }
  write_file_atomic(path, "{\"format_version\": 1, \"shards\": 0.5, \"sharded\": {}}");
  EXPECT_NE(error_of<std::invalid_argument>([&] { dist::read_shard_manifest(dir); }).find("'shards' must be an integer"),
            std::string::npos);
}

TEST(Dist, OneProcessGroupIsTheIdentity) {
  const auto group = dist::Group::single();
  EXPECT_EQ(group->size(), 1);
  torch::Tensor x = torch::randn({5, 3}, torch::requires_grad());
  const torch::Tensor y = dist::all_to_all_rows(*group, x, {5}, {5});
  EXPECT_TRUE(torch::equal(y, x));
  (y * 2).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), torch::full_like(x, 2.0)));
  std::vector<torch::Tensor> t{torch::ones({2})};
  group->all_reduce_sum(t);
  EXPECT_TRUE(torch::equal(t[0], torch::ones({2})));
  torch::Tensor p = torch::ones({3}, torch::requires_grad());
  (p * 4).sum().backward();
  dist::all_reduce_gradients(*group, {p}, 2.0);
  EXPECT_TRUE(torch::allclose(p.grad(), torch::full({3}, 2.0)));
}

// ---- the two-process scenarios ------------------------------------------

constexpr int64_t kD = 16, kH = 24, kE = 4;

MoEOptions ep_options(double capacity_factor) {
  MoEOptions o;
  o.d_model = kD;
  o.d_hidden = kH;
  o.num_experts = kE;
  o.top_k = 2;
  o.capacity_factor = capacity_factor;
  o.aux_loss_coef = 0.01;
  o.activation = Activation::SwiGLU;  // gated experts: w1, w3, w2
  return o;
}

// Rank r's tokens (with padding) and the weights of its loss.
struct RankInput {
  torch::Tensor x, mask, loss_weight;
};
RankInput rank_input(int rank) {
  torch::manual_seed(100 + rank);
  RankInput in;
  in.x = torch::randn({3, 5 + rank, kD});
  in.mask = torch::ones({3, 5 + rank}, torch::kBool);
  in.mask.index_put_({1, torch::indexing::Slice(3, torch::indexing::None)}, false);
  in.loss_weight = torch::randn({3, 5 + rank, kD});
  return in;
}

// One training step's forward and backward of a fresh layer (seed 7) on
// rank r's tokens: output, input gradient, the layer's gradients.
struct LayerStep {
  torch::Tensor y, x_grad;
  TensorMap grads;
};
LayerStep layer_step(MoELayer& layer, int rank) {
  RankInput in = rank_input(rank);
  in.x.set_requires_grad(true);
  const torch::Tensor y = layer->forward(in.x, RouteInput(in.mask));
  torch::Tensor loss = (y * in.loss_weight).sum();
  if (layer->aux_loss().defined()) loss = loss + layer->aux_loss();
  loss.backward();
  LayerStep s;
  s.y = y.detach();
  s.x_grad = in.x.grad().clone();
  for (const auto& p : layer->named_parameters())
    if (p.value().grad().defined()) s.grads[p.key()] = p.value().grad().clone();
  return s;
}

MoELayer fresh_layer(double capacity_factor) {
  torch::manual_seed(7);
  MoELayer layer(ep_options(capacity_factor));
  layer->train();
  return layer;
}

int scenario_timeout_ms() {
  const char* v = std::getenv("MOEKIT_DIST_TIMEOUT_MS");
  return v ? std::atoi(v) : 60000;
}

// Runs inside each launched process (skipped in an ordinary test run).
TEST(DistWorker, Run) {
  const char* scenario = std::getenv("MOEKIT_DIST_SCENARIO");
  const char* out = std::getenv("MOEKIT_DIST_OUT");
  if (scenario == nullptr || out == nullptr) GTEST_SKIP() << "a worker of the Dist tests (run by them)";
  const auto world = dist::init_from_environment(std::chrono::milliseconds(scenario_timeout_ms()));
  const std::string name = scenario;
  const std::string file = std::string(out) + "/rank" + std::to_string(world->rank()) + ".safetensors";
  if (name == "ep_dropless" || name == "ep_capacity") {
    MoELayer layer = fresh_layer(name == "ep_capacity" ? 1.0 : 0.0);
    layer->shard_experts(world);
    const LayerStep s = layer_step(layer, world->rank());
    TensorMap save = s.grads;
    save["y"] = s.y;
    save["x_grad"] = s.x_grad;
    write_safetensors(file, save);
    // This rank's output as one process holding every expert computes it
    // (the parent test compares the gradients too).
    MoELayer whole = fresh_layer(name == "ep_capacity" ? 1.0 : 0.0);
    const LayerStep alone = layer_step(whole, world->rank());
    EXPECT_LE((s.y - alone.y).abs().max().item<double>(), 1e-5);
    EXPECT_LE((s.x_grad - alone.x_grad).abs().max().item<double>(), 1e-5);
  } else if (name == "ep_idle_rank") {
    // Rank 1 has no tokens at all: it must still take part in the exchange.
    MoELayer layer = fresh_layer(0.0);
    layer->shard_experts(world);
    torch::manual_seed(5);
    const int64_t t = world->rank() == 0 ? 6 : 0;
    const torch::Tensor x = torch::randn({2, t, kD});
    torch::Tensor y;
    {
      torch::NoGradGuard no_grad;
      y = layer->forward(x);
    }
    write_safetensors(file, {{"y", y}});
    // A training step in which rank 1 receives no rows either: every token
    // (all-positive) prefers experts 0 and 1, which rank 0 holds.
    {
      torch::NoGradGuard no_grad;
      layer->gate->weight.copy_(torch::tensor({1.0f, 1.0f, -1.0f, -1.0f}).unsqueeze(1).expand({kE, kD}));
    }
    const torch::Tensor xs = torch::rand({2, t, kD}, torch::requires_grad()) + 0.1;
    layer->forward(xs).sum().backward();
    EXPECT_EQ(layer->last_stats().tokens_per_expert[2], 0);
    for (const auto& p : layer->experts->parameters()) EXPECT_TRUE(p.grad().defined());
  } else if (name == "ep_indivisible") {
    MoEOptions o = ep_options(0.0);
    o.num_experts = 3;
    MoELayer layer(o);
    layer->shard_experts(world);
  } else if (name == "collectives") {
    std::vector<torch::Tensor> t{torch::full({3}, static_cast<float>(world->rank() + 1))};
    world->all_reduce_sum(t);
    const auto gathered = world->all_gather(torch::full({2}, static_cast<float>(10 * world->rank())));
    // Means in buckets of mixed dtypes and sizes (a 16-byte bucket: one or two tensors each).
    std::vector<torch::Tensor> buffers{torch::full({3}, world->rank() + 1.0f),
                                       torch::full({2, 2}, 10.0 * (world->rank() + 1), torch::kDouble),
                                       torch::full({1}, world->rank() * 4.0f), torch::full({1}, 2.0f)};
    dist::all_reduce_mean(*world, buffers, 16);
    EXPECT_TRUE(torch::equal(buffers[0], torch::full({3}, 1.5f)));
    EXPECT_TRUE(torch::equal(buffers[1], torch::full({2, 2}, 15.0, torch::kDouble)));
    EXPECT_TRUE(torch::equal(buffers[2], torch::full({1}, 2.0f)));
    EXPECT_TRUE(torch::equal(buffers[3], torch::full({1}, 2.0f)));
    write_safetensors(file, {{"sum", t[0]}, {"gathered", torch::cat(gathered)}});
    EXPECT_TRUE(torch::equal(t[0], torch::full({3}, 3.0f)));
    EXPECT_TRUE(torch::equal(torch::cat(gathered), torch::tensor({0.0f, 0.0f, 10.0f, 10.0f})));
  } else if (name == "grad_overlap") {
    // The same gradients from the overlapped reducer as from
    // all_reduce_gradients after the pass: two accumulated passes (only the
    // last armed), a parameter without a gradient, then a step in which
    // rank 1 has no backward pass at all (a skipped non-finite batch), then
    // two steps never armed (overlap off: every bucket after the pass),
    // gradients set to none before each of those steps; then an armed and
    // an unarmed step with the gradients zeroed in place, as LibTorch 1.13's
    // optimizers do, in which they must stay where the reducer put them
    // (views of its buckets: nothing copied, no second copy kept).
    auto make = [] {
      torch::manual_seed(1);
      torch::nn::Sequential net(torch::nn::Linear(32, 32), torch::nn::Linear(32, 32), torch::nn::Linear(32, 32),
                                torch::nn::Linear(32, 32), torch::nn::Linear(32, 32));
      return net;
    };
    torch::nn::Sequential a = make(), b = make();
    // Layer 0 takes no part in the loss: its parameters get no gradient.
    auto loss_of = [&](torch::nn::Sequential& net, int pass) {
      torch::manual_seed(10 * world->rank() + pass);
      torch::Tensor x = torch::randn({4, 32});
      for (size_t i = 1; i < net->size(); ++i) x = torch::tanh(net[i]->as<torch::nn::Linear>()->forward(x));
      return x.square().sum();
    };
    dist::GradientReducer reducer(world, a->parameters(), /*bucket_bytes=*/4500, /*first_bucket_bytes=*/4500);
    EXPECT_GE(reducer.buckets(), 5);
    std::vector<const void*> where;  // each gradient's storage after step 3
    for (int step = 0; step < 6; ++step) {
      const bool in_place = step >= 4, armed = step < 2 || step == 4;
      for (auto* net : {&a, &b}) {
        for (auto& p : (*net)->parameters()) {
          if (in_place) p.mutable_grad().zero_();
          else p.mutable_grad() = torch::Tensor();
        }
      }
      const bool skipped = step == 1 && world->rank() == 1;
      for (int pass = 0; pass < 2; ++pass) {
        if (pass == 1 && armed) reducer.arm();
        if (skipped && pass == 1) continue;
        loss_of(a, pass).backward();
        loss_of(b, pass).backward();
      }
      reducer.finish(2.0);
      dist::all_reduce_gradients(*world, b->parameters(), 2.0);
      const auto pa = a->parameters(), pb = b->parameters();
      for (size_t i = 0; i < pa.size(); ++i)
        EXPECT_TRUE(torch::equal(pa[i].grad(), pb[i].grad())) << "step " << step << " parameter " << i;
      // The passes that ran started every bucket but layer 0's during the pass.
      if (!armed || skipped) {
        EXPECT_EQ(reducer.started_in_backward(), 0) << "step " << step;
      } else {
        EXPECT_GE(reducer.started_in_backward(), 1) << "step " << step;
        EXPECT_LT(reducer.started_in_backward(), reducer.buckets()) << "step " << step;
      }
      if (step == 3) {
        for (const auto& p : pa) where.push_back(p.grad().data_ptr());
        // A bucket's gradients lie one after the other in it: the last
        // parameter's gradient ends where the one before it starts (buckets
        // hold the parameters in reverse order).
        EXPECT_EQ(static_cast<const float*>(where[pa.size() - 1]) + pa.back().numel(), where[pa.size() - 2]);
      }
      if (step >= 4) {
        for (size_t i = 0; i < pa.size(); ++i)
          EXPECT_EQ(pa[i].grad().data_ptr(), where[i]) << "step " << step << " parameter " << i;
      }
    }
    TensorMap grads;
    for (const auto& p : a->named_parameters()) grads[p.key()] = p.value().grad();
    write_safetensors(file, grads);
  } else if (name == "peer_dies") {
    world->barrier();
    if (world->rank() == 1) std::_Exit(3);
    std::vector<torch::Tensor> t{torch::ones({4})};
    world->all_reduce_sum(t);  // throws: rank 1 is gone
    world->all_reduce_sum(t);
  } else if (name == "peer_hangs") {
    world->barrier();
    if (world->rank() == 1) std::this_thread::sleep_for(std::chrono::seconds(60));
    std::vector<torch::Tensor> t{torch::ones({4})};
    world->all_reduce_sum(t);  // throws after the timeout
  } else {
    FAIL() << "unknown scenario " << name;
  }
}

struct WorkerRun {
  CliRun run;
  std::string out;
  double seconds = 0;
};

WorkerRun launch_workers(const std::string& scenario, int timeout_ms = 60000, const std::string& extra = "") {
  WorkerRun w;
  w.out = temp_dir("dist_" + scenario);
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const auto start = std::chrono::steady_clock::now();
  w.run = run_cli("launch -n 2 --grace 3 " + extra + " -- " + self + " --gtest_filter=DistWorker.Run",
                  "env MOEKIT_DIST_SCENARIO=" + scenario + " MOEKIT_DIST_OUT=" + w.out +
                      " MOEKIT_DIST_TIMEOUT_MS=" + std::to_string(timeout_ms) + " OMP_NUM_THREADS=1");
  w.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return w;
}

TensorMap worker_result(const WorkerRun& w, int rank) {
  return read_safetensors(w.out + "/rank" + std::to_string(rank) + ".safetensors").tensors;
}

#define SKIP_WITHOUT_GLOO() \
  if (!dist::gloo_available()) GTEST_SKIP() << "this build has no c10d Gloo backend (libgloo-dev)"

TEST(Dist, CollectivesSumAndGatherOverTwoProcesses) {
  SKIP_WITHOUT_GLOO();
  const WorkerRun w = launch_workers("collectives");
  ASSERT_EQ(w.run.exit_code, 0) << w.run.output;
  for (int r = 0; r < 2; ++r) {
    const TensorMap got = worker_result(w, r);
    EXPECT_TRUE(torch::equal(got.at("sum"), torch::full({3}, 3.0f)));
    EXPECT_TRUE(torch::equal(got.at("gathered"), torch::tensor({0.0f, 0.0f, 10.0f, 10.0f})));
  }
}

// Expert parallelism over 2 processes = one process holding all 4 experts:
// each rank's output and input gradient as if it ran alone, the router's
// gradient its own, each expert's gradient the sum over both ranks' tokens.
void expect_expert_parallel_matches_one_process(const std::string& scenario, double capacity_factor) {
  const WorkerRun w = launch_workers(scenario);
  ASSERT_EQ(w.run.exit_code, 0) << w.run.output;
  MoELayer reference = fresh_layer(capacity_factor);
  std::vector<LayerStep> steps;
  for (int r = 0; r < 2; ++r) {
    for (auto& p : reference->parameters()) p.mutable_grad() = torch::Tensor();
    steps.push_back(layer_step(reference, r));
  }
  for (int r = 0; r < 2; ++r) {
    const TensorMap got = worker_result(w, r);
    EXPECT_LE((got.at("y") - steps[r].y).abs().max().item<double>(), 1e-5) << "rank " << r;
    EXPECT_LE((got.at("x_grad") - steps[r].x_grad).abs().max().item<double>(), 1e-5) << "rank " << r;
    EXPECT_LE((got.at("gate.weight") - steps[r].grads.at("gate.weight")).abs().max().item<double>(), 1e-5);
    for (const char* name : {"experts.w1", "experts.b1", "experts.w3", "experts.w2", "experts.b2"}) {
      if (!steps[0].grads.count(name)) continue;
      const torch::Tensor full = steps[0].grads.at(name) + steps[1].grads.at(name);
      const torch::Tensor mine = full.narrow(0, r * kE / 2, kE / 2);
      ASSERT_TRUE(got.count(name)) << name;
      EXPECT_EQ(got.at(name).sizes(), mine.sizes()) << name;
      EXPECT_LE((got.at(name) - mine).abs().max().item<double>(), 1e-5) << name << " rank " << r;
    }
  }
}

TEST(Dist, OverlappedGradientReduceEqualsTheReduceAfterTheBackwardPass) {
  SKIP_WITHOUT_GLOO();
  const WorkerRun w = launch_workers("grad_overlap");
  ASSERT_EQ(w.run.exit_code, 0) << w.run.output;
  const TensorMap r0 = worker_result(w, 0), r1 = worker_result(w, 1);
  for (const auto& [name, g] : r0) EXPECT_TRUE(torch::equal(g, r1.at(name))) << name << ": the ranks agree";
  EXPECT_TRUE(torch::equal(r0.at("0.weight"), torch::zeros({32, 32}))) << "no gradient anywhere: zeros";
}

TEST(Dist, ExpertParallelLayerEqualsOneProcessDropless) {
  SKIP_WITHOUT_GLOO();
  expect_expert_parallel_matches_one_process("ep_dropless", 0.0);
}

TEST(Dist, ExpertParallelLayerEqualsOneProcessWithCapacity) {
  SKIP_WITHOUT_GLOO();
  expect_expert_parallel_matches_one_process("ep_capacity", 1.0);
}

TEST(Dist, ExpertParallelRankWithoutTokensStillServesItsExperts) {
  SKIP_WITHOUT_GLOO();
  const WorkerRun w = launch_workers("ep_idle_rank");
  ASSERT_EQ(w.run.exit_code, 0) << w.run.output;
  MoELayer reference = fresh_layer(0.0);
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({2, 6, kD});
  torch::NoGradGuard no_grad;
  const torch::Tensor expected = reference->forward(x);
  EXPECT_LE((worker_result(w, 0).at("y") - expected).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(worker_result(w, 1).at("y").size(1), 0);
}

TEST(Dist, ShardingRefusesAGroupThatDoesNotDivideTheExperts) {
  SKIP_WITHOUT_GLOO();
  const WorkerRun w = launch_workers("ep_indivisible");
  EXPECT_NE(w.run.exit_code, 0);
  EXPECT_NE(w.run.output.find("expert parallelism: ep_size 2 does not divide the 3 experts"), std::string::npos)
      << w.run.output;
}

TEST(Dist, APeerThatDiesStopsTheOtherWithAClearError) {
  SKIP_WITHOUT_GLOO();
  const WorkerRun w = launch_workers("peer_dies", 20000);
  EXPECT_NE(w.run.exit_code, 0);
  EXPECT_NE(w.run.output.find("rank 1 exited with status 3"), std::string::npos) << w.run.output;
  EXPECT_NE(w.run.output.find("dist: all_reduce on rank 0 of 2 failed"), std::string::npos) << w.run.output;
  EXPECT_LT(w.seconds, 30.0);
}

TEST(Dist, APeerThatHangsStopsTheOtherAfterTheTimeout) {
  SKIP_WITHOUT_GLOO();
  const WorkerRun w = launch_workers("peer_hangs", 3000);
  EXPECT_NE(w.run.exit_code, 0);
  EXPECT_NE(w.run.output.find("dist: all_reduce on rank 0 of 2 failed"), std::string::npos) << w.run.output;
  EXPECT_NE(w.run.output.find("timeout of 3 s"), std::string::npos) << w.run.output;
  EXPECT_LT(w.seconds, 40.0);
}

TEST(Dist, ABusyRendezvousPortIsNamed) {
  SKIP_WITHOUT_GLOO();
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof(sa);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  const int port = ntohs(sa.sin_port);
  const WorkerRun w = launch_workers("collectives", 3000, "--master-port " + std::to_string(port));
  ::close(fd);
  EXPECT_NE(w.run.exit_code, 0);
  EXPECT_NE(w.run.output.find("dist: rank 0 cannot serve the rendezvous at 127.0.0.1:" + std::to_string(port)),
            std::string::npos)
      << w.run.output;
}

// A port the kernel calls free now on 127.0.0.1.
TEST(Dist, RanksStartedWithDifferentWorldSizesAreToldSo) {
  SKIP_WITHOUT_GLOO();
  const std::string out = temp_dir("dist_world_mismatch");
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const int port = dist::free_tcp_port();
  const std::string worker = " MOEKIT_DIST_SCENARIO=collectives MOEKIT_DIST_OUT=" + out +
                             " MOEKIT_DIST_TIMEOUT_MS=3000 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
                             " " + self + " --gtest_filter=DistWorker.Run";
  const std::string command = "(env RANK=0 WORLD_SIZE=2" + worker + " > " + out + "/rank0.log 2>&1 & env RANK=1 WORLD_SIZE=3" +
                              worker + " > " + out + "/rank1.log 2>&1; wait)";
  ASSERT_EQ(std::system(command.c_str()) == -1, false);
  const std::string log = read_file(out + "/rank1.log");
  EXPECT_NE(log.find("launch environment: WORLD_SIZE is 3 on rank 1 but 2 on rank 0"), std::string::npos) << log;
  EXPECT_NE(read_file(out + "/rank0.log").find("FAILED"), std::string::npos);
}

TEST(Dist, LaunchReportsACommandThatCannotRun) {
  const CliRun run = run_cli("launch -n 2 -- /nonexistent/moekit-worker");
  EXPECT_EQ(run.exit_code, 127);
  EXPECT_NE(run.output.find("cannot run '/nonexistent/moekit-worker'"), std::string::npos) << run.output;
  EXPECT_NE(run_cli("launch -n 0 -- true").output.find("launch: -n must be >= 1, got 0"), std::string::npos);
}

// ---- data-parallel training through the CLI --------------------------

// The loss of every logged step in an experiment's metrics.jsonl.
// Over the trained parameters: BatchNorm's running statistics are averaged
// over the ranks' own batches, which is not the order one process sees them in.
double max_weight_difference(const std::string& a, const std::string& b) {
  const TensorMap wa = read_model_weights(a), wb = read_model_weights(b);
  double worst = 0;
  for (const auto& [name, t] : wa) {
    if (name.find("running_") != std::string::npos || name.find("num_batches_tracked") != std::string::npos) continue;
    worst = std::max(worst, (t - wb.at(name)).abs().max().item<double>());
  }
  return worst;
}

TEST(Dist, DataAndExpertParallelLmTrainingEqualOneProcessWithTheSameGlobalBatch) {
  SKIP_WITHOUT_GLOO();
  if (!have_sentencepiece() || std::system("command -v spm_train > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "SentencePiece tools (package sentencepiece) not installed";
  const std::string d = temp_dir("dist_lm");
  std::string text;
  for (int i = 0; i < 400; ++i)
    text += "line " + std::to_string(i) + ": the cat sat on the mat and looked at number " +
            std::to_string(i * 13 % 97) + "\n";
  write_file_atomic(d + "/train.txt", text);
  write_file_atomic(d + "/valid.txt", text.substr(0, 1500));
  const CliRun tok = run_cli("tokenizer train --input " + d + "/train.txt --output " + d + "/tok.model --vocab-size 300");
  ASSERT_EQ(tok.exit_code, 0) << tok.output;
  // One process with accum_grad 2 and two with 1 see the same global batch
  // of each step; the MoE layers' router losses are in the loss.
  const std::string model_conf =
      "model: {d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ffn: 48, max_seq_len: 64, "
      "moe: {num_experts: 4, top_k: 2, aux_loss_coef: 0.01}}\n"
      "data: {seq_len: 32, batch_size: 4, max_valid_windows: 4}\n";
  const std::string schedule = "lr: 0.003, scheduler: cosine, warmup_steps: 2, total_steps: 6, log_interval: 1, "
                               "average_last: 1, epochs: 5";
  write_file_atomic(d + "/one.yaml", model_conf + "train_conf: {" + schedule + ", accum_grad: 2}\n");
  write_file_atomic(d + "/two.yaml", model_conf + "train_conf: {" + schedule + ", accum_grad: 1}\n");
  write_file_atomic(d + "/two_paused.yaml",
                    model_conf + "train_conf: {" + schedule + ", accum_grad: 1, max_steps: 3}\n");
  auto train = [&](const std::string& config, const std::string& exp) {
    return "train lm --config " + d + "/" + config + " --train-text " + d + "/train.txt --valid-text " + d +
           "/valid.txt --tokenizer " + d + "/tok.model --exp-dir " + d + "/" + exp;
  };
  const std::string cli = std::string(MOEKIT_CLI_PATH);
  CliRun one = run_cli("--threads 1 " + train("one.yaml", "one"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  CliRun two = run_cli("launch -n 2 -- " + cli + " --threads 1 " + train("two.yaml", "two"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_NE(two.output.find("data parallel over 2 processes"), std::string::npos) << two.output;
  EXPECT_EQ(lines(two.output.substr(two.output.find("trained"))), 1) << "one report per run: " << two.output;
  const std::vector<double> a = logged_losses(d + "/one"), b = logged_losses(d + "/two");
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), a.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 1e-4 * std::abs(a[i])) << "step " << i + 1;
  EXPECT_LT(max_weight_difference(d + "/one/final", d + "/two/final"), 1e-4);

  auto expect_losses_of_one = [&](const std::string& exp) {
    const std::vector<double> c = logged_losses(d + "/" + exp);
    ASSERT_EQ(c.size(), a.size()) << exp;
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(c[i], a[i], 1e-4 * std::abs(a[i])) << exp << " step " << i + 1;
    EXPECT_LT(max_weight_difference(d + "/one/final", d + "/" + exp + "/final"), 1e-4) << exp;
  };
  auto copy = [&](const std::string& from, const std::string& to) {
    ASSERT_EQ(std::system(("cp -r " + d + "/" + from + " " + d + "/" + to).c_str()), 0);
  };

  // Paused by 2 processes at step 3 (data parallel, and expert parallel:
  // each process holds 2 of each layer's 4 experts).
  write_file_atomic(d + "/ep.yaml", model_conf + "train_conf: {" + schedule + ", accum_grad: 1, ep_size: 2}\n");
  write_file_atomic(d + "/ep_paused.yaml",
                    model_conf + "train_conf: {" + schedule + ", accum_grad: 1, ep_size: 2, max_steps: 3}\n");
  CliRun paused = run_cli("launch -n 2 -- " + cli + " --threads 1 " + train("two_paused.yaml", "mixed"));
  ASSERT_EQ(paused.exit_code, 0) << paused.output;
  ASSERT_TRUE(path_exists(d + "/mixed/checkpoints/step_3"));
  CliRun ep = run_cli("launch -n 2 -- " + cli + " --threads 1 " + train("ep_paused.yaml", "ep"));
  ASSERT_EQ(ep.exit_code, 0) << ep.output;
  EXPECT_NE(ep.output.find("experts sharded over groups of 2"), std::string::npos) << ep.output;
  // The expert-parallel checkpoint is sharded: each process wrote its
  // experts and their moments; joined, it is the data-parallel run's model.
  const std::string sharded = d + "/ep/checkpoints/step_3";
  for (const char* file : {"manifest.json", "experts.shard0.safetensors", "experts.shard1.safetensors",
                           "optimizer.shard0.safetensors", "optimizer.shard1.safetensors", "optimizer.safetensors"})
    EXPECT_TRUE(path_exists(sharded + "/" + file)) << file;
  EXPECT_EQ(read_model_weights(sharded).count("layers.0.mlp.experts.w1"), 0u) << "experts are in the shards only";
  CliRun joined = run_cli("consolidate " + sharded + " " + d + "/joined");
  ASSERT_EQ(joined.exit_code, 0) << joined.output;
  EXPECT_NE(joined.output.find("(2 expert shards)"), std::string::npos) << joined.output;
  EXPECT_LT(max_weight_difference(d + "/mixed/checkpoints/step_3", d + "/joined"), 1e-4);
  const CliRun info = run_cli("info " + d + "/joined");
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_TRUE(path_exists(d + "/joined/tokenizer.model")) << "the assets come along";
  EXPECT_FALSE(path_exists(d + "/joined/optimizer.safetensors"));
  // Bad input: not a checkpoint; a shard missing.
  CliRun bad = run_cli("consolidate " + d + "/joined " + d + "/joined2");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("not a training checkpoint (no trainer_state.yaml)"), std::string::npos) << bad.output;
  copy("ep", "ep_broken");
  std::remove((d + "/ep_broken/checkpoints/step_3/experts.shard1.safetensors").c_str());
  bad = run_cli("consolidate " + d + "/ep_broken/checkpoints/step_3 " + d + "/joined2");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("shard 1 of 2 is missing"), std::string::npos) << bad.output;
  EXPECT_FALSE(path_exists(d + "/joined2"));

  // Every checkpoint resumes on every layout (Adam's moments resharded):
  // each continuation is the uninterrupted one-process run.
  copy("mixed", "dp_to_ep");
  copy("ep", "ep_to_one");
  CliRun resumed = run_cli("--threads 1 " + train("one.yaml", "mixed") + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_losses_of_one("mixed");
  resumed = run_cli("launch -n 2 -- " + cli + " --threads 1 " + train("ep.yaml", "dp_to_ep") + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_losses_of_one("dp_to_ep");
  resumed = run_cli("--threads 1 " + train("one.yaml", "ep_to_one") + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_losses_of_one("ep_to_one");
  resumed = run_cli("launch -n 2 -- " + cli + " --threads 1 " + train("ep.yaml", "ep") + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_losses_of_one("ep");
}

TEST(Dist, DataAndExpertParallelAsrTrainingEqualOneProcessWithTheSameGlobalBatch) {
  SKIP_WITHOUT_GLOO();
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  const std::string d = temp_dir("dist_asr");
  std::string list, cv;
  for (int i = 0; i < 16; ++i) {
    std::string text;
    for (int k = 0; k < 2 + i % 3; ++k) text += "abcd"[(i * 7 + k * 3) % 4];
    const std::string wav = d + "/utt" + std::to_string(i) + ".wav";
    write_tone_wav(wav, text);
    const std::string line = nlohmann::json{{"key", "utt" + std::to_string(i)}, {"wav", wav}, {"txt", text}}.dump();
    list += line + "\n";
    if (i < 4) cv += line + "\n";
  }
  write_file_atomic(d + "/train.list", list);
  write_file_atomic(d + "/cv.list", cv);
  // One process with accum_grad 2 and two with 1 see the same global
  // batches and must log the same losses.
  const std::string model_conf = deterministic_asr_train_yaml(/*moe=*/true);
  const std::string schedule = "epochs: 2, lr: 0.002, warmup_steps: 2, total_steps: 5, log_interval: 1, average_last: 1";
  write_file_atomic(d + "/one.yaml", model_conf + "train_conf: {" + schedule + ", accum_grad: 2}\n");
  write_file_atomic(d + "/dp.yaml", model_conf + "train_conf: {" + schedule + ", accum_grad: 1}\n");
  write_file_atomic(d + "/ep.yaml", model_conf + "train_conf: {" + schedule + ", accum_grad: 1, ep_size: 2}\n");
  auto train = [&](const std::string& config, const std::string& exp) {
    return "train asr --config " + d + "/" + config + " --train-data " + d + "/train.list --cv-data " + d +
           "/cv.list --exp-dir " + d + "/" + exp;
  };
  const std::string cli = std::string(MOEKIT_CLI_PATH);
  const CliRun one = run_cli("--threads 1 " + train("one.yaml", "one"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const std::vector<double> a = logged_losses(d + "/one");
  ASSERT_EQ(a.size(), 5u);
  for (const std::string layout : {"dp", "ep"}) {
    const CliRun run = run_cli("launch -n 2 -- " + cli + " --threads 1 " + train(layout + ".yaml", layout));
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const std::vector<double> b = logged_losses(d + "/" + layout);
    ASSERT_EQ(b.size(), a.size()) << layout;
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_NEAR(b[i], a[i], 1e-4 * std::abs(a[i])) << layout << " step " << i + 1;
    // Expert parallelism sums the experts' contributions in another order;
    // parameters whose gradient is zero in exact arithmetic (attention key
    // biases, the convolution bias before BatchNorm) then get float noise,
    // which Adam scales up to steps of about lr: those differ by up to
    // steps x lr, every other weight agrees to 1e-4 or better.
    EXPECT_LT(max_weight_difference(d + "/one/final", d + "/" + layout + "/final"), layout == "dp" ? 1e-4 : 1e-2)
        << layout;
  }
}

}  // namespace
}  // namespace moekit
