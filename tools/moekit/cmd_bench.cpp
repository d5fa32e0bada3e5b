// `moekit bench moe`: the MoE layer against its yardsticks, interleaved in one
// process so machine noise hits every variant alike.
//   moekit    MoELayer (sort-based dispatch + grouped FFN)
//   dense     a dense FFN with the same active FLOPs (hidden = k x H)
//   loop      WeNet's MoEFFNLayer algorithm in LibTorch: for each expert,
//             where(selected == e), run it, index_add back
// With --stack-layers L it also times L MoE layers in sequence (weights far
// larger than the last-level cache) and reports the fraction of the
// memory-bandwidth bound: expert weight bytes touched / time / read bandwidth.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/core/runtime.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/ops/fast_path.h"
#include "moekit/nn/ffn.h"

namespace moekit::cli {
namespace {

using json = nlohmann::json;

struct BenchMoeOptions {
  int64_t d_model = 256;
  std::vector<int64_t> hidden = {1024};
  int64_t experts = 8;
  int64_t top_k = 2;
  std::vector<int64_t> tokens = {16, 256, 4096};
  std::vector<int> threads = {1};
  std::string activation = "swish";
  bool forward_only = false;
  int rounds = 7;
  double sample_seconds = 0.05;
  int64_t stack_layers = 0;
  std::vector<std::string> variants = {"moekit", "dense", "loop"};
  std::string dtype = "float32";
  torch::Device device = torch::kCPU;  // from the global --device
  torch::ScalarType scalar_type = torch::kFloat;
};

// One timing sample of `fn`, waiting for the device's queued work after each call.
double time_on_device(const BenchMoeOptions& opt, const std::function<void()>& fn, double seconds) {
  synchronize_device(opt.device);
  return time_sample(
      [&] {
        fn();
        synchronize_device(opt.device);
      },
      seconds);
}

// WeNet's per-expert loop on the same stacked weights.
torch::Tensor loop_moe(const MoELayerImpl& moe, const torch::Tensor& x) {
  const MoEOptions& o = moe.options();
  const torch::Tensor router = torch::nn::functional::linear(x, moe.gate->weight);  // [N, E]
  auto [logits, selected] = router.topk(o.top_k, 1);                                 // [N, k]
  const torch::Tensor weights = logits.softmax(1);
  torch::Tensor out = torch::zeros_like(x);
  const auto& ex = *moe.experts;
  for (int64_t e = 0; e < o.num_experts; ++e) {
    const auto where = torch::where(selected == e);  // token ids, slot ids
    const torch::Tensor token_ids = where[0], slot_ids = where[1];
    if (token_ids.numel() == 0) continue;
    const torch::Tensor xe = x.index_select(0, token_ids);
    const torch::Tensor h1 = torch::nn::functional::linear(xe, ex.w1[e], ex.b1[e]);
    const torch::Tensor h3 = ex.w3.defined() ? torch::nn::functional::linear(xe, ex.w3[e]) : torch::Tensor();
    const torch::Tensor y = torch::nn::functional::linear(apply_activation(o.activation, h1, h3), ex.w2[e], ex.b2[e]);
    const torch::Tensor w = weights.index({token_ids, slot_ids}).unsqueeze(1);
    out = out.index_add(0, token_ids, w * y);
  }
  return out;
}

MoEOptions layer_options(const BenchMoeOptions& opt, int64_t hidden) {
  MoEOptions mo;
  mo.d_model = opt.d_model;
  mo.d_hidden = hidden;
  mo.num_experts = opt.experts;
  mo.top_k = opt.top_k;
  mo.activation = parse_activation(opt.activation);
  mo.validate();
  return mo;
}

json bench_layer(const BenchMoeOptions& opt, int64_t hidden, int64_t tokens) {
  const MoEOptions mo = layer_options(opt, hidden);
  torch::manual_seed(0);
  MoELayer moe(mo);
  moe->eval();  // no router statistics losses: the peers compute none
  FeedForward dense(FeedForwardOptions{opt.d_model, opt.top_k * hidden, mo.activation, true});
  moe->to(opt.device, opt.scalar_type);
  dense->to(opt.device, opt.scalar_type);
  const auto options = torch::TensorOptions().device(opt.device).dtype(opt.scalar_type);
  const torch::Tensor x = torch::randn({tokens, opt.d_model}).to(options);
  const torch::Tensor x_grad = x.clone().requires_grad_(true);
  const torch::Tensor probe = torch::randn({tokens, opt.d_model}).to(options);

  // MoEKit with its forward kernel forced instead of picked by row count.
  auto with_kernel = [&](GroupedFfnKernel kernel, const torch::Tensor& in) {
    moe->set_kernel(kernel);
    torch::Tensor y = moe->forward(in);
    moe->set_kernel(GroupedFfnKernel::Auto);
    return y;
  };
  std::map<std::string, std::function<torch::Tensor(const torch::Tensor&)>> forward = {
      {"moekit", [&](const torch::Tensor& in) { return moe->forward(in); }},
      {"dense", [&](const torch::Tensor& in) { return dense->forward(in); }},
      {"loop", [&](const torch::Tensor& in) { return loop_moe(*moe, in); }},
      {"moekit_small_rows", [&](const torch::Tensor& in) { return with_kernel(GroupedFfnKernel::SmallRows, in); }},
      {"moekit_gemm", [&](const torch::Tensor& in) { return with_kernel(GroupedFfnKernel::PerExpertGemm, in); }},
      {"moekit_grouped_mm", [&](const torch::Tensor& in) { return with_kernel(GroupedFfnKernel::GroupedMm, in); }},
  };
  auto clear_grads = [&] {
    for (auto& p : moe->parameters()) p.mutable_grad() = torch::Tensor();
    for (auto& p : dense->parameters()) p.mutable_grad() = torch::Tensor();
    x_grad.mutable_grad() = torch::Tensor();
  };
  // The fast paths (kernels) one untimed call of MoEKit's own choice ran:
  // which kernel Auto took at this shape and device.
  auto paths_of = [&](const std::function<void()>& call) {
    const std::map<std::string, int64_t> before = fast_path_counts();
    call();
    json ran = json::object();
    for (const auto& [name, count] : fast_path_counts()) {
      const auto it = before.find(name);
      const int64_t calls = count - (it == before.end() ? 0 : it->second);
      if (calls > 0) ran[name] = calls;
    }
    return ran;
  };
  json auto_paths;
  if (std::find(opt.variants.begin(), opt.variants.end(), "moekit") != opt.variants.end()) {
    {
      torch::NoGradGuard no_grad;
      auto_paths["forward"] = paths_of([&] { moe->forward(x); });
    }
    if (!opt.forward_only) {
      auto_paths["forward_backward"] = paths_of([&] {
        clear_grads();
        (moe->forward(x_grad) * probe).sum().backward();
      });
    }
  }
  std::map<std::string, std::vector<double>> fwd, fwdbwd;
  for (int r = 0; r < opt.rounds; ++r) {
    for (const std::string& v : opt.variants) {
      {
        torch::NoGradGuard no_grad;
        fwd[v].push_back(time_on_device(opt, [&] { forward.at(v)(x); }, opt.sample_seconds));
      }
      if (!opt.forward_only) {
        fwdbwd[v].push_back(time_on_device(
            opt,
            [&] {
              clear_grads();
              (forward.at(v)(x_grad) * probe).sum().backward();
            },
            opt.sample_seconds));
      }
    }
  }
  json result;
  result["d_model"] = opt.d_model;
  result["d_hidden"] = hidden;
  result["experts"] = opt.experts;
  result["top_k"] = opt.top_k;
  result["tokens"] = tokens;
  result["device"] = opt.device.str();
  result["dtype"] = opt.dtype;
  result["threads"] = num_threads();
  for (const std::string& v : opt.variants) {
    result["forward_ms"][v] = median(fwd[v]) * 1e3;
    if (!opt.forward_only) result["forward_backward_ms"][v] = median(fwdbwd[v]) * 1e3;
  }
  if (!auto_paths.is_null()) result["moekit_fast_paths"] = auto_paths;
  return result;
}

json bench_stack(const BenchMoeOptions& opt, int64_t hidden, int64_t tokens, double bandwidth) {
  const MoEOptions mo = layer_options(opt, hidden);
  torch::manual_seed(1);
  std::vector<MoELayer> layers;
  for (int64_t i = 0; i < opt.stack_layers; ++i) {
    layers.emplace_back(mo);
    layers.back()->eval();
    layers.back()->to(opt.device, opt.scalar_type);
  }
  const torch::Tensor x = torch::randn({tokens, opt.d_model}).to(opt.device, opt.scalar_type);
  torch::NoGradGuard no_grad;
  auto run = [&] {
    for (auto& layer : layers) layer->forward(x);
  };
  std::vector<double> samples;
  for (int r = 0; r < opt.rounds; ++r) samples.push_back(time_on_device(opt, run, opt.sample_seconds * 4));
  // Bytes of expert weights each forward reads: every expert that got rows.
  double bytes = 0.0;
  const double expert_bytes = static_cast<double>(c10::elementSize(opt.scalar_type)) *
                              static_cast<double>(2 * hidden * opt.d_model + hidden + opt.d_model);
  for (auto& layer : layers) {
    for (int64_t n : layer->last_stats().tokens_per_expert) bytes += n > 0 ? expert_bytes : 0.0;
  }
  const double seconds = median(samples);
  json j;
  j["layers"] = opt.stack_layers;
  j["tokens"] = tokens;
  j["d_hidden"] = hidden;
  j["device"] = opt.device.str();
  j["threads"] = num_threads();
  j["weight_bytes_touched"] = bytes;
  j["ms_per_forward"] = seconds * 1e3;
  j["achieved_gb_per_s"] = bytes / seconds / 1e9;
  if (bandwidth > 0) {  // measured on the CPU only
    j["read_bandwidth_gb_per_s"] = bandwidth / 1e9;
    j["fraction_of_bandwidth_bound"] = bytes / seconds / bandwidth;
  }
  return j;
}

}  // namespace

void add_bench_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks (JSON output)");
  bench->require_subcommand(1);
  auto opt = std::make_shared<BenchMoeOptions>();
  add_bench_asr_command(*bench, global);
  add_bench_lm_command(*bench, global);
  add_bench_seq2seq_command(*bench, global);
  add_bench_kernels_command(*bench, global);
  CLI::App* cmd = bench->add_subcommand("moe", "MoE layer vs dense FFN (equal active FLOPs) vs a per-expert loop");
  cmd->add_option("--d-model", opt->d_model, "Model width")->capture_default_str();
  cmd->add_option("--hidden", opt->hidden, "Hidden width per expert (list)")->capture_default_str()->delimiter(',');
  cmd->add_option("--experts", opt->experts, "Experts")->capture_default_str();
  cmd->add_option("--top-k", opt->top_k, "Experts per token")->capture_default_str();
  cmd->add_option("--tokens", opt->tokens, "Token counts (list)")->capture_default_str()->delimiter(',');
  cmd->add_option("--bench-threads", opt->threads, "Thread counts to measure (list)")
      ->capture_default_str()
      ->delimiter(',');
  cmd->add_option("--activation", opt->activation, "relu | gelu | swish | swiglu")->capture_default_str();
  cmd->add_option("--rounds", opt->rounds, "Interleaved rounds; the median is reported")->capture_default_str();
  cmd->add_option("--sample-seconds", opt->sample_seconds, "Seconds per timing sample")->capture_default_str();
  cmd->add_option("--stack-layers", opt->stack_layers,
                  "Also time this many MoE layers in sequence and report the bandwidth-bound fraction (0 = off)")
      ->capture_default_str();
  cmd->add_option("--variants", opt->variants, "Which of moekit,dense,loop to time (also moekit_small_rows, moekit_gemm, moekit_grouped_mm: the kernel forced)")
      ->capture_default_str()
      ->delimiter(',');
  cmd->add_flag("--forward-only", opt->forward_only, "Skip forward+backward timings");
  cmd->add_option("--dtype", opt->dtype, "float32 | bfloat16 (bfloat16 on CUDA only)")->capture_default_str();
  cmd->callback([opt, &global] {
    MOEKIT_CHECK_ARG(opt->rounds >= 1, "--rounds must be >= 1");
    opt->device = parse_device(global.device);
    MOEKIT_CHECK_ARG(opt->dtype == "float32" || opt->dtype == "bfloat16", "unknown --dtype '", opt->dtype,
                     "' (float32, bfloat16)");
    opt->scalar_type = opt->dtype == "bfloat16" ? torch::kBFloat16 : torch::kFloat;
    MOEKIT_CHECK_ARG(opt->scalar_type == torch::kFloat || opt->device.is_cuda(),
                     "--dtype bfloat16 is for --device cuda (CPU bfloat16 GEMMs are slow in this LibTorch)");
    MOEKIT_CHECK_ARG(opt->stack_layers >= 0, "--stack-layers must be >= 0");
    MOEKIT_CHECK_ARG(opt->sample_seconds > 0, "--sample-seconds must be > 0");
    for (int64_t t : opt->tokens) MOEKIT_CHECK_ARG(t > 0, "--tokens entries must be positive, got ", t);
    MOEKIT_CHECK_ARG(!opt->threads.empty(), "--bench-threads needs at least one thread count");
    for (int t : opt->threads) MOEKIT_CHECK_ARG(t > 0, "--bench-threads entries must be positive, got ", t);
    for (const auto& v : opt->variants) {
      MOEKIT_CHECK_ARG(v == "moekit" || v == "dense" || v == "loop" || v == "moekit_small_rows" || v == "moekit_gemm" ||
                           v == "moekit_grouped_mm",
                       "unknown --variants entry '", v,
                       "' (moekit, dense, loop, moekit_small_rows, moekit_gemm, moekit_grouped_mm)");
    }
    {  // the most threads first: a re-exec for their wait settings must happen before any output
      GlobalOptions g = global;
      g.threads = *std::max_element(opt->threads.begin(), opt->threads.end());
      apply_runtime(g);
    }
    json out;
    out["benchmark"] = "moe_layer";
    out["blas"] = blas_info().name;
    json layers = json::array(), stacks = json::array();
    for (int threads : opt->threads) {
      GlobalOptions g = global;
      g.threads = threads;
      apply_runtime(g);
      const double bandwidth = opt->stack_layers > 0 && opt->device.is_cpu() ? read_bandwidth_bytes_per_s() : 0.0;
      for (int64_t hidden : opt->hidden) {
        for (int64_t tokens : opt->tokens) {
          layers.push_back(bench_layer(*opt, hidden, tokens));
          if (opt->stack_layers > 0) stacks.push_back(bench_stack(*opt, hidden, tokens, bandwidth));
        }
      }
    }
    out["layer"] = layers;
    if (opt->stack_layers > 0) out["stack"] = stacks;
    std::cout << json_text(out, 2) << std::endl;
  });
}

}  // namespace moekit::cli
