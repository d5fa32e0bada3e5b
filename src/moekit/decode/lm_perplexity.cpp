#include "moekit/decode/lm_perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "moekit/core/check.h"

namespace moekit {

PerplexityOptions PerplexityOptions::resolved(const LmConfig& config) const {
  PerplexityOptions o = *this;
  if (o.window == 0) o.window = config.max_seq_len;
  if (o.stride == 0) o.stride = std::max<int64_t>(1, o.window / 2);
  return o;
}

void PerplexityOptions::validate(const LmConfig& config) const {
  const PerplexityOptions o = resolved(config);
  MOEKIT_CHECK_ARG(o.window >= 2 && o.window <= config.max_seq_len, "--window must be in [2, ", config.max_seq_len,
                   "] (the model's max_seq_len), got ", o.window);
  MOEKIT_CHECK_ARG(o.stride >= 1 && o.stride <= o.window, "--stride must be in [1, --window = ", o.window, "], got ",
                   o.stride);
  MOEKIT_CHECK_ARG(batch_size >= 1 && batch_size <= 4096, "--batch-size must be in [1, 4096], got ", batch_size);
}

namespace {

// One window: tokens [begin, end) of the stream, scoring labels from
// position `first_label` of the window on (labels are the window's own
// tokens, each predicted from the positions before it).
struct Window {
  int64_t begin, end, first_label;
};

}  // namespace

PerplexityResult lm_perplexity(LmModel& model, const std::vector<int64_t>& ids, const PerplexityOptions& options) {
  const LmConfig& config = model.config();
  options.validate(config);
  const PerplexityOptions o = options.resolved(config);
  const int64_t n = static_cast<int64_t>(ids.size());
  MOEKIT_CHECK_ARG(n >= 2, "perplexity: the text has ", n, " token", n == 1 ? "" : "s", ", at least 2 are needed");
  for (int64_t i = 0; i < n; ++i)
    MOEKIT_CHECK_ARG(ids[i] >= 0 && ids[i] < config.vocab_size, "perplexity: token ", i, " is id ", ids[i],
                     ", outside the model's vocabulary of ", config.vocab_size);

  std::vector<Window> windows;
  int64_t previous_end = 0;
  for (int64_t begin = 0; begin < n; begin += o.stride) {
    const int64_t end = std::min(begin + o.window, n);
    const int64_t targets = end - previous_end;  // labels not scored before
    windows.push_back({begin, end, std::max<int64_t>(1, end - begin - targets)});
    previous_end = end;
    if (end == n) break;
  }

  torch::NoGradGuard no_grad;
  model.eval();
  const torch::Device device = model.embed_tokens->weight.device();
  const auto start = std::chrono::steady_clock::now();
  double nll = 0;
  int64_t scored = 0;
  // Windows of one length run as a batch (all but the last are full).
  for (size_t first = 0; first < windows.size();) {
    const int64_t length = windows[first].end - windows[first].begin;
    size_t last = first;
    while (last < windows.size() && last - first < static_cast<size_t>(o.batch_size) &&
           windows[last].end - windows[last].begin == length)
      ++last;
    const int64_t batch = static_cast<int64_t>(last - first);
    std::vector<int64_t> flat;
    flat.reserve(static_cast<size_t>(batch * length));
    for (size_t w = first; w < last; ++w) flat.insert(flat.end(), ids.begin() + windows[w].begin, ids.begin() + windows[w].end);
    const torch::Tensor tokens = torch::tensor(flat, torch::kLong).view({batch, length}).to(device);
    const torch::Tensor logits = model.forward(tokens);  // [B, L, V]
    for (size_t w = first; w < last; ++w) {
      const int64_t b = static_cast<int64_t>(w - first), from = windows[w].first_label;
      // Positions from - 1 .. L - 2 predict labels from .. L - 1.
      const torch::Tensor log_probs = torch::log_softmax(logits[b].slice(0, from - 1, length - 1).to(torch::kFloat), -1);
      const torch::Tensor labels = tokens[b].slice(0, from, length).unsqueeze(1);
      nll -= log_probs.gather(1, labels).sum().to(torch::kDouble).item<double>();
      scored += length - from;
    }
    first = last;
  }
  PerplexityResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.tokens = scored;
  r.nll = nll / static_cast<double>(scored);
  r.perplexity = std::exp(r.nll);
  r.windows = static_cast<int64_t>(windows.size());
  r.window = o.window;
  r.stride = o.stride;
  return r;
}

}  // namespace moekit
