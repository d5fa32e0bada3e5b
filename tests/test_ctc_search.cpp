// CTC decoding against brute force: every alignment enumerated.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <sstream>

#include "moekit/core/file_io.h"
#include "moekit/decode/ctc_search.h"
#include "moekit/decode/lexicon.h"
#include "moekit/decode/ngram_lm.h"
#include "test_util.h"

using namespace moekit;

namespace {

// log P(labels) for every label sequence, by summing over all V^T alignments.
std::map<std::vector<int64_t>, double> brute_force(const torch::Tensor& log_probs) {
  const int64_t t_max = log_probs.size(0), v = log_probs.size(1);
  std::map<std::vector<int64_t>, double> out;
  std::vector<int64_t> path(t_max, 0);
  const auto lp = log_probs.accessor<float, 2>();
  while (true) {
    double logp = 0;
    std::vector<int64_t> labels;
    int64_t previous = -1;
    for (int64_t t = 0; t < t_max; ++t) {
      logp += lp[t][path[t]];
      if (path[t] != previous && path[t] != 0) labels.push_back(path[t]);
      previous = path[t];
    }
    auto it = out.find(labels);
    out[labels] = it == out.end() ? logp : log_add(it->second, logp);
    int64_t t = 0;
    while (t < t_max && ++path[t] == v) path[t++] = 0;
    if (t == t_max) break;
  }
  return out;
}

}  // namespace

TEST(CtcSearch, GreedyCollapsesRepeatsAndBlanks) {
  // argmax path: 1 1 0 1 2 2 0 0 -> 1 1 2
  const std::vector<int64_t> path = {1, 1, 0, 1, 2, 2, 0, 0};
  torch::Tensor lp = torch::full({8, 3}, -5.0f);
  for (size_t t = 0; t < path.size(); ++t) lp[static_cast<int64_t>(t)][path[t]] = -0.1f;
  EXPECT_EQ(ctc_greedy_search(lp), (std::vector<int64_t>{1, 1, 2}));
}

TEST(CtcSearch, FullBeamEqualsBruteForce) {
  torch::manual_seed(3);
  for (int trial = 0; trial < 5; ++trial) {
    const torch::Tensor lp = torch::log_softmax(torch::randn({6, 4}) * 2, 1);
    const auto exact = brute_force(lp);
    // A beam as wide as the number of prefixes makes the search exact.
    const auto nbest = ctc_prefix_beam_search(lp, 100000);
    ASSERT_FALSE(nbest.empty());
    for (const auto& h : nbest) {
      auto it = exact.find(h.tokens);
      ASSERT_NE(it, exact.end());
      EXPECT_NEAR(h.score, it->second, 1e-5);
    }
    // The best hypothesis is the most probable label sequence.
    double best = -1e30;
    for (const auto& [labels, logp] : exact) best = std::max(best, logp);
    EXPECT_NEAR(nbest.front().score, best, 1e-5);
    for (size_t i = 1; i < nbest.size(); ++i) EXPECT_LE(nbest[i].score, nbest[i - 1].score);
  }
}

TEST(CtcSearch, IncrementalEqualsWhole) {
  torch::manual_seed(4);
  const torch::Tensor lp = torch::log_softmax(torch::randn({30, 7}) * 3, 1);
  CtcPrefixBeamSearch stream(5);
  stream.advance(lp.slice(0, 0, 7));
  stream.advance(lp.slice(0, 7, 8));
  stream.advance(lp.slice(0, 8, 30));
  const auto a = stream.nbest(), b = ctc_prefix_beam_search(lp, 5);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    EXPECT_DOUBLE_EQ(a[i].score, b[i].score);
  }
}

// Token frames as WeNet's runtime tracks them: where the best alignment
// emits each token, a repeated label's run ending at its last frame.
TEST(CtcSearch, TimesFollowTheBestAlignment) {
  // Nearly one-hot frames spelling: blank a a blank b blank blank c.
  const std::vector<int64_t> path = {0, 1, 1, 0, 2, 0, 0, 3};
  torch::Tensor logits = torch::full({8, 5}, -8.0);
  for (int64_t t = 0; t < 8; ++t) logits[t][path[t]] = 8.0;
  const torch::Tensor lp = torch::log_softmax(logits, 1);
  const auto nbest = ctc_prefix_beam_search(lp, 4);
  ASSERT_EQ(nbest.front().tokens, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(nbest.front().times, (std::vector<int64_t>{2, 4, 7}));
  // Every hypothesis of a random search: one frame per token, increasing,
  // inside the utterance; fed in pieces, the same frames.
  torch::manual_seed(9);
  const torch::Tensor random = torch::log_softmax(torch::randn({40, 6}) * 3, 1);
  CtcPrefixBeamSearch pieces(6);
  pieces.advance(random.slice(0, 0, 13));
  pieces.advance(random.slice(0, 13, 40));
  const auto whole = ctc_prefix_beam_search(random, 6), split = pieces.nbest();
  ASSERT_EQ(whole.size(), split.size());
  for (size_t i = 0; i < whole.size(); ++i) {
    const Hypothesis& h = whole[i];
    ASSERT_EQ(h.times.size(), h.tokens.size());
    for (size_t j = 0; j < h.times.size(); ++j) {
      EXPECT_GE(h.times[j], 0);
      EXPECT_LT(h.times[j], 40);
      if (j > 0) {
        EXPECT_GT(h.times[j], h.times[j - 1]);
      }
    }
    EXPECT_EQ(split[i].times, h.times);
  }
  pieces.reset();
  pieces.advance(lp);
  EXPECT_EQ(pieces.nbest().front().times, (std::vector<int64_t>{2, 4, 7})) << "reset restarts the frame count";
}

TEST(CtcSearch, RejectsBadInput) {
  EXPECT_THROW(ctc_prefix_beam_search(torch::zeros({3}), 4), std::invalid_argument);
  EXPECT_THROW(ctc_prefix_beam_search(torch::zeros({3, 4}), 0), std::invalid_argument);
  EXPECT_THROW(ctc_greedy_search(torch::zeros({3})), std::invalid_argument);
}

namespace {

// <blank> a b ▁ <sos/eos>: words spelt with a and b, "▁" between words.
Units ab_units() { return Units({"<blank>", "a", "b", "\xe2\x96\x81", "<sos/eos>"}); }

// Whether every word of `labels` (units of ab_units) is in `words`.
bool all_words_in(const std::vector<int64_t>& labels, const std::vector<std::string>& words) {
  const Units units = ab_units();
  std::string text = units.to_text(labels) + " ";
  for (size_t start = 0, space; (space = text.find(' ', start)) != std::string::npos; start = space + 1) {
    const std::string w = text.substr(start, space - start);
    if (!w.empty() && std::find(words.begin(), words.end(), w) == words.end()) return false;
  }
  return true;
}

}  // namespace

TEST(Lexicon, ExtendsOnlyTowardsItsWords) {
  const Units chars({"<blank>", "<unk>", "a", "b", "o", "\xe2\x96\x81", "<sos/eos>"});
  const Lexicon lexicon(chars, {"ab", "abba", "bo"});
  std::string next;
  EXPECT_TRUE(lexicon.extend("", 2, &next));  // "a" begins "ab"
  EXPECT_EQ(next, "a");
  EXPECT_FALSE(lexicon.extend("", 4, &next));  // no word begins with "o"
  EXPECT_TRUE(lexicon.extend("abb", 2, &next));
  EXPECT_EQ(next, "abba");
  EXPECT_TRUE(lexicon.extend("ab", 5, &next)) << "a boundary after a whole word";
  EXPECT_EQ(next, "");
  EXPECT_FALSE(lexicon.extend("abb", 5, &next)) << "a boundary after an unfinished word";
  EXPECT_TRUE(lexicon.extend("", 5, &next)) << "a boundary at the start";
  EXPECT_FALSE(lexicon.extend("a", 1, &next)) << "<unk> is never output";
  EXPECT_FALSE(lexicon.extend("a", 99, &next));
  EXPECT_TRUE(lexicon.may_end("abba"));
  EXPECT_FALSE(lexicon.may_end("abb"));
  EXPECT_TRUE(lexicon.may_end(""));
  // SentencePiece-style pieces: a leading boundary finishes the word before.
  const Units pieces({"<blank>", "<unk>", "\xe2\x96\x81" "ab", "ba", "\xe2\x96\x81" "bo", "<sos/eos>"});
  const Lexicon spm(pieces, {"ab", "abba", "bo"});
  EXPECT_TRUE(spm.extend("", 2, &next));
  EXPECT_TRUE(spm.extend("ab", 3, &next));
  EXPECT_EQ(next, "abba");
  EXPECT_TRUE(spm.extend("abba", 4, &next));
  EXPECT_EQ(next, "bo");
  EXPECT_FALSE(spm.extend("abb", 4, &next));
}

// A search whose every prefix ends inside a word (the audio stopped
// mid-word) gives its finished words as the final result.
TEST(CtcSearch, LexiconFinalKeepsFinishedWordsWhenEveryPrefixIsUnfinished) {
  const auto lexicon = std::make_shared<const Lexicon>(ab_units(), std::vector<std::string>{"ab", "baa"});
  // Nearly one-hot frames spelling "ab▁ba".
  const std::vector<int64_t> path = {1, 2, 3, 2, 1};
  torch::Tensor logits = torch::full({5, 5}, -8.0);
  for (int64_t t = 0; t < 5; ++t) logits[t][path[t]] = 8.0;
  const auto nbest = ctc_prefix_beam_search(torch::log_softmax(logits, 1), 1, 0, WordContext{lexicon, nullptr});
  ASSERT_EQ(nbest.size(), 1u);
  EXPECT_EQ(nbest.front().tokens, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(nbest.front().times.size(), 3u);
  const Units pieces({"<blank>", "<unk>", "\xe2\x96\x81" "ab", "\xe2\x96\x81" "b", "aa", "<sos/eos>"});
  const Lexicon spm(pieces, {"ab", "baa"});
  EXPECT_EQ(spm.finished_length({2, 3}), 1u) << "the piece that opens the unfinished word goes";
  EXPECT_EQ(spm.finished_length({2, 3, 4}), 1u);
  EXPECT_EQ(spm.finished_length({3}), 0u);
}

TEST(Lexicon, BadListsAreNamed) {
  const Units chars({"<blank>", "<unk>", "a", "b", "\xe2\x96\x81", "<sos/eos>"});
  EXPECT_NE(error_of([&] { Lexicon(chars, {}); }).find("no words"), std::string::npos);
  EXPECT_NE(error_of([&] { Lexicon(chars, {"ab", "abc"}); }).find("cannot spell 'abc'"), std::string::npos);
  EXPECT_NE(error_of([&] { Lexicon(chars, {"a b"}); }).find("'a b' is not a word"), std::string::npos);
  // A long or binary word is quoted in part, as printable UTF-8.
  const std::string long_word = error_of([&] { Lexicon(chars, {"ab", "c" + std::string(100000, '\xff')}); });
  EXPECT_NE(long_word.find("cannot spell 'c???"), std::string::npos) << long_word;
  EXPECT_LT(long_word.size(), 300u);
  EXPECT_NE(error_of([&] { Lexicon(chars, {"a\r"}); }).find("'a?' is not a word"), std::string::npos);
  // A words.txt as WeNet writes it: ids after the words, <eps> and #0 left out.
  const std::string dir = temp_dir("lexicon");
  write_file_atomic(dir + "/words.txt", "<eps> 0\nab 1\n\nba 2\n#0 3\n<unk> 4\n");
  const auto lexicon = Lexicon::read(dir + "/words.txt", chars);
  EXPECT_EQ(lexicon->size(), 2u);
  EXPECT_TRUE(lexicon->is_word("ba"));
  write_file_atomic(dir + "/empty.txt", "<eps> 0\n");
  EXPECT_NE(error_of([&] { Lexicon::read(dir + "/empty.txt", chars); }).find("empty.txt: no words"), std::string::npos);
  EXPECT_THROW(Lexicon::read(dir + "/missing.txt", chars), std::exception);
}

// With a lexicon and a beam as wide as the number of prefixes, the search
// finds the most probable label sequence made of lexicon words, with its
// exact CTC probability.
TEST(CtcSearch, LexiconBeamEqualsBruteForceOverItsWords) {
  const std::vector<std::string> words = {"ab", "b", "baa"};
  const auto lexicon = std::make_shared<const Lexicon>(ab_units(), words);
  torch::manual_seed(5);
  for (int trial = 0; trial < 6; ++trial) {
    torch::Tensor logits = torch::randn({7, 5}) * 2;
    logits.select(1, 4).fill_(-30);  // <sos/eos> is never emitted by CTC
    const torch::Tensor lp = torch::log_softmax(logits, 1);
    const auto exact = brute_force(lp);
    double best = -1e30;
    std::vector<int64_t> best_labels;
    for (const auto& [labels, logp] : exact) {
      if (!all_words_in(labels, words) || logp <= best) continue;
      best = logp;
      best_labels = labels;
    }
    const auto nbest = ctc_prefix_beam_search(lp, 100000, 0, WordContext{lexicon, nullptr});
    ASSERT_FALSE(nbest.empty());
    EXPECT_EQ(nbest.front().tokens, best_labels) << "trial " << trial;
    EXPECT_NEAR(nbest.front().score, best, 1e-5);
    for (const auto& h : nbest) {
      EXPECT_TRUE(all_words_in(h.tokens, words)) << ab_units().to_text(h.tokens);
      EXPECT_NEAR(h.score, exact.at(h.tokens), 1e-5);
    }
    // Fed in pieces, the same; while unfinished, prefixes of words remain.
    CtcPrefixBeamSearch stream(100000, 0, WordContext{lexicon, nullptr});
    stream.advance(lp.slice(0, 0, 3));
    for (const auto& h : stream.nbest()) {
      std::string text = ab_units().to_text(h.tokens);
      const std::string last = text.substr(text.rfind(' ') == std::string::npos ? 0 : text.rfind(' ') + 1);
      EXPECT_TRUE(last.empty() || lexicon->is_prefix(last)) << text;
    }
    stream.advance(lp.slice(0, 3, 7));
    EXPECT_EQ(stream.nbest(/*final=*/true).front().tokens, best_labels);
  }
}

namespace {

// A bigram model over the words of ab_units, written by hand.
const char* kBigram = R"(comments before \data\ are allowed

\data\
ngram 1=5
ngram 2=4

\1-grams:
-0.5	<s>	-0.30
-0.7	</s>
-0.4	ab	-0.20
-0.9	b	-0.10
-1.2	baa

\2-grams:
-0.1	<s> ab
-0.6	ab b
-0.2	b </s>
-1.5	b baa

\end\
)";

}  // namespace

TEST(NgramLm, ProbabilitiesFollowTheArpaBackoffRules) {
  const auto lm = NgramLm::parse(kBigram, "bigram.arpa");
  const double ln10 = std::log(10.0);
  EXPECT_EQ(lm->order(), 2);
  const int32_t s = lm->bos(), ab = lm->id("ab"), b = lm->id("b"), baa = lm->id("baa");
  EXPECT_NEAR(lm->log_prob({s}, ab), -0.1 * ln10, 1e-6);                // a listed bigram
  EXPECT_NEAR(lm->log_prob({s}, b), (-0.30 - 0.9) * ln10, 1e-6);        // backoff(<s>) + P(b)
  EXPECT_NEAR(lm->log_prob({baa}, ab), -0.4 * ln10, 1e-6);              // no backoff weight listed: 0
  EXPECT_NEAR(lm->log_prob({s, ab}, b), -0.6 * ln10, 1e-6) << "only the last order - 1 words count";
  EXPECT_NEAR(lm->log_prob({}, baa), -1.2 * ln10, 1e-6);
  EXPECT_EQ(lm->id("zzz"), -1) << "no <unk> in the model";
  EXPECT_EQ(lm->log_prob({s}, -1), NgramLm::kUnknownLogProb);
}

TEST(NgramLm, MalformedFilesAreNamedWithTheirLine) {
  auto error = [](const std::string& text) { return error_of([&] { NgramLm::parse(text, "x.arpa"); }); };
  EXPECT_NE(error("just text\n").find("x.arpa: not an ARPA language model"), std::string::npos);
  std::string t = kBigram;
  EXPECT_NE(error(t.substr(0, t.find("\\end\\"))).find("expected '\\end\\'"), std::string::npos);
  std::string wrong_count = t;
  wrong_count.replace(wrong_count.find("ngram 2=4"), 9, "ngram 2=5");
  EXPECT_NE(error(wrong_count).find("says 5 2-grams, the section has 4"), std::string::npos);
  std::string bad_prob = t;
  bad_prob.replace(bad_prob.find("-0.6\tab b"), 4, "nan!");
  EXPECT_NE(error(bad_prob).find(":16: bad log10 probability 'nan!'"), std::string::npos) << error(bad_prob);
  std::string unknown = t;
  unknown.replace(unknown.find("ab b\n"), 4, "ab q");
  EXPECT_NE(error(unknown).find("word 'q' has no unigram"), std::string::npos);
  std::string no_end = t;
  no_end.replace(no_end.find("-0.7\t</s>"), 9, "-0.7\tend");
  no_end.replace(no_end.find("b </s>"), 6, "b end");
  EXPECT_NE(error(no_end).find("no <s> or no </s>"), std::string::npos);
  // An n-gram listed twice would replace its first entry and still match
  // the count: refused with the line of the second.
  std::string twice = t;
  twice.replace(twice.find("-1.5\tb baa"), 10, "-1.5\tab b");
  EXPECT_NE(error(twice).find("x.arpa:18: the 2-gram 'ab b' is listed twice"), std::string::npos) << error(twice);
  std::string unigram_twice = t;
  unigram_twice.replace(unigram_twice.find("-1.2\tbaa"), 8, "-1.2\tb");
  EXPECT_NE(error(unigram_twice).find("x.arpa:12: the 1-gram 'b' is listed twice"), std::string::npos)
      << error(unigram_twice);
  // A count with anything after it is refused; a long or binary line is
  // quoted in part, as printable UTF-8.
  std::string trailing = t;
  trailing.replace(trailing.find("ngram 2=4"), 9, "ngram 2=4x");
  EXPECT_NE(error(trailing).find("x.arpa:5: expected 'ngram N=count', got 'ngram 2=4x'"), std::string::npos)
      << error(trailing);
  std::string long_line = t;
  long_line.replace(long_line.find("ngram 2=4"), 9, "ngram 2=4" + std::string(100000, '\xff'));
  const std::string long_error = error(long_line);
  EXPECT_NE(long_error.find("x.arpa:5: expected 'ngram N=count', got 'ngram 2=4???"), std::string::npos) << long_error;
  EXPECT_LT(long_error.size(), 300u);
  EXPECT_EQ(long_error.find('\xff'), std::string::npos);
}

// With a lexicon, a bigram model and a beam as wide as the number of
// prefixes, each final score is the CTC log-probability of the labels plus
// weight * ln P of each word and </s> plus the bonus per word: the fused
// search is exact.
TEST(CtcSearch, LanguageModelFusionEqualsBruteForce) {
  const std::vector<std::string> word_list = {"ab", "b", "baa"};
  WordContext words;
  words.lexicon = std::make_shared<const Lexicon>(ab_units(), word_list);
  words.lm = NgramLm::parse(kBigram, "bigram.arpa");
  words.lm_weight = 0.7;
  words.word_bonus = 0.3;
  auto fused = [&](const std::vector<int64_t>& labels) {
    std::istringstream text(ab_units().to_text(labels));
    std::vector<int32_t> history = {words.lm->bos()};
    double terms = 0;
    for (std::string w; text >> w;) {
      terms += words.lm_weight * words.lm->log_prob(history, words.lm->id(w)) + words.word_bonus;
      history = {words.lm->id(w)};
    }
    return terms + words.lm_weight * words.lm->log_prob(history, words.lm->eos());
  };
  torch::manual_seed(6);
  for (int trial = 0; trial < 5; ++trial) {
    torch::Tensor logits = torch::randn({7, 5}) * 2;
    logits.select(1, 4).fill_(-30);
    const torch::Tensor lp = torch::log_softmax(logits, 1);
    const auto exact = brute_force(lp);
    double best = -1e30;
    for (const auto& [labels, logp] : exact)
      if (all_words_in(labels, word_list)) best = std::max(best, logp + fused(labels));
    const auto nbest = ctc_prefix_beam_search(lp, 100000, 0, words);
    ASSERT_FALSE(nbest.empty());
    EXPECT_NEAR(nbest.front().score, best, 1e-5) << "trial " << trial;
    for (size_t i = 0; i < nbest.size(); ++i) {
      EXPECT_NEAR(nbest[i].score, exact.at(nbest[i].tokens) + fused(nbest[i].tokens), 1e-5);
      if (i > 0) {
        EXPECT_LE(nbest[i].score, nbest[i - 1].score);
      }
    }
  }
  WordContext lm_only;
  lm_only.lm = words.lm;
  EXPECT_NE(error_of([&] { CtcPrefixBeamSearch(4, 0, lm_only); }).find("needs a lexicon"), std::string::npos);
}
