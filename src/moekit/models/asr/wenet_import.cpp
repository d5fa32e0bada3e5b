#include "moekit/models/asr/wenet_import.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <regex>
#include <set>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/config.h"
#include "moekit/core/file_io.h"
#include "moekit/core/json_error.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/torch_checkpoint.h"

namespace moekit {

namespace {

std::string dump(const YAML::Node& n) {
  std::string s = YAML::Dump(n);
  for (char& c : s)
    if (c == '\n') c = ' ';
  return s;
}

// Copies the options MoEKit models from a WeNet conf section and checks
// that the ones it does not model hold their only supported value.
YAML::Node filter_conf(const YAML::Node& conf, const std::string& section, const std::set<std::string>& modelled,
                       const std::map<std::string, std::string>& fixed, const std::set<std::string>& ignored) {
  YAML::Node out;
  if (!conf.IsDefined() || conf.IsNull()) return out;
  MOEKIT_CHECK_ARG(conf.IsMap(), section, " must be a mapping");
  for (const auto& kv : conf) {
    const std::string key = kv.first.as<std::string>();
    const YAML::Node& value = kv.second;
    if (modelled.count(key)) {
      out[key] = value;
    } else if (auto it = fixed.find(key); it != fixed.end()) {
      const std::string got = value.IsNull() ? "null" : value.Scalar();
      MOEKIT_CHECK_ARG(got == it->second || (it->second == "true" && got == "True") ||
                           (it->second == "false" && got == "False"),
                       "unsupported WeNet option ", section, ".", key, " = ", dump(value), " (MoEKit supports ",
                       it->second, ")");
    } else if (!ignored.count(key)) {
      throw std::invalid_argument(str_cat("unsupported WeNet option ", section, ".", key, " = ", dump(value)));
    }
  }
  return out;
}

const std::set<std::string> kFfnKeys = {"linear_units", "activation_type", "mlp_type", "n_expert",
                                        "n_expert_activated", "mlp_bias"};

}  // namespace

WenetFiles WenetFiles::from_dir(const std::string& dir) {
  WenetFiles f;
  MOEKIT_CHECK_ARG(is_directory(dir), dir, ": not a directory");
  for (const char* name : {"final.pt", "avg.pt", "model.pt"})
    if (path_exists(dir + "/" + name)) {
      f.checkpoint = dir + "/" + name;
      break;
    }
  MOEKIT_CHECK_ARG(!f.checkpoint.empty(), dir, ": no final.pt (or avg.pt, model.pt) in the WeNet directory");
  f.config = dir + "/train.yaml";
  MOEKIT_CHECK_ARG(path_exists(f.config), dir, ": no train.yaml in the WeNet directory");
  if (path_exists(dir + "/global_cmvn")) f.cmvn = dir + "/global_cmvn";
  for (const char* name : {"units.txt", "lang_char.txt", "words.txt"})
    if (path_exists(dir + "/" + name)) {
      f.units = dir + "/" + name;
      break;
    }
  return f;
}

namespace {

AsrConfig wenet_config_unchecked(const YAML::Node& y, const std::string& where);

}  // namespace

AsrConfig wenet_config(const YAML::Node& y, const std::string& where) {
  // A value of the wrong kind somewhere in train.yaml (a mapping where a
  // name is expected): yaml-cpp's "bad conversion" said without the file.
  try {
    return wenet_config_unchecked(y, where);
  } catch (const YAML::Exception& e) {
    throw std::invalid_argument(str_cat(where, ": a value of the wrong type",
                                        e.mark.is_null() ? std::string() : str_cat(" (line ", e.mark.line + 1, ")"),
                                        ": ", e.msg));
  }
}

namespace {

AsrConfig wenet_config_unchecked(const YAML::Node& y, const std::string& where) {
  MOEKIT_CHECK_ARG(y.IsMap(), where, ": expected a mapping");
  const std::string encoder = yaml_get_or<std::string>(y, "encoder", "conformer", where);
  MOEKIT_CHECK_ARG(encoder == "conformer", where, ": unsupported WeNet encoder '", encoder,
                   "' (MoEKit imports conformer)");
  const std::string decoder = yaml_get_or<std::string>(y, "decoder", "bitransformer", where);
  MOEKIT_CHECK_ARG(decoder == "bitransformer" || decoder == "transformer", where, ": unsupported WeNet decoder '",
                   decoder, "' (transformer | bitransformer)");
  const std::string model = yaml_get_or<std::string>(y, "model", "asr_model", where);
  MOEKIT_CHECK_ARG(model == "asr_model", where, ": unsupported WeNet model '", model, "' (asr_model)");
  if (y["ctc_conf"].IsDefined())
    MOEKIT_CHECK_ARG(yaml_get_or<int64_t>(y["ctc_conf"], "ctc_blank_id", 0, where) == 0, where,
                     ": unsupported WeNet option ctc_conf.ctc_blank_id (MoEKit supports 0)");

  YAML::Node arch;
  arch["vocab_size"] = yaml_get<int64_t>(y, "output_dim", where);
  arch["input_dim"] = yaml_get<int64_t>(y, "input_dim", where);

  std::set<std::string> enc_keys = {"output_size", "attention_heads", "num_blocks", "dropout_rate",
                                    "positional_dropout_rate", "attention_dropout_rate", "input_layer",
                                    "pos_enc_layer_type", "normalize_before", "macaron_style", "use_cnn_module",
                                    "cnn_module_kernel", "cnn_module_norm", "causal", "use_dynamic_chunk",
                                    "use_dynamic_left_chunk", "static_chunk_size", "norm_eps"};
  enc_keys.insert(kFfnKeys.begin(), kFfnKeys.end());
  const YAML::Node enc_in = y["encoder_conf"];
  YAML::Node enc = filter_conf(enc_in, "encoder_conf", enc_keys,
                               {{"query_bias", "true"}, {"key_bias", "true"}, {"value_bias", "true"},
                                {"conv_bias", "true"}, {"layer_norm_type", "layer_norm"}, {"final_norm", "true"},
                                {"n_kv_head", "null"}, {"head_dim", "null"}, {"conv_inner_factor", "2"},
                                {"conv_norm_eps", "1e-5"}},
                               {"gradient_checkpointing", "use_sdpa", "selfattention_layer_type",
                                "positionwise_conv_kernel_size", "global_cmvn", "cnn_module_norm_eps"});
  if (enc_in.IsDefined() && enc_in["selfattention_layer_type"].IsDefined()) {
    const std::string att = enc_in["selfattention_layer_type"].as<std::string>();
    const std::string pos = enc_in["pos_enc_layer_type"].IsDefined() ? enc_in["pos_enc_layer_type"].as<std::string>()
                                                                     : "abs_pos";
    MOEKIT_CHECK_ARG(att == "selfattn" || att == "rel_selfattn", "unsupported WeNet option "
                     "encoder_conf.selfattention_layer_type = ", att, " (selfattn | rel_selfattn)");
    MOEKIT_CHECK_ARG((att == "rel_selfattn") == (pos == "rel_pos"), "unsupported WeNet combination "
                     "selfattention_layer_type = ", att, " with pos_enc_layer_type = ", pos);
  }
  // WeNet's encoder defaults differ from MoEKit's where the key is absent.
  if (!enc["pos_enc_layer_type"].IsDefined()) enc["pos_enc_layer_type"] = "abs_pos";
  if (!enc["activation_type"].IsDefined()) enc["activation_type"] = "swish";
  if (!enc["cnn_module_kernel"].IsDefined()) enc["cnn_module_kernel"] = 15;
  if (!enc["mlp_bias"].IsDefined()) enc["mlp_bias"] = true;
  arch["encoder_conf"] = enc;

  std::set<std::string> dec_keys = {"attention_heads", "num_blocks", "r_num_blocks", "dropout_rate",
                                    "positional_dropout_rate", "self_attention_dropout_rate",
                                    "src_attention_dropout_rate", "normalize_before", "tie_word_embedding"};
  dec_keys.insert(kFfnKeys.begin(), kFfnKeys.end());
  YAML::Node dec = filter_conf(y["decoder_conf"], "decoder_conf", dec_keys,
                               {{"input_layer", "embed"}, {"use_output_layer", "true"}, {"src_attention", "true"},
                                {"query_bias", "true"}, {"key_bias", "true"}, {"value_bias", "true"},
                                {"src_query_bias", "true"}, {"src_key_bias", "true"}, {"src_value_bias", "true"},
                                {"layer_norm_type", "layer_norm"}, {"norm_eps", "1e-5"}, {"n_kv_head", "null"},
                                {"head_dim", "null"}},
                               {"gradient_checkpointing", "use_sdpa"});
  if (decoder == "transformer") dec["r_num_blocks"] = 0;
  else if (!dec["r_num_blocks"].IsDefined()) dec["r_num_blocks"] = 0;
  if (!dec["mlp_bias"].IsDefined()) dec["mlp_bias"] = true;
  arch["decoder_conf"] = dec;

  YAML::Node mc = filter_conf(y["model_conf"], "model_conf",
                              {"ctc_weight", "reverse_weight", "lsm_weight", "length_normalized_loss",
                               "apply_non_blank_embedding"},
                              {}, {"special_tokens"});
  arch["model_conf"] = mc;

  const YAML::Node dataset = y["dataset_conf"];
  if (dataset.IsDefined()) {
    MOEKIT_CHECK_ARG(!dataset["mfcc_conf"].IsDefined() || dataset["fbank_conf"].IsDefined(),
                     "unsupported WeNet feature type: dataset_conf.mfcc_conf (MoEKit computes fbank)");
    YAML::Node fb;
    if (dataset["fbank_conf"].IsDefined())
      fb = filter_conf(dataset["fbank_conf"], "dataset_conf.fbank_conf",
                       {"num_mel_bins", "frame_shift", "frame_length", "dither"}, {}, {"window_type"});
    if (dataset["fbank_conf"].IsDefined() && dataset["fbank_conf"]["window_type"].IsDefined())
      MOEKIT_CHECK_ARG(dataset["fbank_conf"]["window_type"].as<std::string>() == "povey",
                       "unsupported WeNet option dataset_conf.fbank_conf.window_type (MoEKit supports povey)");
    fb["sample_rate"] = 16000;
    if (dataset["resample_conf"].IsDefined() && dataset["resample_conf"]["resample_rate"].IsDefined())
      fb["sample_rate"] = dataset["resample_conf"]["resample_rate"];
    // Decoding never dithers; keep the training value for training.
    arch["fbank_conf"] = fb;
  }
  return AsrConfig::from_yaml(arch, where);
}

}  // namespace

TensorMap map_wenet_weights(const TensorMap& wenet, const AsrConfig& config, const std::string& where) {
  TensorMap out;
  // expert tensors collected per (prefix, kind) then stacked
  std::map<std::string, std::map<int64_t, torch::Tensor>> experts;
  static const std::regex expert_re(R"(^(.*\.feed_forward(?:_macaron)?)\.experts\.(\d+)\.(w_1|w_2)\.(weight|bias)$)");
  static const std::regex dense_re(R"(^(.*\.feed_forward(?:_macaron)?)\.(w_1|w_2)\.(weight|bias)$)");
  const bool plain_decoder = config.decoder.r_num_blocks == 0;
  for (const auto& [raw_name, tensor] : wenet) {
    std::string name = raw_name;
    if (name.rfind("module.", 0) == 0) name = name.substr(7);  // saved from DistributedDataParallel
    if (name.size() > 3 && (name.compare(name.size() - 3, 3, ".pe") == 0)) continue;  // position tables
    if (plain_decoder && name.rfind("decoder.", 0) == 0 && name.rfind("decoder.left_decoder.", 0) != 0)
      name = "decoder.left_decoder." + name.substr(8);
    std::smatch m;
    if (std::regex_match(name, m, expert_re)) {
      const std::string kind = m[3].str() == "w_1" ? (m[4].str() == "weight" ? "w1" : "b1")
                                                   : (m[4].str() == "weight" ? "w2" : "b2");
      auto& slot = experts[m[1].str() + ".experts." + kind];
      slot[std::stoll(m[2].str())] = tensor;
    } else if (std::regex_match(name, m, dense_re)) {
      out[m[1].str() + "." + (m[2].str() == "w_1" ? "w1" : "w2") + "." + m[3].str()] = tensor;
    } else {
      out[name] = tensor;
    }
  }
  for (auto& [name, by_index] : experts) {
    std::vector<torch::Tensor> stack;
    for (int64_t i = 0; i < static_cast<int64_t>(by_index.size()); ++i) {
      auto it = by_index.find(i);
      MOEKIT_CHECK_ARG(it != by_index.end(), where, ": expert ", i, " missing for ", name);
      MOEKIT_CHECK_ARG(stack.empty() || it->second.sizes() == stack[0].sizes(), where, ": experts of ", name,
                       " differ in shape");
      stack.push_back(it->second);
    }
    out[name] = torch::stack(stack);
  }
  if (config.decoder.tie_word_embedding) {
    // Tied weights are saved under both names; the model holds them once.
    for (const std::string side : {"left_decoder", "right_decoder"}) {
      const std::string weight = "decoder." + side + ".output_layer.weight";
      const std::string embed = "decoder." + side + ".embed.0.weight";
      const auto it = out.find(weight);
      if (it == out.end()) continue;
      const auto emb = out.find(embed);
      MOEKIT_CHECK_ARG(emb != out.end() && it->second.sizes() == emb->second.sizes() &&
                           torch::equal(it->second, emb->second),
                       where, ": decoder_conf.tie_word_embedding is set, but ", weight, " differs from ", embed);
      out.erase(it);
    }
  }
  return out;
}

std::pair<torch::Tensor, torch::Tensor> read_wenet_cmvn(const std::string& path) {
  const std::string text = read_file(path);
  std::vector<double> mean_stat, var_stat;
  double frames = 0;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '{') {
    try {
      const auto j = nlohmann::json::parse(text);
      mean_stat = j.at("mean_stat").get<std::vector<double>>();
      var_stat = j.at("var_stat").get<std::vector<double>>();
      frames = j.at("frame_num").get<double>();
    } catch (const nlohmann::json::exception& e) {
      throw std::invalid_argument(path + ": not WeNet JSON CMVN stats (" + json_error_reason(e) + ")");
    }
  } else {
    // Kaldi text stats: [ m_0 .. m_{d-1} count \n v_0 .. v_{d-1} 0 ]
    std::string cleaned = text;
    for (char& c : cleaned)
      if (c == '[' || c == ']') c = ' ';
    std::istringstream in(cleaned);
    std::vector<double> values;
    double v;
    while (in >> v) values.push_back(v);
    MOEKIT_CHECK_ARG(values.size() >= 4 && values.size() % 2 == 0, path, ": not Kaldi text CMVN stats");
    const size_t d = values.size() / 2 - 1;
    mean_stat.assign(values.begin(), values.begin() + d);
    frames = values[d];
    var_stat.assign(values.begin() + d + 1, values.begin() + 2 * d + 1);
  }
  MOEKIT_CHECK_ARG(!mean_stat.empty() && mean_stat.size() == var_stat.size(), path,
                   ": mean and variance stats differ in length");
  MOEKIT_CHECK_ARG(frames >= 1, path, ": frame count must be >= 1, got ", frames);
  const int64_t d = static_cast<int64_t>(mean_stat.size());
  torch::Tensor mean = torch::empty({d}, torch::kFloat64), istd = torch::empty({d}, torch::kFloat64);
  for (int64_t i = 0; i < d; ++i) {
    const double m = mean_stat[i] / frames;
    double var = var_stat[i] / frames - m * m;
    if (var < 1.0e-20) var = 1.0e-20;
    mean[i] = m;
    istd[i] = 1.0 / std::sqrt(var);
  }
  return {mean.to(torch::kFloat), istd.to(torch::kFloat)};
}

ImportedAsr import_wenet(const WenetFiles& files) {
  const AsrConfig config = wenet_config(load_yaml_file(files.config), files.config);
  TensorMap weights = map_wenet_weights(read_torch_checkpoint(files.checkpoint), config, files.checkpoint);
  if (!weights.count("encoder.global_cmvn.mean")) {
    // WeNet keeps CMVN inside the model when it was trained with it; else
    // take the stats file, else the identity.
    torch::Tensor mean = torch::zeros({config.encoder.input_dim}), istd = torch::ones({config.encoder.input_dim});
    if (!files.cmvn.empty()) std::tie(mean, istd) = read_wenet_cmvn(files.cmvn);
    MOEKIT_CHECK_ARG(mean.numel() == config.encoder.input_dim, files.cmvn, ": CMVN has ", mean.numel(),
                     " dimensions, the model ", config.encoder.input_dim);
    weights["encoder.global_cmvn.mean"] = mean;
    weights["encoder.global_cmvn.istd"] = istd;
  }
  auto model = std::make_shared<AsrModel>(config);
  load_module_state(*model, weights, files.checkpoint);
  model->eval();
  ImportedAsr result{model, Units()};
  if (!files.units.empty()) {
    result.units = Units::read(files.units);
    MOEKIT_CHECK_ARG(result.units.size() == config.vocab_size, files.units, ": ", result.units.size(),
                     " units, but the model's output_dim is ", config.vocab_size);
  }
  return result;
}

void save_asr_model(const std::string& dir, const AsrModel& model, const Units& units) {
  save_model(dir, model);
  if (units.size() > 0) {
    MOEKIT_CHECK_ARG(units.size() == model.config().vocab_size, dir, ": ", units.size(), " units for a vocabulary of ",
                     model.config().vocab_size);
    write_file_atomic(dir + "/units.txt", units.serialize());
  }
}

LoadedAsr load_asr_model(const std::string& dir, WeightStorage storage) {
  std::shared_ptr<Model> base = load_model(dir, storage);
  auto asr = std::dynamic_pointer_cast<AsrModel>(base);
  MOEKIT_CHECK_ARG(asr, dir, ": model_type '", base->model_type(), "' is not a speech recognizer (asr)");
  LoadedAsr loaded{asr, Units()};
  const std::string units_path = dir + "/units.txt";
  if (path_exists(units_path)) {
    loaded.units = Units::read(units_path);
    MOEKIT_CHECK_ARG(loaded.units.size() == asr->config().vocab_size, units_path, ": ", loaded.units.size(),
                     " units for a vocabulary of ", asr->config().vocab_size);
  }
  return loaded;
}

}  // namespace moekit
