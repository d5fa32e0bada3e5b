#include "moekit/core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"

namespace moekit {

MappedFile::MappedFile(const std::string& path, const std::string& what, Access access)
    : path_(path), access_(access) {
  check_regular_file(path, what);
  fd_ = ::open(path.c_str(), O_RDONLY | O_NONBLOCK);
  MOEKIT_CHECK_ARG(fd_ >= 0, "cannot open '", path, "': ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    const std::string reason = S_ISREG(st.st_mode) ? std::strerror(errno) : "not a regular file";
    ::close(fd_);
    throw std::invalid_argument(str_cat("'", path, "': ", reason, ", expected ", what));
  }
  size_ = static_cast<size_t>(st.st_size);
  mtime_ns_ = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  if (size_ > 0) {
    const int prot = access == Access::kCopyOnWrite ? PROT_READ | PROT_WRITE : PROT_READ;
    void* p = ::mmap(nullptr, size_, prot, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) {
      ::close(fd_);
      throw std::invalid_argument(str_cat("cannot map '", path, "': ", std::strerror(errno)));
    }
    data_ = static_cast<const char*>(p);
  }
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<char*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
}

bool MappedFile::changed() const {
  struct stat st {};
  if (fd_ < 0 || ::fstat(fd_, &st) != 0) return false;
  return static_cast<size_t>(st.st_size) != size_ ||
         static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec != mtime_ns_;
}

void MappedFile::release(uint64_t offset, uint64_t bytes) const {
  if (data_ == nullptr || bytes == 0 || offset >= size_) return;
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  uint64_t end = std::min<uint64_t>(offset + bytes, size_);
  uint64_t first = offset / page * page;
  if (access_ == Access::kCopyOnWrite) {
    first = (offset + page - 1) / page * page;
    if (end < size_) end = end / page * page;  // the file's last page ends the mapping
    if (end <= first) return;
  }
  // Advice only: a failure leaves the pages resident, which is still correct.
  ::madvise(const_cast<char*>(data_) + first, end - first, MADV_DONTNEED);
}

}  // namespace moekit
