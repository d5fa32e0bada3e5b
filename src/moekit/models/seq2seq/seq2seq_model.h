#pragma once
// The Transformer encoder-decoder of task-level MoE (`model_type: seq2seq`).
//
//   e = embed_tokens(src) * sqrt(D) + positions        (the same table for
//   per encoder layer:  x += self_attn(LN(x))            target inputs and
//                       x += ffn(LN(x))                  the output map)
//   memory = encoder.layer_norm(x)
//   per decoder layer:  y += self_attn(LN(y); causal)
//                       y += encoder_attn(LN(y), memory)
//                       y += ffn(LN(y))
//   logits = decoder.layer_norm(y) embed_tokens^T       [B, L, V] fp32
//
// An FFN is dense (ffn.w1/w2) or an MoE layer of moe/ (ffn.gate.weight,
// ffn.experts.*, ffn.task_embedding) routed by token, by sentence or by task
// (the task id of each sequence). Decoder sentence routing gates on the
// mean of the sequence's encoder output, known before the first target
// token, so generating token by token routes as training did.
#include <torch/torch.h>

#include <vector>

#include "moekit/models/model.h"
#include "moekit/models/seq2seq/seq2seq_config.h"
#include "moekit/moe/moe_layer.h"
#include "moekit/nn/attention.h"
#include "moekit/nn/ffn.h"
#include "moekit/ops/packed_linear.h"

namespace moekit {

// What an FFN position routes on: padding, task ids, sentence vectors.
struct Seq2seqRoute {
  torch::Tensor mask;      // [B, T] bool, true = real token
  torch::Tensor task;      // [B] int64 (task routing)
  torch::Tensor sentence;  // [B, D] (decoder sentence routing)
};

// One FFN position: a dense FFN or an MoE layer, registered as "ffn".
class Seq2seqFfn {
 public:
  void create(torch::nn::Module& parent, const Seq2seqConfig& config, bool decoder, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x, const Seq2seqRoute& route);

  FeedForward dense{nullptr};
  MoELayer moe{nullptr};
};

class Seq2seqEncoderLayerImpl : public torch::nn::Module {
 public:
  Seq2seqEncoderLayerImpl(const Seq2seqConfig& config, int64_t layer);
  // x [B, S, D]; attn_mask bool [B, 1, S].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& attn_mask, const Seq2seqRoute& route);

  torch::nn::LayerNorm self_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  MultiHeadedAttention self_attn{nullptr};
  Seq2seqFfn ffn;

 private:
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(Seq2seqEncoderLayer);

class Seq2seqDecoderLayerImpl : public torch::nn::Module {
 public:
  Seq2seqDecoderLayerImpl(const Seq2seqConfig& config, int64_t layer);
  // y [B, L, D]; self_mask bool [B, L, L] (or [B, 1, cached + L] with
  // `cache`); memory keys/values of the encoder output, memory_mask bool [B, 1, S].
  torch::Tensor forward(const torch::Tensor& y, const torch::Tensor& self_mask, const ProjectedMemory& memory,
                        const torch::Tensor& memory_mask, const Seq2seqRoute& route, KvCache* cache = nullptr);

  torch::nn::LayerNorm self_attn_layer_norm{nullptr}, encoder_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  MultiHeadedAttention self_attn{nullptr}, encoder_attn{nullptr};
  Seq2seqFfn ffn;

 private:
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(Seq2seqDecoderLayer);

// The encoder's output for a batch of sources.
struct Seq2seqEncoded {
  torch::Tensor memory;    // [B, S, D]
  torch::Tensor mask;      // [B, S] bool, true = real source token
  torch::Tensor task;      // [B] int64, or undefined
  torch::Tensor sentence;  // [B, D] masked mean of memory (decoder sentence routing), or undefined
};

// Incremental decoding state of B sequences (beams count as sequences).
struct Seq2seqDecoderState {
  std::vector<KvCache> self;              // per decoder layer
  std::vector<ProjectedMemory> cross;     // per decoder layer: the encoder output's keys/values
  torch::Tensor memory_mask;              // [B, 1, S]
  Seq2seqRoute route;                     // task / sentence per sequence (mask undefined)
  int64_t length = 0;                     // target positions consumed
};

struct Seq2seqLoss {
  torch::Tensor loss;    // label-smoothed cross entropy + MoE aux, to minimise
  torch::Tensor nll;     // mean negative log-likelihood per target token (no smoothing)
  torch::Tensor aux;     // weighted router losses (0 for dense)
  torch::Tensor logits;  // [B * L, V] fp32, every target position (for distillation)
  torch::Tensor valid;   // [B * L] bool, the positions that are real target tokens
  int64_t tokens = 0;    // target tokens predicted
};

class Seq2seqModel : public Model {
 public:
  explicit Seq2seqModel(const Seq2seqConfig& config);
  std::string model_type() const override { return "seq2seq"; }
  YAML::Node architecture() const override { return config_.to_yaml(); }
  const Seq2seqConfig& config() const { return config_; }

  // src [B, S] int64 (padding past src_lens), src_lens [B], task [B] int64
  // (required when a layer routes by task; else may be undefined).
  Seq2seqEncoded encode(const torch::Tensor& src, const torch::Tensor& src_lens, const torch::Tensor& task);
  // Teacher-forced decoder: tgt_in [B, L] (padding past tgt_lens) -> logits [B, L, V] fp32.
  torch::Tensor decode(const Seq2seqEncoded& encoded, const torch::Tensor& tgt_in, const torch::Tensor& tgt_lens);
  // tgt [B, L] holds each target followed by eos (padding past tgt_lens,
  // which count the eos): the decoder reads [bos, tgt[:-1]] and predicts tgt.
  Seq2seqLoss loss(const torch::Tensor& src, const torch::Tensor& src_lens, const torch::Tensor& task,
                   const torch::Tensor& tgt, const torch::Tensor& tgt_lens, double label_smoothing);

  // Incremental decoding: a state for the encoded batch, then one step per
  // target position; step() takes the previous tokens [B] and returns the
  // next position's logits [B, V] fp32. select() keeps sequence index[i] as
  // sequence i (beam search), for the state and the encoded batch alike.
  Seq2seqDecoderState start_decoding(const Seq2seqEncoded& encoded);
  torch::Tensor step(Seq2seqDecoderState& state, const torch::Tensor& tokens);
  static void select(Seq2seqDecoderState& state, const torch::Tensor& index);

  // Fresh embeddings, N(0, D^-1/2) (fairseq's init for a table that is
  // scaled by sqrt(D) and tied to the output); the other layers keep
  // LibTorch's and moe/'s initialisation.
  void reset_parameters();
  // Stores the weight matrices (the embedding, which is also the output
  // map, the attention projections, the FFNs and the experts) in `dtype`,
  // float32 or bfloat16; norms, biases, routers and task embeddings stay
  // float32, as do activations, caches and logits. For inference on the
  // CPU: the panel kernel reads bf16 panels and widens them in registers,
  // so a decoding step, bound by reading weights at small batches, streams
  // half the bytes; the result equals the float32 model holding the same
  // bf16-rounded weights up to float summation order. Elsewhere (a forward
  // recording gradients, another device, panels off) a bf16 matrix is
  // widened per call. int8 experts stay int8.
  void set_weight_dtype(torch::ScalarType dtype);
  // The dtype the matrices are stored in.
  torch::ScalarType weight_dtype() const { return embed_tokens->weight.scalar_type(); }

  PackedEmbedding embed_tokens{nullptr};  // also the output map (tied)
  std::vector<Seq2seqEncoderLayer> encoder_layers;
  std::vector<Seq2seqDecoderLayer> decoder_layers;
  torch::nn::LayerNorm encoder_norm{nullptr}, decoder_norm{nullptr};

 private:
  torch::Tensor embed(const torch::Tensor& tokens, int64_t offset);  // [B, T] -> [B, T, D]
  torch::Tensor output_logits(const torch::Tensor& y);                // [..., D] -> [..., V] fp32
  Seq2seqRoute decoder_route(const Seq2seqEncoded& encoded) const;

  Seq2seqConfig config_;
  torch::nn::Dropout dropout_{nullptr};
};

// Loads a model directory that must hold a seq2seq model (eval mode), its
// matrices in weight_dtype (Seq2seqModel::set_weight_dtype) where given, as
// stored otherwise.
std::shared_ptr<Seq2seqModel> load_seq2seq_model(const std::string& dir,
                                                 WeightStorage storage = WeightStorage::kCopy,
                                                 c10::optional<torch::ScalarType> weight_dtype = c10::nullopt);

}  // namespace moekit
