#include "moekit/data/asr_data.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/json_error.h"
#include "moekit/core/utf8.h"

namespace moekit {

namespace {

const std::string kBoundary = "\xe2\x96\x81";  // ▁

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  const size_t b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

std::vector<Utterance> read_data_list(const std::string& path) {
  std::istringstream in(read_file(path));
  std::string line;
  std::vector<Utterance> out;
  int line_no = 0;
  const std::string base = parent_dir(path);
  while (std::getline(in, line)) {
    ++line_no;
    if (trim(line).empty()) continue;
    try {
      const auto j = nlohmann::json::parse(line);
      Utterance u{j.at("key").get<std::string>(), j.at("wav").get<std::string>(), j.at("txt").get<std::string>()};
      MOEKIT_CHECK_ARG(!u.key.empty() && !u.wav.empty(), path, ":", line_no, ": empty ", u.key.empty() ? "key" : "wav");
      if (u.wav[0] != '/') u.wav = base + "/" + u.wav;
      out.push_back(std::move(u));
    } catch (const nlohmann::json::exception& e) {
      throw std::invalid_argument(str_cat(path, ":", line_no, ": not a data.list line with key, wav, txt (",
                                          json_error_reason(e), ")"));
    }
  }
  return out;
}

// A Kaldi table ("key value" lines). Each key once, as Kaldi's
// validate_data_dir.sh requires: a second transcript for an utterance would
// otherwise replace the first without a word. Values must be UTF-8 (JSON
// data.list lines are checked by the JSON parser).
std::vector<std::pair<std::string, std::string>> read_kaldi_table(const std::string& path) {
  std::istringstream in(read_file(path));
  std::string line;
  std::vector<std::pair<std::string, std::string>> out;
  std::map<std::string, int> first_line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    line = trim(line);
    if (line.empty()) continue;
    MOEKIT_CHECK_ARG(is_valid_utf8(line), path, ":", line_no, ": invalid UTF-8");
    const size_t space = line.find_first_of(" \t");
    std::string key = line.substr(0, space);
    const std::string value = space == std::string::npos ? "" : trim(line.substr(space));
    const auto [it, added] = first_line.emplace(key, line_no);
    MOEKIT_CHECK_ARG(added, path, ":", line_no, ": utterance ", key, " was already given on line ", it->second);
    out.emplace_back(std::move(key), value);
  }
  return out;
}

std::vector<Utterance> read_kaldi_dir(const std::string& dir) {
  const std::string scp = dir + "/wav.scp", text = dir + "/text";
  MOEKIT_CHECK_ARG(path_exists(scp) && path_exists(text), dir, ": a Kaldi data directory needs wav.scp and text");
  std::map<std::string, std::string> transcripts;
  for (auto& [key, value] : read_kaldi_table(text)) transcripts[key] = value;
  std::vector<Utterance> out;
  for (auto& [key, value] : read_kaldi_table(scp)) {
    MOEKIT_CHECK_ARG(!value.empty() && value.back() != '|', scp, ": utterance ", key,
                     ": piped commands are not supported, give a file path");
    auto it = transcripts.find(key);
    MOEKIT_CHECK_ARG(it != transcripts.end(), text, ": no transcript for utterance ", key);
    out.push_back({key, value, it->second});
  }
  return out;
}

}  // namespace

std::vector<Utterance> read_asr_data(const std::string& path) {
  MOEKIT_CHECK_ARG(path_exists(path), path, ": no such data list or directory");
  std::vector<Utterance> data = is_directory(path) ? read_kaldi_dir(path) : read_data_list(path);
  MOEKIT_CHECK_ARG(!data.empty(), path, ": no utterances");
  std::set<std::string> keys;
  for (const auto& u : data) MOEKIT_CHECK_ARG(keys.insert(u.key).second, path, ": utterance key ", u.key, " appears twice");
  return data;
}

std::vector<std::string> text_to_chars(const std::string& text) {
  std::vector<std::string> out;
  bool boundary = false;  // white space seen since the last character
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (n == 1 && std::isspace(c)) {  // ASCII white space: a units.txt line could not hold it
      boundary = true;
      ++i;
      continue;
    }
    if (boundary && !out.empty() && out.back() != kBoundary) out.push_back(kBoundary);
    boundary = false;
    out.push_back(text.substr(i, n));
    i += n;
  }
  return out;
}

Units build_char_units(const std::vector<Utterance>& data) {
  std::set<std::string> chars;
  for (const auto& u : data)
    for (auto& c : text_to_chars(u.text)) chars.insert(c);
  std::vector<std::string> symbols = {"<blank>", "<unk>"};
  symbols.insert(symbols.end(), chars.begin(), chars.end());
  symbols.push_back("<sos/eos>");
  return Units(symbols);
}

std::vector<int64_t> tokenize(const std::string& text, const Units& units, const std::string& where) {
  std::vector<int64_t> ids;
  const int64_t unk = units.unk_id();
  for (const auto& c : text_to_chars(text)) {
    int64_t id = units.id(c);
    if (id < 0) {
      MOEKIT_CHECK_ARG(unk >= 0, where, ": character '", c, "' has no unit and the units have no <unk>");
      id = unk;
    }
    ids.push_back(id);
  }
  return ids;
}

}  // namespace moekit
