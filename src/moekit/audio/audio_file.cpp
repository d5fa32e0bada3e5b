#include "moekit/audio/audio_file.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/limits.h"

#ifdef MOEKIT_HAVE_AUDIO
#include <sndfile.h>
#include <soxr.h>
#endif

namespace moekit {

namespace {
constexpr const char* kNoAudio =
    "this build has no audio file support: install libsndfile1-dev and libsoxr-dev, then rebuild";
}

#ifdef MOEKIT_HAVE_AUDIO

bool have_audio_files() { return true; }

Audio read_audio(const std::string& path) {
  MOEKIT_CHECK_ARG(path_exists(path), path, ": no such file");
  check_regular_file(path, "an audio file");
  SF_INFO info;
  std::memset(&info, 0, sizeof info);
  SNDFILE* file = sf_open(path.c_str(), SFM_READ, &info);
  if (!file) {
    std::string reason = sf_strerror(nullptr);
    throw std::invalid_argument(path + ": not a readable audio file (" + reason + ")");
  }
  struct Closer {
    SNDFILE* f;
    ~Closer() { sf_close(f); }
  } closer{file};
  MOEKIT_CHECK_ARG(info.channels > 0 && info.samplerate > 0, path, ": audio header has ", info.channels,
                   " channels at ", info.samplerate, " Hz");
  // Rates outside what any recording uses would be resampled into hours of
  // audio (1 Hz -> 16 kHz is 16000x) or from gigabytes of it.
  MOEKIT_CHECK_ARG(info.samplerate >= limits::kMinSampleRate && info.samplerate <= limits::kMaxSampleRate, path,
                   ": unsupported sample rate ", info.samplerate, " Hz (expected ", limits::kMinSampleRate, " to ",
                   limits::kMaxSampleRate, " Hz)");
  MOEKIT_CHECK_ARG(info.channels <= 64, path, ": ", info.channels, " channels (at most 64)");
  MOEKIT_CHECK_ARG(info.frames > 0, path, ": audio file holds no samples");
  MOEKIT_CHECK_ARG(info.frames < (int64_t{1} << 34) / info.channels, path, ": audio file too long (", info.frames,
                   " frames)");
  std::vector<float> interleaved(static_cast<size_t>(info.frames) * info.channels);
  const sf_count_t got = sf_readf_float(file, interleaved.data(), info.frames);
  // libsndfile shortens the frame count of a WAV whose data chunk is cut
  // off and notes it in its log; a short read also means a damaged file.
  char log[2048] = {0};
  sf_command(file, SFC_GET_LOG_INFO, log, sizeof log);
  MOEKIT_CHECK_ARG(got == info.frames, path, ": truncated audio file (header promises ", info.frames,
                   " frames, read ", got, ")");
  const std::string log_text(log);
  MOEKIT_CHECK_ARG(log_text.find("should be") == std::string::npos &&
                       log_text.find("runcated") == std::string::npos,
                   path, ": truncated audio file (the data chunk is shorter than its header says)");
  Audio audio;
  audio.sample_rate = info.samplerate;
  audio.file_channels = info.channels;
  audio.samples.resize(static_cast<size_t>(info.frames));
  const int c = info.channels;
  for (size_t i = 0; i < audio.samples.size(); ++i) {
    float sum = 0.f;
    for (int k = 0; k < c; ++k) sum += interleaved[i * c + k];
    audio.samples[i] = sum / static_cast<float>(c);
  }
  for (float v : audio.samples) MOEKIT_CHECK_ARG(std::isfinite(v), path, ": audio holds non-finite samples");
  return audio;
}

std::vector<float> resample(const std::vector<float>& samples, int from_rate, int to_rate) {
  MOEKIT_CHECK_ARG(from_rate > 0 && to_rate > 0, "resample: rates must be positive (", from_rate, " -> ", to_rate,
                   ")");
  if (from_rate == to_rate || samples.empty()) return samples;
  const double ratio = static_cast<double>(to_rate) / from_rate;
  std::vector<float> out(static_cast<size_t>(std::ceil(samples.size() * ratio)) + 16);
  size_t done_in = 0, done_out = 0;
  const soxr_io_spec_t io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
  const soxr_quality_spec_t quality = soxr_quality_spec(SOXR_VHQ, 0);
  const soxr_runtime_spec_t runtime = soxr_runtime_spec(1);
  soxr_error_t error = soxr_oneshot(from_rate, to_rate, 1, samples.data(), samples.size(), &done_in, out.data(),
                                    out.size(), &done_out, &io, &quality, &runtime);
  MOEKIT_CHECK(!error, "resample ", from_rate, " -> ", to_rate, " Hz failed: ", error);
  out.resize(std::min(done_out, static_cast<size_t>(std::llround(samples.size() * ratio))));
  return out;
}

#else

bool have_audio_files() { return false; }
Audio read_audio(const std::string& path) { throw std::invalid_argument(path + ": " + kNoAudio); }
std::vector<float> resample(const std::vector<float>&, int, int) { throw std::invalid_argument(kNoAudio); }

#endif

Audio load_audio(const std::string& path, int sample_rate) {
  Audio audio = read_audio(path);
  if (audio.sample_rate != sample_rate) {
    audio.samples = resample(audio.samples, audio.sample_rate, sample_rate);
    audio.sample_rate = sample_rate;
  }
  return audio;
}

void write_wav16(const std::string& path, const std::vector<float>& samples, int sample_rate) {
  MOEKIT_CHECK_ARG(sample_rate > 0, path, ": sample rate must be positive");
  auto put = [](std::string& s, uint32_t v, int n) {
    for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  const uint32_t data_bytes = static_cast<uint32_t>(samples.size() * 2);
  std::string out = "RIFF";
  put(out, 36 + data_bytes, 4);
  out += "WAVEfmt ";
  put(out, 16, 4);
  put(out, 1, 2);  // PCM
  put(out, 1, 2);  // mono
  put(out, static_cast<uint32_t>(sample_rate), 4);
  put(out, static_cast<uint32_t>(sample_rate * 2), 4);
  put(out, 2, 2);
  put(out, 16, 2);
  out += "data";
  put(out, data_bytes, 4);
  for (float v : samples) {
    const float clipped = std::max(-1.f, std::min(1.f, v));
    put(out, static_cast<uint32_t>(static_cast<int16_t>(std::lrint(clipped * 32767.f))) & 0xffff, 2);
  }
  write_file_atomic(path, out);
}

}  // namespace moekit
