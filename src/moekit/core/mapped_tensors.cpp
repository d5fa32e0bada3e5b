#include "moekit/core/mapped_tensors.h"

#include <map>
#include <mutex>

#include "moekit/core/check.h"
#include "moekit/core/mapped_file.h"

namespace moekit {
namespace {

// One mapped tensor's bytes; `version` is the adopting tensor's counter at
// adoption, -1 before.
struct MappedRegion {
  const MappedFile* file = nullptr;
  uint64_t offset = 0, bytes = 0;
  int64_t version = -1;
};

struct Registry {
  std::mutex mutex;
  std::map<const void*, MappedRegion> regions;  // by storage address
};

Registry& registry() {
  static Registry* r = new Registry();  // outlives every tensor freed at exit
  return *r;
}

}  // namespace

torch::Tensor map_tensor(const std::shared_ptr<const MappedFile>& file, uint64_t offset,
                         const std::vector<int64_t>& shape, torch::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const uint64_t bytes = static_cast<uint64_t>(numel) * c10::elementSize(dtype);
  MOEKIT_CHECK_ARG(numel > 0 && offset % c10::elementSize(dtype) == 0 && offset + bytes <= file->size(),
                   file->path(), ": cannot map ", bytes, " bytes at offset ", offset, " as ", c10::toString(dtype));
  char* data = const_cast<char*>(file->data()) + offset;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    r.regions[data] = MappedRegion{file.get(), offset, bytes, -1};
  }
  std::shared_ptr<const MappedFile> keep = file;
  return torch::from_blob(
      data, shape,
      [keep](void* p) {
        Registry& r = registry();
        std::lock_guard<std::mutex> lock(r.mutex);
        r.regions.erase(p);
      },
      torch::TensorOptions().dtype(dtype));
}

void adopt_mapped_tensor(torch::Tensor& target, const torch::Tensor& mapped) {
  MOEKIT_CHECK_ARG(target.sizes() == mapped.sizes() && target.scalar_type() == mapped.scalar_type(),
                   "adopt_mapped_tensor: ", mapped.sizes(), " ", mapped.scalar_type(), " cannot replace ",
                   target.sizes(), " ", target.scalar_type());
  target.set_data(mapped);
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.regions.find(mapped.storage().data());
  if (it != r.regions.end()) it->second.version = target._version();
}

bool release_mapped_tensor(const torch::Tensor& w) {
  if (!w.defined() || !w.has_storage() || !w.device().is_cpu()) return false;
  const void* data = w.storage().data();
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.regions.find(data);
  if (it == r.regions.end() || it->second.version < 0 || it->second.version != w._version()) return false;
  it->second.file->release(it->second.offset, it->second.bytes);
  return true;
}

std::string changed_mapped_file() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const MappedFile* checked = nullptr;
  for (const auto& [data, region] : r.regions) {
    if (region.version < 0 || region.file == checked) continue;
    checked = region.file;
    if (region.file->changed()) return region.file->path();
  }
  return "";
}

void check_mapped_files_unchanged(std::string_view user) {
  const std::string changed = changed_mapped_file();
  MOEKIT_CHECK(changed.empty(), "the model file ", changed, " was rewritten in place while ", user,
               " was using it: its outputs would now mix the old and the new weights (install a new model by "
               "renaming it into place, then run again)");
}

uint64_t mapped_tensor_bytes() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  uint64_t total = 0;
  for (const auto& [data, region] : r.regions) {
    if (region.version >= 0) total += region.bytes;
  }
  return total;
}

}  // namespace moekit
