#include "moekit/audio/fbank.h"

#include <cmath>

#include "moekit/core/check.h"
#include "moekit/core/fields.h"
#include "moekit/core/limits.h"

namespace moekit {

namespace {
int round_up_to_power_of_two(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}
double mel_scale(double hz) { return 1127.0 * std::log(1.0 + hz / 700.0); }
}  // namespace

int FbankOptions::window_size() const { return static_cast<int>(sample_rate * frame_length_ms * 0.001); }
int FbankOptions::window_shift() const { return static_cast<int>(sample_rate * frame_shift_ms * 0.001); }

int64_t FbankOptions::num_frames(int64_t num_samples) const {
  if (num_samples < window_size()) return 0;
  return 1 + (num_samples - window_size()) / window_shift();
}

namespace {

// Longer windows than a second are no speech features; the bound also keeps
// window_size() inside an int.
constexpr double kMaxFrameMs = 1000.0;

// WeNet's fbank_conf names (frame_length / frame_shift in milliseconds).
const FieldTable<FbankOptions>& fbank_fields() {
  using O = FbankOptions;
  static const auto table =
      FieldTable<O>("fbank")
          .field("num_mel_bins", &O::num_mel_bins, "mel bands (the feature width)")
          .check([](const O& o) { return o.num_mel_bins >= 3 ? "" : "must be >= 3"; })
          .at_most(limits::kWidth)
          .field("frame_length", &O::frame_length_ms, "window length, ms")
          .positive()
          .at_most(kMaxFrameMs)
          .field("frame_shift", &O::frame_shift_ms, "hop between frames, ms")
          .positive()
          .at_most(kMaxFrameMs)
          .field("dither", &O::dither, "Gaussian dither added in training (decoding uses 0)").non_negative()
          .field("sample_rate", &O::sample_rate, "sample rate the features are computed at, Hz")
          .in_range(limits::kMinSampleRate, limits::kMaxSampleRate)
          .rule([](const O& o) {
            return o.window_size() >= 2 && o.window_shift() >= 1
                       ? std::string()
                       : str_cat("frame_length ", o.frame_length_ms, " ms / frame_shift ", o.frame_shift_ms,
                                 " ms give no usable window");
          })
          .rule([](const O& o) {
            const double nyquist = 0.5 * o.sample_rate;
            const double high = o.high_freq <= 0 ? o.high_freq + nyquist : o.high_freq;
            return o.low_freq >= 0 && o.low_freq < high && high <= nyquist
                       ? std::string()
                       : str_cat("bad frequency range [", o.low_freq, ", ", high, "] Hz at ", o.sample_rate, " Hz");
          });
  return table;
}

}  // namespace

const FieldTable<FbankOptions>& FbankOptions::fields() { return fbank_fields(); }
void FbankOptions::validate() const { fbank_fields().validate(*this, "fbank"); }
YAML::Node FbankOptions::to_yaml() const { return fbank_fields().write(*this); }
FbankOptions FbankOptions::from_yaml(const YAML::Node& node, const std::string& where) {
  return fbank_fields().parse(node, where);
}

torch::Tensor mel_banks(const FbankOptions& o) {
  // Same fp32 arithmetic as torchaudio.compliance.kaldi.get_mel_banks.
  const int padded = round_up_to_power_of_two(o.window_size());
  const double nyquist = 0.5 * o.sample_rate;
  const double high = o.high_freq <= 0 ? o.high_freq + nyquist : o.high_freq;
  const double fft_bin_width = static_cast<double>(o.sample_rate) / padded;
  const double mel_low = mel_scale(o.low_freq), mel_high = mel_scale(high);
  const double delta = (mel_high - mel_low) / (o.num_mel_bins + 1);
  const torch::Tensor bin = torch::arange(o.num_mel_bins, torch::kLong).unsqueeze(1);
  const torch::Tensor left = bin * delta + mel_low;
  const torch::Tensor center = (bin + 1.0) * delta + mel_low;
  const torch::Tensor right = (bin + 2.0) * delta + mel_low;
  const torch::Tensor freqs = torch::arange(static_cast<double>(padded / 2), torch::kFloat) * fft_bin_width;
  const torch::Tensor mel = ((freqs / 700.0 + 1.0).log() * 1127.0).unsqueeze(0);
  const torch::Tensor up = (mel - left) / (center - left);
  const torch::Tensor down = (right - mel) / (right - center);
  const torch::Tensor banks = torch::max(torch::zeros(1), torch::min(up, down));
  return torch::nn::functional::pad(banks, torch::nn::functional::PadFuncOptions({0, 1}));
}

namespace {

// The parts of a filterbank that depend only on the options: the povey
// window [window] and the mel matrix [mel bins, padded / 2 + 1].
// A streaming session computes features every 100 ms or so, and building
// these (about 40% of a short call) each time is waste. One entry per
// thread, rebuilt when the options change.
struct FbankConstants {
  int window = 0, num_mel_bins = 0, sample_rate = 0;
  double low_freq = 0, high_freq = 0;
  torch::Tensor povey, banks;

  bool fits(const FbankOptions& o) const {
    return povey.defined() && window == o.window_size() && num_mel_bins == o.num_mel_bins &&
           sample_rate == o.sample_rate && low_freq == o.low_freq && high_freq == o.high_freq;
  }
};

const FbankConstants& fbank_constants(const FbankOptions& o) {
  thread_local FbankConstants c;
  if (!c.fits(o)) {
    c.window = o.window_size();
    c.num_mel_bins = o.num_mel_bins;
    c.sample_rate = o.sample_rate;
    c.low_freq = o.low_freq;
    c.high_freq = o.high_freq;
    c.povey = torch::hann_window(c.window, /*periodic=*/false, torch::kFloat).pow(0.85);
    c.banks = mel_banks(o);
  }
  return c;
}

}  // namespace

torch::Tensor compute_fbank(const torch::Tensor& waveform, const FbankOptions& o,
                            c10::optional<at::Generator> generator) {
  o.validate();
  MOEKIT_CHECK_ARG(waveform.dim() == 1, "fbank: waveform must be 1-D, got ", waveform.sizes());
  const torch::Tensor wave = waveform.to(torch::kFloat).contiguous();
  const int window = o.window_size(), shift = o.window_shift();
  const int padded = round_up_to_power_of_two(window);
  const int64_t frames = o.num_frames(wave.numel());
  if (frames == 0) return torch::empty({0, o.num_mel_bins});
  torch::Tensor x = wave.as_strided({frames, window}, {shift, 1});
  if (o.dither > 0) x = x + torch::randn(x.sizes(), generator, x.options()) * o.dither;
  x = x - x.mean(1, /*keepdim=*/true);
  if (o.preemphasis != 0) {
    const torch::Tensor previous = torch::cat({x.slice(1, 0, 1), x.slice(1, 0, window - 1)}, 1);
    x = x - previous * o.preemphasis;
  }
  const FbankConstants& constants = fbank_constants(o);
  x = x * constants.povey.unsqueeze(0);
  if (padded != window) x = torch::nn::functional::pad(x, torch::nn::functional::PadFuncOptions({0, padded - window}));
  const torch::Tensor power = torch::fft::rfft(x).abs().pow(2.0);
  const torch::Tensor mel = torch::mm(power, constants.banks.t());
  return mel.clamp_min(std::numeric_limits<float>::epsilon()).log_();
}

}  // namespace moekit
