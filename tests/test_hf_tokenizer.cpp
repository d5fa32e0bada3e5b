// Hugging Face tokenizer.json: ids equal to Hugging Face's own JavaScript
// implementation on real LLaMA-3, Qwen3 (NFC), DeepSeek-V3 (byte-level BPE),
// Mistral/LLaMA-2-style, Gemma-2 and Yi (SentencePiece BPE, byte fallback)
// files and LLaMA-2's vocabulary behind a Metaspace pre-tokenizer, a few
// thousand varied texts
// (scripts/make_tokenizer_testdata.sh, run by `make test`); merge order and
// refusals on small files written here.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moekit/core/file_io.h"
#include "moekit/data/hf_tokenizer.h"
#include "test_util.h"

using namespace moekit;
using json = nlohmann::json;

namespace {

std::string testdata_dir() {
  const char* env = std::getenv("MOEKIT_TOKENIZER_TESTDATA");
  return env && *env ? env : MOEKIT_TOKENIZER_TESTDATA;
}

// A small BPE tokenizer.json with the given model fields merged in.
std::string tiny_tokenizer(const json& model_extra, const json& top_extra = json::object()) {
  json model = {{"type", "BPE"},
                {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {"<unk>", 6}}},
                {"merges", {"b c", "a b", "a bc"}},
                {"unk_token", "<unk>"}};
  if (model_extra.is_object()) model.update(model_extra);
  json j = {{"version", "1.0"}, {"model", model}, {"normalizer", nullptr}, {"pre_tokenizer", nullptr},
            {"post_processor", nullptr}, {"decoder", nullptr}, {"added_tokens", json::array()}};
  if (top_extra.is_object()) j.update(top_extra);
  return j.dump();
}

}  // namespace

TEST(HfTokenizer, MergesApplyByRankNotLeftToRight) {
  const std::string dir = temp_dir("hf_tok_tiny");
  write_file_atomic(dir + "/tokenizer.json", tiny_tokenizer({}));
  const HfTokenizer tok(dir + "/tokenizer.json");
  // "b c" has the best rank, so "abc" is a + bc -> abc, never ab + c.
  EXPECT_EQ(tok.encode("abc"), (std::vector<int64_t>{5}));
  EXPECT_EQ(tok.encode("abab"), (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(tok.encode("cab"), (std::vector<int64_t>{2, 3}));
  // Unknown characters: the unknown token, consecutive ones fused on request.
  EXPECT_EQ(tok.encode("axxb"), (std::vector<int64_t>{0, 6, 6, 1}));
  write_file_atomic(dir + "/fused.json", tiny_tokenizer({{"fuse_unk", true}}));
  EXPECT_EQ(HfTokenizer(dir + "/fused.json").encode("axxb"), (std::vector<int64_t>{0, 6, 1}));
  EXPECT_EQ(tok.vocab_size(), 7);
  EXPECT_NE(error_of([&] { tok.encode("ab\xff"); }).find("not valid UTF-8"), std::string::npos);
  for (const std::string bad : {"a\xe2\x96", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"})  // cut, overlong, surrogate, > U+10FFFF
    EXPECT_NE(error_of([&] { tok.encode(bad); }).find("not valid UTF-8"), std::string::npos) << bad;
  EXPECT_EQ(tok.encode("\xf0\x9f\x98\x80").size(), 1u);  // an emoji: valid, unknown
  EXPECT_EQ(tok.decode({5, 2}), "abcc");
}

// Split's delimiter behaviours as the tokenizers library defines them, seen
// through merges that can only form inside one piece: on "a-b" and "a--b",
// with "-" the delimiter and merges a+-, -+b, -+-.
TEST(HfTokenizer, SplitBehavioursCutWhereTheLibraryCuts) {
  const std::string dir = temp_dir("hf_tok_split");
  const json vocab = {{"a", 0}, {"b", 1}, {"-", 2}, {"a-", 3}, {"-b", 4}, {"--", 5}, {"<unk>", 6}};
  auto ids = [&](const std::string& behavior, const std::string& text) {
    const std::string path = dir + "/" + behavior + ".json";
    write_file_atomic(path, tiny_tokenizer({{"vocab", vocab}, {"merges", {"a -", "- b", "- -"}}},
                                           {{"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"String", "-"}}},
                                                               {"behavior", behavior}}}}));
    return HfTokenizer(path).encode(text, false);
  };
  using V = std::vector<int64_t>;
  EXPECT_EQ(ids("Isolated", "a-b"), (V{0, 2, 1}));            // a | - | b
  EXPECT_EQ(ids("Removed", "a-b"), (V{0, 1}));                // a | b
  EXPECT_EQ(ids("MergedWithPrevious", "a-b"), (V{3, 1}));     // a- | b
  EXPECT_EQ(ids("MergedWithNext", "a-b"), (V{0, 4}));         // a | -b
  EXPECT_EQ(ids("Contiguous", "a-b"), (V{0, 2, 1}));          // a | - | b
  // Two delimiters in a row: only the first joins its neighbour; Contiguous joins the run.
  EXPECT_EQ(ids("MergedWithPrevious", "a--b"), (V{3, 2, 1}));  // a- | - | b
  EXPECT_EQ(ids("MergedWithNext", "a--b"), (V{0, 2, 4}));      // a | - | -b
  EXPECT_EQ(ids("Contiguous", "a--b"), (V{0, 5, 1}));          // a | -- | b
  EXPECT_EQ(ids("MergedWithNext", "-b"), (V{4}));
  EXPECT_EQ(ids("MergedWithPrevious", "-b"), (V{2, 1}));       // nothing before the first "-"
}

// A Split regex that backtracks catastrophically on a text makes PCRE2 give
// up (its match limit): encoding that text is an error naming the
// pre-tokenizer, never a text split as if nothing had matched. The same
// tokenizer still encodes texts the regex handles.
TEST(HfTokenizer, ARegexThatGivesUpIsAnErrorNotAWrongSplit) {
  const std::string dir = temp_dir("hf_tok_backtrack");
  const std::string path = dir + "/tokenizer.json";
  write_file_atomic(path, tiny_tokenizer({}, {{"pre_tokenizer", {{"type", "Split"},
                                                                  {"pattern", {{"Regex", "(a|aa)+c|b"}}},
                                                                  {"behavior", "Isolated"}}}}));
  const HfTokenizer tok(path);
  EXPECT_EQ(tok.encode("aacb", false), (std::vector<int64_t>{0, 0, 2, 1}));  // aac | b
  const std::string error = error_of([&] { tok.encode(std::string(60, 'a') + "b", false); });
  EXPECT_NE(error.find("pre_tokenizer Split"), std::string::npos) << error;
  EXPECT_NE(error.find("regex failed"), std::string::npos) << error;
}

// Metaspace as the tokenizers library (Rust) defines it: spaces become
// "▁", prepended per prepend_scheme (first: only where the text starts, not
// after an added token), with split the words cut before each "▁"; its
// decoder turns "▁" back into spaces and drops them from the first token.
TEST(HfTokenizer, MetaspaceReplacesSpacesPrependsPerSchemeAndSplits) {
  const std::string dir = temp_dir("hf_tok_metaspace");
  const std::string u = "\xe2\x96\x81";  // ▁
  const json vocab = {{"<unk>", 0}, {"a", 1}, {"b", 2}, {u, 3}, {u + "a", 4}, {u + "b", 5}, {u + "a" + u, 6},
                      {u + "a" + u + "b", 7}, {"<s>", 8}};
  const json merges = {u + " a", u + "a " + u, u + "a" + u + " b", u + " b"};
  auto make = [&](const json& pre, const std::string& name) {
    const std::string path = dir + "/" + name + ".json";
    json j = json::parse(tiny_tokenizer({{"vocab", vocab}, {"merges", merges}}));
    j["pre_tokenizer"] = pre;
    j["decoder"] = {{"type", "Metaspace"}, {"replacement", u}, {"prepend_scheme", pre.value("prepend_scheme", "always")}};
    j["added_tokens"] = {{{"id", 8}, {"content", "<s>"}, {"special", true}}};
    write_file_atomic(path, j.dump());
    return HfTokenizer(path);
  };
  const HfTokenizer whole = make({{"type", "Metaspace"}, {"replacement", u}, {"prepend_scheme", "always"}, {"split", false}}, "whole");
  const HfTokenizer split = make({{"type", "Metaspace"}, {"replacement", u}, {"prepend_scheme", "always"}}, "split");
  const HfTokenizer first = make({{"type", "Metaspace"}, {"replacement", u}, {"prepend_scheme", "first"}, {"split", false}}, "first");
  const HfTokenizer never = make({{"type", "Metaspace"}, {"replacement", u}, {"prepend_scheme", "never"}, {"split", false}}, "never");
  // "a b" -> "▁a▁b": one word merges to ▁a▁b; split, "▁a" and "▁b".
  EXPECT_EQ(whole.encode("a b"), (std::vector<int64_t>{7}));
  EXPECT_EQ(split.encode("a b"), (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(split.encode("a  b"), (std::vector<int64_t>{4, 3, 5})) << "each space its own word, as the library's test";
  EXPECT_EQ(never.encode("a b"), (std::vector<int64_t>{1, 5}));
  EXPECT_EQ(whole.encode(" a"), (std::vector<int64_t>{4})) << "no second ▁ where the text starts with one";
  // After an added token: always prepends, first does not.
  EXPECT_EQ(whole.encode("<s>a"), (std::vector<int64_t>{8, 4}));
  EXPECT_EQ(first.encode("<s>a"), (std::vector<int64_t>{8, 1}));
  EXPECT_EQ(first.encode("a<s>b"), (std::vector<int64_t>{4, 8, 2}));
  // Decoding: the first token loses its ▁ (every one, as the library does),
  // the others' become spaces; never keeps them all.
  EXPECT_EQ(whole.decode({7}), "ab");
  EXPECT_EQ(split.decode({4, 5}), "a b");
  EXPECT_EQ(never.decode({4, 5}), " a b");
}

TEST(HfTokenizer, UnsupportedComponentsAndBrokenFilesAreRefusedByName) {
  const std::string dir = temp_dir("hf_tok_bad");
  std::vector<std::pair<std::string, std::string>> cases = {
      {tiny_tokenizer({}, {{"normalizer", {{"type", "Lowercase"}}}}), "normalizer \"Lowercase\" is not supported"},
      {tiny_tokenizer({}, {{"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Sideways"}}}}),
       "Split behavior \"Sideways\" is not supported"},
      {tiny_tokenizer({}, {{"pre_tokenizer", {{"type", "Whitespace"}}}}), "pre_tokenizer \"Whitespace\""},
      {tiny_tokenizer({{"type", "WordPiece"}}), "model \"WordPiece\" is not supported"},
      {tiny_tokenizer({{"merges", {"ab"}}}), "merge 0 is not \"a b\""},
      {tiny_tokenizer({}, {{"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}},
                                              {"behavior", "Isolated"}}}}),
       "regex does not compile"},
      {tiny_tokenizer({}, {{"decoder", {{"type", "CTC"}}}}), "decoder \"CTC\""},
      {tiny_tokenizer({}, {{"pre_tokenizer", {{"type", "Metaspace"}, {"prepend_scheme", "sometimes"}}}}),
       "Metaspace prepend_scheme \"sometimes\" is not always, first or never"},
      // Ids and counts must be integers in range: a float is never truncated
      // (nor, when huge, converted: undefined behaviour, found by fuzzing).
      {tiny_tokenizer({{"vocab", {{"a", 7.7e65}}}}), "vocabulary id is not an integer"},
      {tiny_tokenizer({{"vocab", {{"a", 1.5}}}}), "vocabulary id is not an integer"},
      {tiny_tokenizer({{"vocab", {{"a", -1}}}}), "vocabulary id -1 is out of range"},
      {tiny_tokenizer({}, {{"added_tokens", {{{"id", 1e300}, {"content", "<s>"}}}}}), "added token id is not an integer"},
      {tiny_tokenizer({}, {{"added_tokens", {{{"id", uint64_t{1} << 63}, {"content", "<s>"}}}}}),
       "added token id 9223372036854775808 is out of range"},
      {tiny_tokenizer({}, {{"post_processor", {{"type", "TemplateProcessing"},
                                               {"single", {{{"SpecialToken", {{"id", "<s>"}}}}}},
                                               {"special_tokens", {{"<s>", {{"ids", {2.5}}}}}}}}}),
       "post_processor id is not an integer"},
      // An empty Strip content would strip nothing start times: a loop of
      // billions of steps per decoded text with a huge start.
      {tiny_tokenizer({}, {{"decoder", {{"type", "Strip"}, {"content", ""}, {"start", 2147483647}}}}),
       "decoder Strip content must be one character"},
      {tiny_tokenizer({}, {{"decoder", {{"type", "Strip"}, {"content", " "}, {"start", 1e300}}}}),
       "decoder Strip start is not an integer"},
      {tiny_tokenizer({}, {{"decoder", {{"type", "Strip"}, {"content", " "}, {"stop", -2}}}}),
       "decoder Strip stop -2 is out of range"},
      {"{\"model\": ", "not a tokenizer.json"},
      {"[1, 2]", "not a tokenizer.json"},
  };
  // Nesting as deep as a file can hold is an error, not a stack overflow:
  // Sequences past 64 levels, and a value quoted in an error by its kind
  // (writing it whole recursed once per level). Spliced in as text, since
  // building such a value with nlohmann would recurse as deep.
  const auto splice = [](std::string text, const std::string& raw) {
    return text.replace(text.find("\"@@\""), 4, raw);
  };
  const auto sequences = [](const std::string& key, int levels) {
    std::string raw;
    for (int i = 0; i < levels; ++i) raw += "{\"type\": \"Sequence\", \"" + key + "\": [";
    for (int i = 0; i < levels; ++i) raw += "]}";
    return raw;
  };
  cases.emplace_back(splice(tiny_tokenizer({}, {{"normalizer", "@@"}}), sequences("normalizers", 300000)),
                     "normalizer Sequences nested deeper than 64 levels");
  cases.emplace_back(splice(tiny_tokenizer({}, {{"decoder", "@@"}}), sequences("decoders", 65)),
                     "decoder Sequences nested deeper than 64 levels");
  cases.emplace_back(splice(tiny_tokenizer({{"vocab", {{"a", "@@"}}}}), std::string(500000, '[') + std::string(500000, ']')),
                     "vocabulary id is not an integer: an array of 1 elements");
  int n = 0;
  for (const auto& [text, expected] : cases) {
    const std::string path = dir + "/t" + std::to_string(n++) + ".json";
    write_file_atomic(path, text);
    const std::string message = error_of([&] { HfTokenizer t(path); });
    EXPECT_NE(message.find(expected), std::string::npos) << message;
    EXPECT_EQ(message.rfind(path, 0), 0u) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  EXPECT_NE(error_of([&] { HfTokenizer t(dir + "/missing.json"); }).find("no such file"), std::string::npos);
  // 64 levels load (an empty innermost Sequence normalizes nothing).
  std::string nested = tiny_tokenizer({}, {{"normalizer", "@@"}});
  write_file_atomic(dir + "/deep64.json", splice(nested, sequences("normalizers", 64)));
  EXPECT_EQ(HfTokenizer(dir + "/deep64.json").encode("abc"), (std::vector<int64_t>{5}));
}

TEST(HfTokenizer, IdsEqualHuggingFacesJavaScriptTokenizersOnRealFiles) {
  const std::string dir = testdata_dir();
  if (!path_exists(dir + "/expected.jsonl"))
    GTEST_SKIP() << "no reference encodings in " << dir
                 << " (scripts/make_tokenizer_testdata.sh makes them with node and npm; MOEKIT_TOKENIZER_TESTDATA "
                    "points elsewhere)";
  std::vector<json> entries;
  {
    std::ifstream in(dir + "/expected.jsonl");
    std::string line;
    while (std::getline(in, line)) entries.push_back(json::parse(line));
  }
  ASSERT_GE(entries.size(), 2000u);
  for (const std::string name : {"llama3", "llama2", "qwen3", "gemma2", "deepseek_v3", "yi", "llama2_metaspace"}) {
    if (!path_exists(dir + "/" + name + "/tokenizer.json")) {
      ADD_FAILURE() << dir << " has no " << name << " tokenizer (an older test-data directory: remove it to rebuild)";
      continue;
    }
    const HfTokenizer tok(dir + "/" + name + "/tokenizer.json");
    int wrong_ids = 0, wrong_text = 0;
    for (const json& e : entries) {
      const std::string text = e["text"].get<std::string>();
      const auto want = e[name]["ids"].get<std::vector<int64_t>>();
      const std::vector<int64_t> got = tok.encode(text);
      if (got != want && ++wrong_ids <= 5) {
        ADD_FAILURE() << name << ": ids differ for " << json(text).dump() << "\n  want " << json(want).dump()
                      << "\n  got  " << json(got).dump();
      }
      const std::string decoded = tok.decode(want, /*skip_special_tokens=*/false);
      if (decoded != e[name]["decoded"].get<std::string>() && ++wrong_text <= 5) {
        ADD_FAILURE() << name << ": decoded text differs for " << json(text).dump() << "\n  want "
                      << e[name]["decoded"].dump() << "\n  got  " << json(decoded).dump();
      }
    }
    EXPECT_EQ(wrong_ids, 0) << name << ": of " << entries.size() << " texts";
    EXPECT_EQ(wrong_text, 0) << name << ": of " << entries.size() << " texts";
  }
  const HfTokenizer llama3(dir + "/llama3/tokenizer.json");
  EXPECT_EQ(llama3.vocab_size(), 128256);
  EXPECT_EQ(llama3.token(llama3.bos_id()), "<|begin_of_text|>");
  EXPECT_EQ(llama3.token(llama3.eos_id()), "<|end_of_text|>");
  const HfTokenizer llama2(dir + "/llama2/tokenizer.json");
  EXPECT_EQ(llama2.token(llama2.bos_id()), "<s>");
  EXPECT_EQ(llama2.token(llama2.eos_id()), "</s>");
  // Qwen3: NFC-normalized byte-level BPE; no BOS, EOS from tokenizer_config.json.
  const HfTokenizer qwen3(dir + "/qwen3/tokenizer.json");
  EXPECT_EQ(qwen3.bos_id(), -1);
  EXPECT_EQ(qwen3.token(qwen3.eos_id()), "<|im_end|>");
  EXPECT_EQ(qwen3.encode("e\u0301"), qwen3.encode("\u00e9")) << "NFC composes e + combining acute into one code point";
  // Lossless both ways where the tokenizer is (byte-level).
  for (const json& e : entries) {
    const std::string text = e["text"].get<std::string>();
    if (text.find("<|") == std::string::npos) {
      EXPECT_EQ(llama3.decode(llama3.encode(text), true, false), text);
    }
  }
}
