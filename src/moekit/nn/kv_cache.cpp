#include "moekit/nn/kv_cache.h"

#include <algorithm>
#include <cstring>

#include "moekit/core/check.h"

namespace moekit {

FrameBuffer::FrameBuffer(const FrameBuffer& other) { *this = other; }

FrameBuffer& FrameBuffer::operator=(const FrameBuffer& other) {
  if (this != &other) {
    buffer_ = other.buffer_.defined() ? other.buffer_.clone() : torch::Tensor();
    start_ = other.start_;
    length_ = other.length_;
  }
  return *this;
}

torch::Tensor FrameBuffer::view() const {
  return length_ > 0 ? buffer_.slice(2, start_, start_ + length_) : torch::Tensor();
}

void FrameBuffer::reserve(int64_t batch, int64_t heads, int64_t t, int64_t d, const torch::TensorOptions& options) {
  const bool fits = buffer_.defined() && buffer_.size(0) == batch && buffer_.size(1) == heads &&
                    buffer_.size(3) == d && buffer_.dtype() == options.dtype() && buffer_.device() == options.device();
  MOEKIT_CHECK_ARG(fits || length_ == 0, "frame buffer: frames [", batch, ", ", heads, ", ", t, ", ", d,
                   "] do not continue the held ", view().sizes());
  if (!fits || start_ + length_ + t > buffer_.size(2)) {
    // Room for twice what will be held; the held frames move to the front.
    const int64_t capacity = std::max<int64_t>(64, 2 * (length_ + t));
    torch::Tensor grown = torch::empty({batch, heads, capacity, d}, options);
    if (length_ > 0 && !torch::GradMode::is_enabled() && buffer_.device().is_cpu() && buffer_.is_contiguous()) {
      // Each (b, h)'s held frames are one contiguous run in both buffers.
      const int64_t run = length_ * d * static_cast<int64_t>(buffer_.element_size());
      const char* src = static_cast<const char*>(buffer_.data_ptr()) + start_ * d * buffer_.element_size();
      char* dst = static_cast<char*>(grown.data_ptr());
      const int64_t src_step = buffer_.size(2) * d * buffer_.element_size();
      const int64_t dst_step = capacity * d * grown.element_size();
      for (int64_t bh = 0; bh < batch * heads; ++bh) {
        std::memcpy(dst + bh * dst_step, src + bh * src_step, static_cast<size_t>(run));
      }
    } else if (length_ > 0) {
      grown.slice(2, 0, length_).copy_(view());
    }
    buffer_ = grown;
    start_ = 0;
  }
}

void FrameBuffer::append(const torch::Tensor& frames) {
  MOEKIT_CHECK_ARG(frames.dim() == 4, "frame buffer: expected [B, H, t, d] frames, got ", frames.sizes());
  const int64_t t = frames.size(2);
  reserve(frames.size(0), frames.size(1), t, frames.size(3), frames.options());
  if (!torch::GradMode::is_enabled() && frames.device().is_cpu() && frames.scalar_type() == torch::kFloat &&
      frames.stride(3) == 1) {
    // A streaming chunk's frames row by row: ATen's strided copy_ costs
    // more than the bytes (three appends per layer per chunk).
    copy_rows(frames.data_ptr<float>(), frames.size(0), frames.size(1), t, frames.size(3), frames.stride(0),
              frames.stride(1), frames.stride(2));
  } else {
    buffer_.slice(2, start_ + length_, start_ + length_ + t).copy_(frames);
  }
  length_ += t;
}

void FrameBuffer::copy_rows(const float* src, int64_t batch, int64_t heads, int64_t t, int64_t d, int64_t sb,
                            int64_t sh, int64_t st) {
  // buffer_ is contiguous [B, H, capacity, d].
  const int64_t capacity = buffer_.size(2);
  float* base = buffer_.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      float* out = base + ((b * heads + h) * capacity + start_ + length_) * d;
      for (int64_t i = 0; i < t; ++i) {
        std::memcpy(out + i * d, src + b * sb + h * sh + i * st, static_cast<size_t>(d) * sizeof(float));
      }
    }
  }
}

void FrameBuffer::append_rows(const float* src, int64_t batch, int64_t t, int64_t heads, int64_t d_k, int64_t sb,
                              int64_t si, const torch::TensorOptions& options) {
  MOEKIT_CHECK_ARG(options.dtype() == torch::kFloat && options.device().is_cpu(),
                   "frame buffer: append_rows takes CPU float32 rows");
  reserve(batch, heads, t, d_k, options);
  copy_rows(src, batch, heads, t, d_k, sb, d_k, si);
  length_ += t;
}

void FrameBuffer::keep_last(int64_t frames) {
  if (frames < 0 || frames >= length_) return;
  start_ += length_ - frames;
  length_ = frames;
}

void FrameBuffer::select(const torch::Tensor& index) {
  if (length_ == 0) return;
  // The held frames gathered into a buffer with the same room to grow.
  torch::Tensor gathered = torch::empty({index.size(0), buffer_.size(1), buffer_.size(2) - start_, buffer_.size(3)},
                                        buffer_.options());
  gathered.slice(2, 0, length_).copy_(view().index_select(0, index.to(buffer_.device())));
  buffer_ = gathered;
  start_ = 0;
}

void KvCache::select(const torch::Tensor& index) {
  k.select(index);
  v.select(index);
  p.select(index);
}

void KvCache::keep_last(int64_t frames) {
  k.keep_last(frames);
  v.keep_last(frames);
  p.keep_last(frames);
}

}  // namespace moekit
