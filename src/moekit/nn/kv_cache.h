#pragma once
// The streaming caches of attention: frames appended chunk by chunk into a
// buffer with room to grow, and the key/value(/position) cache built on it.
#include <torch/torch.h>

namespace moekit {

// Frames [B, H, t, d] appended chunk by chunk along t into a buffer with
// room to grow (doubling), so a chunk copies only itself, not everything
// cached before it (torch::cat did: quadratic in the stream's length).
class FrameBuffer {
 public:
  FrameBuffer() = default;
  // A copy owns its frames (appending to it must not write into the
  // original's buffer); moves are cheap.
  FrameBuffer(const FrameBuffer& other);
  FrameBuffer& operator=(const FrameBuffer& other);
  FrameBuffer(FrameBuffer&&) = default;
  FrameBuffer& operator=(FrameBuffer&&) = default;

  int64_t size() const { return length_; }
  // The frames held, a view into the buffer; undefined when empty.
  torch::Tensor view() const;
  void append(const torch::Tensor& frames);
  // Appends t frames from rows laid out (b, i, h, d) at src[b*sb + i*si +
  // h*d_k + d] (a projection's output rows): CPU float32 only.
  void append_rows(const float* src, int64_t batch, int64_t t, int64_t heads, int64_t d_k, int64_t sb, int64_t si,
                   const torch::TensorOptions& options);
  // Keeps the newest `frames` (all when fewer are held; < 0 = all).
  void keep_last(int64_t frames);
  // Keeps sequence index[i] as sequence i (index [B'] int64): a beam
  // search's reordering of its hypotheses.
  void select(const torch::Tensor& index);
  void clear() { length_ = 0; start_ = 0; }

 private:
  // Room for t more frames of [B, H, t, d] (the buffer regrown when not).
  void reserve(int64_t batch, int64_t heads, int64_t t, int64_t d, const torch::TensorOptions& options);
  // Writes t frames after the held ones, (b, h, i, :) from src[b*sb + h*sh +
  // i*st] (CPU float32; room reserved).
  void copy_rows(const float* src, int64_t batch, int64_t heads, int64_t t, int64_t d, int64_t sb, int64_t sh,
                 int64_t st);
  torch::Tensor buffer_;  // [B, H, capacity, d]
  int64_t start_ = 0, length_ = 0;
};

// A streaming key/value cache: k, v [B, H, t, d_k]. Relative-position
// attention also keeps the keys' projected positions p [1, H, t, d_k]:
// WeNet's position term reads absolute key positions, so a key's projection
// never changes and each chunk projects only its own.
struct KvCache {
  FrameBuffer k, v, p;
  int64_t size() const { return k.size(); }
  // Keeps the newest `frames` keys (all of them when fewer are cached).
  void keep_last(int64_t frames);
  // Keeps sequence index[i] as sequence i (see FrameBuffer::select).
  void select(const torch::Tensor& index);
};

}  // namespace moekit
