// The CUDA paths against the CPU: the same modules with the same weights,
// one copy moved to the GPU. Skipped where LibTorch sees no CUDA device; the
// device selection errors are checked everywhere.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <algorithm>
#include <sstream>

#include "moekit/core/runtime.h"
#include "moekit/decode/lm_generate.h"
#include "moekit/decode/recognizer.h"
#include "moekit/models/asr/asr_model.h"
#include "moekit/models/lm/lm_model.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/train/lm_task.h"
#include "moekit/train/trainer.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/ops/fast_path.h"
#include "moekit/ops/grouped_ffn.h"
#include "asr_test_util.h"
#include "lm_test_util.h"
#include "test_util.h"
#ifdef MOEKIT_CUDA_LIBTORCH
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace moekit {
namespace {

#define SKIP_WITHOUT_CUDA()                                                   \
  do {                                                                        \
    if (!torch::cuda::is_available()) {                                       \
      GTEST_SKIP() << "no CUDA device here";                                  \
    }                                                                         \
    at::globalContext().setAllowTF32CuBLAS(false);                           \
    at::globalContext().setAllowTF32CuDNN(false);                            \
  } while (0)

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kCPU, torch::kDouble) - b.to(torch::kCPU, torch::kDouble)).abs().max().item<double>();
}

// Every parameter's gradient of `cpu` against the same-named one of `gpu`,
// to `tolerance` times max(1, the largest gradient entry).
void expect_same_grads(torch::nn::Module& cpu, torch::nn::Module& gpu, double tolerance, const std::string& what) {
  const auto a = cpu.named_parameters(), b = gpu.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& item : a) {
    const torch::Tensor ga = item.value().grad(), gb = b[item.key()].grad();
    ASSERT_EQ(ga.defined(), gb.defined()) << what << " " << item.key();
    if (ga.defined()) {  // relative to the gradient's scale
      const double scale = std::max(1.0, ga.abs().max().item<double>());
      EXPECT_LE(max_diff(ga, gb), tolerance * scale) << what << " " << item.key();
    }
  }
}

TEST(Device, ParsesNamesAndRefusesUnknownOnes) {
  EXPECT_TRUE(parse_device("cpu").is_cpu());
  EXPECT_NE(error_of([] { parse_device("tpu"); }).find("unknown device 'tpu'"), std::string::npos);
  EXPECT_NE(error_of([] { parse_device("cuda:x"); }).find("unknown device 'cuda:x'"), std::string::npos);
  if (torch::cuda::is_available()) {
    EXPECT_TRUE(parse_device("cuda").is_cuda());
    EXPECT_NE(error_of([] { parse_device("cuda:99"); }).find("CUDA device(s) here"), std::string::npos);
  } else {
    EXPECT_NE(error_of([] { parse_device("cuda"); }).find("sees no CUDA device"), std::string::npos);
  }
}

struct MoECase {
  Routing routing;
  Gating gating;
  int64_t top_k;
  double capacity_factor;
  Activation activation;
};

TEST(Cuda, MoELayerForwardAndGradientsMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const MoECase cases[] = {
      {Routing::Token, Gating::TopKSoftmax, 2, 0.0, Activation::Swish},
      {Routing::Token, Gating::SoftmaxTopK, 3, 0.0, Activation::SwiGLU},
      {Routing::Token, Gating::TopKSoftmax, 1, 1.0, Activation::Relu},
      {Routing::Sentence, Gating::TopKSoftmax, 2, 0.0, Activation::Gelu},
      {Routing::Task, Gating::SoftmaxTopK, 2, 0.0, Activation::Swish},
      // Capacity mode runs the padded dispatch on the GPU (no host sync).
      {Routing::Sentence, Gating::TopKSoftmax, 2, 0.75, Activation::Gelu},
      {Routing::Task, Gating::SoftmaxTopK, 2, 1.25, Activation::SwiGLU},
  };
  for (const MoECase& c : cases) {
    MoEOptions o;
    o.d_model = 16;
    o.d_hidden = 24;
    o.num_experts = 6;
    o.top_k = c.top_k;
    o.routing = c.routing;
    o.gating = c.gating;
    o.renormalize = c.gating == Gating::SoftmaxTopK;
    o.capacity_factor = c.capacity_factor;
    o.activation = c.activation;
    o.num_tasks = c.routing == Routing::Task ? 2 : 0;
    o.aux_loss_coef = 0.01;
    o.z_loss_coef = 0.001;
    torch::manual_seed(3);
    MoELayer cpu(o);
    torch::manual_seed(3);
    MoELayer gpu(o);
    gpu->to(torch::kCUDA);
    torch::manual_seed(4);
    const torch::Tensor x = torch::randn({3, 7, o.d_model});
    const torch::Tensor mask = torch::arange(7).unsqueeze(0) < torch::tensor({7, 4, 2}).unsqueeze(1);
    const torch::Tensor task = torch::tensor({1, 0, 1}, torch::kInt64);
    const torch::Tensor probe = torch::randn({3, 7, o.d_model});
    const torch::Tensor x_cpu = x.clone().requires_grad_(true);
    const torch::Tensor x_gpu = x.to(torch::kCUDA).requires_grad_(true);
    const torch::Tensor y_cpu = cpu->forward(x_cpu, {mask, task});
    const int64_t padded_before = fast_path_count("moe.padded_dispatch");
    const torch::Tensor y_gpu = gpu->forward(x_gpu, {mask.to(torch::kCUDA), task.to(torch::kCUDA)});
    const std::string what = o.to_string();
    EXPECT_EQ(fast_path_count("moe.padded_dispatch") - padded_before, c.capacity_factor > 0 ? 1 : 0) << what;
    ASSERT_TRUE(y_gpu.is_cuda()) << what;
    EXPECT_LE(max_diff(y_cpu, y_gpu), 1e-5) << what;
    EXPECT_EQ(cpu->last_stats().tokens_per_expert, gpu->last_stats().tokens_per_expert) << what;
    EXPECT_EQ(cpu->last_stats().dropped_assignments, gpu->last_stats().dropped_assignments) << what;
    const torch::Tensor aux_cpu = cpu->aux_loss(), aux_gpu = gpu->aux_loss();
    ASSERT_TRUE(aux_cpu.defined() && aux_gpu.defined()) << what;
    EXPECT_LE(max_diff(aux_cpu, aux_gpu), 1e-6) << what;
    ((y_cpu * probe).sum() + aux_cpu).backward();
    ((y_gpu * probe.to(torch::kCUDA)).sum() + aux_gpu).backward();
    EXPECT_LE(max_diff(x_cpu.grad(), x_gpu.grad()), 1e-5) << what;
    expect_same_grads(*cpu, *gpu, 1e-4, what);
  }
}

TEST(Cuda, DroplessTrainingNeverWaitsForTheDevice) {
  // float32 dropless training, where at::_grouped_mm does not apply: with a
  // row budget (what the trainer sets) Auto runs the padded dispatch, and
  // neither the forward nor the backward waits for the device; CUDA's sync
  // debug mode turns any wait into an error. Same output and gradients as
  // the CPU's sorted dispatch, and each expert's load is recorded.
  SKIP_WITHOUT_CUDA();
#ifndef MOEKIT_CUDA_LIBTORCH
  GTEST_SKIP() << "built against a LibTorch without c10_cuda (no sync debug mode)";
#else
  MoEOptions o;
  o.d_model = 16;
  o.d_hidden = 24;
  o.num_experts = 8;
  o.top_k = 2;
  o.aux_loss_coef = 0.01;
  o.z_loss_coef = 0.001;
  torch::manual_seed(5);
  MoELayer cpu(o);
  torch::manual_seed(5);
  MoELayer gpu(o);
  gpu->to(torch::kCUDA);
  gpu->set_row_budget(8.0 / 2.0);  // the trainer's first batch: N rows
  torch::manual_seed(6);
  const torch::Tensor x = torch::randn({4, 11, o.d_model});
  const torch::Tensor mask = torch::arange(11).unsqueeze(0) < torch::tensor({11, 6, 9, 3}).unsqueeze(1);
  const torch::Tensor probe = torch::randn({4, 11, o.d_model});
  const torch::Tensor x_cpu = x.clone().requires_grad_(true);
  const torch::Tensor x_gpu = x.to(torch::kCUDA).requires_grad_(true);
  const torch::Tensor mask_gpu = mask.to(torch::kCUDA), probe_gpu = probe.to(torch::kCUDA);
  const torch::Tensor y_cpu = cpu->forward(x_cpu, {mask});
  ((y_cpu * probe).sum() + cpu->aux_loss()).backward();
  const int64_t padded_before = fast_path_count("moe.padded_dispatch");
  torch::Tensor y_gpu;
  c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  const std::string waited = error_of([&] {
    y_gpu = gpu->forward(x_gpu, {mask_gpu});
    ((y_gpu * probe_gpu).sum() + gpu->aux_loss()).backward();
  });
  c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  ASSERT_EQ(waited, "") << "the dropless training forward or backward waited for the device";
  EXPECT_EQ(fast_path_count("moe.padded_dispatch") - padded_before, 1);
  EXPECT_LE(max_diff(y_cpu, y_gpu), 1e-5);
  EXPECT_LE(max_diff(x_cpu.grad(), x_gpu.grad()), 1e-5);
  expect_same_grads(*cpu, *gpu, 1e-4, "dropless padded on CUDA");
  const std::vector<RowBudgetRecord> records = gpu->take_row_budget_records();
  ASSERT_EQ(records.size(), 1u);
  const torch::Tensor load = records[0].load.to(torch::kCPU).contiguous();
  EXPECT_EQ(std::vector<int64_t>(load.data_ptr<int64_t>(), load.data_ptr<int64_t>() + load.numel()),
            cpu->last_stats().tokens_per_expert);
#endif
}

TEST(Cuda, MoELayerRunsInBfloat16) {
  SKIP_WITHOUT_CUDA();
  MoEOptions o;
  o.d_model = 64;
  o.d_hidden = 128;
  o.num_experts = 8;
  o.top_k = 2;
  torch::manual_seed(5);
  MoELayer cpu(o);
  torch::manual_seed(5);
  MoELayer gpu(o);
  gpu->to(torch::kCUDA, torch::kBFloat16);
  // The CPU copy gets the same bfloat16-rounded weights and input in float32,
  // so both route alike (router math is float32 on both).
  cpu->to(torch::kBFloat16);
  cpu->to(torch::kFloat);
  const torch::Tensor x = torch::randn({40, o.d_model}).to(torch::kBFloat16);
  torch::NoGradGuard no_grad;
  const torch::Tensor y_cpu = cpu->forward(x.to(torch::kFloat));
  const torch::Tensor y_gpu = gpu->forward(x.to(torch::kCUDA));
  EXPECT_EQ(y_gpu.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(cpu->last_stats().tokens_per_expert, gpu->last_stats().tokens_per_expert);
  // bfloat16 keeps 8 bits of mantissa: errors ~1e-2 of the output's scale.
  EXPECT_LE(max_diff(y_cpu, y_gpu), 0.03 * y_cpu.abs().max().item<double>());
}

TEST(Device, GroupedMmKernelRefusesWhatItCannotRun) {
  ExpertWeights w;
  w.w1 = torch::randn({2, 8, 8});
  w.w2 = torch::randn({2, 8, 8});
  const torch::Tensor x = torch::randn({3, 8});
  EXPECT_FALSE(grouped_mm_applies(x, w));  // CPU float32
  const std::string error =
      error_of([&] { grouped_ffn(x, {1, 2}, w, {Activation::Relu, GroupedFfnKernel::GroupedMm}); });
  EXPECT_NE(error.find("GroupedMm grouped-FFN kernel needs LibTorch >= 2.8"), std::string::npos) << error;
}

// The grouped GEMM path (at::_grouped_mm) against one GEMM per expert, both on
// the GPU in bfloat16: outputs and every gradient, with biases, SwiGLU and an
// expert that gets no rows.
TEST(Cuda, GroupedMmMatchesPerExpertGemmInBfloat16) {
  SKIP_WITHOUT_CUDA();
  for (Activation act : {Activation::Swish, Activation::SwiGLU}) {
    MoEOptions o;
    o.d_model = 64;
    o.d_hidden = 96;
    o.num_experts = 8;
    o.top_k = 2;
    o.activation = act;
    o.expert_bias = act == Activation::Swish;
    torch::manual_seed(6);
    MoELayer a(o);
    torch::manual_seed(6);
    MoELayer b(o);
    torch::manual_seed(6);
    MoELayer c(o);  // Auto dispatch: dropless on the device, group ends never on the host
    a->to(torch::kCUDA, torch::kBFloat16);
    b->to(torch::kCUDA, torch::kBFloat16);
    c->to(torch::kCUDA, torch::kBFloat16);
    a->set_dispatch(MoEDispatch::Sorted);
    b->set_dispatch(MoEDispatch::Sorted);
    b->set_kernel(GroupedFfnKernel::PerExpertGemm);
    {  // positive inputs and a negative router row: expert 7 never gets a row
      torch::NoGradGuard no_grad;
      a->gate->weight[7].fill_(-1);
      b->gate->weight[7].fill_(-1);
      c->gate->weight[7].fill_(-1);
    }
    torch::manual_seed(7);
    const torch::Tensor x = torch::randn({37, o.d_model}).abs().to(torch::kCUDA, torch::kBFloat16);
    if (!grouped_mm_applies(x, a->experts->weights_for(x, {37}, GroupedFfnKernel::Auto))) {
      GTEST_SKIP() << "this LibTorch (" << TORCH_VERSION << ") has no at::_grouped_mm";
    }
    const torch::Tensor xa = x.clone().requires_grad_(true), xb = x.clone().requires_grad_(true);
    const torch::Tensor xc = x.clone().requires_grad_(true);
    const int64_t offsets_before = fast_path_count("grouped_ffn.grouped_mm_offsets");
    const torch::Tensor ya = a->forward(xa), yb = b->forward(xb), yc = c->forward(xc);
    EXPECT_EQ(fast_path_count("grouped_ffn.grouped_mm_offsets") - offsets_before, 1);
    ASSERT_EQ(a->last_stats().tokens_per_expert[7], 0);
    EXPECT_EQ(c->last_stats().tokens_per_expert, b->last_stats().tokens_per_expert);
    const double scale = yb.abs().max().item<double>();
    EXPECT_LE(max_diff(ya, yb), 0.02 * scale);
    EXPECT_LE(max_diff(yc, yb), 0.02 * scale);
    const torch::Tensor probe = torch::randn_like(ya);
    (ya.to(torch::kFloat) * probe).sum().backward();
    (yb.to(torch::kFloat) * probe).sum().backward();
    (yc.to(torch::kFloat) * probe).sum().backward();
    const double grad_scale = std::max(1.0, xb.grad().abs().max().item<double>());
    EXPECT_LE(max_diff(xa.grad(), xb.grad()), 0.02 * grad_scale);
    EXPECT_LE(max_diff(xc.grad(), xb.grad()), 0.02 * grad_scale);
    const std::string name = act == Activation::Swish ? "swish" : "swiglu";
    expect_same_grads(*b, *a, 0.02, "grouped_mm " + name);
    expect_same_grads(*b, *c, 0.02, "grouped_mm with device offsets " + name);
  }
}

std::shared_ptr<AsrModel> random_asr_model(const AsrConfig& c) {
  torch::manual_seed(21);
  auto model = std::make_shared<AsrModel>(c);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.uniform_(-0.3, 0.3);
  model->eval();
  return model;
}

TEST(Cuda, AsrModelMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  for (bool non_blank : {false, true}) {
    AsrConfig c = small_asr_config();
    c.apply_non_blank_embedding = non_blank;
    auto cpu = random_asr_model(c);
    auto gpu = random_asr_model(c);
    gpu->to(torch::kCUDA);
    torch::manual_seed(22);
    const torch::Tensor feats = torch::randn({2, 83, 20});
    const torch::Tensor lens = torch::tensor({83, 57}, torch::kLong);
    const torch::Tensor feats_gpu = feats.to(torch::kCUDA), lens_gpu = lens.to(torch::kCUDA);
    {
      torch::NoGradGuard no_grad;
      for (int64_t chunk : {-1, 3}) {
        auto [out_cpu, mask_cpu] = cpu->encoder->forward(feats, lens, chunk, 1);
        auto [out_gpu, mask_gpu] = gpu->encoder->forward(feats_gpu, lens_gpu, chunk, 1);
        ASSERT_TRUE(out_gpu.is_cuda());
        EXPECT_TRUE(mask_cpu.equal(mask_gpu.cpu())) << "chunk " << chunk;
        EXPECT_LE(max_diff(out_cpu, out_gpu), 1e-4) << "chunk " << chunk;
        EXPECT_LE(max_diff(cpu->ctc_log_probs(out_cpu), gpu->ctc_log_probs(out_gpu)), 1e-4) << "chunk " << chunk;
      }
      // Streaming on the GPU equals the chunk-masked forward there.
      const torch::Tensor one = feats_gpu.slice(0, 0, 1);
      auto [masked, unused] = gpu->encoder->forward(one, lens_gpu.slice(0, 0, 1), 2, -1);
      EncoderStreamCache cache;
      std::vector<torch::Tensor> pieces;
      const int64_t window = gpu->encoder->window_frames(2), stride = gpu->encoder->subsampling_rate() * 2;
      for (int64_t cur = 0; cur + gpu->encoder->right_context() + 1 <= one.size(1); cur += stride)
        pieces.push_back(gpu->encoder->forward_chunk(one.slice(1, cur, std::min(cur + window, one.size(1))), cache, -1));
      EXPECT_LE(max_diff(torch::cat(pieces, 1), masked), 1e-4);
      // Both decoders score hypotheses alike.
      auto [enc_cpu, m1] = cpu->encoder->forward(feats.slice(0, 0, 1), lens.slice(0, 0, 1), -1, -1);
      auto [enc_gpu, m2] = gpu->encoder->forward(one, lens_gpu.slice(0, 0, 1), -1, -1);
      auto [l_cpu, r_cpu] = cpu->decoder_log_probs(enc_cpu, {{3, 4, 5}, {6}});
      auto [l_gpu, r_gpu] = gpu->decoder_log_probs(enc_gpu, {{3, 4, 5}, {6}});
      EXPECT_LE(max_diff(l_cpu, l_gpu), 1e-4);
      EXPECT_LE(max_diff(r_cpu, r_gpu), 1e-4);
    }
    // The training objective and its gradients.
    // Training draws a random chunk size from the CPU generator: the same seed
    // before each forward gives both the same chunk (another draw alone moves
    // these gradients by up to 6e-3).
    const std::vector<std::vector<int64_t>> targets = {{1, 2, 3, 4}, {5, 6}};
    torch::manual_seed(24);
    const AsrLosses loss_cpu = cpu->forward_train(feats, lens, targets);
    torch::manual_seed(24);
    const AsrLosses loss_gpu = gpu->forward_train(feats_gpu, lens_gpu, targets);
    EXPECT_LE(max_diff(loss_cpu.loss, loss_gpu.loss), 1e-3 * std::max(1.0, loss_cpu.loss.item<double>()))
        << "non_blank " << non_blank;
    loss_cpu.loss.backward();
    loss_gpu.loss.backward();
    expect_same_grads(*cpu, *gpu, 1e-3, non_blank ? "non-blank asr" : "asr");
  }
}

TEST(Cuda, RecognizerAndStreamingSessionMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const AsrConfig c = small_asr_config();
  auto cpu = random_asr_model(c);
  auto gpu = random_asr_model(c);
  gpu->to(torch::kCUDA);
  EXPECT_TRUE(model_device(*gpu).is_cuda());
  torch::manual_seed(23);
  std::vector<float> samples(16000);
  const torch::Tensor wave = torch::randn({16000}) * 0.1;
  std::copy(wave.data_ptr<float>(), wave.data_ptr<float>() + 16000, samples.begin());
  for (DecodeMode mode : {DecodeMode::CtcGreedy, DecodeMode::CtcPrefixBeam, DecodeMode::AttentionRescoring}) {
    DecodeOptions d;
    d.mode = mode;
    d.chunk_size = 4;
    const Recognition a = Recognizer(cpu, Units(), d).recognize(samples);
    const Recognition b = Recognizer(gpu, Units(), d).recognize(samples);
    EXPECT_EQ(a.tokens, b.tokens) << decode_mode_name(mode);
    EXPECT_NEAR(a.score, b.score, 1e-3) << decode_mode_name(mode);
    auto stream = [&](std::shared_ptr<AsrModel> model) {
      const Recognizer recognizer(model, Units(), d);
      StreamingSession session(recognizer);
      for (size_t pos = 0; pos < samples.size(); pos += 1600) session.accept_waveform(samples.data() + pos, 1600);
      return session.finish();
    };
    const Recognition s_cpu = stream(cpu), s_gpu = stream(gpu);
    EXPECT_EQ(s_cpu.tokens, s_gpu.tokens) << "streaming " << decode_mode_name(mode);
    EXPECT_NEAR(s_cpu.score, s_gpu.score, 1e-3) << "streaming " << decode_mode_name(mode);
  }
}

TEST(Cuda, LmForwardLossAndGenerationMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const LmConfig c = tiny_lm_config(/*moe=*/true);
  torch::manual_seed(31);
  LmModel cpu(c);
  torch::manual_seed(31);
  LmModel gpu(c);
  gpu.to(torch::kCUDA);
  const torch::Tensor tokens = torch::randint(c.vocab_size, {2, 12}, torch::kLong);
  const LmLoss a = cpu.loss(tokens);
  const LmLoss b = gpu.loss(tokens.to(torch::kCUDA));
  EXPECT_LE(max_diff(a.loss, b.loss), 1e-4);
  a.loss.backward();
  b.loss.backward();
  expect_same_grads(cpu, gpu, 1e-4, "lm");
  cpu.eval();
  gpu.eval();
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 10;
  greedy.stop_at_eos = false;
  EXPECT_EQ(generate(cpu, {1, 5, 7}, greedy, -1), generate(gpu, {1, 5, 7}, greedy, -1));
}


// ---- training on CUDA against the CPU --------------------------------------

// The progress records' losses of a run, in step order.
std::vector<double> logged_train_losses(const std::string& exp) {
  std::vector<double> out;
  std::istringstream lines(read_file(exp + "/metrics.jsonl"));
  std::string line;
  while (std::getline(lines, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss") && j.contains("lr")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

// A small MoE LM trained for `steps` steps on `device` (no dropout: the
// same computation on either device), paused at `max_steps` (0: not).
TrainSummary train_tiny_lm(const std::string& exp, const torch::Device& device, const std::string& autocast,
                           int64_t max_steps, bool resume, const std::string& moe_dispatch = "auto") {
  LmConfig c = tiny_lm_config(true);
  const std::vector<int64_t> stream = patterned_tokens(3000, 13), valid = patterned_tokens(400, 11);
  LmDataOptions data;
  data.seq_len = 16;
  data.batch_size = 8;
  TrainerOptions o;
  o.epochs = 2;
  o.lr = 0.005;
  o.scheduler = "cosine";
  o.warmup_steps = 2;
  o.total_steps = 12;
  o.log_interval = 1;
  o.average_last = 1;
  o.seed = 3;
  o.autocast = autocast;
  o.moe_dispatch = moe_dispatch;
  o.max_steps = max_steps;
  torch::manual_seed(o.seed);
  auto model = std::make_shared<LmModel>(c);
  LmTrainTask task(model, stream, valid, data, o.seed, "");
  return train(task, o, exp, resume, device);
}

void expect_close_losses(const std::vector<double>& a, const std::vector<double>& b, double relative,
                         const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], relative * std::abs(a[i])) << what << " step " << i + 1;
}

TEST(Cuda, LmTrainingStepsEqualCpuAndCheckpointsMoveBetweenThem) {
  SKIP_WITHOUT_CUDA();
  const std::string d = temp_dir("cuda_train");
  const torch::Device gpu(torch::kCUDA, 0);
  train_tiny_lm(d + "/cpu", torch::kCPU, "none", 0, false);
  const int64_t padded_before = fast_path_count("moe.padded_dispatch");
  train_tiny_lm(d + "/cuda", gpu, "none", 0, false);
  // float32 dropless on the GPU: the padded dispatch under row budgets.
  EXPECT_GT(fast_path_count("moe.padded_dispatch"), padded_before);
  const std::vector<double> cpu = logged_train_losses(d + "/cpu");
  ASSERT_EQ(cpu.size(), 12u);
  expect_close_losses(cpu, logged_train_losses(d + "/cuda"), 1e-4, "fp32 on CUDA");
  const TensorMap wa = read_model_weights(d + "/cpu/final"), wb = read_model_weights(d + "/cuda/final");
  for (const auto& [name, t] : wa) EXPECT_LE(max_diff(t, wb.at(name)), 1e-4) << name;
  // bfloat16 autocast: close, not equal.
  train_tiny_lm(d + "/bf16", gpu, "bf16", 0, false);
  expect_close_losses(cpu, logged_train_losses(d + "/bf16"), 0.03, "bf16 autocast");
  // Paused on one device, resumed on the other: the uninterrupted run.
  train_tiny_lm(d + "/to_cpu", gpu, "none", 5, false);
  train_tiny_lm(d + "/to_cpu", torch::kCPU, "none", 0, true);
  expect_close_losses(cpu, logged_train_losses(d + "/to_cpu"), 1e-4, "CUDA checkpoint resumed on the CPU");
  train_tiny_lm(d + "/to_cuda", torch::kCPU, "none", 5, false);
  train_tiny_lm(d + "/to_cuda", gpu, "none", 0, true);
  expect_close_losses(cpu, logged_train_losses(d + "/to_cuda"), 1e-4, "CPU checkpoint resumed on CUDA");
}

TEST(Device, PaddedMoeDispatchTrainsAsTheSortedOne) {
  // train_conf.moe_dispatch reaches every MoE layer; on the CPU the padded
  // dispatch (the GPU's sync-free one) trains to the sorted one's losses.
  const std::string d = temp_dir("moe_dispatch");
  const int64_t before = fast_path_count("moe.padded_dispatch");
  train_tiny_lm(d + "/sorted", torch::kCPU, "none", 0, false, "sorted");
  EXPECT_EQ(fast_path_count("moe.padded_dispatch"), before);
  train_tiny_lm(d + "/padded", torch::kCPU, "none", 0, false, "padded");
  EXPECT_GT(fast_path_count("moe.padded_dispatch"), before);
  const std::vector<double> sorted = logged_train_losses(d + "/sorted");
  ASSERT_EQ(sorted.size(), 12u);
  expect_close_losses(sorted, logged_train_losses(d + "/padded"), 1e-4, "padded dispatch");
  const TensorMap wa = read_model_weights(d + "/sorted/final"), wb = read_model_weights(d + "/padded/final");
  for (const auto& [name, t] : wa) EXPECT_LE(max_diff(t, wb.at(name)), 1e-4) << name;
}

TEST(Device, Bf16AutocastNeedsCuda) {
  const std::string d = temp_dir("autocast_cpu");
  try {
    train_tiny_lm(d + "/e", torch::kCPU, "bf16", 0, false);
    ADD_FAILURE() << "trained with autocast on the CPU";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("train_conf.autocast bf16 needs --device cuda"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moekit
