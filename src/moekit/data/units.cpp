#include "moekit/data/units.h"

#include <algorithm>
#include <cctype>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"

namespace moekit {

Units::Units(std::vector<std::string> symbols) : symbols_(std::move(symbols)) {
  for (size_t i = 0; i < symbols_.size(); ++i) ids_[symbols_[i]] = static_cast<int64_t>(i);
}

Units Units::parse(const std::string& text, const std::string& where) {
  std::istringstream in(text);
  std::string line;
  std::vector<std::string> symbols;
  std::vector<bool> seen;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    std::istringstream fields(line);
    std::string symbol, id_text, extra;
    fields >> symbol >> id_text;
    // Messages describe the line rather than quote it: a units.txt that is
    // really another file must not have its content echoed.
    MOEKIT_CHECK_ARG(!id_text.empty() && !(fields >> extra), where, ":", line_no,
                     ": expected '<unit> <id>' (two fields separated by white space)");
    int64_t id = -1;
    try {
      size_t used = 0;
      id = std::stoll(id_text, &used);
      MOEKIT_CHECK_ARG(used == id_text.size(), where, ":", line_no, ": the id is not an integer");
    } catch (const std::logic_error&) {
      throw std::invalid_argument(str_cat(where, ":", line_no, ": the id is not an integer"));
    }
    MOEKIT_CHECK_ARG(id >= 0 && id < 10000000, where, ":", line_no, ": id ", id, " out of range");
    if (static_cast<size_t>(id) >= symbols.size()) {
      symbols.resize(id + 1);
      seen.resize(id + 1, false);
    }
    MOEKIT_CHECK_ARG(!seen[id], where, ":", line_no, ": id ", id, " appears twice");
    seen[id] = true;
    symbols[id] = symbol;
  }
  MOEKIT_CHECK_ARG(!symbols.empty(), where, ": no units");
  for (size_t i = 0; i < seen.size(); ++i) MOEKIT_CHECK_ARG(seen[i], where, ": id ", i, " is missing");
  MOEKIT_CHECK_ARG(symbols[0] == "<blank>", where, ": id 0 must be <blank>");
  Units units(symbols);
  MOEKIT_CHECK_ARG(units.ids_.size() == symbols.size(), where, ": a unit appears twice");
  return units;
}

Units Units::read(const std::string& path) { return parse(read_file(path), path); }

std::string Units::serialize() const {
  std::string out;
  for (size_t i = 0; i < symbols_.size(); ++i) {
    const std::string& s = symbols_[i];
    // parse() splits lines at white space: such a unit could not be read back.
    MOEKIT_CHECK_ARG(!s.empty() && std::none_of(s.begin(), s.end(), [](char c) { return std::isspace(static_cast<unsigned char>(c)); }),
                     "units: unit ", i, " is empty or holds white space, which units.txt cannot store");
    out += s + " " + std::to_string(i) + "\n";
  }
  return out;
}

int64_t Units::id(const std::string& symbol) const {
  auto it = ids_.find(symbol);
  return it == ids_.end() ? -1 : it->second;
}

std::string Units::to_text(const std::vector<int64_t>& ids) const {
  static const std::string kBoundary = "\xe2\x96\x81";  // ▁
  std::string text;
  for (int64_t id : ids) {
    if (id < 0 || id >= size()) continue;
    const std::string& s = symbols_[id];
    if (s.size() > 2 && s.front() == '<' && s.back() == '>') continue;  // <blank>, <sos/eos>, <unk>...
    text += s;
  }
  std::string out;
  for (size_t pos = 0; pos < text.size();) {
    if (text.compare(pos, kBoundary.size(), kBoundary) == 0) {
      if (!out.empty() && out.back() != ' ') out += ' ';
      pos += kBoundary.size();
    } else {
      out += text[pos++];
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

}  // namespace moekit
