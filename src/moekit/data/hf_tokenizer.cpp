#include "moekit/data/hf_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <utf8proc.h>
#include <queue>
#include <unordered_map>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/json_error.h"
#include "moekit/core/utf8.h"

namespace moekit {

namespace {

using json = nlohmann::json;

// Length of the UTF-8 sequence that starts with byte `c` (1 for a stray byte).
size_t utf8_length(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xe) return 3;
  if ((c >> 3) == 0x1e) return 4;
  return 1;
}

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = std::min(utf8_length(static_cast<unsigned char>(s[i])), s.size() - i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// Unicode normalization form `form` (NFC, NFD, NFKC, NFKD) of well-formed
// UTF-8, by utf8proc (the Unicode version Debian's utf8proc carries).
std::string unicode_normalize(const std::string& text, const std::string& form) {
  if (text.empty()) return text;
  int options = UTF8PROC_STABLE | (form == "NFC" || form == "NFKC" ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
  if (form == "NFKC" || form == "NFKD") options |= UTF8PROC_COMPAT;
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &out,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    std::free(out);
    throw std::invalid_argument(std::string("Unicode normalization ") + form + " failed: " + utf8proc_errmsg(n));
  }
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t pos = 0, at;
  while ((at = s.find(from, pos)) != std::string::npos) {
    out.append(s, pos, at - pos);
    out += to;
    pos = at + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

std::string utf8_of(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xc0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    s += static_cast<char>(0xe0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return s;
}

// GPT-2's reversible map of bytes to printable characters (byte-level BPE):
// printable Latin-1 bytes stand for themselves, the others for 256 + n.
struct ByteAlphabet {
  std::array<std::string, 256> to_char;
  std::unordered_map<std::string, unsigned char> to_byte;
  ByteAlphabet() {
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_char[b] = utf8_of(printable ? static_cast<uint32_t>(b) : next++);
      to_byte[to_char[b]] = static_cast<unsigned char>(b);
    }
  }
};
const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// The pattern GPT-2's ByteLevel pre-tokenizer splits by when use_regex is set.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) : where_(where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &error,
                          &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw std::invalid_argument(where + ": regex does not compile at offset " + std::to_string(offset) + ": " +
                                  reinterpret_cast<const char*>(message));
    }
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // [begin, end) of every match, left to right. A match that PCRE2 gives
  // up on (its backtracking or memory limit, reached by a pattern that
  // backtracks catastrophically on this text) is an error, never taken for
  // "no more matches", which would split the text wrongly.
  std::vector<std::pair<size_t, size_t>> matches(const std::string& text) const {
    std::vector<std::pair<size_t, size_t>> out;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    MOEKIT_CHECK(match != nullptr, "out of memory for a regex match");
    pcre2_match_data* data = match.get();
    size_t pos = 0;
    while (pos <= text.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), pos,
                                 PCRE2_NO_UTF_CHECK, data, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        throw std::invalid_argument(where_ + ": the regex failed on a text of " + std::to_string(text.size()) +
                                    " bytes at byte " + std::to_string(pos) + ": " +
                                    reinterpret_cast<const char*>(message));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data);
      if (ov[1] == ov[0]) {  // an empty match: step over one character
        pos = ov[0] + (ov[0] < text.size() ? utf8_length(static_cast<unsigned char>(text[ov[0]])) : 1);
        continue;
      }
      out.emplace_back(ov[0], ov[1]);
      pos = ov[1];
    }
    return out;
  }

 private:
  std::string where_;
  pcre2_code* code_ = nullptr;
};

// A field of an object, null where absent, by reference: json::value()
// with a json default returns a copy, and copying a value recurses once
// per level of its nesting, so a deeply nested field would overflow the
// stack before it could be refused.
const json& field_or_null(const json& object, const char* key) {
  static const json null_value;
  if (!object.is_object()) return null_value;
  const auto it = object.find(key);
  return it == object.end() ? null_value : *it;
}

// An integer field of the file in [0, limit): a float, a string or a number
// out of range is refused by name (a float would otherwise be truncated, or
// be undefined behaviour to convert when huge).
int64_t index_field(const json& j, int64_t limit, const std::string& what) {
  MOEKIT_CHECK_ARG(j.is_number_integer(), what, " is not an integer: ", json_value_for_message(j));
  const bool in_range = j.is_number_unsigned() ? j.get<uint64_t>() < static_cast<uint64_t>(limit)
                                               : j.get<int64_t>() >= 0 && j.get<int64_t>() < limit;
  MOEKIT_CHECK_ARG(in_range, what, " ", json_value_for_message(j), " is out of range [0, ", limit, ")");
  return j.get<int64_t>();
}

constexpr int64_t kMaxTokenId = int64_t{1} << 24;

struct PairHash {
  size_t operator()(const std::pair<std::string, std::string>& p) const {
    return std::hash<std::string>()(p.first) * 1000003u ^ std::hash<std::string>()(p.second);
  }
};

std::string type_of(const json& j, const std::string& where) {
  MOEKIT_CHECK_ARG(j.is_object() && j.contains("type") && j["type"].is_string(), where, ": no \"type\"");
  return j["type"].get<std::string>();
}

}  // namespace

struct HfTokenizer::Impl {
  std::string path;
  std::unordered_map<std::string, int64_t> vocab;
  std::vector<std::string> tokens;  // by id
  std::vector<bool> special;        // by id
  std::unordered_map<std::pair<std::string, std::string>, int64_t, PairHash> merge_rank;

  struct Added {
    std::string content;
    int64_t id;
    bool lstrip, rstrip;
  };
  std::vector<Added> added;  // longest first

  struct Normalizer {
    std::string type, a, b;  // Prepend: a; Replace: a -> b
  };
  std::vector<Normalizer> normalizers;

  struct PreTokenizer {
    std::string type;  // Split | ByteLevel | Metaspace
    std::shared_ptr<Regex> regex;
    std::string behavior;        // Split: Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous
    bool add_prefix_space = false;
    std::string replacement;     // Metaspace: the character spaces become ("▁")
    std::string prepend_scheme;  // Metaspace: always | first | never
  };
  std::vector<PreTokenizer> pre_tokenizers;
  bool byte_level = false;

  std::string unk_token;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;

  std::vector<int64_t> prefix, suffix;  // the template around a single sequence

  struct Decoder {
    std::string type, a, b;  // Metaspace: a = replacement, b = prepend_scheme
    int start = 0, stop = 0;
  };
  std::vector<Decoder> decoders;

  int64_t bos = -1, eos = -1;
  bool clean_up_spaces = false;  // tokenizer_config.json's clean_up_tokenization_spaces

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache;

  std::string where(const std::string& part) const { return path + ": " + part; }

  // Sequences within sequences, as deep as serde_json (which reads the file
  // for Hugging Face's library) allows: its 128 levels of nesting hold
  // fewer than 64 Sequences. Deeper would recurse here without bound.
  void check_nesting(int depth, const std::string& part) const {
    MOEKIT_CHECK_ARG(depth < 64, where(part + " Sequences nested deeper than 64 levels"));
  }

  int64_t id(const std::string& token) const {
    const auto it = vocab.find(token);
    return it == vocab.end() ? -1 : it->second;
  }

  void read_normalizer(const json& n, int depth = 0) {
    if (n.is_null()) return;
    check_nesting(depth, "normalizer");
    const std::string type = type_of(n, where("normalizer"));
    if (type == "Sequence") {
      for (const json& child : n.at("normalizers")) read_normalizer(child, depth + 1);
    } else if (type == "Prepend") {
      normalizers.push_back({type, n.at("prepend").get<std::string>(), ""});
    } else if (type == "Replace") {
      MOEKIT_CHECK_ARG(n.at("pattern").contains("String"), where("normalizer Replace with a regex is not supported"));
      normalizers.push_back({type, n["pattern"]["String"].get<std::string>(), n.at("content").get<std::string>()});
    } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
      normalizers.push_back({type, "", ""});
    } else {
      throw std::invalid_argument(
          where("normalizer \"" + type + "\" is not supported (Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD)"));
    }
  }

  void read_pre_tokenizer(const json& p, int depth = 0) {
    if (p.is_null()) return;
    check_nesting(depth, "pre_tokenizer");
    const std::string type = type_of(p, where("pre_tokenizer"));
    if (type == "Sequence") {
      for (const json& child : p.at("pretokenizers")) read_pre_tokenizer(child, depth + 1);
    } else if (type == "Split") {
      MOEKIT_CHECK_ARG(!p.value("invert", false), where("pre_tokenizer Split with invert is not supported"));
      const std::string behavior = p.at("behavior").get<std::string>();
      MOEKIT_CHECK_ARG(behavior == "Isolated" || behavior == "Removed" || behavior == "MergedWithPrevious" ||
                           behavior == "MergedWithNext" || behavior == "Contiguous",
                       where("pre_tokenizer Split behavior \"" + behavior +
                             "\" is not supported (Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous)"));
      const json& pattern = p.at("pattern");
      std::string regex;
      if (pattern.contains("Regex")) {
        regex = pattern["Regex"].get<std::string>();
      } else {
        // A literal string: quoted for PCRE2.
        regex = "\\Q" + pattern.at("String").get<std::string>() + "\\E";
      }
      PreTokenizer t{type, std::make_shared<Regex>(regex, where("pre_tokenizer Split")), behavior, false, "", ""};
      pre_tokenizers.push_back(std::move(t));
    } else if (type == "ByteLevel") {
      PreTokenizer t{type, nullptr, "Isolated", p.value("add_prefix_space", false), "", ""};
      if (p.value("use_regex", true)) t.regex = std::make_shared<Regex>(kGpt2Pattern, where("ByteLevel"));
      pre_tokenizers.push_back(std::move(t));
      byte_level = true;
    } else if (type == "Metaspace") {
      PreTokenizer t{type, nullptr, "MergedWithNext", false, "", ""};
      t.replacement = metaspace_replacement(p, "pre_tokenizer");
      t.prepend_scheme = metaspace_prepend_scheme(p, "pre_tokenizer");
      // split (default true): words cut before each replacement character.
      if (p.value("split", true)) t.regex = std::make_shared<Regex>("\\Q" + t.replacement + "\\E", where("Metaspace"));
      pre_tokenizers.push_back(std::move(t));
    } else {
      throw std::invalid_argument(
          where("pre_tokenizer \"" + type + "\" is not supported (Sequence, Split, ByteLevel, Metaspace)"));
    }
  }

  // Metaspace's fields, in the tokenizers library's current form and its
  // older one (add_prefix_space instead of prepend_scheme).
  std::string metaspace_replacement(const json& j, const std::string& part) const {
    const std::string r = j.value("replacement", std::string("\xe2\x96\x81"));
    MOEKIT_CHECK_ARG(utf8_chars(r).size() == 1, where(part + " Metaspace replacement must be one character"));
    return r;
  }
  std::string metaspace_prepend_scheme(const json& j, const std::string& part) const {
    if (!j.contains("prepend_scheme")) return j.value("add_prefix_space", true) ? "always" : "never";
    const std::string scheme = j["prepend_scheme"].get<std::string>();
    MOEKIT_CHECK_ARG(scheme == "always" || scheme == "first" || scheme == "never",
                     where(part + " Metaspace prepend_scheme \"" + scheme + "\" is not always, first or never"));
    return scheme;
  }

  void read_post_processor(const json& p, int depth = 0) {
    if (p.is_null()) return;
    check_nesting(depth, "post_processor");
    const std::string type = type_of(p, where("post_processor"));
    if (type == "Sequence") {
      for (const json& child : p.at("processors")) read_post_processor(child, depth + 1);
    } else if (type == "ByteLevel") {
      // Offsets only; the ids are unchanged.
    } else if (type == "TemplateProcessing") {
      bool seen_sequence = false;
      for (const json& piece : p.at("single")) {
        if (piece.contains("Sequence")) {
          seen_sequence = true;
          continue;
        }
        const std::string name = piece.at("SpecialToken").at("id").get<std::string>();
        const json& specials = p.at("special_tokens");
        MOEKIT_CHECK_ARG(specials.contains(name), where("post_processor names \"" + name + "\" without its ids"));
        for (const json& i : specials[name].at("ids"))
          (seen_sequence ? suffix : prefix).push_back(index_field(i, kMaxTokenId, where("post_processor id")));
      }
    } else {
      throw std::invalid_argument(
          where("post_processor \"" + type + "\" is not supported (Sequence, ByteLevel, TemplateProcessing)"));
    }
  }

  void read_decoder(const json& d, int depth = 0) {
    if (d.is_null()) return;
    check_nesting(depth, "decoder");
    const std::string type = type_of(d, where("decoder"));
    if (type == "Sequence") {
      for (const json& child : d.at("decoders")) read_decoder(child, depth + 1);
    } else if (type == "ByteLevel" || type == "ByteFallback" || type == "Fuse") {
      decoders.push_back({type, "", "", 0, 0});
    } else if (type == "Replace") {
      MOEKIT_CHECK_ARG(d.at("pattern").contains("String"), where("decoder Replace with a regex is not supported"));
      decoders.push_back({type, d["pattern"]["String"].get<std::string>(), d.at("content").get<std::string>(), 0, 0});
    } else if (type == "Strip") {
      // The library's Strip takes one character and removes at most start
      // / stop of them from each end.
      const std::string content = d.at("content").get<std::string>();
      MOEKIT_CHECK_ARG(utf8_chars(content).size() == 1, where("decoder Strip content must be one character"));
      auto count = [&](const char* key) {
        return d.contains(key) ? static_cast<int>(index_field(d[key], 1 << 20, where(std::string("decoder Strip ") + key)))
                               : 0;
      };
      decoders.push_back({type, content, "", count("start"), count("stop")});
    } else if (type == "Metaspace") {
      decoders.push_back({type, metaspace_replacement(d, "decoder"), metaspace_prepend_scheme(d, "decoder"), 0, 0});
    } else {
      throw std::invalid_argument(where("decoder \"" + type +
                                        "\" is not supported (Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, "
                                        "Metaspace)"));
    }
  }

  void read_model(const json& m) {
    const std::string type = type_of(m, where("model"));
    MOEKIT_CHECK_ARG(type == "BPE", where("model \"" + type + "\" is not supported (BPE)"));
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      MOEKIT_CHECK_ARG(field_or_null(m, key).is_null() || m[key] == "",
                       where(std::string("BPE ") + key + " is not supported"));
    MOEKIT_CHECK_ARG(field_or_null(m, "dropout").is_null() || m["dropout"] == 0, where("BPE dropout is not supported"));
    unk_token = field_or_null(m, "unk_token").is_string() ? m["unk_token"].get<std::string>() : "";
    byte_fallback = m.value("byte_fallback", false);
    fuse_unk = m.value("fuse_unk", false);
    ignore_merges = m.value("ignore_merges", false);
    for (const auto& [token, i] : m.at("vocab").items()) vocab[token] = index_field(i, kMaxTokenId, where("vocabulary id"));
    int64_t rank = 0;
    for (const json& merge : m.at("merges")) {
      std::pair<std::string, std::string> pair;
      if (merge.is_string()) {  // "a b"
        const std::string s = merge.get<std::string>();
        const size_t space = s.find(' ');
        MOEKIT_CHECK_ARG(space != std::string::npos, where("merge " + std::to_string(rank) + " is not \"a b\""));
        pair = {s.substr(0, space), s.substr(space + 1)};
      } else {  // ["a", "b"]
        MOEKIT_CHECK_ARG(merge.is_array() && merge.size() == 2, where("merge " + std::to_string(rank) + " is not a pair"));
        pair = {merge[0].get<std::string>(), merge[1].get<std::string>()};
      }
      merge_rank.emplace(std::move(pair), rank++);
    }
  }

  // Splits `text` at added tokens: (text, -1) pieces and (content, id) ones.
  std::vector<std::pair<std::string, int64_t>> split_added(const std::string& text) const {
    std::vector<std::pair<std::string, int64_t>> out;
    size_t pos = 0;
    while (pos < text.size()) {
      size_t best = std::string::npos;
      const Added* found = nullptr;
      for (const Added& a : added) {  // longest first: the first found at a position wins
        const size_t at = text.find(a.content, pos);
        if (at < best) {
          best = at;
          found = &a;
        }
      }
      if (!found) break;
      size_t begin = best, end = best + found->content.size();
      if (found->lstrip)
        while (begin > pos && std::isspace(static_cast<unsigned char>(text[begin - 1]))) --begin;
      if (found->rstrip)
        while (end < text.size() && std::isspace(static_cast<unsigned char>(text[end]))) ++end;
      if (begin > pos) out.emplace_back(text.substr(pos, begin - pos), -1);
      out.emplace_back(found->content, found->id);
      pos = end;
    }
    if (pos < text.size()) out.emplace_back(text.substr(pos), -1);
    return out;
  }

  std::string normalize(std::string s) const {
    for (const Normalizer& n : normalizers) {
      if (n.type == "Prepend") {
        if (!s.empty()) s = n.a + s;
      } else if (n.type == "Replace") {
        s = replace_all(s, n.a, n.b);
      } else {
        s = unicode_normalize(s, n.type);
      }
    }
    return s;
  }

  // The pieces a Split makes of `text`, as the tokenizers library's
  // SplitDelimiterBehavior does: the text cut into non-matches and matches,
  // then matches dropped (Removed), kept alone (Isolated), joined to the
  // piece before (MergedWithPrevious) or after (MergedWithNext), or runs of
  // either kind joined (Contiguous).
  static std::vector<std::pair<size_t, size_t>> split_segments(const std::string& text, const Regex& regex,
                                                               const std::string& behavior) {
    struct Segment {
      size_t begin, end;
      bool match;
    };
    std::vector<Segment> segments;
    size_t last = 0;
    for (const auto& [b, e] : regex.matches(text)) {
      if (b > last) segments.push_back({last, b, false});
      segments.push_back({b, e, true});
      last = e;
    }
    if (last < text.size()) segments.push_back({last, text.size(), false});
    std::vector<std::pair<size_t, size_t>> out;
    if (behavior == "MergedWithNext") {
      bool previous_match = false;  // walking backwards: the segment after this one
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        if (it->match && !previous_match && !out.empty()) {
          out.back().first = it->begin;
        } else {
          out.emplace_back(it->begin, it->end);
        }
        previous_match = it->match;
      }
      std::reverse(out.begin(), out.end());
      return out;
    }
    bool previous_match = false;
    for (const Segment& seg : segments) {
      const bool merge = behavior == "MergedWithPrevious" ? seg.match && !previous_match
                         : behavior == "Contiguous"       ? seg.match == previous_match
                                                          : false;
      if (behavior == "Removed" && seg.match) {
        // dropped
      } else if (merge && !out.empty()) {
        out.back().second = seg.end;
      } else {
        out.emplace_back(seg.begin, seg.end);
      }
      previous_match = seg.match;
    }
    return out;
  }

  // The pre-tokens of `s`; `at_start`: s begins the text (not after an
  // added token), where Metaspace's prepend_scheme "first" prepends.
  std::vector<std::string> pre_tokenize(const std::string& s, bool at_start) const {
    struct Piece {
      std::string text;
      bool at_start;
    };
    std::vector<Piece> pieces = {{s, at_start}};
    for (const PreTokenizer& p : pre_tokenizers) {
      std::vector<Piece> next;
      for (Piece& in : pieces) {
        std::string piece = std::move(in.text);
        if (p.type == "ByteLevel" && p.add_prefix_space && !piece.empty() && piece[0] != ' ') piece = " " + piece;
        if (p.type == "Metaspace") {
          // As the tokenizers library: spaces become the replacement, which
          // is prepended where the scheme says and the piece lacks it.
          piece = replace_all(piece, " ", p.replacement);
          if (piece.compare(0, p.replacement.size(), p.replacement) != 0 &&
              (p.prepend_scheme == "always" || (p.prepend_scheme == "first" && in.at_start)))
            piece = p.replacement + piece;
        }
        std::vector<std::pair<size_t, size_t>> parts;
        if (p.regex) {
          parts = split_segments(piece, *p.regex, p.behavior);
        } else {
          parts.emplace_back(0, piece.size());
        }
        for (const auto& [b, e] : parts) {
          std::string part = piece.substr(b, e - b);
          if (p.type == "ByteLevel") {
            std::string mapped;
            for (unsigned char c : part) mapped += byte_alphabet().to_char[c];
            part = std::move(mapped);
          }
          if (!part.empty()) next.push_back({std::move(part), in.at_start && b == 0});
        }
      }
      pieces = std::move(next);
    }
    std::vector<std::string> out;
    out.reserve(pieces.size());
    for (Piece& p : pieces) out.push_back(std::move(p.text));
    return out;
  }

  // BPE of one pre-token: characters (or their bytes) merged lowest rank
  // first, leftmost among equals, as the tokenizers library does.
  std::vector<int64_t> bpe(const std::string& word) const {
    if (ignore_merges) {
      const int64_t whole = id(word);
      if (whole >= 0) return {whole};
    }
    struct Symbol {
      std::string text;
      int prev, next;
      bool alive;
    };
    std::vector<Symbol> symbols;
    std::vector<int64_t> fixed;  // id of a symbol that is a byte fallback or unknown (-2: regular)
    const int64_t unk = unk_token.empty() ? -1 : id(unk_token);
    for (const std::string& c : utf8_chars(word)) {
      if (id(c) >= 0) {
        symbols.push_back({c, 0, 0, true});
        fixed.push_back(-2);
        continue;
      }
      bool fell_back = false;
      if (byte_fallback) {
        std::vector<int64_t> bytes;
        for (unsigned char b : c) {
          char name[8];
          std::snprintf(name, sizeof name, "<0x%02X>", b);
          bytes.push_back(id(name));
        }
        if (std::all_of(bytes.begin(), bytes.end(), [](int64_t i) { return i >= 0; })) {
          for (int64_t i : bytes) {
            symbols.push_back({tokens[static_cast<size_t>(i)], 0, 0, true});
            fixed.push_back(i);
          }
          fell_back = true;
        }
      }
      if (fell_back || unk < 0) continue;  // no unknown token: the character is dropped
      if (fuse_unk && !fixed.empty() && fixed.back() == unk && symbols.back().text == unk_token) continue;
      symbols.push_back({unk_token, 0, 0, true});
      fixed.push_back(unk);
    }
    const int n = static_cast<int>(symbols.size());
    for (int i = 0; i < n; ++i) {
      symbols[i].prev = i - 1;
      symbols[i].next = i + 1 < n ? i + 1 : -1;
    }
    using Candidate = std::pair<int64_t, int>;  // (rank, left symbol)
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    auto rank_of = [&](int left) -> int64_t {
      const int right = symbols[left].next;
      if (right < 0 || fixed[left] == unk || fixed[right] == unk) return -1;
      const auto it = merge_rank.find({symbols[left].text, symbols[right].text});
      if (it == merge_rank.end() || id(symbols[left].text + symbols[right].text) < 0) return -1;
      return it->second;
    };
    for (int i = 0; i + 1 < n; ++i) {
      const int64_t r = rank_of(i);
      if (r >= 0) queue.push({r, i});
    }
    while (!queue.empty()) {
      const auto [rank, left] = queue.top();
      queue.pop();
      if (!symbols[left].alive || rank_of(left) != rank) continue;  // stale
      const int right = symbols[left].next;
      symbols[left].text += symbols[right].text;
      fixed[left] = -2;
      symbols[right].alive = false;
      symbols[left].next = symbols[right].next;
      if (symbols[right].next >= 0) symbols[symbols[right].next].prev = left;
      if (symbols[left].prev >= 0) {
        const int64_t r = rank_of(symbols[left].prev);
        if (r >= 0) queue.push({r, symbols[left].prev});
      }
      const int64_t r = rank_of(left);
      if (r >= 0) queue.push({r, left});
    }
    std::vector<int64_t> ids;
    for (int i = n > 0 ? 0 : -1; i >= 0; i = symbols[i].next)  // the first symbol is never merged away
      ids.push_back(fixed[i] != -2 ? fixed[i] : id(symbols[i].text));
    return ids;
  }

  std::vector<int64_t> bpe_cached(const std::string& word) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      const auto it = cache.find(word);
      if (it != cache.end()) return it->second;
    }
    std::vector<int64_t> ids = bpe(word);
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() > 100000) cache.clear();
    cache.emplace(word, ids);
    return ids;
  }
};

HfTokenizer::HfTokenizer(const std::string& path) {
  auto impl = std::make_shared<Impl>();
  Impl& m = *impl;
  m.path = path;
  MOEKIT_CHECK_ARG(path_exists(path), path, ": no such file");
  check_regular_file(path, "a tokenizer.json");
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw std::invalid_argument(path + ": not a tokenizer.json (" + json_error_reason(e) + ")");
  }
  MOEKIT_CHECK_ARG(j.is_object() && j.contains("model"), path, ": not a tokenizer.json (no \"model\")");
  try {
    m.read_model(j["model"]);
    m.read_normalizer(field_or_null(j, "normalizer"));
    m.read_pre_tokenizer(field_or_null(j, "pre_tokenizer"));
    m.read_post_processor(field_or_null(j, "post_processor"));
    m.read_decoder(field_or_null(j, "decoder"));
    std::vector<std::pair<std::string, int64_t>> specials;
    for (const json& a : field_or_null(j, "added_tokens")) {
      Impl::Added added{a.at("content").get<std::string>(), index_field(a.at("id"), kMaxTokenId, path + ": added token id"),
                        a.value("lstrip", false), a.value("rstrip", false)};
      MOEKIT_CHECK_ARG(!added.content.empty(), path, ": added token ", added.id, " is empty");
      m.vocab[added.content] = added.id;
      if (a.value("special", false)) specials.emplace_back(added.content, added.id);
      m.added.push_back(std::move(added));
    }
    std::stable_sort(m.added.begin(), m.added.end(),
                     [](const Impl::Added& a, const Impl::Added& b) { return a.content.size() > b.content.size(); });
    int64_t size = 0;
    for (const auto& [token, i] : m.vocab) size = std::max(size, i + 1);
    m.tokens.assign(static_cast<size_t>(size), "");
    m.special.assign(static_cast<size_t>(size), false);
    for (const auto& [token, i] : m.vocab) m.tokens[static_cast<size_t>(i)] = token;
    for (const auto& [token, i] : specials) m.special[static_cast<size_t>(i)] = true;
    for (int64_t i : m.prefix) MOEKIT_CHECK_ARG(i >= 0 && i < size, path, ": post_processor id ", i, " out of range");
    for (int64_t i : m.suffix) MOEKIT_CHECK_ARG(i >= 0 && i < size, path, ": post_processor id ", i, " out of range");
  } catch (const json::exception& e) {
    throw std::invalid_argument(path + ": malformed tokenizer.json (" + json_error_reason(e) + ")");
  }
  // BOS / EOS: tokenizer_config.json beside it, else the usual names.
  const std::string config_path = (std::filesystem::path(path).parent_path() / "tokenizer_config.json").string();
  auto name_of = [](const json& v) -> std::string {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
    return "";
  };
  std::string bos_name, eos_name;
  bool bos_named = false, eos_named = false;  // the config names them, possibly as null (none)
  if (path_exists(config_path)) {
    try {
      const json c = json::parse(read_file(config_path));
      const json& clean = field_or_null(c, "clean_up_tokenization_spaces");
      m.clean_up_spaces = clean.is_boolean() && clean.get<bool>();
      bos_name = name_of(field_or_null(c, "bos_token"));
      eos_name = name_of(field_or_null(c, "eos_token"));
      bos_named = c.is_object() && c.contains("bos_token");
      eos_named = c.is_object() && c.contains("eos_token");
    } catch (const json::exception& e) {
      throw std::invalid_argument(config_path + ": not JSON (" + json_error_reason(e) + ")");
    }
  }
  auto first_of = [&](std::initializer_list<std::string> names) -> int64_t {
    for (const std::string& n : names)
      if (!n.empty() && m.id(n) >= 0) return m.id(n);
    return -1;
  };
  // A config that names them decides, null meaning none (Qwen3 has no BOS,
  // though "<s>" is an ordinary token of its vocabulary); else the usual names.
  m.bos = bos_named ? first_of({bos_name}) : first_of({"<s>", "<|begin_of_text|>"});
  m.eos = eos_named ? first_of({eos_name}) : first_of({"</s>", "<|end_of_text|>", "<|endoftext|>"});
  impl_ = std::move(impl);
}

std::vector<int64_t> HfTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  const Impl& m = *impl_;
  // The regexes run in UTF mode without re-checking the subject.
  MOEKIT_CHECK_ARG(is_valid_utf8(text), "tokenizer: the text is not valid UTF-8");
  std::vector<int64_t> ids;
  if (add_special_tokens) ids = m.prefix;
  bool at_start = true;  // the piece begins the text
  for (const auto& [piece, special] : m.split_added(text)) {
    if (special >= 0) {
      ids.push_back(special);
      at_start = false;
      continue;
    }
    const bool first = at_start;
    at_start = false;
    for (const std::string& word : m.pre_tokenize(m.normalize(piece), first)) {
      const std::vector<int64_t> w = m.bpe_cached(word);
      ids.insert(ids.end(), w.begin(), w.end());
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), m.suffix.begin(), m.suffix.end());
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens,
                                std::optional<bool> clean_up_spaces) const {
  const Impl& m = *impl_;
  std::vector<std::string> pieces;
  for (int64_t i : ids) {
    MOEKIT_CHECK_ARG(i >= 0 && i < vocab_size(), "decode: id ", i, " outside the vocabulary of ", vocab_size());
    if (skip_special_tokens && m.special[static_cast<size_t>(i)]) continue;
    pieces.push_back(m.tokens[static_cast<size_t>(i)]);
  }
  for (const Impl::Decoder& d : m.decoders) {
    if (d.type == "ByteLevel") {
      // Each token's characters back to bytes (characters outside the
      // alphabet, as in added tokens, stay as they are).
      for (std::string& p : pieces) {
        std::string bytes;
        for (const std::string& c : utf8_chars(p)) {
          const auto it = byte_alphabet().to_byte.find(c);
          if (it != byte_alphabet().to_byte.end()) {
            bytes += static_cast<char>(it->second);
          } else {
            bytes += c;
          }
        }
        p = std::move(bytes);
      }
    } else if (d.type == "Replace") {
      for (std::string& p : pieces) p = replace_all(p, d.a, d.b);
    } else if (d.type == "Metaspace") {
      // As the tokenizers library: the replacement back to spaces, except
      // in the first token, where it was prepended (unless never).
      for (size_t i = 0; i < pieces.size(); ++i)
        pieces[i] = replace_all(pieces[i], d.a, i == 0 && d.b != "never" ? "" : " ");
    } else if (d.type == "ByteFallback") {
      // Runs of <0xNN> tokens become their bytes when those are valid
      // UTF-8, else one U+FFFD per byte.
      std::vector<std::string> out;
      std::string run;
      size_t run_count = 0;
      auto flush = [&] {
        if (run_count == 0) return;
        if (is_valid_utf8(run)) {
          out.push_back(run);
        } else {
          for (size_t k = 0; k < run_count; ++k) out.push_back("\xef\xbf\xbd");
        }
        run.clear();
        run_count = 0;
      };
      for (const std::string& p : pieces) {
        unsigned value = 0;
        if (p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>' &&
            std::sscanf(p.c_str() + 3, "%2x", &value) == 1) {
          run += static_cast<char>(value);
          ++run_count;
        } else {
          flush();
          out.push_back(p);
        }
      }
      flush();
      pieces = std::move(out);
    } else if (d.type == "Fuse") {
      std::string all;
      for (const std::string& p : pieces) all += p;
      pieces = {all};
    } else if (d.type == "Strip") {
      for (std::string& p : pieces) {
        for (int k = 0; k < d.start && p.compare(0, d.a.size(), d.a) == 0 && !p.empty(); ++k) p.erase(0, d.a.size());
        for (int k = 0; k < d.stop && p.size() >= d.a.size() && p.compare(p.size() - d.a.size(), d.a.size(), d.a) == 0;
             ++k)
          p.erase(p.size() - d.a.size());
      }
    }
  }
  std::string text;
  for (const std::string& p : pieces) text += p;
  if (clean_up_spaces.value_or(m.clean_up_spaces)) {
    // transformers' clean_up_tokenization: no space before punctuation and
    // English contractions.
    static const std::pair<const char*, const char*> kRules[] = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
        {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (const auto& [from, to] : kRules) text = replace_all(text, from, to);
  }
  return text;
}

int64_t HfTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->tokens.size()); }
int64_t HfTokenizer::bos_id() const { return impl_->bos; }
int64_t HfTokenizer::eos_id() const { return impl_->eos; }
int64_t HfTokenizer::id_of(const std::string& token) const { return impl_->id(token); }
const std::string& HfTokenizer::token(int64_t id) const {
  MOEKIT_CHECK_ARG(id >= 0 && id < vocab_size(), "token: id ", id, " outside the vocabulary of ", vocab_size());
  return impl_->tokens[static_cast<size_t>(id)];
}

}  // namespace moekit
