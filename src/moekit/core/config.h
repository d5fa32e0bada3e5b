#pragma once
// YAML access with errors that name the file and the field at fault.
#include <yaml-cpp/yaml.h>

#include <string>

#include "moekit/core/check.h"

namespace moekit {

// Loads a YAML file; throws std::invalid_argument naming the file on parse errors.
YAML::Node load_yaml_file(const std::string& path);
// The same on text; `where` names its source in errors.
YAML::Node parse_yaml_text(const std::string& text, const std::string& where);

// Serializes a node (block style) and writes it atomically.
void write_yaml_file(const std::string& path, const YAML::Node& node);

// Reads `node[key]` as T. `where` names the file/section for error messages.
template <typename T>
T yaml_get(const YAML::Node& node, const std::string& key, const std::string& where) {
  const YAML::Node value = node[key];
  MOEKIT_CHECK_ARG(value.IsDefined() && !value.IsNull(), where, ": missing field '", key, "'");
  try {
    return value.as<T>();
  } catch (const YAML::Exception&) {
    throw std::invalid_argument(
        str_cat(where, ": field '", key, "' has an invalid value '", YAML::Dump(value), "'"));
  }
}

// Same, with a default when the field is absent.
template <typename T>
T yaml_get_or(const YAML::Node& node, const std::string& key, const T& fallback,
              const std::string& where) {
  const YAML::Node value = node[key];
  if (!value.IsDefined() || value.IsNull()) return fallback;
  return yaml_get<T>(node, key, where);
}

}  // namespace moekit
