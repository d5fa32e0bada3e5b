#include "moekit/decode/lm_generate.h"

#include <ATen/CPUGeneratorImpl.h>

#include "moekit/core/check.h"

namespace moekit {

void SamplingOptions::validate() const {
  MOEKIT_CHECK_ARG(max_new_tokens >= 0, "generate: max_new_tokens must be >= 0");
  MOEKIT_CHECK_ARG(temperature >= 0, "generate: temperature must be >= 0");
  MOEKIT_CHECK_ARG(top_k >= 0, "generate: top_k must be >= 0");
  MOEKIT_CHECK_ARG(top_p > 0 && top_p <= 1, "generate: top_p must be in (0, 1]");
  MOEKIT_CHECK_ARG(vocab_limit >= 0, "generate: vocab_limit must be >= 0");
}

int64_t sample_token(const torch::Tensor& logits, const SamplingOptions& o, at::Generator& generator) {
  if (o.temperature == 0) return logits.argmax().item<int64_t>();
  torch::Tensor scaled = logits / o.temperature;
  if (o.top_k > 0 && o.top_k < scaled.size(0)) {
    const torch::Tensor kth = std::get<0>(scaled.topk(o.top_k)).min();
    scaled = scaled.masked_fill(scaled < kth, -std::numeric_limits<float>::infinity());
  }
  if (o.top_p < 1.0) {
    auto [sorted, order] = scaled.sort(/*dim=*/0, /*descending=*/true);
    const torch::Tensor cumulative = sorted.softmax(0).cumsum(0);
    // Drop a token when the tokens before it already reach top_p (the first always stays).
    const torch::Tensor drop_sorted = (cumulative - sorted.softmax(0)) >= o.top_p;
    const torch::Tensor drop = torch::zeros_like(drop_sorted).scatter(0, order, drop_sorted);
    scaled = scaled.masked_fill(drop, -std::numeric_limits<float>::infinity());
  }
  return torch::multinomial(scaled.softmax(0), 1, /*replacement=*/false, generator).item<int64_t>();
}

void check_prompt(const LmConfig& c, const std::vector<int64_t>& prompt) {
  const int64_t n = static_cast<int64_t>(prompt.size());
  MOEKIT_CHECK_ARG(n >= 1, "generate: empty prompt");
  MOEKIT_CHECK_ARG(n < c.max_seq_len, "generate: the prompt has ", n, " tokens; the model's context (max_seq_len) is ",
                   c.max_seq_len, " and one more token must fit");
  for (int64_t id : prompt)
    MOEKIT_CHECK_ARG(id >= 0 && id < c.vocab_size, "generate: prompt token ", id, " is outside the vocabulary of ",
                     c.vocab_size);
}

std::vector<int64_t> generate(LmModel& model, const std::vector<int64_t>& prompt, const SamplingOptions& o,
                              int64_t eos_id, const std::function<void(int64_t)>& on_token) {
  o.validate();
  const LmConfig& c = model.config();
  check_prompt(c, prompt);
  const int64_t n = static_cast<int64_t>(prompt.size());
  torch::NoGradGuard no_grad;
  const int64_t capacity = std::min(c.max_seq_len, n + o.max_new_tokens);
  LmKvCache cache = model.make_cache(1, capacity);
  at::Generator generator = at::detail::createCPUGenerator(o.seed);
  std::vector<int64_t> out;
  // The model may live on a GPU; sampling runs on the CPU with its own generator.
  const torch::Device device = model.embed_tokens->weight.device();
  torch::Tensor input = torch::tensor(prompt, torch::kLong).view({1, n}).to(device);
  while (cache.length + input.size(1) <= capacity && static_cast<int64_t>(out.size()) < o.max_new_tokens) {
    const torch::Tensor logits = model.forward(input, &cache, /*last_only=*/true);  // [1, 1, V]
    torch::Tensor scores = logits.view({-1});
    if (o.vocab_limit > 0 && o.vocab_limit < scores.size(0)) scores = scores.narrow(0, 0, o.vocab_limit);
    const int64_t next = sample_token(scores.to(torch::kCPU), o, generator);
    out.push_back(next);
    if (on_token) on_token(next);
    if (o.stop_at_eos && next == eos_id) break;
    input = torch::full({1, 1}, next, torch::dtype(torch::kLong).device(device));
  }
  return out;
}

}  // namespace moekit
