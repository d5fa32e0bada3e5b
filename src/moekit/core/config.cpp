#include "moekit/core/config.h"

#include "moekit/core/file_io.h"

namespace moekit {

YAML::Node load_yaml_file(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw std::invalid_argument(str_cat(path, ": not valid YAML (line ", e.mark.line + 1, ": ", e.msg, ")"));
  }
}

void write_yaml_file(const std::string& path, const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  MOEKIT_CHECK(out.good(), "cannot serialize YAML for '", path, "': ", out.GetLastError());
  write_file_atomic(path, std::string(out.c_str()) + "\n");
}

}  // namespace moekit
