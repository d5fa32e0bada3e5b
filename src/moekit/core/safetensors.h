#pragma once
// Reader and writer of the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]},
// "__metadata__": {string: string}}, then the raw little-endian tensor bytes.
//
// Reading validates everything before touching tensor bytes: header length
// bounds, JSON shape, known dtypes, non-negative shapes, offsets inside the
// data section, byte sizes that match shape x dtype size, no overlapping
// ranges, no duplicate names. Every failure is a std::invalid_argument whose
// message names the file and the tensor at fault.
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moekit {

using TensorMap = std::map<std::string, torch::Tensor>;
using StringMap = std::map<std::string, std::string>;

// One entry of the header, as stored.
struct SafetensorsEntry {
  torch::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::map<std::string, SafetensorsEntry> entries;
  StringMap metadata;
  uint64_t data_start = 0;  // 8 + header length
};

struct SafetensorsContents {
  TensorMap tensors;  // CPU tensors, owning their memory
  StringMap metadata;
};

// The safetensors dtype string ("F32", "BF16", ...) of a scalar type; throws
// std::invalid_argument for types the format cannot store.
std::string safetensors_dtype_name(torch::ScalarType dtype);

// Parses and validates a header from the first bytes of a file of `file_size`
// bytes. `source` names the file in error messages.
SafetensorsHeader parse_safetensors_header(const char* data, size_t size, uint64_t file_size,
                                           const std::string& source);

// Parses a whole in-memory file.
SafetensorsContents parse_safetensors(const std::string& bytes, const std::string& source);

// Reads only the header of a file (cheap; for `moekit info`).
SafetensorsHeader read_safetensors_header(const std::string& path);

// Reads a file (memory-mapped, then copied into owning tensors).
SafetensorsContents read_safetensors(const std::string& path);

// Serializes tensors (any device, any layout; written contiguous, sorted by
// name, header padded with spaces to a multiple of 8 bytes).
std::string serialize_safetensors(const TensorMap& tensors, const StringMap& metadata = {});

// The bytes serialize_safetensors makes, written atomically (as
// write_file_atomic) and streamed: the header, then one tensor at a time, so
// a save needs no memory for the file beyond its largest tensor's copy.
void write_safetensors(const std::string& path, const TensorMap& tensors,
                       const StringMap& metadata = {});

}  // namespace moekit
