// Field tables (core/fields.h): every options struct's YAML in and out, its
// unknown-key error with the closest known key, and its checks come from one
// table; a misspelt key in any section is refused by name.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <string>

#include "moekit/audio/fbank.h"
#include "moekit/core/fields.h"
#include "moekit/models/asr/asr_config.h"
#include "moekit/models/ffn_stack/ffn_stack.h"
#include "moekit/models/lm/lm_config.h"
#include "moekit/moe/options.h"
#include "moekit/train/asr_task.h"
#include "moekit/train/lm_task.h"
#include "moekit/train/trainer.h"
#include "test_util.h"

namespace moekit {
namespace {

template <typename Parse>
std::string error_for(const std::string& yaml, Parse parse) {
  return error_of<std::invalid_argument>([&] { parse(YAML::Load(yaml)); });
}

TEST(Fields, ClosestNameFindsLikelyMisspellingsOnly) {
  const std::vector<std::string> known = {"num_experts", "top_k", "capacity_factor", "lr", "epochs"};
  EXPECT_EQ(closest_name("num_expert", known), "num_experts");
  EXPECT_EQ(closest_name("topk", known), "top_k");
  EXPECT_EQ(closest_name("capacity_fator", known), "capacity_factor");
  EXPECT_EQ(closest_name("lr_", known), "lr");
  EXPECT_EQ(closest_name("dropout", known), "");  // nothing close: no guess
  EXPECT_EQ(closest_name("x", known), "");
  EXPECT_EQ(closest_name("num_experts" + std::string(1000000, 's'), known), "");  // no guess, and no 1M x 11 table
}

TEST(Fields, AnUnknownKeyIsQuotedInPart) {
  YAML::Node node;
  node[std::string(1000000, 'k') + "\x01"] = 1;
  try {
    check_known_keys(node, {"lr", "epochs"}, "t.yaml");
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    const std::string message = e.what();
    EXPECT_EQ(message, "t.yaml: unknown option '" + std::string(80, 'k') + "...'");
  }
}

TEST(Fields, MisspeltKeysAreRefusedInEverySectionNamingTheClosestKnownOne) {
  struct Case {
    const char* what;
    std::string yaml;
    std::function<void(const YAML::Node&)> parse;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"moe", "{d_model: 8, d_hidden: 16, num_expert: 4}", [](const YAML::Node& n) { MoEOptions::from_yaml(n, "m.yaml"); },
       "m.yaml: unknown option 'num_expert' (did you mean 'num_experts'?)"},
      {"fbank", "{num_mel_bin: 80}", [](const YAML::Node& n) { FbankOptions::from_yaml(n, "f"); },
       "f: unknown option 'num_mel_bin' (did you mean 'num_mel_bins'?)"},
      {"trainer", "{epoch: 3}", [](const YAML::Node& n) { TrainerOptions::from_yaml(n, "t"); },
       "t: unknown option 'epoch' (did you mean 'epochs'?)"},
      {"lm data", "{seqlen: 3}", [](const YAML::Node& n) { LmDataOptions::from_yaml(n, "d"); },
       "d: unknown option 'seqlen' (did you mean 'seq_len'?)"},
      {"asr data", "{batchsize: 3}", [](const YAML::Node& n) { AsrDataOptions::from_yaml(n, "d"); },
       "d: unknown option 'batchsize' (did you mean 'batch_size'?)"},
      {"asr data spec_aug_conf", "{spec_aug_conf: {max_t: 3, num_t_masks: 1}}",
       [](const YAML::Node& n) { AsrDataOptions::from_yaml(n, "d"); },
       "d: spec_aug_conf: unknown option 'num_t_masks' (did you mean 'num_t_mask'?)"},
      {"lm", "{vocab_size: 10, n_layer: 2}", [](const YAML::Node& n) { LmConfig::from_yaml(n, "lm.yaml"); },
       "lm.yaml: unknown option 'n_layer' (did you mean 'n_layers'?)"},
      {"lm moe", "{vocab_size: 10, moe: {num_experts: 4, topk: 2}}",
       [](const YAML::Node& n) { LmConfig::from_yaml(n, "lm.yaml"); },
       "lm.yaml: moe: unknown option 'topk' (did you mean 'top_k'?)"},
      {"ffn_stack moe", "{d_model: 8, num_layers: 1, d_hidden: 8, moe: {num_experts: 2, routng: token}}",
       [](const YAML::Node& n) { FfnStackOptions::from_yaml(n, "s"); },
       "s: moe: unknown option 'routng' (did you mean 'routing'?)"},
      {"asr encoder", "{vocab_size: 5, encoder_conf: {num_block: 2}}",
       [](const YAML::Node& n) { AsrConfig::from_yaml(n, "a.yaml"); },
       "a.yaml: encoder_conf: unknown option 'num_block' (did you mean 'num_blocks'?)"},
      {"asr decoder", "{vocab_size: 5, decoder_conf: {r_num_block: 1}}",
       [](const YAML::Node& n) { AsrConfig::from_yaml(n, "a.yaml"); },
       "a.yaml: decoder_conf: unknown option 'r_num_block' (did you mean 'r_num_blocks'?)"},
      {"asr model_conf", "{vocab_size: 5, model_conf: {ctc_wieght: 0.3}}",
       [](const YAML::Node& n) { AsrConfig::from_yaml(n, "a.yaml"); },
       "a.yaml: model_conf: unknown option 'ctc_wieght' (did you mean 'ctc_weight'?)"},
      {"asr fbank_conf", "{vocab_size: 5, input_dim: 80, fbank_conf: {dithr: 0.1}}",
       [](const YAML::Node& n) { AsrConfig::from_yaml(n, "a.yaml"); },
       "a.yaml: fbank_conf: unknown option 'dithr' (did you mean 'dither'?)"},
  };
  for (const Case& c : cases) EXPECT_EQ(error_for(c.yaml, c.parse), c.message) << c.what;
}

TEST(Fields, ChecksNameTheFieldAndTheValue) {
  const auto moe = [](const YAML::Node& n) { MoEOptions::from_yaml(n, "m"); };
  EXPECT_EQ(error_for("{d_model: 0, d_hidden: 4}", moe), "m: d_model must be in [1, 131072], got 0");
  EXPECT_EQ(error_for("{d_model: 4, d_hidden: 4, top_k: 9}", moe), "m: top_k must be in [1, num_experts=8], got 9");
  EXPECT_EQ(error_for("{d_model: 4}", moe), "m: missing field 'd_hidden'");
  EXPECT_EQ(error_for("{d_model: 4, d_hidden: 4, routing: tasks}", moe),
            "m: field 'routing': unknown routing 'tasks' (expected token, sentence or task)");
  EXPECT_EQ(error_for("{d_model: 4, d_hidden: x}", moe), "m: field 'd_hidden' has an invalid value 'x'");
  const auto trainer = [](const YAML::Node& n) { TrainerOptions::from_yaml(n, "t"); };
  EXPECT_EQ(error_for("{scheduler: linear}", trainer), "t: unsupported scheduler 'linear' (warmuplr | cosine)");
  EXPECT_EQ(error_for("{lr: 0.1, min_lr: 0.5}", trainer), "t: min_lr must be in [0, lr], got 0.5");
  const auto asr = [](const YAML::Node& n) { AsrConfig::from_yaml(n, "a"); };
  EXPECT_EQ(error_for("{vocab_size: 5, encoder_conf: {input_layer: conv2d5}}", asr),
            "a: encoder_conf: unsupported input_layer 'conv2d5' (conv2d | conv2d6 | conv2d8)");
  EXPECT_EQ(error_for("{vocab_size: 5, model_conf: {ctc_weight: 1.5}}", asr),
            "a: model_conf: ctc_weight must be in [0, 1], got 1.5");
  // Window lengths outside what fits an int of samples are refused before
  // any window is computed from them.
  const auto fbank = [](const YAML::Node& n) { FbankOptions::from_yaml(n, "f"); };
  EXPECT_EQ(error_for("{frame_length: 1e300}", fbank), "f: frame_length must be <= 1000, got 1e+300");
  EXPECT_EQ(error_for("{frame_shift: -2}", fbank), "f: frame_shift must be positive, got -2");
  EXPECT_EQ(error_for("{frame_shift: 0.01}", fbank), "f: frame_length 25 ms / frame_shift 0.01 ms give no usable window");
}

TEST(Fields, EveryStructRoundTripsThroughYaml) {
  MoEOptions m;
  m.d_model = 12;
  m.d_hidden = 20;
  m.routing = Routing::Task;
  m.num_tasks = 3;
  m.capacity_factor = 1.25;
  m.renormalize = true;
  EXPECT_EQ(MoEOptions::from_yaml(m.to_yaml(), "m").to_string(), m.to_string());
  EXPECT_EQ(m.to_string(),
            "d_model=12 d_hidden=20 num_experts=8 top_k=2 activation=swish routing=task gating=topk_softmax "
            "renormalize=true num_tasks=3 capacity_factor=1.25 aux_loss_coef=0 z_loss_coef=0 expert_bias=true");

  TrainerOptions t;
  t.scheduler = "cosine";
  t.min_lr = 1e-5;
  t.seed = 31;
  const TrainerOptions t2 = TrainerOptions::from_yaml(t.to_yaml(), "t");
  EXPECT_EQ(TrainerOptions::fields().to_string(t2), TrainerOptions::fields().to_string(t));

  AsrConfig a;
  a.vocab_size = 30;
  a.encoder.ffn.moe = true;
  a.encoder.subsampling_rate = 6;
  a.encoder.rel_pos = false;
  a.decoder.r_num_blocks = 2;
  a.decoder.tie_word_embedding = true;
  a.apply_non_blank_embedding = true;
  const YAML::Node written = a.to_yaml();
  EXPECT_EQ(written["encoder_conf"]["input_layer"].as<std::string>(), "conv2d6");
  EXPECT_EQ(written["encoder_conf"]["pos_enc_layer_type"].as<std::string>(), "abs_pos");
  EXPECT_EQ(written["encoder_conf"]["n_expert"].as<int64_t>(), 8);
  EXPECT_FALSE(written["decoder_conf"]["n_expert"].IsDefined());  // a dense decoder writes no expert count
  const AsrConfig back = AsrConfig::from_yaml(written, "a");
  EXPECT_EQ(AsrConfig::fields().to_string(back), AsrConfig::fields().to_string(a));

  // Defaults that depend on other fields when absent.
  const AsrConfig wenet = AsrConfig::from_yaml(YAML::Load("{vocab_size: 5, input_dim: 40}"), "a");
  EXPECT_EQ(wenet.decoder.ffn.activation, Activation::Relu);  // WeNet's decoder default
  EXPECT_EQ(wenet.reverse_weight, 0.0);                       // no right-to-left decoder
  EXPECT_EQ(wenet.fbank.num_mel_bins, 40);
  const AsrConfig bidirectional =
      AsrConfig::from_yaml(YAML::Load("{vocab_size: 5, decoder_conf: {r_num_blocks: 1}}"), "a");
  EXPECT_EQ(bidirectional.reverse_weight, 0.3);

  FfnStackOptions s;
  s.moe_options.num_experts = 4;
  const FfnStackOptions s2 = FfnStackOptions::from_yaml(s.to_yaml(), "s");
  EXPECT_EQ(FfnStackOptions::fields().to_string(s2), FfnStackOptions::fields().to_string(s));
  s.moe = false;
  EXPECT_FALSE(s.to_yaml()["moe"].IsDefined());
  EXPECT_FALSE(FfnStackOptions::from_yaml(s.to_yaml(), "s").moe);
}

TEST(Fields, HelpListsEveryFieldOnce) {
  const std::string help = MoEOptions::fields().help();
  for (const std::string& name : MoEOptions::fields().names()) {
    const size_t at = help.find("  " + name + ": ");
    EXPECT_NE(at, std::string::npos) << name;
    EXPECT_EQ(help.find("  " + name + ": ", at + 1), std::string::npos) << name;
  }
  EXPECT_NE(help.find("d_model: input/output width (required)"), std::string::npos) << help;
}

}  // namespace
}  // namespace moekit
