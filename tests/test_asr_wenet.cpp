// The imported WeNet U2++ MoE model against what WeNet computes for it
// (fixture: $MOEKIT_FIXTURES/wenet_u2pp_moe, built with WeNet's own code).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <functional>
#include <yaml-cpp/yaml.h>

#include "moekit/audio/audio_file.h"
#include "moekit/audio/fbank.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/torch_checkpoint.h"
#include "moekit/decode/recognizer.h"
#include "moekit/models/asr/wenet_import.h"
#include "test_util.h"

using namespace moekit;

namespace {

std::string fixture_dir() {
  const char* root = std::getenv("MOEKIT_FIXTURES");
  if (!root || !*root) return "";
  return std::string(root) + "/wenet_u2pp_moe";
}

#define REQUIRE_FIXTURE()                                                                  \
  const std::string dir = fixture_dir();                                                   \
  if (dir.empty()) GTEST_SKIP() << "MOEKIT_FIXTURES is not set (the WeNet fixture lives there)"; \
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr"

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e9;
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

struct Fixture {
  ImportedAsr imported;
  TensorMap reference;
  nlohmann::json decode;
  torch::Tensor feats;  // MoEKit's fbank of input.wav
};

const Fixture& fixture(const std::string& dir) {
  static Fixture f = [&] {
    Fixture x;
    x.imported = import_wenet(WenetFiles::from_dir(dir));
    x.reference = read_torch_checkpoint(dir + "/reference.pt");
    x.decode = nlohmann::json::parse(read_file(dir + "/reference_decode.json"));
    const Audio audio = read_audio(dir + "/input.wav");
    x.feats = model_features(*x.imported.model, audio.samples);
    return x;
  }();
  return f;
}

std::vector<int64_t> json_tokens(const nlohmann::json& j, const char* mode) {
  return j.at("tokens").at(mode).at(0).get<std::vector<int64_t>>();
}

}  // namespace

TEST(WenetFixture, CheckpointReaderReadsTheStateDict) {
  REQUIRE_FIXTURE();
  const TensorMap sd = read_torch_checkpoint(dir + "/final.pt");
  ASSERT_TRUE(sd.count("encoder.embed.conv.0.weight"));
  EXPECT_EQ(sd.at("encoder.embed.conv.0.weight").sizes(), torch::IntArrayRef({64, 1, 3, 3}));
  EXPECT_EQ(sd.at("encoder.encoders.1.feed_forward.experts.3.w_2.bias").sizes(), torch::IntArrayRef({64}));
  int64_t parameters = 0;
  for (const auto& [name, t] : sd)
    if (name.size() < 3 || name.compare(name.size() - 3, 3, ".pe") != 0) parameters += t.numel();
  // WeNet counts parameters only (no pe buffers, no CMVN buffers).
  EXPECT_EQ(parameters - 160, fixture(dir).decode.at("num_params").get<int64_t>());
}

TEST(WenetFixture, FbankMatchesTorchaudio) {
  REQUIRE_FIXTURE();
  const Fixture& f = fixture(dir);
  EXPECT_LE(max_diff(f.feats, f.reference.at("fbank")), 1e-4);
}

TEST(WenetFixture, FullContextEncoderAndCtc) {
  REQUIRE_FIXTURE();
  const Fixture& f = fixture(dir);
  torch::NoGradGuard no_grad;
  AsrModel& model = *f.imported.model;
  const torch::Tensor feats = f.reference.at("fbank").unsqueeze(0);
  auto [out, mask] = model.encoder->forward(feats, torch::full({1}, feats.size(1), torch::kLong), -1, -1);
  EXPECT_LE(max_diff(out[0], f.reference.at("encoder_out_full")), 1e-4);
  EXPECT_LE(max_diff(model.ctc_log_probs(out)[0], f.reference.at("ctc_log_probs_full")), 1e-4);
}

TEST(WenetFixture, ChunkMaskedAndStreamingEncoder) {
  REQUIRE_FIXTURE();
  const Fixture& f = fixture(dir);
  torch::NoGradGuard no_grad;
  AsrModel& model = *f.imported.model;
  const torch::Tensor feats = f.reference.at("fbank").unsqueeze(0);
  auto [masked, mask] = model.encoder->forward(feats, torch::full({1}, feats.size(1), torch::kLong), 4, -1);
  EXPECT_LE(max_diff(masked[0], f.reference.at("encoder_out_chunk4_masked")), 1e-4);

  // Chunk by chunk with caches, fed through a streaming session in uneven pieces.
  DecodeOptions options;
  options.chunk_size = 4;
  options.mode = DecodeMode::CtcGreedy;
  Recognizer recognizer(f.imported.model, f.imported.units, options);
  StreamingSession session(recognizer);
  const Audio audio = read_audio(dir + "/input.wav");
  size_t pos = 0, piece = 777;
  while (pos < audio.samples.size()) {
    const size_t n = std::min(piece, audio.samples.size() - pos);
    session.accept_waveform(audio.samples.data() + pos, n);
    pos += n;
    piece = piece * 3 % 2000 + 100;
  }
  session.finish();
  EXPECT_LE(max_diff(session.encoder_out()[0], f.reference.at("encoder_out_chunk4_streaming")), 1e-4);
}

TEST(WenetFixture, DecoderLogProbs) {
  REQUIRE_FIXTURE();
  const Fixture& f = fixture(dir);
  torch::NoGradGuard no_grad;
  AsrModel& model = *f.imported.model;
  const torch::Tensor hyps_t = f.reference.at("rescore_hyps");
  std::vector<std::vector<int64_t>> hyps;
  for (int64_t i = 0; i < hyps_t.size(0); ++i) {
    std::vector<int64_t> h;
    for (int64_t j = 0; j < hyps_t.size(1); ++j)
      if (hyps_t[i][j].item<int64_t>() >= 0) h.push_back(hyps_t[i][j].item<int64_t>());
    hyps.push_back(h);
  }
  const torch::Tensor memory = f.reference.at("encoder_out_full").unsqueeze(0);
  auto [left, right] = model.decoder_log_probs(memory, hyps);
  EXPECT_LE(max_diff(left, f.reference.at("decoder_l2r_log_probs")), 1e-4);
  EXPECT_LE(max_diff(right, f.reference.at("decoder_r2l_log_probs")), 1e-4);
}

TEST(WenetFixture, DecodingResults) {
  REQUIRE_FIXTURE();
  const Fixture& f = fixture(dir);
  DecodeOptions options;
  options.beam_size = f.decode.at("beam_size").get<int>();
  options.ctc_weight = f.decode.at("ctc_weight").get<double>();
  options.reverse_weight = f.decode.at("reverse_weight").get<double>();
  const Audio audio = read_audio(dir + "/input.wav");

  options.mode = DecodeMode::CtcGreedy;
  const Recognition greedy = Recognizer(f.imported.model, f.imported.units, options).recognize(audio.samples);
  EXPECT_EQ(greedy.tokens, json_tokens(f.decode, "ctc_greedy_search"));

  // Near-ties in a random model: compare by score.
  options.mode = DecodeMode::CtcPrefixBeam;
  const Recognition beam = Recognizer(f.imported.model, f.imported.units, options).recognize(audio.samples);
  EXPECT_NEAR(beam.score, f.decode.at("scores").at("ctc_prefix_beam_search").at(0).get<double>(), 1e-3);

  options.mode = DecodeMode::AttentionRescoring;
  const Recognition rescored = Recognizer(f.imported.model, f.imported.units, options).recognize(audio.samples);
  EXPECT_NEAR(rescored.score, f.decode.at("scores").at("attention_rescoring").at(0).get<double>(), 1e-3);
  EXPECT_FALSE(rescored.text.empty());
}

TEST(WenetFixture, ImportedModelDirectoryRoundTrips) {
  REQUIRE_FIXTURE();
  const Fixture& f = fixture(dir);
  const std::string out = temp_dir("wenet_import");
  save_asr_model(out, *f.imported.model, f.imported.units);
  const LoadedAsr loaded = load_asr_model(out);
  EXPECT_EQ(loaded.units.serialize(), f.imported.units.serialize());
  torch::NoGradGuard no_grad;
  const torch::Tensor feats = f.reference.at("fbank").unsqueeze(0);
  auto [out_a, m_a] = loaded.model->encoder->forward(feats, torch::full({1}, feats.size(1), torch::kLong));
  EXPECT_LE(max_diff(out_a[0], f.reference.at("encoder_out_full")), 1e-4);
}

namespace {

// A copy of the fixture's WeNet directory with train.yaml edited by `edit`.
std::string edited_copy(const std::string& dir, const std::string& name,
                        const std::function<void(YAML::Node&)>& edit) {
  const std::string out = temp_dir("wenet_" + name);
  make_dirs(out);
  for (const char* f : {"final.pt", "global_cmvn", "units.txt"})
    write_file_atomic(out + "/" + f, read_file(dir + "/" + f));
  YAML::Node y = YAML::LoadFile(dir + "/train.yaml");
  edit(y);
  write_file_atomic(out + "/train.yaml", YAML::Dump(y));
  return out;
}

std::string import_error(const std::string& wenet_dir) {
  return error_of<std::invalid_argument>([&] { import_wenet(WenetFiles::from_dir(wenet_dir)); });
}

}  // namespace

TEST(WenetFixture, UnsupportedOptionsAndMismatchesAreRefusedByName) {
  REQUIRE_FIXTURE();
  struct Case {
    const char* name;
    std::function<void(YAML::Node&)> edit;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"gqa", [](YAML::Node& y) { y["encoder_conf"]["n_kv_head"] = 2; }, "encoder_conf.n_kv_head"},
      {"rms", [](YAML::Node& y) { y["encoder_conf"]["layer_norm_type"] = "rms_norm"; }, "layer_norm_type"},
      {"unknown", [](YAML::Node& y) { y["encoder_conf"]["frobnicate"] = true; }, "encoder_conf.frobnicate"},
      {"squeezeformer", [](YAML::Node& y) { y["encoder"] = "squeezeformer"; }, "encoder 'squeezeformer'"},
      {"transducer", [](YAML::Node& y) { y["model"] = "transducer"; }, "model 'transducer'"},
      {"rope", [](YAML::Node& y) { y["encoder_conf"]["pos_enc_layer_type"] = "rope_pos"; }, "rope_pos"},
      // Tying asked of a checkpoint whose weights are not tied.
      {"tie", [](YAML::Node& y) { y["decoder_conf"]["tie_word_embedding"] = true; },
       "tie_word_embedding is set, but decoder.left_decoder.output_layer.weight differs from "
       "decoder.left_decoder.embed.0.weight"},
      // Another architecture than the checkpoint's: every mismatch named.
      {"deeper", [](YAML::Node& y) { y["encoder_conf"]["num_blocks"] = 3; }, "encoder.encoders.2."},
      {"wider", [](YAML::Node& y) { y["encoder_conf"]["linear_units"] = 256; }, "feed_forward.experts.w1"},
      {"dense", [](YAML::Node& y) { y["encoder_conf"]["mlp_type"] = "position_wise_feed_forward"; },
       "feed_forward.gate.weight"},
      {"vocab", [](YAML::Node& y) { y["output_dim"] = 40; }, "ctc.ctc_lo"},
  };
  for (const auto& c : cases) {
    const std::string message = import_error(edited_copy(dir, c.name, c.edit));
    EXPECT_NE(message.find(c.expected), std::string::npos) << c.name << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << c.name << ": " << message;
  }
}

TEST(WenetFixture, NonBlankEmbeddingOptionIsImported) {
  REQUIRE_FIXTURE();
  const std::string edited = edited_copy(dir, "non_blank", [](YAML::Node& y) {
    y["model_conf"]["apply_non_blank_embedding"] = true;
  });
  const ImportedAsr imported = import_wenet(WenetFiles::from_dir(edited));
  EXPECT_TRUE(imported.model->config().apply_non_blank_embedding);
  EXPECT_FALSE(fixture(dir).imported.model->config().apply_non_blank_embedding);
  // Same weights, so CTC results agree; rescoring runs on the non-blank frames.
  DecodeOptions options;
  options.mode = DecodeMode::AttentionRescoring;
  const Audio audio = read_audio(dir + "/input.wav");
  const Recognition rescored = Recognizer(imported.model, imported.units, options).recognize(audio.samples);
  EXPECT_FALSE(rescored.tokens.empty());
  const std::string out = temp_dir("non_blank_model");
  save_asr_model(out, *imported.model, imported.units);
  EXPECT_TRUE(load_asr_model(out).model->config().apply_non_blank_embedding);
}

TEST(WenetFixture, TiedDecoderCheckpointIsImportedOnce) {
  REQUIRE_FIXTURE();
  // The fixture's state dict made tied, as WeNet saves a tied model: the
  // output weights equal to the embeddings, under both names.
  TensorMap sd = read_torch_checkpoint(dir + "/final.pt");
  for (const char* side : {"left_decoder", "right_decoder"}) {
    const std::string prefix = std::string("decoder.") + side + ".";
    ASSERT_TRUE(sd.count(prefix + "embed.0.weight") && sd.count(prefix + "output_layer.weight"));
    sd[prefix + "output_layer.weight"] = sd[prefix + "embed.0.weight"].clone();
  }
  YAML::Node y = YAML::LoadFile(dir + "/train.yaml");
  const AsrConfig untied_config = wenet_config(y, "train.yaml");
  y["decoder_conf"]["tie_word_embedding"] = true;
  const AsrConfig tied_config = wenet_config(y, "train.yaml");
  ASSERT_TRUE(tied_config.decoder.tie_word_embedding);
  auto load = [&](const AsrConfig& config) {
    TensorMap weights = map_wenet_weights(sd, config, "final.pt");
    weights["encoder.global_cmvn.mean"] = torch::zeros({config.encoder.input_dim});
    weights["encoder.global_cmvn.istd"] = torch::ones({config.encoder.input_dim});
    auto model = std::make_shared<AsrModel>(config);
    load_module_state(*model, weights, "final.pt");
    model->eval();
    return model;
  };
  const auto tied = load(tied_config), untied = load(untied_config);
  EXPECT_FALSE(tied->named_parameters().contains("decoder.left_decoder.output_layer.weight"));
  torch::NoGradGuard no_grad;
  const torch::Tensor feats = fixture(dir).reference.at("fbank").unsqueeze(0);
  auto [out, mask] = untied->encoder->forward(feats, torch::full({1}, feats.size(1), torch::kLong));
  const auto a = tied->decoder_log_probs(out, {{3, 5, 7}, {2}}), b = untied->decoder_log_probs(out, {{3, 5, 7}, {2}});
  EXPECT_TRUE(torch::equal(a.first, b.first));
  EXPECT_TRUE(torch::equal(a.second, b.second));
}

TEST(WenetFixture, CorruptCheckpointsAreRefused) {
  REQUIRE_FIXTURE();
  const std::string bytes = read_file(dir + "/final.pt");
  const std::string out = temp_dir("corrupt");
  make_dirs(out);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"truncated.pt", bytes.substr(0, bytes.size() / 2)},
      {"empty.pt", ""},
      {"text.pt", "not a checkpoint"},
      {"legacy.pt", std::string("\x80\x02\x8a\x0a", 4) + std::string(100, '\0')},
  };
  for (const auto& [name, content] : cases) {
    write_file_atomic(out + "/" + name, content);
    const std::string message = error_of<std::invalid_argument>([&] { read_torch_checkpoint(out + "/" + name); });
    EXPECT_EQ(message.rfind(out + "/" + name, 0), 0u) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  // Flipped bytes inside the pickle never crash.
  const size_t pkl = bytes.find("data.pkl");
  ASSERT_NE(pkl, std::string::npos);
  for (int i = 0; i < 200; ++i) {
    std::string damaged = bytes;
    damaged[pkl + 40 + static_cast<size_t>(i) * 7 % 3000] ^= static_cast<char>(1 + i % 255);
    try {
      parse_torch_checkpoint(damaged, "damaged");
    } catch (const std::invalid_argument&) {
    }
  }
}
