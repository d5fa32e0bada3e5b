#include "moekit/decode/seq2seq_search.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "moekit/core/check.h"
#include "moekit/core/fields.h"

namespace moekit {
namespace {

const FieldTable<SearchOptions>& search_fields() {
  using O = SearchOptions;
  static const auto table =
      FieldTable<O>("search")
          .field("beam", &O::beam, "hypotheses per sentence (1 = greedy)").in_range(1, 256)
          .field("length_penalty", &O::length_penalty, "score = log p / length^length_penalty").in_range(0, 10)
          .field("max_length_ratio", &O::max_length_ratio, "target length limit per source token").in_range(0, 100)
          .field("max_length_offset", &O::max_length_offset, "target length limit added to the ratio's")
          .in_range(0, 100000)
          .field("max_length", &O::max_length, "target positions at most (eos included)").in_range(1, 100000)
          .field("min_length", &O::min_length, "tokens before eos at least").in_range(0, 100000)
          .field("nbest", &O::nbest, "hypotheses returned per sentence").in_range(1, 256)
          .rule([](const O& o) {
            return o.nbest <= o.beam ? std::string() : str_cat("nbest ", o.nbest, " exceeds beam ", o.beam);
          });
  return table;
}

Seq2seqEncoded repeat_rows(const Seq2seqEncoded& e, const torch::Tensor& index) {
  Seq2seqEncoded out;
  out.memory = e.memory.index_select(0, index);
  out.mask = e.mask.index_select(0, index);
  if (e.task.defined()) out.task = e.task.index_select(0, index);
  if (e.sentence.defined()) out.sentence = e.sentence.index_select(0, index);
  return out;
}

double normalised(double log_prob, int64_t length, double penalty) {
  return log_prob / std::pow(static_cast<double>(std::max<int64_t>(length, 1)), penalty);
}

// The `k` best tokens of one row of log-probabilities into `best`, best
// first, ties to the lower token id (the order of a full sort by (-p, id)),
// skipping token `banned` (-1: none). One pass over the row: a token enters
// only when it beats the k-th best so far, so most cost one comparison.
void top_tokens(const float* p, int64_t vocab, int64_t k, int64_t banned, std::vector<int64_t>& best) {
  best.clear();
  if (k <= 0) return;
  const auto better = [p](int64_t x, int64_t y) { return p[x] > p[y] || (p[x] == p[y] && x < y); };
  for (int64_t v = 0; v < vocab; ++v) {
    if (v == banned) continue;
    if (static_cast<int64_t>(best.size()) == k) {
      if (!(p[v] > p[best.back()])) continue;  // ids rise, so a tie never displaces
      best.pop_back();
    }
    best.insert(std::upper_bound(best.begin(), best.end(), v, better), v);
  }
}

}  // namespace

const FieldTable<SearchOptions>& SearchOptions::fields() { return search_fields(); }
void SearchOptions::validate() const { search_fields().validate(*this); }

std::vector<std::vector<SeqHypothesis>> translate_batch(Seq2seqModel& model, const torch::Tensor& src,
                                                     const torch::Tensor& src_lens, const torch::Tensor& task,
                                                     const SearchOptions& options) {
  options.validate();
  torch::NoGradGuard no_grad;
  const Seq2seqConfig& config = model.config();
  const int64_t batch = src.size(0), beam = options.beam, vocab = config.vocab_size;
  const Seq2seqEncoded encoded = model.encode(src, src_lens, task);
  const torch::Device device = encoded.memory.device();

  std::vector<int64_t> limit(static_cast<size_t>(batch));  // target positions allowed, eos included
  int64_t longest = 0;
  {
    const torch::Tensor lens = src_lens.to(torch::kCPU);
    for (int64_t b = 0; b < batch; ++b) {
      const double by_ratio =
          options.max_length_ratio * static_cast<double>(lens[b].item<int64_t>()) + options.max_length_offset;
      limit[b] = std::max<int64_t>(1, std::min<int64_t>(options.max_length, static_cast<int64_t>(by_ratio)));
      longest = std::max(longest, limit[b]);
    }
  }

  // Every sentence's `beam` hypotheses, sentence-major: row b * beam + j.
  const int64_t rows = batch * beam;
  const torch::Tensor expand = torch::arange(batch, torch::kLong).repeat_interleave(beam).to(device);
  Seq2seqDecoderState state = model.start_decoding(beam == 1 ? encoded : repeat_rows(encoded, expand));
  std::vector<std::vector<int64_t>> history(static_cast<size_t>(rows));
  std::vector<double> score(static_cast<size_t>(rows), -std::numeric_limits<double>::infinity());
  for (int64_t b = 0; b < batch; ++b) score[b * beam] = 0.0;  // one live hypothesis per sentence at first
  std::vector<std::vector<SeqHypothesis>> finished(static_cast<size_t>(batch));
  std::vector<char> done(static_cast<size_t>(batch), 0);
  std::vector<int64_t> prev(static_cast<size_t>(rows), config.bos_id);
  std::vector<int64_t> best;  // one row's best tokens

  for (int64_t t = 0; t < longest; ++t) {
    const torch::Tensor tokens = torch::tensor(prev, torch::kLong).to(device);
    const torch::Tensor log_probs = torch::log_softmax(model.step(state, tokens), -1).to(torch::kCPU).contiguous();
    const float* lp = log_probs.data_ptr<float>();
    std::vector<int64_t> parent(static_cast<size_t>(rows), 0);
    std::vector<int64_t> next(static_cast<size_t>(rows), config.eos_id);
    std::vector<double> next_score(static_cast<size_t>(rows), -std::numeric_limits<double>::infinity());
    for (int64_t b = 0; b < batch; ++b) {
      if (done[b]) continue;
      const bool last = t + 1 >= limit[b];
      // Candidates (score, row, token): the sentence's best 2 * beam are
      // among its live rows' best 2 * beam tokens each.
      struct Candidate {
        double score;
        int64_t row, token;
      };
      std::vector<Candidate> candidates;
      // Before min_length tokens eos is not a candidate (the length limit
      // still ends a hypothesis).
      const int64_t banned = t < options.min_length ? config.eos_id : -1;
      const int64_t per_row = std::min<int64_t>(vocab - (banned >= 0 ? 1 : 0), 2 * beam);
      for (int64_t j = 0; j < beam; ++j) {
        const int64_t row = b * beam + j;
        if (!std::isfinite(score[row])) continue;
        const float* p = lp + row * vocab;
        if (last) {  // the length limit: only eos
          candidates.push_back({score[row] + p[config.eos_id], row, config.eos_id});
          continue;
        }
        top_tokens(p, vocab, per_row, banned, best);
        for (int64_t token : best) candidates.push_back({score[row] + p[token], row, token});
      }
      std::stable_sort(candidates.begin(), candidates.end(),
                       [](const Candidate& x, const Candidate& y) { return x.score > y.score; });
      // fairseq's rule: of the sentence's 2 * beam best candidates, an eos
      // among the first beam ends its hypothesis, and the first beam others
      // continue; an eos further down is dropped, so a sentence never ends
      // on hypotheses far worse than the ones still growing. (At most one
      // eos per row: at least beam others are among the 2 * beam.)
      const int64_t considered = std::min<int64_t>(static_cast<int64_t>(candidates.size()), 2 * beam);
      int64_t live = 0;
      for (int64_t i = 0; i < considered; ++i) {
        const Candidate& c = candidates[static_cast<size_t>(i)];
        if (c.token == config.eos_id) {
          if (i >= beam || static_cast<int64_t>(finished[b].size()) >= beam) continue;
          SeqHypothesis h;
          h.tokens = history[c.row];
          h.log_prob = c.score;
          h.score = normalised(c.score, t + 1, options.length_penalty);
          h.finished = !last;  // at the length limit eos is forced
          finished[b].push_back(std::move(h));
        } else if (live < beam) {
          const int64_t row = b * beam + live++;
          parent[row] = c.row;
          next[row] = c.token;
          next_score[row] = c.score;
        }
      }
      // A sentence is done once it has beam finished hypotheses (fairseq's
      // rule), or nothing is left alive.
      if (static_cast<int64_t>(finished[b].size()) >= beam || live == 0 || last) done[b] = 1;
      for (int64_t j = 0; j < beam && !done[b]; ++j) {
        if (j >= live) parent[b * beam + j] = b * beam;  // dead slots: any row, score -inf
      }
      if (done[b]) {
        for (int64_t j = 0; j < beam; ++j) {
          parent[b * beam + j] = b * beam;
          next_score[b * beam + j] = -std::numeric_limits<double>::infinity();
        }
      }
    }
    if (std::all_of(done.begin(), done.end(), [](char d) { return d != 0; })) break;
    std::vector<std::vector<int64_t>> grown(static_cast<size_t>(rows));
    bool identity = true;
    for (int64_t row = 0; row < rows; ++row) {
      identity = identity && parent[row] == row;
      grown[row] = history[parent[row]];
      if (std::isfinite(next_score[row])) grown[row].push_back(next[row]);
    }
    history = std::move(grown);
    score = next_score;
    prev = next;
    if (!identity) Seq2seqModel::select(state, torch::tensor(parent, torch::kLong).to(device));
  }

  std::vector<std::vector<SeqHypothesis>> out(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<SeqHypothesis>& hyps = finished[b];
    std::stable_sort(hyps.begin(), hyps.end(), [](const SeqHypothesis& x, const SeqHypothesis& y) { return x.score > y.score; });
    if (static_cast<int64_t>(hyps.size()) > options.nbest) hyps.resize(static_cast<size_t>(options.nbest));
    out[b] = std::move(hyps);
  }
  return out;
}

}  // namespace moekit
