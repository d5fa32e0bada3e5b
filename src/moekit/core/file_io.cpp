#include "moekit/core/file_io.h"

#include <fcntl.h>
#include <ftw.h>
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

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  return ::remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

// Deletes `path` and, for a directory, everything under it (symbolic links
// are removed, never followed); a missing path is no error. Returns "" or
// why it failed. POSIX nftw, not std::filesystem::remove_all: CUDA builds
// of PyTorch export their own copy of remove_all from libtorch.so, a
// program linked against such a LibTorch binds to it, and it crashes there.
std::string remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT ? std::string() : os_error();
  if (!S_ISDIR(st.st_mode)) return ::unlink(path.c_str()) == 0 || errno == ENOENT ? std::string() : os_error();
  return ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? std::string() : os_error();
}

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

// `inner` is `outer` or lies inside it (both made absolute, symlinks resolved
// as far as they exist).
bool inside(const fs::path& inner, const fs::path& outer) {
  std::error_code ec;
  const fs::path a = fs::weakly_canonical(fs::absolute(inner), ec);
  const fs::path b = fs::weakly_canonical(fs::absolute(outer), ec);
  auto ai = a.begin();
  for (auto bi = b.begin(); bi != b.end(); ++bi, ++ai) {
    if (bi->empty()) continue;  // a trailing separator
    if (ai == a.end() || *ai != *bi) return false;
  }
  return true;
}

// A temporary sibling of `target` named ".<name>.<kind>.XXXXXX".
std::string make_sibling_dir(const fs::path& target, const std::string& kind) {
  std::string pattern = (target.parent_path() / ("." + target.filename().string() + "." + kind + ".XXXXXX")).string();
  MOEKIT_CHECK(::mkdtemp(pattern.data()) != nullptr, "cannot create a directory next to '", target.string(), "': ",
               os_error());
  return pattern;
}

// Makes the directory entry of a rename or new file durable.
void fsync_dir(const fs::path& dir) {
  int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)) {
  const fs::path target(path_);
  const fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  temporary_ = (dir / ("." + target.filename().string() + ".tmp.XXXXXX")).string();
  fd_ = ::mkstemp(temporary_.data());
  MOEKIT_CHECK(fd_ >= 0, "cannot create a temporary file next to '", path_, "': ", os_error());
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temporary_.c_str());
  }
}

void AtomicFileWriter::write(std::string_view bytes) {
  MOEKIT_CHECK(fd_ >= 0, "'", path_, "' was already committed");
  write_all(fd_, bytes, temporary_);
}

void AtomicFileWriter::commit() {
  MOEKIT_CHECK(fd_ >= 0, "'", path_, "' was already committed");
  MOEKIT_CHECK(::fchmod(fd_, 0644) == 0, "cannot chmod '", temporary_, "': ", os_error());
  MOEKIT_CHECK(::fsync(fd_) == 0, "cannot fsync '", temporary_, "': ", os_error());
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0 || ::rename(temporary_.c_str(), path_.c_str()) != 0) {
    const std::string reason = os_error();
    ::unlink(temporary_.c_str());
    throw std::runtime_error(str_cat("cannot write '", path_, "': ", reason));
  }
  fsync_dir(fs::path(path_).parent_path());  // the rename itself durable
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFileWriter file(path);
  file.write(bytes);
  file.commit();
}

void check_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw std::invalid_argument(str_cat(path, ": cannot open: ", os_error()));
  }
  if (S_ISREG(st.st_mode)) return;
  const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                     : S_ISFIFO(st.st_mode) ? "a FIFO"
                     : S_ISSOCK(st.st_mode) ? "a socket"
                     : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device"
                                                                  : "not a regular file";
  throw std::invalid_argument(str_cat(path, ": is ", kind, ", expected ", what));
}

void check_inside_dir(const std::string& path, const std::string& dir) {
  check_regular_file(path);
  std::error_code ec;
  const fs::path file = fs::canonical(path, ec);
  MOEKIT_CHECK_ARG(!ec, "cannot resolve '", path, "': ", ec.message());
  const fs::path root = fs::canonical(dir, ec);
  MOEKIT_CHECK_ARG(!ec, "cannot resolve '", dir, "': ", ec.message());
  MOEKIT_CHECK_ARG(inside(file, root), "'", path, "' leads outside '", dir,
                   "' (a symlink); copy the file itself into the directory");
}

std::string read_file(const std::string& path) {
  check_regular_file(path);
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

void remove_path(const std::string& path) {
  const std::string why = remove_tree(path);
  MOEKIT_CHECK(why.empty(), "cannot remove '", path, "': ", why);
}

OutputDir::OutputDir(std::string target, bool force, const std::vector<std::string>& inputs) : force_(force) {
  fs::path t = fs::path(target).lexically_normal();
  if (t.filename().empty()) t = t.parent_path();  // "out/" names "out"
  MOEKIT_CHECK_ARG(!t.empty() && t.filename() != "." && t.filename() != "..", "'", target,
                   "' cannot be an output directory");
  target_ = t.string();
  for (const std::string& input : inputs) {
    MOEKIT_CHECK_ARG(!inside(input, t), "output '", target, "' is or holds the input '", input,
                     "'; choose another output");
  }
  MOEKIT_CHECK_ARG(force || !path_exists(target_), "'", target_,
                   "' exists already; pass --force to replace it, or choose another output");
  const fs::path parent = t.parent_path().empty() ? fs::path(".") : t.parent_path();
  make_dirs(parent.string());
  // What a killed writer of this target left behind.
  const std::string prefix = "." + t.filename().string() + ".";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(parent, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix + "tmp.", 0) == 0 || name.rfind(prefix + "old.", 0) == 0) remove_tree(entry.path().string());
  }
  staging_ = make_sibling_dir(t.parent_path().empty() ? fs::path(".") / t : t, "tmp");
}

OutputDir::~OutputDir() {
  if (committed_) return;
  remove_tree(staging_);
}

void OutputDir::commit() {
  MOEKIT_CHECK(!committed_, "OutputDir: '", target_, "' committed twice");
  if (path_exists(target_)) {
    MOEKIT_CHECK(force_, "'", target_, "' appeared while it was being written");
    // Move the old output aside first: rename(2) does not replace a
    // non-empty directory.
    const std::string old = make_sibling_dir(fs::path(target_), "old");
    MOEKIT_CHECK(::rmdir(old.c_str()) == 0 && ::rename(target_.c_str(), old.c_str()) == 0, "cannot move '", target_,
                 "' aside: ", os_error());
    MOEKIT_CHECK(::rename(staging_.c_str(), target_.c_str()) == 0, "cannot rename '", staging_, "' to '", target_,
                 "': ", os_error());
    remove_path(old);
  } else {
    MOEKIT_CHECK(::rename(staging_.c_str(), target_.c_str()) == 0, "cannot rename '", staging_, "' to '", target_,
                 "': ", os_error());
  }
  committed_ = true;
  fsync_dir(fs::path(target_).parent_path());
}

}  // namespace moekit
