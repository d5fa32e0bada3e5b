#pragma once
// Checkpoints larger than memory, one tensor at a time: a safetensors file
// read through a memory map (tensors are views of the mapped bytes, released
// after use), and sharded output written tensor by tensor in the layout of
// transformers' save_pretrained (model-00001-of-00003.safetensors + the
// model.safetensors.index.json that maps each tensor to its shard).
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moekit/core/safetensors.h"

namespace moekit {

class MappedFile;

// A safetensors file mapped read-only (or copy-on-write, for share()), its
// header validated as read_safetensors validates it (a truncated file or a
// bad header is an std::invalid_argument naming the file and the tensor).
class MappedSafetensors {
 public:
  explicit MappedSafetensors(const std::string& path, bool copy_on_write = false);
  ~MappedSafetensors();
  MappedSafetensors(const MappedSafetensors&) = delete;
  MappedSafetensors& operator=(const MappedSafetensors&) = delete;

  const std::string& path() const;
  const SafetensorsHeader& header() const { return header_; }
  const SafetensorsEntry& entry(const std::string& name) const;  // throws naming the file and tensor

  // A CPU tensor viewing the tensor's mapped bytes: no copy, valid while
  // this object lives, read-only (writing to it is undefined).
  torch::Tensor view(const std::string& name) const;
  // A CPU tensor viewing the tensor's mapped bytes that keeps the mapping
  // alive (mapped_tensors.h), for a model to hold as its weight; undefined
  // where the bytes cannot be one (an empty tensor, or an offset not aligned
  // to its dtype, as a file mixing dtypes may have). Copy-on-write files only.
  torch::Tensor share(const std::string& name) const;
  // Gives the tensor's resident pages back (MappedFile::release).
  void release(const std::string& name) const;

 private:
  std::shared_ptr<MappedFile> file_;
  bool copy_on_write_;
  SafetensorsHeader header_;
};

// One tensor of a checkpoint being written: its name, dtype and shape are
// known up front (the headers are written first); its values are produced
// when its turn comes and dropped once written.
struct PlannedTensor {
  std::string name;
  torch::ScalarType dtype = torch::kFloat;
  std::vector<int64_t> shape;
  // A CPU tensor of `shape` (converted to `dtype` if it has another).
  std::function<torch::Tensor()> produce;
  // Optional: called once its bytes are written (to release its sources).
  std::function<void()> written;
};

// "model-00002-of-00005.safetensors" for shard 1 (0-based) of 5.
std::string shard_file_name(int64_t index, int64_t count);

// Writes `tensors`, in order, into dir/model.safetensors when they fit in one
// shard of `max_shard_bytes`, else into shards of at most that size (a
// tensor larger than it alone in its shard) and
// dir/model.safetensors.index.json ({"metadata": {"total_size": bytes},
// "weight_map": {name: shard}}). Each shard is written atomically; one
// produced tensor is held at a time. Returns the files written (no index).
// Throws std::invalid_argument for a duplicate or reserved name, a producer
// whose tensor has another shape, or a dtype safetensors cannot store.
std::vector<std::string> write_sharded_safetensors(const std::string& dir, const std::vector<PlannedTensor>& tensors,
                                                   uint64_t max_shard_bytes, const StringMap& metadata = {{"format", "pt"}});

// A byte size as users write it: "5GB", "500MB", "2GiB", "1e9", "4096".
// Decimal units (KB, MB, GB, TB) as transformers' max_shard_size; binary
// ones (KiB, MiB, GiB, TiB). Throws std::invalid_argument naming the text.
uint64_t parse_byte_size(const std::string& text);

}  // namespace moekit
