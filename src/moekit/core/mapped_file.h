#pragma once
// A whole regular file mapped privately (mmap, MAP_PRIVATE): its bytes are
// read from the page cache when first touched, so a multi-GB checkpoint costs
// resident memory only for the parts in use, and release() gives those back.
// Read-only by default; copy-on-write where tensors that a model may write
// in place view the mapping (a write then makes a private page and never
// reaches the file).
//
// Where the file system refuses to map files (mmap fails with ENODEV on
// some FUSE and network file systems), or mapping is turned off
// (set_file_mapping(false)), the file is read once into private memory
// instead: the same bytes and the same access, but all of them resident
// from the start, release() a no-op (anonymous pages given back would read
// as zeros) and changed() false (the copy never changes).
#include <cstddef>
#include <cstdint>
#include <string>

namespace moekit {

class MappedFile {
 public:
  // Throws std::invalid_argument naming the path when it is not a regular
  // file (`what` names the expected kind) or cannot be opened or mapped.
  enum class Access { kReadOnly, kCopyOnWrite };
  MappedFile(const std::string& path, const std::string& what, Access access = Access::kReadOnly);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Drops the resident pages of [offset, offset + bytes) (madvise
  // MADV_DONTNEED): resident memory falls by them, and a later read of the
  // range faults the file's bytes in again. Read-only: pages shared with a
  // neighbouring range are dropped too; that costs a re-read, never a wrong
  // byte. Copy-on-write: only the pages wholly inside the range, since a
  // neighbour's written page would lose its writes; the caller vouches that
  // nothing wrote inside the range.
  void release(uint64_t offset, uint64_t bytes) const;

  // Whether the file was written in place since it was mapped (its size or
  // modification time differ): the mapping then shows the new bytes, not
  // the ones read so far. A file replaced by rename is not this one and
  // leaves the mapping as it was. Always false for a copy.
  bool changed() const;

  // Whether the bytes are a copy read into memory rather than a mapping.
  bool copied() const { return copied_; }

 private:
  void read_copy(int prot, const std::string& map_error);

  std::string path_;
  Access access_;
  int fd_ = -1;
  const char* data_ = nullptr;
  size_t size_ = 0;
  int64_t mtime_ns_ = 0;
  bool copied_ = false;
};

// Whether MappedFile maps files (the default) or reads them into memory,
// process-wide: off, every model file is read whole when it is opened, for
// file systems whose mappings misbehave without refusing outright.
void set_file_mapping(bool enabled);
bool file_mapping_enabled();

}  // namespace moekit
