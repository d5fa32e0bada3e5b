#pragma once
// What went wrong in reading JSON, without the input's bytes: nlohmann's
// parse errors quote the text last read ("last read: 'root:x:0:0:'"), which
// would echo the content of whatever file was passed (or symlinked) into an
// error message.
#include <nlohmann/json.hpp>

#include <string>

#include "moekit/core/check.h"
#include "moekit/core/utf8.h"

namespace moekit {

// "syntax error at byte 17" for a parse error; otherwise the message
// without its "[json.exception.type_error.302] " prefix.
inline std::string json_error_reason(const nlohmann::json::exception& e) {
  if (const auto* p = dynamic_cast<const nlohmann::json::parse_error*>(&e))
    return str_cat("syntax error at byte ", p->byte);
  const std::string what = e.what();
  const size_t close = what.find("] ");
  return close == std::string::npos ? what : what.substr(close + 2);
}

// A JSON value quoted in an error message: a number, string, boolean or
// null as JSON writes it, cut between characters after max_bytes ("...");
// an array or object by its kind and size only. Serializing a whole value
// is never done: nlohmann's serializer recurses once per level, so a
// deeply nested value (a 1 MB message holds 500,000 levels) would overflow
// the stack.
inline std::string json_value_for_message(const nlohmann::json& v, size_t max_bytes = 40) {
  if (v.is_array()) return str_cat("an array of ", v.size(), " elements");
  if (v.is_object()) return str_cat("an object of ", v.size(), " fields");
  return printable(v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), max_bytes);
}

}  // namespace moekit
