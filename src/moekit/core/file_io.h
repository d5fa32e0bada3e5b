#pragma once
// File helpers. Every file MoEKit writes goes through write_file_atomic: the
// bytes land in a temporary file in the same directory, are fsync'ed, and the
// temporary is renamed over the target, so a reader never sees a partial file
// and a killed process leaves the previous version intact.
#include <string>
#include <string_view>

namespace moekit {

// Writes `bytes` to `path` atomically (temp file + fsync + rename + dir fsync).
// Throws std::runtime_error naming the path and the OS error on failure.
void write_file_atomic(const std::string& path, std::string_view bytes);

// Reads a whole file. Throws std::invalid_argument naming the path if it cannot
// be opened or read.
std::string read_file(const std::string& path);

// Creates a directory and its parents (no error if it exists).
void make_dirs(const std::string& path);

bool path_exists(const std::string& path);
bool is_directory(const std::string& path);

}  // namespace moekit
