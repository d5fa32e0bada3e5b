#pragma once
// A whole regular file mapped read-only (mmap, MAP_PRIVATE): its bytes are
// read from the page cache when first touched, so a multi-GB checkpoint costs
// resident memory only for the parts in use, and release() gives those back.
#include <cstddef>
#include <cstdint>
#include <string>

namespace moekit {

class MappedFile {
 public:
  // Throws std::invalid_argument naming the path when it is not a regular
  // file (`what` names the expected kind) or cannot be opened or mapped.
  MappedFile(const std::string& path, const std::string& what);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Drops the resident pages of [offset, offset + bytes) (madvise
  // MADV_DONTNEED): resident memory falls by them, and a later read of the
  // range faults the file's bytes in again. Pages shared with a neighbouring
  // range are dropped too; that costs a re-read, never a wrong byte.
  void release(uint64_t offset, uint64_t bytes) const;

 private:
  std::string path_;
  int fd_ = -1;
  const char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace moekit
