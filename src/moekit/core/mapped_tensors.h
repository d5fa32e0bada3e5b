#pragma once
// Model weights that live in the model file's memory map instead of a copy.
//
// Inference packs most weights into panels (ops/packed_weights.h), a second
// copy in the layout the kernels stream. If the first copy was read into
// memory too, a serving process holds every packed weight twice. Mapped
// instead (copy-on-write, so a write never reaches the file), a weight costs
// resident memory only while its pages are touched, and once its packed copy
// exists its pages go back: the process holds the panels, not the panels and
// the weights. A later read of the weight (a path without panels, a repack)
// faults the file's bytes in again.
//
// A weight written in place after it was mapped keeps its pages: its
// version counter (bumped by every in-place write through it or its views)
// tells, and only an unwritten weight's pages are dropped.
#include <torch/torch.h>

#include <memory>
#include <string>
#include <string_view>

namespace moekit {

class MappedFile;

// Tensors smaller than this are copied, not mapped: they cannot give whole
// pages back, and the forward reads them at every call (norms, biases,
// scales), so a copy costs nothing and keeps them from the file.
constexpr uint64_t kMinMappedTensorBytes = 64 << 10;

// A CPU tensor of `shape` and `dtype` viewing `file`'s bytes from `offset`,
// which keeps the mapping alive while any tensor shares its storage.
// `offset` must be aligned to the dtype's size, the bytes inside the file.
torch::Tensor map_tensor(const std::shared_ptr<const MappedFile>& file, uint64_t offset,
                         const std::vector<int64_t>& shape, torch::ScalarType dtype);

// target.set_data(mapped) (mapped from map_tensor, of target's shape and
// dtype), recording target's version counter for release_mapped_tensor.
void adopt_mapped_tensor(torch::Tensor& target, const torch::Tensor& mapped);

// If `w` (or the tensor it is a view of) was adopted from a map and has not
// been written since, drops its resident pages and returns true; otherwise
// does nothing. For callers that have just made a packed copy of `w`.
bool release_mapped_tensor(const torch::Tensor& w);

// The path of a file that adopted tensors map and that was written in place
// since (MappedFile::changed), or "" if none: a long-running server asks
// before each new stream, since the model it serves would now read a mix of
// the old file's bytes and the new one's.
std::string changed_mapped_file();

// Throws, naming the file, if changed_mapped_file() finds one: for commands
// that run long over one loaded model (translate reading stdin, transcribe
// over many files, eval, distillation's teacher), called before each unit of
// work so that no output comes from a mix of two files' weights. `user` names
// the command in the message.
void check_mapped_files_unchanged(std::string_view user);

// Bytes of adopted tensors alive now (tests and reports).
uint64_t mapped_tensor_bytes();

}  // namespace moekit
