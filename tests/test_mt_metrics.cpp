// BLEU and chrF against sacreBLEU's published values (its test suite) and
// hand-computed cases.
#include <gtest/gtest.h>

#include <cmath>

#include "moekit/eval/mt_metrics.h"

namespace moekit {
namespace {

TEST(Tokenize13a, SplitsAsMteval) {
  EXPECT_EQ(tokenize_13a("Hello, world."), "Hello , world .");
  EXPECT_EQ(tokenize_13a("It wasn't surprising."), "It wasn't surprising .");  // an apostrophe is not split
  EXPECT_EQ(tokenize_13a("3.14 and 1,000 items"), "3.14 and 1,000 items");  // between digits: kept
  EXPECT_EQ(tokenize_13a("pages 10-12"), "pages 10 - 12");
  EXPECT_EQ(tokenize_13a("a &quot;b&quot; &amp; c"), "a \" b \" & c");
  EXPECT_EQ(tokenize_13a("  spaced \t out  "), "spaced out");
  EXPECT_EQ(tokenize_13a("Größe: 5€."), "Größe : 5€ .");
  EXPECT_EQ(tokenize_13a(""), "");
}

TEST(Bleu, MatchesSacreBleuOnItsReadmeExample) {
  // sacreBLEU's test_corpus_bleu: default settings, two reference streams.
  const std::vector<std::string> hyps = {"The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."};
  const std::vector<std::vector<std::string>> refs = {
      {"The dog bit the man.", "It was not unexpected.", "The man bit him first."},
      {"The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."}};
  EXPECT_NEAR(corpus_bleu(hyps, refs).score(), 48.530827, 1e-6);
  // Empty hypotheses are scored (0), not dropped.
  EXPECT_EQ(corpus_bleu({"", "", ""}, refs).score(), 0.0);
}

TEST(Bleu, HandComputedCases) {
  // Identical: every precision 1, no brevity penalty.
  EXPECT_NEAR(corpus_bleu({"this is a test"}, {{"this is a test"}}).score(), 100.0, 1e-9);
  // "this is a fest": 3/4, 2/3, 1/2, and no 4-gram match: 'exp' smoothing
  // gives 100 / (2 * 1); BLEU = (75 * 66.67 * 50 * 50)^(1/4).
  const BleuStats s = corpus_bleu({"this is a fest"}, {{"this is a test"}});
  EXPECT_EQ(s.matches, (std::array<int64_t, 4>{3, 2, 1, 0}));
  EXPECT_EQ(s.totals, (std::array<int64_t, 4>{4, 3, 2, 1}));
  EXPECT_NEAR(s.score(), std::pow(75.0 * (200.0 / 3) * 50 * 50, 0.25), 1e-9);
  // sacreBLEU's test_case_statistics: clipped counts.
  const BleuStats c = bleu_stats("am I am a character sequence", {"I am a symbol string sequence a a"});
  EXPECT_EQ(c.matches, (std::array<int64_t, 4>{4, 2, 1, 0}));
  EXPECT_EQ(c.totals, (std::array<int64_t, 4>{6, 5, 4, 3}));
  // Brevity: 2 words against 4 -> exp(1 - 4/2).
  const BleuStats short_hyp = corpus_bleu({"a test"}, {{"this is a test"}});
  EXPECT_NEAR(short_hyp.brevity_penalty(), std::exp(-1.0), 1e-12);
  // A hypothesis of one word has no 2-grams: score 0.
  EXPECT_EQ(corpus_bleu({"test"}, {{"a test"}}).score(), 0.0);
  // Statistics add over the corpus (not an average of sentence scores).
  BleuStats sum = bleu_stats("this is a fest", {"this is a test"});
  sum.add(bleu_stats("this is a test", {"this is a test"}));
  EXPECT_NEAR(sum.score(), corpus_bleu({"this is a fest", "this is a test"}, {{"this is a test", "this is a test"}}).score(),
              1e-12);
}

TEST(Bleu, UnequalStreamsAreRefused) {
  EXPECT_THROW(corpus_bleu({"a", "b"}, {{"a"}}), std::invalid_argument);
  EXPECT_THROW(corpus_chrf({"a", "b"}, {"a"}), std::invalid_argument);
}

TEST(Chrf, MatchesSacreBleusPublishedValues) {
  // test_chrf_eff_order (sacreBLEU's default averaging), beta 3.
  EXPECT_NEAR(corpus_chrf({"a"}, {"a"}).score(3.0), 100.0, 1e-4);
  EXPECT_NEAR(corpus_chrf({""}, {"reference"}).score(3.0), 0.0, 1e-4);
  EXPECT_NEAR(corpus_chrf({"a b c"}, {"a b c"}).score(3.0), 100.0, 1e-4);
  EXPECT_NEAR(corpus_chrf({"a b c"}, {"abc"}).score(3.0), 100.0, 1e-4);
  EXPECT_NEAR(corpus_chrf({"a", "b"}, {"a", "c"}).score(3.0), 50.0, 1e-4);
  EXPECT_NEAR(corpus_chrf({"aa"}, {"ab"}).score(3.0), 25.0, 1e-4);
  // test_chrf (eps smoothing), beta 3.
  EXPECT_NEAR(corpus_chrf({"aa"}, {"ab"}).score(3.0, true), 8.3333, 1e-4);
  EXPECT_NEAR(corpus_chrf({"a"}, {"a"}).score(3.0, true), 16.6667, 1e-4);
  EXPECT_NEAR(corpus_chrf({"a b c"}, {"abc"}).score(3.0, true), 50.0, 1e-4);
  EXPECT_NEAR(corpus_chrf({" risk assessment must be made of those who are qualified and expertise in the sector - "
                           "these are the scientists ."},
                          {"risk assessment has to be undertaken by those who are qualified and expert in that area - "
                           "that is the scientists ."})
                  .score(3.0, true),
              63.361730, 1e-4);
  EXPECT_NEAR(corpus_chrf({" Die    Beziehung zwischen  Obama und Netanjahu ist nicht gerade  freundlich. "},
                          {"Das Verhältnis zwischen Obama und Netanyahu ist nicht gerade freundschaftlich."})
                  .score(3.0, true),
              64.1302698, 1e-4);
  // test_chrf_sentence_level (eps smoothing, beta 2): Czech, characters not bytes.
  EXPECT_NEAR(chrf_stats("Co nás nejvíc trápí, protože lékaři si vybírají, kdo bude žít a kdo zemře.",
                         "Nejvíce smutní jsme z toho, že musíme rozhodovat o tom, kdo bude žít a kdo zemře.")
                  .score(2.0, true),
              39.14078509, 1e-4);
  EXPECT_NEAR(chrf_stats("Lapali po dechu, jejich životy skončily dřív, než skutečně začaly.",
                         "Lapali po dechu a pak jejich život skončil - dřív, než skutečně mohl začít, připomněli.")
                  .score(2.0, true),
              57.15704367, 1e-4);
}

TEST(CharErrorRate, LevenshteinOverCodePoints) {
  EXPECT_EQ(char_edit_stats("kitten", "sitting").errors, 3);  // 2 substitutions, 1 insertion
  EXPECT_EQ(char_edit_stats("kitten", "sitting").length, 7);
  EXPECT_EQ(char_edit_stats("ˈhɛloʊ", "ˈhɛlo").errors, 1);   // IPA symbols, not bytes
  EXPECT_EQ(char_edit_stats("a b c", "abc").errors, 0);     // whitespace ignored
  EXPECT_EQ(char_edit_stats("", "abc").errors, 3);
  EditStats s = char_edit_stats("ab", "abcd");
  s.add(char_edit_stats("x", "y"));
  EXPECT_NEAR(s.rate(), 3.0 / 5.0, 1e-12);
}

}  // namespace
}  // namespace moekit
