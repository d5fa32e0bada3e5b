#include "moekit/core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"

namespace moekit {
namespace {
std::atomic<bool> file_mapping{true};
}  // namespace

void set_file_mapping(bool enabled) { file_mapping = enabled; }
bool file_mapping_enabled() { return file_mapping; }

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
  if (size_ == 0) return;
  const int prot = access == Access::kCopyOnWrite ? PROT_READ | PROT_WRITE : PROT_READ;
  if (!file_mapping_enabled()) {
    read_copy(prot, "");
    return;
  }
  void* p = ::mmap(nullptr, size_, prot, MAP_PRIVATE, fd_, 0);
  if (p != MAP_FAILED) {
    data_ = static_cast<const char*>(p);
    return;
  }
  const int error = errno;
  if (error == ENOMEM) {  // no address space: a copy would need it too
    ::close(fd_);
    throw std::invalid_argument(str_cat("cannot map '", path, "': ", std::strerror(error)));
  }
  read_copy(prot, std::strerror(error));
}

void MappedFile::read_copy(int prot, const std::string& map_error) {
  const std::string why = map_error.empty() ? "" : str_cat(" (it cannot be mapped: ", map_error, ")");
  auto fail = [&](void* buffer, const std::string& reason) {
    if (buffer != nullptr) ::munmap(buffer, size_);
    ::close(fd_);
    fd_ = -1;
    throw std::invalid_argument(str_cat("cannot read '", path_, "'", why, ": ", reason));
  };
  // Anonymous private pages, so that the read-only copy can be protected as
  // a read-only mapping is.
  void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail(nullptr, str_cat("no memory for a copy of ", size_, " bytes"));
  char* out = static_cast<char*>(p);
  for (size_t done = 0; done < size_;) {
    const ssize_t n = ::pread(fd_, out + done, std::min<size_t>(size_ - done, size_t{1} << 30),
                              static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(p, std::strerror(errno));
    if (n == 0) fail(p, str_cat("the file ended after ", done, " of its ", size_, " bytes"));
    done += static_cast<size_t>(n);
  }
  if (prot == PROT_READ) ::mprotect(p, size_, PROT_READ);
  data_ = out;
  copied_ = true;
  ::close(fd_);  // nothing more is read from the file
  fd_ = -1;
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
  // A copy's pages are anonymous: dropped, they would read back as zeros.
  if (data_ == nullptr || copied_ || bytes == 0 || offset >= size_) return;
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
