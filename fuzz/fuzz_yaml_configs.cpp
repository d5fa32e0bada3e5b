// libFuzzer target: YAML text into every options struct read from a config
// file (ASR, LM, seq2seq, trainer, MoE layer, fbank). Each reader must accept
// the text or refuse it with std::invalid_argument, or yaml-cpp with its own
// YAML::Exception; nothing else.
#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

#include "moekit/audio/fbank.h"
#include "moekit/core/config.h"
#include "moekit/models/asr/asr_config.h"
#include "moekit/models/lm/lm_config.h"
#include "moekit/models/seq2seq/seq2seq_config.h"
#include "moekit/moe/options.h"
#include "moekit/train/trainer.h"

namespace {

void read_as(const std::function<void()>& read) {
  try {
    read();
  } catch (const std::invalid_argument&) {
  } catch (const YAML::Exception&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  YAML::Node node;
  try {
    node = moekit::parse_yaml_text(std::string(reinterpret_cast<const char*>(data), size), "fuzz.yaml");
  } catch (const std::invalid_argument&) {
    return 0;
  }
  // The whole document and the section a recipe config keeps it in.
  const YAML::Node& doc = node;
  const auto section = [&](const char* key) { return doc.IsMap() ? doc[key] : YAML::Node(); };
  for (const YAML::Node& n : {node, section("model")}) {
    read_as([&] { moekit::AsrConfig::from_yaml(n, "fuzz.yaml"); });
    read_as([&] { moekit::LmConfig::from_yaml(n, "fuzz.yaml"); });
    read_as([&] { moekit::Seq2seqConfig::from_yaml(n, "fuzz.yaml"); });
  }
  for (const YAML::Node& n : {node, section("train_conf")})
    read_as([&] { moekit::TrainerOptions::from_yaml(n, "fuzz.yaml"); });
  for (const YAML::Node& n : {node, section("moe")}) read_as([&] { moekit::MoEOptions::from_yaml(n, "fuzz.yaml"); });
  for (const YAML::Node& n : {node, section("fbank_conf")})
    read_as([&] { moekit::FbankOptions::from_yaml(n, "fuzz.yaml"); });
  return 0;
}
