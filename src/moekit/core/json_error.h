#pragma once
// What went wrong in reading JSON, without the input's bytes: nlohmann's
// parse errors quote the text last read ("last read: 'root:x:0:0:'"), which
// would echo the content of whatever file was passed (or symlinked) into an
// error message.
#include <nlohmann/json.hpp>

#include <string>

#include "moekit/core/check.h"

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

}  // namespace moekit
