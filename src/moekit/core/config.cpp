#include "moekit/core/config.h"

#include <algorithm>
#include <vector>
#include <yaml-cpp/depthguard.h>

#include "moekit/core/fields.h"
#include "moekit/core/file_io.h"
#include "moekit/core/utf8.h"

namespace moekit {

YAML::Node load_yaml_file(const std::string& path) { return parse_yaml_text(read_file(path), path); }

YAML::Node parse_yaml_text(const std::string& text, const std::string& where) {
  try {
    return YAML::Load(text);
  } catch (const YAML::DeepRecursion& e) {
    // yaml-cpp stops at a fixed depth (the stack stays bounded) but says
    // only "bad file".
    throw std::invalid_argument(
        str_cat(where, ": not valid YAML (line ", e.mark.line + 1, ": nested too deeply, yaml-cpp's limit is ", e.depth(), " levels)"));
  } catch (const YAML::Exception& e) {
    throw std::invalid_argument(str_cat(where, ": not valid YAML (line ", e.mark.line + 1, ": ", e.msg, ")"));
  }
}

void write_yaml_file(const std::string& path, const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  MOEKIT_CHECK(out.good(), "cannot serialize YAML for '", path, "': ", out.GetLastError());
  write_file_atomic(path, std::string(out.c_str()) + "\n");
}

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitute = diagonal + (a[i - 1] == b[j - 1] ? 0 : 1);
      diagonal = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, substitute});
    }
  }
  return row[b.size()];
}

}  // namespace

std::string closest_name(const std::string& word, const std::vector<std::string>& candidates) {
  const size_t allowed = std::min<size_t>(3, std::max<size_t>(1, word.size() / 3));
  std::string best;
  size_t best_distance = allowed + 1;
  for (const std::string& c : candidates) {
    // The distance is at least the difference in length: a long word (a
    // key of megabytes in a hostile file) is compared with nothing.
    if ((word.size() > c.size() ? word.size() - c.size() : c.size() - word.size()) > allowed) continue;
    const size_t d = edit_distance(word, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  return best;
}

void check_known_keys(const YAML::Node& node, const std::vector<std::string>& known, const std::string& where) {
  if (!node.IsDefined() || node.IsNull()) return;
  MOEKIT_CHECK_ARG(node.IsMap(), where, " must be a mapping");
  for (const auto& kv : node) {
    const std::string key = kv.first.as<std::string>();
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    const std::string near = closest_name(key, known);
    throw std::invalid_argument(
        str_cat(where, ": unknown option '", printable(key), "'", near.empty() ? "" : str_cat(" (did you mean '", near, "'?)")));
  }
}

}  // namespace moekit
