#pragma once
// File helpers. Every file MoEKit writes goes through write_file_atomic: the
// bytes land in a temporary file in the same directory, are fsync'ed, and the
// temporary is renamed over the target, so a reader never sees a partial file
// and a killed process leaves the previous version intact.
#include <string>
#include <string_view>
#include <vector>

namespace moekit {

// Writes `bytes` to `path` atomically (temp file + fsync + rename + dir fsync).
// Throws std::runtime_error naming the path and the OS error on failure.
void write_file_atomic(const std::string& path, std::string_view bytes);

// write_file_atomic for a file written in pieces (a checkpoint shard larger
// than memory): write() appends to the temporary, commit() fsyncs it and
// renames it into place; destroyed before commit(), the temporary is removed
// and the target left as it was.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(std::string_view bytes);
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_, temporary_;
  int fd_ = -1;
};

// Throws std::invalid_argument unless `path` names a regular file (symlinks
// followed): a directory, FIFO, socket or device is refused before it is
// opened, so a FIFO in place of a model file cannot block the process.
// `what` names the expected kind in the message ("a safetensors file").
void check_regular_file(const std::string& path, const std::string& what = "a file");

// Throws std::invalid_argument unless `path`, with every symlink resolved,
// is a regular file inside `dir` (also resolved): a file of a model
// directory symlinked to /etc/passwd or another tree is refused, not read.
void check_inside_dir(const std::string& path, const std::string& dir);

// Reads a whole regular file. Throws std::invalid_argument naming the path if
// it is not a regular file or cannot be opened or read.
std::string read_file(const std::string& path);

// Creates a directory and its parents (no error if it exists).
void make_dirs(const std::string& path);

bool path_exists(const std::string& path);
bool is_directory(const std::string& path);

// Removes a file or a directory tree; no error if it does not exist.
void remove_path(const std::string& path);

// An output directory written as a whole. The writer fills path(), a fresh
// temporary sibling of the target (".<name>.tmp.XXXXXX"); commit() renames
// it into place. Until then the target is untouched, so a writer that fails
// or is killed leaves the previous output (or none), never old files mixed
// with new ones; an uncommitted temporary is removed by the destructor, and
// temporaries a killed writer left behind by the next writer of the target.
//
// An existing target is refused unless `force` (it is then replaced whole at
// commit). A target that is one of `inputs` or holds one is refused even
// with force: replacing it would destroy what is being read.
class OutputDir {
 public:
  OutputDir(std::string target, bool force, const std::vector<std::string>& inputs = {});
  ~OutputDir();
  OutputDir(const OutputDir&) = delete;
  OutputDir& operator=(const OutputDir&) = delete;

  const std::string& path() const { return staging_; }
  const std::string& target() const { return target_; }
  void commit();

 private:
  std::string target_, staging_;
  bool force_ = false, committed_ = false;
};

}  // namespace moekit
