#pragma once
// Kaldi-compatible log mel filterbank, computed the way
// torchaudio.compliance.kaldi.fbank does (povey window, pre-emphasis 0.97,
// DC removal, 512-point FFT power spectrum, Kaldi mel scale, snip_edges),
// in fp32 with the same operation order, so that a WeNet model sees the
// features it was trained on.
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <string>

namespace moekit {

template <class Options>
class FieldTable;

struct FbankOptions {
  int num_mel_bins = 80;
  double frame_length_ms = 25.0;
  double frame_shift_ms = 10.0;
  double dither = 0.0;  // training only; decoding always uses 0
  int sample_rate = 16000;
  double low_freq = 20.0;
  double high_freq = 0.0;  // <= 0: offset from Nyquist
  double preemphasis = 0.97;
  double energy_floor = 0.0;

  int window_size() const;   // samples per frame
  int window_shift() const;  // samples between frames
  // Frames produced from `num_samples` samples (snip_edges: only whole windows).
  int64_t num_frames(int64_t num_samples) const;
  // The field table (core/fields.h) behind validate / to_yaml / from_yaml;
  // YAML names are WeNet's fbank_conf names. from_yaml refuses unknown keys.
  static const FieldTable<FbankOptions>& fields();
  void validate() const;
  YAML::Node to_yaml() const;
  static FbankOptions from_yaml(const YAML::Node& node, const std::string& where);
};

// waveform: [N] float in 16-bit scale (full scale = 32768). Returns [T, num_mel_bins].
// `generator` seeds the dither (only when options.dither > 0).
torch::Tensor compute_fbank(const torch::Tensor& waveform, const FbankOptions& options,
                            c10::optional<at::Generator> generator = c10::nullopt);

// The mel filterbank matrix [num_mel_bins, padded_window / 2 + 1].
torch::Tensor mel_banks(const FbankOptions& options);

}  // namespace moekit
