#include "moekit/models/asr/asr_config.h"

#include "moekit/core/check.h"
#include "moekit/core/fields.h"
#include "moekit/core/limits.h"

namespace moekit {

namespace {

// WeNet keeps an FFN's options flat inside encoder_conf / decoder_conf.
template <class C>
void add_ffn_fields(FieldTable<C>& table, FfnConfig C::*ffn) {
  auto at = [ffn](auto member) {
    return std::function<std::remove_reference_t<decltype(FfnConfig().*member)>&(C&)>(
        [ffn, member](C& c) -> auto& { return (c.*ffn).*member; });
  };
  table.template field<int64_t>("linear_units", at(&FfnConfig::hidden), "FFN hidden width (per expert for MoE)")
      .in_range(1, limits::kHidden)
      .template named<Activation>("activation_type", at(&FfnConfig::activation), parse_activation, activation_name,
                                  "FFN activation")
      .template choice<bool>("mlp_type", at(&FfnConfig::moe),
                             {{"position_wise_feed_forward", false}, {"dense", false}, {"moe", true}},
                             "dense or MoE FFNs")
      .template field<int64_t>("n_expert", at(&FfnConfig::n_expert), "MoE only: experts per layer")
      .in_range(1, limits::kExperts)
      .write_if([ffn](const C& c) { return (c.*ffn).moe; })
      .template field<int64_t>("n_expert_activated", at(&FfnConfig::n_expert_activated), "MoE only: experts per frame")
      .write_if([ffn](const C& c) { return (c.*ffn).moe; })
      .template field<bool>("mlp_bias", at(&FfnConfig::bias), "biases in the FFNs");
}

std::string ffn_problem(const FfnConfig& f, const std::string& where) {
  if (f.hidden <= 0) return str_cat(where, ": linear_units must be positive, got ", f.hidden);
  if (is_gated(f.activation)) return str_cat(where, ": activation_type swiglu is not a WeNet FFN activation");
  if (f.moe && !(f.n_expert >= 1 && f.n_expert_activated >= 1 && f.n_expert_activated <= f.n_expert))
    return str_cat(where, ": need 1 <= n_expert_activated <= n_expert, got ", f.n_expert_activated, " of ",
                   f.n_expert);
  return "";
}

const FieldTable<ConformerEncoderConfig>& encoder_fields() {
  using E = ConformerEncoderConfig;
  static const FieldTable<E> table = [] {
    FieldTable<E> t("encoder_conf");
    t.field("output_size", &E::output_size, "model width d").in_range(1, limits::kWidth)
        .field("attention_heads", &E::attention_heads, "self-attention heads").in_range(1, limits::kHeads)
        .field("num_blocks", &E::num_blocks, "Conformer blocks").in_range(1, limits::kLayers);
    add_ffn_fields(t, &E::ffn);
    t.field("dropout_rate", &E::dropout_rate, "dropout after each sublayer")
        .field("positional_dropout_rate", &E::positional_dropout_rate, "dropout on the scaled input")
        .field("attention_dropout_rate", &E::attention_dropout_rate, "dropout on attention weights")
        .choice<int64_t>("input_layer", &E::subsampling_rate, {{"conv2d", 4}, {"conv2d6", 6}, {"conv2d8", 8}},
                         "Conv2d subsampling by 4, 6 or 8")
        .choice<bool>("pos_enc_layer_type", &E::rel_pos, {{"rel_pos", true}, {"abs_pos", false}},
                      "relative- or absolute-position self-attention")
        .field("normalize_before", &E::normalize_before, "pre-LN (else post-LN)")
        .field("macaron_style", &E::macaron_style, "two half-step FFNs per block")
        .field("use_cnn_module", &E::use_cnn_module, "the convolution module")
        .field("cnn_module_kernel", &E::cnn_module_kernel, "depthwise kernel size").in_range(1, limits::kKernel)
        .choice<bool>("cnn_module_norm", &E::cnn_layer_norm, {{"batch_norm", false}, {"layer_norm", true}},
                      "the convolution module's norm")
        .field("causal", &E::causal, "causal convolution (streaming)")
        .field("use_dynamic_chunk", &E::use_dynamic_chunk, "train with random chunk sizes (U2++)")
        .field("use_dynamic_left_chunk", &E::use_dynamic_left_chunk, "and random left context")
        .field("static_chunk_size", &E::static_chunk_size, "fixed chunk size in training (0: none)")
        .in_range(0, limits::kSeqLen)
        .field("norm_eps", &E::norm_eps, "LayerNorm epsilon").positive();
    return t;
  }();
  return table;
}

const FieldTable<TransformerDecoderConfig>& decoder_fields() {
  using D = TransformerDecoderConfig;
  static const FieldTable<D> table = [] {
    FieldTable<D> t("decoder_conf");
    t.field("attention_heads", &D::attention_heads, "attention heads").in_range(1, limits::kHeads)
        .field("num_blocks", &D::num_blocks, "left-to-right decoder layers").in_range(0, limits::kLayers)
        .field("r_num_blocks", &D::r_num_blocks, "right-to-left decoder layers (0: none)").in_range(0, limits::kLayers);
    add_ffn_fields(t, &D::ffn);
    t.field("dropout_rate", &D::dropout_rate, "dropout after each sublayer")
        .field("positional_dropout_rate", &D::positional_dropout_rate, "dropout on the scaled embedding")
        .field("self_attention_dropout_rate", &D::self_attention_dropout_rate, "dropout on self-attention weights")
        .field("src_attention_dropout_rate", &D::src_attention_dropout_rate, "dropout on source-attention weights")
        .field("normalize_before", &D::normalize_before, "pre-LN (else post-LN)")
        .field("tie_word_embedding", &D::tie_word_embedding, "output projection shares the embedding's weight")
        .write_if([](const D& d) { return d.tie_word_embedding; });  // older readers stay able to load the rest
    return t;
  }();
  return table;
}

// model_conf: fields of AsrConfig itself, in their own section.
const FieldTable<AsrConfig>& model_conf_fields() {
  using C = AsrConfig;
  static const auto table =
      FieldTable<C>("model_conf")
          .field("ctc_weight", &C::ctc_weight, "CTC's share of the loss").in_range(0, 1)
          .field("reverse_weight", &C::reverse_weight, "the right-to-left decoder's share of the attention loss")
          .in_range(0, 1)
          .field("lsm_weight", &C::lsm_weight, "label smoothing")
          .field("length_normalized_loss", &C::length_normalized_loss, "loss per token (else per utterance)")
          .field("apply_non_blank_embedding", &C::apply_non_blank_embedding,
                 "decoders attend to the frames whose CTC argmax is not blank")
          .write_if([](const C& c) { return c.apply_non_blank_embedding; });  // older readers stay able to load the rest
  return table;
}

const FieldTable<AsrConfig>& asr_fields() {
  using C = AsrConfig;
  static const auto table =
      FieldTable<C>("asr config")
          .field("vocab_size", &C::vocab_size, "output units: <blank> = 0, ..., <sos/eos> = vocab_size - 1")
          .required()
          .check([](const C& c) { return c.vocab_size >= 3 ? "" : "must be >= 3 (blank, a unit, sos/eos)"; })
          .at_most(limits::kVocab)
          .field<int64_t>("input_dim", [](C& c) -> int64_t& { return c.encoder.input_dim; }, "feature width")
          .in_range(1, limits::kWidth)
          .section("encoder_conf", &C::encoder, encoder_fields(), "the Conformer encoder")
          .section("decoder_conf", &C::decoder, decoder_fields(), "the attention decoders")
          .section<C>("model_conf", [](C& c) -> C& { return c; }, model_conf_fields(), "the training loss")
          .section("fbank_conf", &C::fbank, FbankOptions::fields(), "the features")
          .rule([](const C& c) {
            return c.encoder.output_size % c.encoder.attention_heads == 0
                       ? std::string()
                       : str_cat("encoder output_size ", c.encoder.output_size, " is not divisible by attention_heads ",
                                 c.encoder.attention_heads);
          })
          .rule([](const C& c) {
            const auto& e = c.encoder;
            if (!e.use_cnn_module) return std::string();
            if (e.cnn_module_kernel <= 0) return std::string("cnn_module_kernel must be positive");
            return e.causal || e.cnn_module_kernel % 2 == 1
                       ? std::string()
                       : str_cat("a non-causal cnn_module_kernel must be odd, got ", e.cnn_module_kernel);
          })
          .rule([](const C& c) { return ffn_problem(c.encoder.ffn, "encoder_conf"); })
          .rule([](const C& c) {
            const auto& d = c.decoder;
            return d.num_blocks == 0 || c.encoder.output_size % d.attention_heads == 0
                       ? std::string()
                       : str_cat("decoder attention_heads ", d.attention_heads, " does not divide ",
                                 c.encoder.output_size);
          })
          .rule([](const C& c) { return c.decoder.num_blocks > 0 ? ffn_problem(c.decoder.ffn, "decoder_conf") : ""; })
          .rule([](const C& c) {
            return c.reverse_weight == 0 || c.decoder.r_num_blocks > 0
                       ? std::string()
                       : std::string("reverse_weight > 0 needs a right-to-left decoder (r_num_blocks > 0)");
          })
          .rule([](const C& c) {
            return c.fbank.num_mel_bins == c.encoder.input_dim
                       ? std::string()
                       : str_cat("fbank num_mel_bins ", c.fbank.num_mel_bins, " differs from input_dim ",
                                 c.encoder.input_dim);
          });
  return table;
}

}  // namespace

const FieldTable<AsrConfig>& AsrConfig::fields() { return asr_fields(); }
void AsrConfig::validate() const { asr_fields().validate(*this); }
YAML::Node AsrConfig::to_yaml() const { return asr_fields().write(*this); }

AsrConfig AsrConfig::from_yaml(const YAML::Node& n, const std::string& where) {
  MOEKIT_CHECK_ARG(n.IsMap(), where, " must be a mapping");
  AsrConfig c;
  c.decoder.ffn.activation = Activation::Relu;  // WeNet's decoder default
  asr_fields().read(n, c, where);
  // Defaults that depend on other fields.
  const YAML::Node model_conf = n["model_conf"];
  if (!model_conf.IsDefined() || model_conf.IsNull() || !model_conf["reverse_weight"].IsDefined())
    c.reverse_weight = c.decoder.r_num_blocks > 0 ? 0.3 : 0.0;
  if (!n["fbank_conf"].IsDefined()) c.fbank.num_mel_bins = static_cast<int>(c.encoder.input_dim);
  asr_fields().validate(c, where);
  return c;
}

}  // namespace moekit
