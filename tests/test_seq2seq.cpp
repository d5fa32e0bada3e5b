// The seq2seq model, its search and task extraction.
#include <gtest/gtest.h>

#include <cmath>

#include "moekit/core/config.h"
#include "moekit/core/fields.h"
#include "moekit/decode/seq2seq_search.h"
#include "moekit/models/seq2seq/seq2seq_model.h"
#include "moekit/scale/extract.h"
#include "seq2seq_test_util.h"
#include "test_util.h"

namespace moekit {
namespace {

std::shared_ptr<Seq2seqModel> eval_model(const Seq2seqConfig& c, uint64_t seed = 5) {
  torch::manual_seed(seed);
  auto m = std::make_shared<Seq2seqModel>(c);
  m->eval();
  return m;
}

// Largest difference of two [B, L, V] logits over the real target positions
// (padding gets no MoE output but a dense FFN's: it is never read).
double max_diff_at_targets(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& lens) {
  double worst = 0;
  for (int64_t i = 0; i < a.size(0); ++i) {
    const int64_t n = lens[i].item<int64_t>();
    worst = std::max(worst, (a[i].narrow(0, 0, n) - b[i].narrow(0, 0, n)).abs().max().item<double>());
  }
  return worst;
}

torch::Tensor shifted(const Seq2seqBatch& b, int64_t bos) {
  return torch::cat({torch::full({b.tgt.size(0), 1}, bos, torch::kLong), b.tgt.narrow(1, 0, b.tgt.size(1) - 1)}, 1);
}

// Log-probability of `tokens` followed by eos for source `i` of the batch,
// from the teacher-forced decoder.
double sequence_log_prob(Seq2seqModel& m, const Seq2seqBatch& b, int64_t i, const std::vector<int64_t>& tokens) {
  torch::NoGradGuard no_grad;
  std::vector<int64_t> in = {m.config().bos_id};
  in.insert(in.end(), tokens.begin(), tokens.end());
  std::vector<int64_t> out = tokens;
  out.push_back(m.config().eos_id);
  const auto src = b.src.narrow(0, i, 1).narrow(1, 0, b.src_lens[i].item<int64_t>());
  const auto enc = m.encode(src, b.src_lens.narrow(0, i, 1), b.task.narrow(0, i, 1));
  const auto logp = torch::log_softmax(
      m.decode(enc, torch::tensor(in, torch::kLong).unsqueeze(0), torch::tensor({static_cast<int64_t>(in.size())})),
      -1)[0];
  double sum = 0;
  for (size_t t = 0; t < out.size(); ++t) sum += logp[static_cast<int64_t>(t)][out[t]].item<double>();
  return sum;
}

const std::vector<std::pair<Routing, Routing>> kRoutings = {{Routing::Token, Routing::Token},
                                                             {Routing::Token, Routing::Task},
                                                             {Routing::Sentence, Routing::Sentence},
                                                             {Routing::Task, Routing::Task}};

TEST(Seq2seqModel, IncrementalStepsEqualTheTeacherForcedDecoder) {
  for (const auto& [enc, dec] : kRoutings) {
    auto m = eval_model(tiny_seq2seq_config(enc, dec));
    const Seq2seqBatch b = random_seq2seq_batch({5, 3, 7});
    torch::NoGradGuard no_grad;
    const auto encoded = m->encode(b.src, b.src_lens, b.task);
    const torch::Tensor full = m->decode(encoded, shifted(b, 1), b.tgt_lens);  // [B, L, V]
    Seq2seqDecoderState state = m->start_decoding(encoded);
    const torch::Tensor in = shifted(b, 1);
    for (int64_t t = 0; t < in.size(1); ++t) {
      const torch::Tensor step = m->step(state, in.select(1, t).contiguous());
      for (int64_t i = 0; i < 3; ++i) {
        if (t >= b.tgt_lens[i].item<int64_t>()) continue;
        EXPECT_TRUE(torch::allclose(step[i], full[i][t], 1e-4, 1e-4))
            << routing_name(enc) << "/" << routing_name(dec) << " sequence " << i << " position " << t;
      }
    }
  }
}

TEST(Seq2seqModel, PaddingDoesNotChangeASequence) {
  for (const auto& [enc, dec] : kRoutings) {
    auto m = eval_model(tiny_seq2seq_config(enc, dec));
    const Seq2seqBatch b = random_seq2seq_batch({7, 3});
    torch::NoGradGuard no_grad;
    const torch::Tensor batched = m->decode(m->encode(b.src, b.src_lens, b.task), shifted(b, 1), b.tgt_lens);
    const torch::Tensor src = b.src.narrow(0, 1, 1).narrow(1, 0, 3), tgt_in = shifted(b, 1).narrow(0, 1, 1).narrow(1, 0, 4);
    const torch::Tensor alone =
        m->decode(m->encode(src, b.src_lens.narrow(0, 1, 1), b.task.narrow(0, 1, 1)), tgt_in, b.tgt_lens.narrow(0, 1, 1));
    EXPECT_TRUE(torch::allclose(batched[1].narrow(0, 0, 4), alone[0], 1e-4, 1e-4))
        << routing_name(enc) << "/" << routing_name(dec);
  }
}

TEST(Seq2seqModel, LossIsLabelSmoothedCrossEntropyOfTheShiftedTarget) {
  Seq2seqConfig c = tiny_seq2seq_config(Routing::Token, Routing::Task);
  c.moe.capacity_factor = 0;  // so the two forwards below route alike
  auto m = eval_model(c);
  m->train();
  const Seq2seqBatch b = random_seq2seq_batch({5, 3, 7});
  const double eps = 0.1;
  const Seq2seqLoss loss = m->loss(b.src, b.src_lens, b.task, b.tgt, b.tgt_lens, eps);
  const torch::Tensor logp =
      torch::log_softmax(m->decode(m->encode(b.src, b.src_lens, b.task), shifted(b, 1), b.tgt_lens), -1);
  double nll = 0, uniform = 0;
  int64_t n = 0;
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t t = 0; t < b.tgt_lens[i].item<int64_t>(); ++t) {
      nll -= logp[i][t][b.tgt[i][t].item<int64_t>()].item<double>();
      uniform -= logp[i][t].mean().item<double>();
      ++n;
    }
  }
  EXPECT_EQ(loss.tokens, n);
  EXPECT_NEAR(loss.nll.item<double>(), nll / n, 1e-4);
  EXPECT_NEAR((loss.loss - loss.aux).item<double>(), (1 - eps) * nll / n + eps * uniform / n, 1e-4);
  EXPECT_GT(loss.aux.item<double>(), 0.0);  // load balancing in training
  loss.loss.backward();
  for (const auto& p : m->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
  }
  EXPECT_GT(m->embed_tokens->weight.grad().abs().sum().item<double>(), 0.0);
}

TEST(Seq2seqModel, TaskRoutingNeedsTheTask) {
  auto m = eval_model(tiny_seq2seq_config(Routing::Token, Routing::Task));
  const Seq2seqBatch b = random_seq2seq_batch({3});
  EXPECT_NE(error_of<std::invalid_argument>([&] { m->encode(b.src, b.src_lens, {}); }).find("routes by task"),
            std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] { m->encode(b.src, b.src_lens, torch::tensor({3}, torch::kLong)); })
                .find("task id 3"),
            std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] { m->encode(b.src + 100, b.src_lens, b.task); }).find("outside"),
            std::string::npos);
}

TEST(Seq2seqConfig, BadConfigsAreRefusedByName) {
  auto parse = [](const std::string& text) {
    return error_of<std::invalid_argument>([&] { Seq2seqConfig::from_yaml(YAML::Load(text), "m"); });
  };
  EXPECT_EQ(parse("{vocab_size: 100}"), "");
  EXPECT_NE(parse("{vocab_size: 100, d_model: 30, heads: 4}").find("not divisible"), std::string::npos);
  EXPECT_NE(parse("{vocab_size: 100, moe: {num_experts: 4, decoder_routing: task}}").find("task names"),
            std::string::npos);
  EXPECT_NE(parse("{vocab_size: 100, tasks: [de, de]}").find("twice"), std::string::npos);
  EXPECT_NE(parse("{vocab_size: 100, moe: {num_experts: 4, top_k: 5}}").find("top_k"), std::string::npos);
  EXPECT_NE(parse("{vocab_size: 100, encoder_layer: 3}").find("encoder_layers"), std::string::npos);
  EXPECT_NE(parse("{vocab_size: 100, tasks: [de], extracted_task: de}").find("no layer is task-routed"),
            std::string::npos);
  EXPECT_NE(parse("{vocab_size: 100, eos_id: 100}").find("outside vocab_size"), std::string::npos);
  // The written config reads back to the same model.
  const Seq2seqConfig c = tiny_seq2seq_config(Routing::Token, Routing::Task);
  const Seq2seqConfig back = Seq2seqConfig::from_yaml(c.to_yaml(), "m");
  EXPECT_EQ(back.to_string(), c.to_string());
  EXPECT_EQ(back.tasks, c.tasks);
}

TEST(Seq2seqSearch, GreedyIsTheArgmaxPath) {
  auto m = eval_model(tiny_seq2seq_config(Routing::Token, Routing::Task));
  const Seq2seqBatch b = random_seq2seq_batch({5, 3});
  SearchOptions o;
  o.beam = 1;
  o.max_length = 12;
  const auto hyps = translate_batch(*m, b.src, b.src_lens, b.task, o);
  torch::NoGradGuard no_grad;
  for (int64_t i = 0; i < 2; ++i) {
    const auto src = b.src.narrow(0, i, 1).narrow(1, 0, b.src_lens[i].item<int64_t>());
    auto state = m->start_decoding(m->encode(src, b.src_lens.narrow(0, i, 1), b.task.narrow(0, i, 1)));
    std::vector<int64_t> tokens;
    int64_t prev = 1;
    for (int64_t t = 0; t < 12; ++t) {
      const torch::Tensor logits = m->step(state, torch::tensor({prev}, torch::kLong));
      prev = t + 1 == 12 ? 2 : logits[0].argmax().item<int64_t>();
      if (prev == 2) break;
      tokens.push_back(prev);
    }
    ASSERT_EQ(hyps[i].size(), 1u);
    EXPECT_EQ(hyps[i][0].tokens, tokens) << "sentence " << i;
  }
}

TEST(Seq2seqSearch, BeamScoresAreTheModelsLogProbabilities) {
  auto m = eval_model(tiny_seq2seq_config(Routing::Token, Routing::Task));
  const Seq2seqBatch b = random_seq2seq_batch({5, 3, 6});
  SearchOptions o;
  o.beam = 4;
  o.nbest = 4;
  o.length_penalty = 1.0;
  o.max_length = 10;
  const auto hyps = translate_batch(*m, b.src, b.src_lens, b.task, o);
  for (int64_t i = 0; i < 3; ++i) {
    ASSERT_EQ(hyps[i].size(), 4u);
    for (size_t j = 0; j < hyps[i].size(); ++j) {
      const SeqHypothesis& h = hyps[i][j];
      EXPECT_NEAR(h.log_prob, sequence_log_prob(*m, b, i, h.tokens), 1e-3) << i << "/" << j;
      EXPECT_NEAR(h.score, h.log_prob / static_cast<double>(h.tokens.size() + 1), 1e-9);
      if (j > 0) {
        EXPECT_GE(hyps[i][j - 1].score, h.score);
      }
    }
    // No two hypotheses alike.
    for (size_t j = 1; j < hyps[i].size(); ++j) EXPECT_NE(hyps[i][j].tokens, hyps[i][0].tokens);
  }
}

TEST(Seq2seqSearch, ABatchEqualsItsSentencesOneByOne) {
  auto m = eval_model(tiny_seq2seq_config(Routing::Sentence, Routing::Sentence));
  const Seq2seqBatch b = random_seq2seq_batch({5, 3, 6});
  SearchOptions o;
  o.beam = 3;
  const auto together = translate_batch(*m, b.src, b.src_lens, b.task, o);
  for (int64_t i = 0; i < 3; ++i) {
    const int64_t len = b.src_lens[i].item<int64_t>();
    const auto alone = translate_batch(*m, b.src.narrow(0, i, 1).narrow(1, 0, len), b.src_lens.narrow(0, i, 1),
                                       b.task.narrow(0, i, 1), o);
    EXPECT_EQ(alone[0][0].tokens, together[i][0].tokens) << i;
    EXPECT_NEAR(alone[0][0].score, together[i][0].score, 1e-4) << i;
  }
}

// A beam search written plainly, for one sentence: every hypothesis scored
// by the teacher-forced decoder on its whole prefix (no caches, no reordering),
// every token of the vocabulary a candidate, one full sort per step; the
// rules of fairseq's sequence_generator, which translate_batch follows (beam
// finished hypotheses end a sentence, the length limit forces eos, no eos
// before min_length).
std::vector<SeqHypothesis> reference_beam(Seq2seqModel& m, const Seq2seqBatch& b, int64_t i, const SearchOptions& o) {
  torch::NoGradGuard no_grad;
  const int64_t len = b.src_lens[i].item<int64_t>(), eos = m.config().eos_id;
  const auto enc = m.encode(b.src.narrow(0, i, 1).narrow(1, 0, len), b.src_lens.narrow(0, i, 1), b.task.narrow(0, i, 1));
  const int64_t limit = std::max<int64_t>(
      1, std::min<int64_t>(o.max_length, static_cast<int64_t>(o.max_length_ratio * len + o.max_length_offset)));
  struct Hyp {
    std::vector<int64_t> tokens;
    double log_prob;
  };
  std::vector<Hyp> live = {{{}, 0.0}};
  std::vector<SeqHypothesis> finished;
  for (int64_t t = 0; t < limit; ++t) {
    const bool last = t + 1 >= limit;
    struct Candidate {
      double log_prob;
      size_t hyp;
      int64_t token;
    };
    std::vector<Candidate> candidates;
    for (size_t h = 0; h < live.size(); ++h) {
      std::vector<int64_t> in = {m.config().bos_id};
      in.insert(in.end(), live[h].tokens.begin(), live[h].tokens.end());
      const torch::Tensor logits = m.decode(enc, torch::tensor(in, torch::kLong).unsqueeze(0),
                                            torch::tensor({static_cast<int64_t>(in.size())}));
      const torch::Tensor lp = torch::log_softmax(logits[0][static_cast<int64_t>(in.size()) - 1], -1);
      for (int64_t v = 0; v < lp.size(0); ++v) {
        if ((last && v != eos) || (t < o.min_length && !last && v == eos)) continue;
        candidates.push_back({live[h].log_prob + lp[v].item<double>(), h, v});
      }
    }
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const Candidate& x, const Candidate& y) { return x.log_prob > y.log_prob; });
    // fairseq's sequence_generator: the 2 * beam best candidates; an eos
    // among the first beam is finalized, the first beam others continue.
    candidates.resize(std::min<size_t>(candidates.size(), 2 * o.beam));
    std::vector<Hyp> next;
    for (size_t rank = 0; rank < candidates.size(); ++rank) {
      const Candidate& c = candidates[rank];
      if (c.token == eos) {
        if (static_cast<int64_t>(rank) >= o.beam || static_cast<int64_t>(finished.size()) >= o.beam) continue;
        SeqHypothesis h;
        h.tokens = live[c.hyp].tokens;
        h.log_prob = c.log_prob;
        h.score = c.log_prob / std::pow(static_cast<double>(t + 1), o.length_penalty);
        h.finished = !last;
        finished.push_back(h);
      } else if (static_cast<int64_t>(next.size()) < o.beam) {
        Hyp grown = live[c.hyp];
        grown.tokens.push_back(c.token);
        grown.log_prob = c.log_prob;
        next.push_back(grown);
      }
    }
    if (static_cast<int64_t>(finished.size()) >= o.beam || next.empty() || last) break;
    live = next;
  }
  std::stable_sort(finished.begin(), finished.end(),
                   [](const SeqHypothesis& x, const SeqHypothesis& y) { return x.score > y.score; });
  if (static_cast<int64_t>(finished.size()) > o.nbest) finished.resize(static_cast<size_t>(o.nbest));
  return finished;
}

TEST(Seq2seqSearch, BeamSearchEqualsAPlainBeamSearchWithoutCaches) {
  Seq2seqConfig c = tiny_seq2seq_config(Routing::Token, Routing::Task);
  c.moe.capacity_factor = 0;  // dropless: a step's routing does not depend on the other rows
  auto m = eval_model(c, 7);
  {
    // A random model rarely ranks eos high; a larger eos embedding (tied to
    // the output) makes it the best token after some prefixes and the worst
    // after others, so hypotheses end at different lengths.
    torch::NoGradGuard no_grad;
    int64_t scaled = 0;
    for (auto& p : m->named_parameters()) {
      if (p.value().dim() == 2 && p.value().size(0) == c.vocab_size && p.value().size(1) == c.d_model) {
        p.value()[c.eos_id].mul_(6.0);
        ++scaled;
      }
    }
    ASSERT_GE(scaled, 1);
  }
  const Seq2seqBatch b = random_seq2seq_batch({5, 3, 6});
  int64_t ended_early = 0;  // hypotheses that chose eos before the length limit
  for (const auto& [beam, min_length] : std::vector<std::pair<int64_t, int64_t>>{{1, 0}, {3, 0}, {3, 4}, {4, 20}}) {
    SearchOptions o;
    o.beam = beam;
    o.nbest = beam;
    o.min_length = min_length;
    o.max_length = 9;
    o.length_penalty = 0.8;
    const auto hyps = translate_batch(*m, b.src, b.src_lens, b.task, o);
    int64_t hypotheses = 0, ended_by_eos = 0;
    for (int64_t i = 0; i < 3; ++i) {
      const auto expected = reference_beam(*m, b, i, o);
      ASSERT_EQ(hyps[i].size(), expected.size()) << "beam " << beam << " min_length " << min_length << " sentence " << i;
      for (size_t j = 0; j < expected.size(); ++j) {
        EXPECT_EQ(hyps[i][j].tokens, expected[j].tokens) << beam << "/" << min_length << "/" << i << "/" << j;
        EXPECT_NEAR(hyps[i][j].log_prob, expected[j].log_prob, 1e-4);
        EXPECT_NEAR(hyps[i][j].score, expected[j].score, 1e-4);
        EXPECT_EQ(hyps[i][j].finished, expected[j].finished);
        // min_length holds unless the length limit (8 tokens + eos) came first.
        EXPECT_GE(static_cast<int64_t>(hyps[i][j].tokens.size()), std::min<int64_t>(min_length, 8));
        ++hypotheses;
        ended_by_eos += hyps[i][j].finished ? 1 : 0;
      }
    }
    EXPECT_GE(hypotheses, 3 * beam);
    if (min_length == 0) ended_early += ended_by_eos;
  }
  EXPECT_GE(ended_early, 1) << "no hypothesis chose eos: the test would not see the finishing rules";
}

TEST(Seq2seqSearch, BadOptionsAreRefused) {
  SearchOptions o;
  o.beam = 0;
  EXPECT_NE(error_of<std::invalid_argument>([&] { o.validate(); }).find("beam"), std::string::npos);
  o.beam = 1000000000;
  EXPECT_NE(error_of<std::invalid_argument>([&] { o.validate(); }).find("beam"), std::string::npos);
  o.beam = 2;
  o.nbest = 3;
  EXPECT_NE(error_of<std::invalid_argument>([&] { o.validate(); }).find("nbest"), std::string::npos);
  o.nbest = 1;
  o.min_length = -1;
  EXPECT_NE(error_of<std::invalid_argument>([&] { o.validate(); }).find("min_length"), std::string::npos);
}

void expect_extraction_exact(Seq2seqConfig c, const std::string& what) {
  c.moe.capacity_factor = 0;
  auto full = eval_model(c, 11);
  const Seq2seqBatch b = random_seq2seq_batch({5, 3, 6});
  for (int64_t task = 0; task < 3; ++task) {
    const Extraction e = extract_task(*full, c.tasks[static_cast<size_t>(task)]);
    EXPECT_LT(count_parameters(*e.model).total, count_parameters(*full).total) << what;
    for (const ExtractedLayer& l : e.layers) {
      EXPECT_EQ(l.experts.size(), 2u);
      EXPECT_NEAR(l.weights[0] + l.weights[1], 1.0, 1e-6);  // GShard: renormalised top-2
    }
    const torch::Tensor tasks = torch::full({3}, task, torch::kLong);
    torch::NoGradGuard no_grad;
    const torch::Tensor a = full->decode(full->encode(b.src, b.src_lens, tasks), shifted(b, 1), b.tgt_lens);
    const torch::Tensor x = e.model->decode(e.model->encode(b.src, b.src_lens, tasks), shifted(b, 1), b.tgt_lens);
    EXPECT_LT(max_diff_at_targets(a, x, b.tgt_lens), 1e-5) << what << " task " << task;
    for (int64_t beam : {1, 4}) {
      SearchOptions o;
      o.beam = beam;
      const auto ha = translate_batch(*full, b.src, b.src_lens, tasks, o);
      const auto hx = translate_batch(*e.model, b.src, b.src_lens, tasks, o);
      for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(ha[i][0].tokens, hx[i][0].tokens) << what << " beam " << beam;
    }
  }
}

TEST(Seq2seqExtract, TheSubNetworkEqualsTheFullModelOnItsTask) {
  expect_extraction_exact(tiny_seq2seq_config(Routing::Token, Routing::Task), "token/task");
  expect_extraction_exact(tiny_seq2seq_config(Routing::Task, Routing::Task), "task/task");
  Seq2seqConfig swiglu = tiny_seq2seq_config(Routing::Task, Routing::Task, 6);
  swiglu.activation = Activation::SwiGLU;
  expect_extraction_exact(swiglu, "task/task swiglu");
}

TEST(Seq2seqExtract, RefusesWhatHasNoSubNetwork) {
  auto token = eval_model(tiny_seq2seq_config(Routing::Token, Routing::Sentence));
  EXPECT_NE(error_of<std::invalid_argument>([&] { extract_task(*token, "de"); }).find("no task-routed layer"),
            std::string::npos);
  auto task = eval_model(tiny_seq2seq_config(Routing::Token, Routing::Task));
  const std::string unknown = error_of<std::invalid_argument>([&] { extract_task(*task, "xx"); });
  EXPECT_NE(unknown.find("unknown task 'xx'"), std::string::npos);
  EXPECT_NE(unknown.find("de, fr, es"), std::string::npos);
  const Extraction e = extract_task(*task, "fr");
  EXPECT_NE(error_of<std::invalid_argument>([&] { extract_task(*e.model, "fr"); }).find("already"), std::string::npos);
}

TEST(Seq2seqExtract, TheWrittenDirectoryIsAStandaloneModel) {
  const std::string dir = temp_dir("seq2seq_extract");
  Seq2seqConfig c = tiny_seq2seq_config(Routing::Token, Routing::Task);
  auto full = eval_model(c, 21);
  save_model(dir + "/full", *full);
  const Extraction e = extract_task_dir(dir + "/full", "es", dir + "/es");
  auto loaded = load_seq2seq_model(dir + "/es");
  EXPECT_EQ(loaded->config().extracted_task, "es");
  const std::string info = loaded->config().to_string();
  EXPECT_NE(info.find("extracted_task=es"), std::string::npos);
  // Decoder layer 1 is now a dense FFN of width 2 x 24.
  EXPECT_EQ(loaded->decoder_layers[1]->ffn.dense->w1->weight.size(0), 48);
  EXPECT_TRUE(loaded->decoder_layers[1]->ffn.moe.is_empty());
  EXPECT_FALSE(loaded->encoder_layers[1]->ffn.moe.is_empty());  // token-routed: whole
  const Seq2seqBatch b = random_seq2seq_batch({4, 2});
  const torch::Tensor tasks = torch::full({2}, 2, torch::kLong);
  torch::NoGradGuard no_grad;
  const torch::Tensor a = full->decode(full->encode(b.src, b.src_lens, tasks), shifted(b, 1), b.tgt_lens);
  const torch::Tensor x = loaded->decode(loaded->encode(b.src, b.src_lens, {}), shifted(b, 1), b.tgt_lens);
  EXPECT_LT(max_diff_at_targets(a, x, b.tgt_lens), 1e-5);
  EXPECT_NE(error_of<std::invalid_argument>([&] { load_seq2seq_model(dir + "/missing"); }), "");
}

}  // namespace
}  // namespace moekit
