// `moekit bench lm`: training tokens/s (forward + backward + Adam) and
// batch-1 generation tokens/s of an LLaMA-style LM, with the fraction of the
// memory-bandwidth bound per generated token (JSON). With --trainer the
// training is timed through the trainer itself (`moekit train lm`'s loop:
// gradient clipping, bfloat16 autocast, MoE row budgets on a GPU).
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bench_util.h"
#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/runtime.h"
#include "moekit/models/lm/hf_llama.h"
#include "moekit/models/lm/lm_model.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/train/lm_task.h"
#include "moekit/train/trainer.h"

namespace moekit::cli {
namespace {

struct BenchLmOptions {
  std::string model_dir;  // empty: a random model of the shape below
  int64_t d_model = 256, layers = 4, heads = 8, kv_heads = 2, ffn = 688, experts = 0, top_k = 2, vocab = 4000;
  int64_t batch = 8, seq = 128, steps = 5, prompt = 16, tokens = 64;
  int rounds = 3;
  std::string save_hf;  // write the benchmarked model in HF layout (for bench/lm_pytorch.py)
  bool int8_experts = false;  // time generation with the experts quantized to int8
  std::string weight_dtype = "fp32";  // the matrices' dtype while generation is timed
  uint64_t seed = 1;
  bool trainer = false;              // time training through the trainer (train())
  std::string autocast = "none";     // --trainer: train_conf.autocast
  std::string moe_dispatch = "auto";  // --trainer: train_conf.moe_dispatch
};

double time_once(const std::function<void()>& fn) {
  const auto start = Clock::now();
  fn();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Training tokens/s through the trainer: `rounds` + 1 intervals of `steps`
// optimizer steps on random tokens in a temporary experiment directory; the
// trainer's throughput records of every interval but the first (warm-up:
// allocations, the first MoE row budgets), their median.
nlohmann::json time_trainer(const std::shared_ptr<LmModel>& model, const BenchLmOptions& o,
                            const torch::Device& device) {
  const int64_t steps = o.steps * (o.rounds + 1);
  const LmConfig& c = model->config();
  auto tokens = [&](int64_t n) {
    const torch::Tensor t = torch::randint(c.vocab_size, {n}, torch::kLong);
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
  };
  LmDataOptions data;
  data.seq_len = o.seq;
  data.batch_size = o.batch;
  data.max_valid_windows = o.batch;
  TrainerOptions t;
  t.epochs = 1;
  t.lr = 1e-4;
  t.warmup_steps = 1;
  t.log_interval = o.steps;
  t.keep_checkpoints = 1;
  t.average_last = 1;
  t.total_steps = steps;
  t.peak_flops = 1e15;  // no GEMM measurement at start (MFU is not reported here)
  t.seed = o.seed;
  t.autocast = o.autocast;
  t.moe_dispatch = o.moe_dispatch;
  t.validate();
  const ScratchDir scratch("moekit_bench_lm");
  const std::string& dir = scratch.path();
  LmTrainTask task(model, tokens((steps + 2) * o.batch * (o.seq + 1)), tokens(2 * o.batch * (o.seq + 1)), data,
                   o.seed, "");
  const TrainSummary summary = train(task, t, dir + "/exp", false, device);
  std::vector<double> per_s;
  std::istringstream lines(read_file(dir + "/exp/metrics.jsonl"));
  std::string line;
  while (std::getline(lines, line)) {
    const nlohmann::json r = nlohmann::json::parse(line);
    if (r.contains("tokens_per_s")) per_s.push_back(r["tokens_per_s"].get<double>());
  }
  MOEKIT_CHECK(per_s.size() == static_cast<size_t>(o.rounds + 1), "bench lm: the trainer logged ", per_s.size(),
               " throughput records, not ", o.rounds + 1);
  per_s.erase(per_s.begin());
  return {{"tokens_per_s", median(per_s)}, {"intervals", per_s}, {"moe_reruns", summary.moe_reruns},
          {"autocast", o.autocast}, {"moe_dispatch", o.moe_dispatch}};
}

}  // namespace

void add_bench_lm_command(CLI::App& bench, const GlobalOptions& global) {
  auto o = std::make_shared<BenchLmOptions>();
  CLI::App* cmd = bench.add_subcommand("lm", "Training and generation speed of an LLaMA-style LM (JSON)");
  cmd->add_option("--model-dir", o->model_dir, "Benchmark this model (default: a random one of the shape below)");
  cmd->add_option("--d-model", o->d_model, "Width")->capture_default_str();
  cmd->add_option("--layers", o->layers, "Blocks")->capture_default_str();
  cmd->add_option("--heads", o->heads, "Query heads")->capture_default_str();
  cmd->add_option("--kv-heads", o->kv_heads, "KV heads")->capture_default_str();
  cmd->add_option("--ffn", o->ffn, "FFN hidden width (per expert)")->capture_default_str();
  cmd->add_option("--experts", o->experts, "Experts per FFN (0 = dense)")->capture_default_str();
  cmd->add_option("--top-k", o->top_k, "Experts per token")->capture_default_str();
  cmd->add_option("--vocab", o->vocab, "Vocabulary")->capture_default_str();
  cmd->add_option("--batch", o->batch, "Training sequences per step")->capture_default_str();
  cmd->add_option("--seq", o->seq, "Training sequence length")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Training steps per timed round (0: time generation only)")
      ->capture_default_str();
  cmd->add_option("--prompt", o->prompt, "Generation prompt tokens")->capture_default_str();
  cmd->add_option("--tokens", o->tokens, "Generated tokens per timed round")->capture_default_str();
  cmd->add_option("--rounds", o->rounds, "Timed rounds; medians are reported")->capture_default_str();
  cmd->add_option("--save-hf", o->save_hf, "Also write the model in HF layout (bench/lm_pytorch.py reads it)");
  cmd->add_option("--seed", o->seed, "Seed of the random model and data")->capture_default_str();
  cmd->add_flag("--int8-experts", o->int8_experts,
                "Time generation with the MoE experts in int8 (as `moekit quantize --experts int8`; training "
                "is timed on the float model)");
  cmd->add_option("--dtype", o->weight_dtype,
                  "Weight matrices while generation is timed: fp32 | bf16 (LmModel::set_weight_dtype; training is "
                  "timed in float32)")
      ->capture_default_str();
  CLI::Option* trainer = cmd->add_flag(
      "--trainer", o->trainer, "Time training through the trainer (train lm's loop: clipping, autocast, MoE row budgets)");
  cmd->add_option("--autocast", o->autocast, "--trainer: train_conf.autocast (none | bf16, CUDA)")
      ->capture_default_str()
      ->needs(trainer);
  cmd->add_option("--moe-dispatch", o->moe_dispatch, "--trainer: train_conf.moe_dispatch (auto | sorted | padded)")
      ->capture_default_str()
      ->needs(trainer);
  cmd->callback([o, &global] {
    apply_runtime(global);
    const c10::optional<torch::ScalarType> weight_dtype = parse_weight_dtype(o->weight_dtype);
    MOEKIT_CHECK_ARG(weight_dtype.has_value(), "bench lm: --dtype is fp32 or bf16");
    MOEKIT_CHECK_ARG(o->rounds >= 1 && o->steps >= 0 && o->tokens >= 1 && o->prompt >= 1,
                     "bench lm: --rounds, --tokens and --prompt must be >= 1, --steps >= 0");
    torch::manual_seed(o->seed);
    std::shared_ptr<LmModel> model;
    if (!o->model_dir.empty()) {
      model = load_lm_model(o->model_dir, torch::kFloat);  // training is timed in float32
    } else {
      LmConfig c;
      c.vocab_size = o->vocab;
      c.d_model = o->d_model;
      c.n_layers = o->layers;
      c.n_heads = o->heads;
      c.n_kv_heads = o->kv_heads;
      c.d_ffn = o->ffn;
      c.max_seq_len = std::max(o->seq, o->prompt + o->tokens) + 1;
      c.moe.num_experts = o->experts;
      c.moe.top_k = o->top_k;
      c.moe.aux_loss_coef = 0;  // the reference computes no router losses
      c.moe.z_loss_coef = 0;
      model = std::make_shared<LmModel>(c);
    }
    const LmConfig& c = model->config();
    MOEKIT_CHECK_ARG(o->seq + 1 <= c.max_seq_len + 1 && o->prompt + o->tokens <= c.max_seq_len,
                     "bench lm: --seq / --prompt + --tokens exceed the model's max_seq_len ", c.max_seq_len);
    if (!o->save_hf.empty()) export_hf_llama(LmWeights{c, module_state(*model)}, o->save_hf);

    const torch::Device device = parse_device(global.device);
    model->to(device);
    // Training: the trainer's step (loss, backward, Adam) on a fixed random
    // batch (not for a model whose experts are int8 already).
    std::vector<double> t_train;
    nlohmann::json trainer;
    const bool trainable = !has_int8_experts(*model);
    MOEKIT_CHECK_ARG(!o->trainer || (trainable && o->steps > 0),
                     "bench lm: --trainer needs --steps > 0 and a model without int8 experts");
    if (o->trainer) {
      trainer = time_trainer(model, *o, device);
    } else if (trainable && o->steps > 0) {
      model->train();
      torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(1e-4));
      const torch::Tensor batch = torch::randint(c.vocab_size, {o->batch, o->seq + 1}, torch::kLong).to(device);
      auto train_step = [&] {
        adam.zero_grad();
        model->loss(batch).loss.backward();
        adam.step();
      };
      train_step();
      for (int r = 0; r < o->rounds; ++r)
        t_train.push_back(time_once([&] {
          for (int64_t s = 0; s < o->steps; ++s) train_step();
          synchronize_device(device);
        }));
    }
    if (o->int8_experts) {
      MOEKIT_CHECK_ARG(c.moe.num_experts > 0, "bench lm: --int8-experts needs an MoE model (--experts > 0)");
      if (trainable) experts_to_int8(*model);
    }

    // Generation at batch 1: prefill the prompt, then one token per step (greedy).
    model->eval();
    model->set_weight_dtype(*weight_dtype);
    torch::NoGradGuard no_grad;
    const torch::Tensor prompt = torch::randint(c.vocab_size, {1, o->prompt}, torch::kLong).to(device);
    double decode_seconds = 0;
    auto generate_all = [&] {
      LmKvCache cache = model->make_cache(1, o->prompt + o->tokens);
      torch::Tensor next = model->forward(prompt, &cache, true).argmax(-1);  // [1, 1]
      synchronize_device(device);
      const auto start = Clock::now();
      for (int64_t i = 0; i + 1 < o->tokens; ++i) next = model->forward(next, &cache, true).argmax(-1);
      synchronize_device(device);
      decode_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    };
    generate_all();
    std::vector<double> t_gen, t_decode;
    for (int r = 0; r < o->rounds; ++r) {
      t_gen.push_back(time_once(generate_all));
      t_decode.push_back(decode_seconds / static_cast<double>(o->tokens - 1));
    }
    // Bytes of weights one decoded token reads: the active parameters (top-k
    // experts per MoE layer) less the embedding table, of which it reads one row.
    // Counted in bytes per tensor, so int8 experts (and their scales) count as stored.
    const ParameterCount count = count_parameters(*model);
    const double element = static_cast<double>(model->embed_tokens->weight.element_size());
    double bytes = 0;
    for (const auto& p : model->parameters()) bytes += static_cast<double>(p.nbytes());
    for (const MoELayerImpl* moe : moe_layers(*model)) {
      double expert_bytes = 0;
      for (const auto& p : moe->experts->parameters()) expert_bytes += static_cast<double>(p.nbytes());
      for (const auto& b : moe->experts->buffers()) {
        bytes += static_cast<double>(b.nbytes());  // int8 scales
        expert_bytes += static_cast<double>(b.nbytes());
      }
      const MoEOptions& mo = moe->options();
      bytes -= expert_bytes * static_cast<double>(mo.num_experts - mo.top_k) / static_cast<double>(mo.num_experts);
    }
    if (!c.tie_embeddings) bytes -= static_cast<double>(c.vocab_size - 1) * c.d_model * element;
    const double bandwidth = device.is_cpu() ? read_bandwidth_bytes_per_s() : 0.0;
    const double per_token = median(t_decode);
    nlohmann::json j;
    j["benchmark"] = "lm";
    j["impl"] = "moekit";
    j["device"] = device.str();
    j["threads"] = num_threads();
    j["experts"] = c.moe.num_experts;
    j["parameters"] = {{"total", count.total}, {"active", count.active}};
    j["int8_experts"] = has_int8_experts(*model);
    j["weight_dtype"] = c10::toString(model->weight_dtype());
    if (!t_train.empty()) j["train_tokens_per_s"] = static_cast<double>(o->batch * o->seq * o->steps) / median(t_train);
    if (!trainer.is_null()) j["trainer"] = trainer;
    j["generate_tokens_per_s"] = static_cast<double>(o->tokens) / median(t_gen);
    j["decode_tokens_per_s"] = 1.0 / per_token;
    j["weight_bytes_per_token"] = bytes;
    if (device.is_cpu()) {
      j["read_bandwidth_gb_per_s"] = bandwidth / 1e9;
      j["decode_fraction_of_bandwidth_bound"] = bytes / per_token / bandwidth;
    }
    std::cout << json_text(j, 2) << std::endl;
  });
}

}  // namespace moekit::cli
