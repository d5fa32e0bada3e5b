#include "moekit/core/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "moekit/core/check.h"

namespace moekit {
namespace fs = std::filesystem;

namespace {

std::string os_error() { return std::strerror(errno); }

void write_all(int fd, std::string_view bytes, const std::string& path) {
  const char* data = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(fd, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(str_cat("cannot write '", path, "': ", os_error()));
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace

void write_file_atomic(const std::string& path, std::string_view bytes) {
  fs::path target(path);
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::string tmp_template = (dir / ("." + target.filename().string() + ".tmp.XXXXXX")).string();
  int fd = ::mkstemp(tmp_template.data());
  MOEKIT_CHECK(fd >= 0, "cannot create a temporary file next to '", path, "': ", os_error());
  try {
    write_all(fd, bytes, tmp_template);
    MOEKIT_CHECK(::fchmod(fd, 0644) == 0, "cannot chmod '", tmp_template, "': ", os_error());
    MOEKIT_CHECK(::fsync(fd) == 0, "cannot fsync '", tmp_template, "': ", os_error());
    MOEKIT_CHECK(::close(fd) == 0, "cannot close '", tmp_template, "': ", os_error());
    fd = -1;
    MOEKIT_CHECK(::rename(tmp_template.c_str(), path.c_str()) == 0, "cannot rename '", tmp_template,
                 "' to '", path, "': ", os_error());
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp_template.c_str());
    throw;
  }
  // Make the rename itself durable.
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

std::string read_file(const std::string& path) {
  MOEKIT_CHECK_ARG(!is_directory(path), "'", path, "' is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  MOEKIT_CHECK_ARG(in.good(), "cannot open '", path, "': ", os_error());
  std::ostringstream buffer;
  buffer << in.rdbuf();
  MOEKIT_CHECK_ARG(!in.bad(), "cannot read '", path, "'");
  return buffer.str();
}

void make_dirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  MOEKIT_CHECK(!ec, "cannot create directory '", path, "': ", ec.message());
}

bool path_exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(path, ec);
}

bool is_directory(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec);
}

}  // namespace moekit
