#include "moekit/core/safetensors_stream.h"

#include <nlohmann/json.hpp>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <set>

#include "moekit/core/check.h"
#include "moekit/core/cpu_allocator.h"
#include "moekit/core/file_io.h"
#include "moekit/core/mapped_file.h"
#include "moekit/core/mapped_tensors.h"

namespace moekit {

using json = nlohmann::json;

MappedSafetensors::MappedSafetensors(const std::string& path, bool copy_on_write)
    : file_(std::make_shared<MappedFile>(path, "a safetensors file",
                                         copy_on_write ? MappedFile::Access::kCopyOnWrite
                                                       : MappedFile::Access::kReadOnly)),
      copy_on_write_(copy_on_write),
      header_(parse_safetensors_header(file_->data(), file_->size(), file_->size(), path)) {}

MappedSafetensors::~MappedSafetensors() = default;

const std::string& MappedSafetensors::path() const { return file_->path(); }

const SafetensorsEntry& MappedSafetensors::entry(const std::string& name) const {
  const auto it = header_.entries.find(name);
  MOEKIT_CHECK_ARG(it != header_.entries.end(), path(), ": has no tensor '", name, "'");
  return it->second;
}

torch::Tensor MappedSafetensors::view(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  char* bytes = const_cast<char*>(file_->data()) + header_.data_start + e.begin;
  return torch::from_blob(bytes, e.shape, torch::TensorOptions().dtype(e.dtype));
}

torch::Tensor MappedSafetensors::share(const std::string& name) const {
  MOEKIT_CHECK_ARG(copy_on_write_, path(), ": share() needs a copy-on-write mapping");
  const SafetensorsEntry& e = entry(name);
  const uint64_t offset = header_.data_start + e.begin;
  if (e.end == e.begin || offset % c10::elementSize(e.dtype) != 0) return {};
  return map_tensor(file_, offset, e.shape, e.dtype);
}

void MappedSafetensors::release(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  file_->release(header_.data_start + e.begin, e.end - e.begin);
}

std::string shard_file_name(int64_t index, int64_t count) {
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05lld-of-%05lld.safetensors", static_cast<long long>(index + 1),
                static_cast<long long>(count));
  return name;
}

namespace {

uint64_t planned_bytes(const PlannedTensor& t) {
  uint64_t n = c10::elementSize(t.dtype);
  for (int64_t d : t.shape) {
    MOEKIT_CHECK_ARG(d >= 0 && !__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n), "tensor '", t.name,
                     "': bad shape");
  }
  return n;
}


// One shard: its header, then each tensor's bytes as it is produced.
void write_shard(const std::string& path, const std::vector<const PlannedTensor*>& tensors,
                 const StringMap& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const PlannedTensor* t : tensors) {
    const uint64_t nbytes = planned_bytes(*t);
    header[t->name] = {{"dtype", safetensors_dtype_name(t->dtype)},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();
  AtomicFileWriter file(path);
  file.write(std::string_view(reinterpret_cast<const char*>(&header_len), sizeof(header_len)));
  file.write(text);
  for (const PlannedTensor* t : tensors) {
    torch::Tensor value = t->produce();
    MOEKIT_CHECK_ARG(value.defined(), "tensor '", t->name, "': nothing was produced");
    MOEKIT_CHECK_ARG(value.sizes() == c10::IntArrayRef(t->shape), "tensor '", t->name, "' has shape ",
                     value.sizes(), ", planned ", c10::IntArrayRef(t->shape));
    value = value.detach().to(torch::kCPU, t->dtype).contiguous();
    if (value.numel() > 0)
      file.write(std::string_view(static_cast<const char*>(value.data_ptr()), value.numel() * value.element_size()));
    value = torch::Tensor();
    if (t->written) t->written();
    // The caching allocator (cpu_allocator.h) would keep the blocks of every
    // tensor size met so far, and glibc the freed heap pages of those it
    // serves (its mmap threshold rises to the largest block freed): a
    // checkpoint larger than memory keeps neither.
    release_cpu_memory();
  }
  file.commit();
}

}  // namespace

std::vector<std::string> write_sharded_safetensors(const std::string& dir, const std::vector<PlannedTensor>& tensors,
                                                   uint64_t max_shard_bytes, const StringMap& metadata) {
  MOEKIT_CHECK_ARG(max_shard_bytes > 0, "the shard size must be positive");
  std::set<std::string> names;
  std::vector<std::vector<const PlannedTensor*>> shards;
  uint64_t in_shard = 0, total = 0;
  for (const PlannedTensor& t : tensors) {
    MOEKIT_CHECK_ARG(!t.name.empty() && t.name != "__metadata__", "a tensor cannot be named '", t.name, "'");
    MOEKIT_CHECK_ARG(names.insert(t.name).second, "tensor '", t.name, "' is planned twice");
    MOEKIT_CHECK_ARG(static_cast<bool>(t.produce), "tensor '", t.name, "' has no producer");
    safetensors_dtype_name(t.dtype);  // throws for a dtype the format cannot store
    const uint64_t nbytes = planned_bytes(t);
    if (shards.empty() || (in_shard > 0 && in_shard + nbytes > max_shard_bytes)) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(&t);
    in_shard += nbytes;
    total += nbytes;
  }
  if (shards.empty()) shards.emplace_back();
  const int64_t count = static_cast<int64_t>(shards.size());
  std::vector<std::string> files;
  json weight_map = json::object();
  for (int64_t s = 0; s < count; ++s) {
    const std::string name = count == 1 ? "model.safetensors" : shard_file_name(s, count);
    write_shard(dir + "/" + name, shards[s], metadata);
    for (const PlannedTensor* t : shards[s]) weight_map[t->name] = name;
    files.push_back(dir + "/" + name);
  }
  if (count > 1) {
    const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
  }
  return files;
}

uint64_t parse_byte_size(const std::string& text) {
  size_t digits = 0;
  double value = 0;
  try {
    value = std::stod(text, &digits);
  } catch (const std::exception&) {
    digits = 0;
  }
  std::string unit = text.substr(digits);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::vector<std::pair<std::string, double>> units = {
      {"", 1},           {"B", 1},          {"KB", 1e3},       {"MB", 1e6},           {"GB", 1e9},
      {"TB", 1e12},      {"KIB", 1024.0},   {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
  for (const auto& [name, scale] : units) {
    if (digits == 0 || unit != name) continue;
    const double bytes = value * scale;
    MOEKIT_CHECK_ARG(std::isfinite(bytes) && bytes >= 1 && bytes < 1.8e19, "size '", text,
                     "' is not a positive number of bytes");
    return static_cast<uint64_t>(bytes);
  }
  throw std::invalid_argument(str_cat("size '", text, "' is not a byte size (e.g. 5GB, 500MB, 2GiB, 4096)"));
}

}  // namespace moekit
