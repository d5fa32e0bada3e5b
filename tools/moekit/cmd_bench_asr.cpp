// `moekit bench asr`: real-time factor of a U2++ encoder + CTC head, full
// context and chunk-by-chunk streaming, with and without fbank, and the
// fraction of the memory-bandwidth bound per chunk.
#include <iostream>
#include <numeric>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "commands.h"
#include "moekit/audio/audio_file.h"
#include "moekit/audio/fbank.h"
#include "moekit/core/check.h"
#include "moekit/core/runtime.h"
#include "moekit/core/safetensors.h"
#include "moekit/decode/recognizer.h"
#include "moekit/models/asr/wenet_import.h"
#include "moekit/models/model.h"
#include "moekit/moe/moe_layer.h"

namespace moekit::cli {

namespace {

struct BenchAsrOptions {
  std::string model_dir;   // empty: a random model of the shape below
  int64_t d_model = 256, heads = 4, blocks = 12, ffn = 2048, experts = 8, top_k = 2, kernel = 8, vocab = 5000;
  bool causal = true;
  double seconds = 10.0;
  int64_t chunk_size = 16;
  int64_t streams = 1;
  int rounds = 5;
  std::string save_model;  // write the benchmarked model here (for bench/asr_pytorch.py)
  std::string save_feats;  // write the benchmarked fbank features here (safetensors, "feats" [T, mel])
  std::string wav;         // benchmark on this audio instead of noise (its first `seconds`)
  uint64_t seed = 1;
};

// Expert bytes each MoE layer's last forward read: the experts that got rows.
double touched_expert_bytes(torch::nn::Module& root, std::vector<double>* busiest_share) {
  double bytes = 0;
  for (const auto& m : root.modules(false)) {
    const auto* moe = m->as<MoELayerImpl>();
    if (moe == nullptr) continue;
    const ExpertWeights w = moe->experts->weights();
    double per_expert = 0;
    for (const torch::Tensor& t : {w.w1, w.b1, w.w3, w.w2, w.b2, w.w1_scale, w.w3_scale, w.w2_scale}) {
      if (t.defined()) per_expert += static_cast<double>(t.numel()) / t.size(0) * t.element_size();
    }
    const RouterStats stats = moe->last_stats();
    int64_t total = 0, busiest = 0;
    for (int64_t n : stats.tokens_per_expert) {
      if (n > 0) bytes += per_expert;
      total += n;
      busiest = std::max(busiest, n);
    }
    if (busiest_share != nullptr && total > 0) busiest_share->push_back(static_cast<double>(busiest) / total);
  }
  return bytes;
}

AsrConfig bench_config(const BenchAsrOptions& o) {
  AsrConfig c;
  c.vocab_size = o.vocab;
  auto& e = c.encoder;
  e.output_size = o.d_model;
  e.attention_heads = o.heads;
  e.num_blocks = o.blocks;
  e.ffn.hidden = o.ffn;
  e.ffn.moe = o.experts > 0;
  e.ffn.n_expert = std::max<int64_t>(o.experts, 1);
  e.ffn.n_expert_activated = o.top_k;
  e.cnn_module_kernel = o.kernel;
  e.causal = o.causal;
  e.cnn_layer_norm = true;
  e.use_dynamic_chunk = true;
  c.decoder.num_blocks = 0;  // encoder + CTC only
  c.reverse_weight = 0;
  return c;
}

}  // namespace

void add_bench_asr_command(CLI::App& bench, const GlobalOptions& global) {
  auto o = std::make_shared<BenchAsrOptions>();
  CLI::App* cmd = bench.add_subcommand("asr", "RTF of a U2++ encoder + CTC: full context and streaming chunks (JSON)");
  cmd->add_option("--model-dir", o->model_dir, "Benchmark this model (default: a random one of the shape below)");
  cmd->add_option("--d-model", o->d_model, "Encoder width")->capture_default_str();
  cmd->add_option("--heads", o->heads, "Attention heads")->capture_default_str();
  cmd->add_option("--blocks", o->blocks, "Conformer blocks")->capture_default_str();
  cmd->add_option("--ffn", o->ffn, "FFN hidden width (per expert)")->capture_default_str();
  cmd->add_option("--experts", o->experts, "Experts per FFN (0 = dense FFN)")->capture_default_str();
  cmd->add_option("--top-k", o->top_k, "Experts per frame")->capture_default_str();
  cmd->add_option("--kernel", o->kernel, "Convolution module kernel")->capture_default_str();
  cmd->add_option("--vocab", o->vocab, "CTC output units")->capture_default_str();
  cmd->add_option("--causal", o->causal, "Causal convolution")->capture_default_str();
  cmd->add_option("--seconds", o->seconds, "Utterance length (s)")->capture_default_str();
  cmd->add_option("--chunk-size", o->chunk_size, "Streaming chunk (encoder frames)")->capture_default_str();
  cmd->add_option("--streams", o->streams,
                  "Also time this many streams chunk by chunk, one at a time against batched steps "
                  "(forward_chunks), side by side")
      ->capture_default_str();
  cmd->add_option("--rounds", o->rounds, "Timed repetitions; medians are reported")->capture_default_str();
  cmd->add_option("--save-model", o->save_model, "Also save the benchmarked model to this directory");
  cmd->add_option("--seed", o->seed, "Seed of the random model and audio")->capture_default_str();
  cmd->add_option("--wav", o->wav, "Benchmark on this audio (its first --seconds) instead of noise");
  cmd->add_option("--save-feats", o->save_feats, "Also save the benchmarked fbank features (safetensors, 'feats')");
  cmd->callback([o, &global] {
    apply_runtime(global);
    MOEKIT_CHECK_ARG(o->rounds >= 1 && o->seconds > 0 && o->chunk_size > 0, "bench asr: bad --rounds/--seconds/--chunk-size");
    MOEKIT_CHECK_ARG(o->streams >= 1 && o->streams <= 1024, "bench asr: --streams must be in [1, 1024], got ",
                     o->streams);
    torch::manual_seed(static_cast<uint64_t>(o->seed));
    std::shared_ptr<AsrModel> model;
    if (!o->model_dir.empty()) {
      model = load_asr_model(o->model_dir, WeightStorage::kMap).model;
    } else {
      model = std::make_shared<AsrModel>(bench_config(*o));
      // Random but well-scaled weights (default init), CMVN identity.
    }
    model->eval();
    if (!o->save_model.empty()) save_model(o->save_model, *model);
    const torch::Device device = parse_device(global.device);
    model->to(device);
    torch::NoGradGuard no_grad;
    const int rate = model->config().fbank.sample_rate;
    const int64_t n = static_cast<int64_t>(o->seconds * rate);
    std::vector<float> samples(static_cast<size_t>(n));
    if (o->wav.empty()) {
      const torch::Tensor noise = torch::randn({n}) * 0.1;
      std::copy(noise.data_ptr<float>(), noise.data_ptr<float>() + n, samples.begin());
    } else {
      const Audio audio = load_audio(o->wav, rate);
      MOEKIT_CHECK_ARG(static_cast<int64_t>(audio.samples.size()) >= n, "bench asr: ", o->wav, " holds ",
                       audio.samples.size() / static_cast<double>(rate), " s of audio, fewer than --seconds ",
                       o->seconds);
      std::copy(audio.samples.begin(), audio.samples.begin() + n, samples.begin());
    }
    const torch::Tensor cpu_feats = model_features(*model, samples).unsqueeze(0);
    if (!o->save_feats.empty()) write_safetensors(o->save_feats, {{"feats", cpu_feats[0].contiguous()}});
    const torch::Tensor feats = cpu_feats.to(device);
    const torch::Tensor lens = torch::full({1}, feats.size(1), torch::dtype(torch::kLong).device(device));
    auto& enc = *model->encoder;
    const int64_t window = enc.window_frames(o->chunk_size), stride = enc.subsampling_rate() * o->chunk_size;
    const int64_t context = enc.right_context() + 1;
    int64_t chunks = 0;
    for (int64_t cur = 0; cur + context <= feats.size(1); cur += stride) ++chunks;

    auto time_once = [&](const std::function<void()>& fn) {
      synchronize_device(device);
      const auto start = Clock::now();
      fn();
      synchronize_device(device);
      return std::chrono::duration<double>(Clock::now() - start).count();
    };
    auto fbank = [&] { model_features(*model, samples); };
    auto full = [&] {
      auto [out, mask] = enc.forward(feats, lens, -1, -1);
      model->ctc_log_probs(out);
    };
    // One stream chunk by chunk, as a streaming session runs the encoder.
    auto stream_one = [&](const torch::Tensor& f) {
      EncoderStreamCache cache;
      for (int64_t cur = 0; cur + context <= f.size(1); cur += stride) {
        const int64_t end = std::min(cur + window, f.size(1));
        model->ctc_log_probs(enc.forward_chunk(f.slice(1, cur, end), cache, -1));
      }
    };
    auto streaming = [&] { stream_one(feats); };
    // N streams, each the audio rotated by its own offset (so their chunks
    // differ and route to different experts, as distinct speakers' do): one
    // after another, and in lockstep with each step batched over all.
    const auto n_streams = static_cast<size_t>(o->streams);
    std::vector<torch::Tensor> stream_feats;
    for (size_t i = 0; i < n_streams; ++i)
      stream_feats.push_back(torch::roll(feats, {static_cast<int64_t>(i) * 53 % feats.size(1)}, {1}).contiguous());
    auto streams_one_at_a_time = [&] {
      for (const torch::Tensor& f : stream_feats) stream_one(f);
    };
    auto streams_batched = [&] {
      std::vector<EncoderStreamCache> caches(n_streams);
      std::vector<EncoderStreamCache*> ptrs;
      for (auto& c : caches) ptrs.push_back(&c);
      const std::vector<int64_t> cache_frames(n_streams, -1);
      for (int64_t cur = 0; cur + context <= feats.size(1); cur += stride) {
        const int64_t end = std::min(cur + window, feats.size(1));
        std::vector<torch::Tensor> pieces;
        for (size_t i = 0; i < n_streams; ++i) pieces.push_back(stream_feats[i].slice(1, cur, end));
        for (const torch::Tensor& out : enc.forward_chunks(pieces, ptrs, cache_frames)) model->ctc_log_probs(out);
      }
    };
    full();
    streaming();  // warm-up
    // The CPU's read bandwidth is probed in every round, next to the
    // timings it is compared with (on a shared machine it moves with the
    // neighbours' load); on a GPU the bound is not computed.
    std::vector<double> t_fbank, t_full, t_stream, probes, t_one_at_a_time, t_batched;
    if (n_streams > 1) streams_batched();  // warm-up
    for (int r = 0; r < o->rounds; ++r) {
      t_fbank.push_back(time_once(fbank));
      t_full.push_back(time_once(full));
      t_stream.push_back(time_once(streaming));
      if (n_streams > 1) {
        t_one_at_a_time.push_back(time_once(streams_one_at_a_time));
        t_batched.push_back(time_once(streams_batched));
      }
      if (device.is_cpu()) probes.push_back(read_bandwidth_bytes_per_s());
    }
    // Bytes of weights one chunk reads: every encoder and CTC parameter,
    // less the experts its routing left idle (counted chunk by chunk; with
    // random weights and noise most frames pick the same two experts).
    // int8 experts count their int8 bytes and their scales.
    double all_bytes = 0;
    for (const auto& p : enc.parameters()) all_bytes += static_cast<double>(p.numel()) * p.element_size();
    for (const auto& p : model->ctc->parameters()) all_bytes += static_cast<double>(p.numel()) * p.element_size();
    const double all_expert_bytes = [&] {
      double b = 0;
      for (const auto& m : enc.modules(false)) {
        if (const auto* moe = m->as<MoELayerImpl>()) {
          for (const auto& p : moe->experts->parameters()) b += static_cast<double>(p.numel()) * p.element_size();
          for (const auto& p : moe->experts->buffers()) b += static_cast<double>(p.numel()) * p.element_size();
        }
      }
      return b;
    }();
    for (const auto& m : enc.modules(false)) {
      if (const auto* moe = m->as<MoELayerImpl>()) {
        for (const auto& p : moe->experts->buffers()) all_bytes += static_cast<double>(p.numel()) * p.element_size();
      }
    }
    double touched_bytes = 0;
    std::vector<double> busiest_full, busiest_chunk;
    {
      EncoderStreamCache cache;
      for (int64_t cur = 0; cur + context <= feats.size(1); cur += stride) {
        const int64_t end = std::min(cur + window, feats.size(1));
        enc.forward_chunk(feats.slice(1, cur, end), cache, -1);
        touched_bytes += touched_expert_bytes(enc, &busiest_chunk);
      }
      enc.forward(feats, lens, -1, -1);
      touched_expert_bytes(enc, &busiest_full);
    }
    const double weight_bytes = all_bytes - all_expert_bytes + touched_bytes / std::max<int64_t>(chunks, 1);
    auto mean = [](const std::vector<double>& v) {
      return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
    };
    const double bandwidth = probes.empty() ? 0.0 : median(probes);
    const double fb = median(t_fbank), fu = median(t_full), st = median(t_stream);
    const ParameterCount count = count_parameters(*model);
    nlohmann::json j;
    j["benchmark"] = "asr_encoder_ctc";
    j["device"] = device.str();
    j["threads"] = num_threads();
    j["seconds"] = o->seconds;
    j["experts"] = model->config().encoder.ffn.moe ? model->config().encoder.ffn.n_expert : 0;
    j["parameters"] = {{"total", count.total}, {"active", count.active}};
    j["rtf_fbank"] = fb / o->seconds;
    j["rtf_full"] = fu / o->seconds;
    j["rtf_full_with_fbank"] = (fu + fb) / o->seconds;
    j["chunk_size"] = o->chunk_size;
    j["chunks"] = chunks;
    j["rtf_chunk"] = st / o->seconds;
    j["rtf_chunk_with_fbank"] = (st + fb) / o->seconds;
    if (n_streams > 1) {
      // Encoder + CTC time per second of audio of each of N streams.
      j["streams"] = o->streams;
      j["rtf_chunk_streams_one_at_a_time"] = median(t_one_at_a_time) / o->seconds / o->streams;
      j["rtf_chunk_streams_batched"] = median(t_batched) / o->seconds / o->streams;
      j["batched_speedup"] = median(t_one_at_a_time) / median(t_batched);
    }
    j["weight_bytes_per_chunk"] = weight_bytes;
    j["weight_bytes_all"] = all_bytes;
    j["expert_bytes_touched_per_chunk_fraction"] =
        all_expert_bytes > 0 ? touched_bytes / std::max<int64_t>(chunks, 1) / all_expert_bytes : 0.0;
    // Routing spread: the busiest expert's share of a layer's (token, expert)
    // assignments, averaged over MoE layers (1/E = even, 1/k = all on k experts).
    j["busiest_expert_share_full"] = mean(busiest_full);
    j["busiest_expert_share_chunk"] = mean(busiest_chunk);
    if (device.is_cpu()) {
      j["read_bandwidth_gb_per_s"] = bandwidth / 1e9;
      j["chunk_fraction_of_bandwidth_bound"] = weight_bytes * static_cast<double>(chunks) / st / bandwidth;
      // The same bound if every chunk read every expert (the premise of a
      // router that spreads a chunk's frames over all experts); above 1
      // where skipping idle experts beats reading them all.
      j["chunk_fraction_of_all_weights_bound"] = all_bytes * static_cast<double>(chunks) / st / bandwidth;
    }
    std::cout << json_text(j, 2) << std::endl;
  });
}

}  // namespace moekit::cli
