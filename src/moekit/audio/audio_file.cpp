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

struct AudioReader::Impl {
  static constexpr int64_t kBlockFrames = 1 << 15;  // file frames read at a time

  std::string path;
  SNDFILE* file = nullptr;
  SF_INFO info{};
  int out_rate = 0;
  soxr_t resampler = nullptr;
  int64_t frames_read = 0;   // file frames
  int64_t out_total = 0;     // samples the stream holds in all
  int64_t out_emitted = 0;   // samples handed to pending so far
  bool flushed = false;
  std::vector<float> interleaved, mono, pending;
  size_t pending_pos = 0;

  ~Impl() {
    if (resampler) soxr_delete(resampler);
    if (file) sf_close(file);
  }

  // libsndfile shortens the frame count of a WAV whose data chunk is cut
  // off and notes it in its log.
  void check_log() {
    char log[2048] = {0};
    sf_command(file, SFC_GET_LOG_INFO, log, sizeof log);
    const std::string text(log);
    MOEKIT_CHECK_ARG(text.find("should be") == std::string::npos && text.find("runcated") == std::string::npos, path,
                     ": truncated audio file (the data chunk is shorter than its header says)");
  }

  // Appends resampled output of `count` mono samples (nullptr: the flush).
  void resample_into_pending(const float* in, size_t count) {
    const double ratio = static_cast<double>(out_rate) / info.samplerate;
    size_t offered = 0;
    do {
      std::vector<float> out(static_cast<size_t>(std::ceil((count - offered) * ratio)) + 64);
      size_t used = 0, made = 0;
      const soxr_error_t error = soxr_process(resampler, in ? in + offered : nullptr, in ? count - offered : 0, &used,
                                              out.data(), out.size(), &made);
      MOEKIT_CHECK(!error, path, ": resampling ", info.samplerate, " -> ", out_rate, " Hz failed: ", error);
      offered += used;
      pending.insert(pending.end(), out.begin(), out.begin() + static_cast<std::ptrdiff_t>(made));
      if (!in && made < out.size()) break;  // flushed out
      if (in && used == 0 && made == 0) break;
    } while (!in || offered < count);
  }

  // Reads the next block of the file into `pending` (the resampler's
  // flush after the last one).
  void refill() {
    pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(pending_pos));
    pending_pos = 0;
    const size_t before = pending.size();
    const int64_t want = std::min(kBlockFrames, info.frames - frames_read);
    if (want > 0) {
      interleaved.resize(static_cast<size_t>(want) * info.channels);
      const sf_count_t got = sf_readf_float(file, interleaved.data(), want);
      MOEKIT_CHECK_ARG(got == want, path, ": truncated audio file (header promises ", info.frames, " frames, read ",
                       frames_read + got, ")");
      frames_read += got;
      const int c = info.channels;
      mono.resize(static_cast<size_t>(got));
      for (size_t i = 0; i < mono.size(); ++i) {
        float sum = 0.f;
        for (int k = 0; k < c; ++k) sum += interleaved[i * c + k];
        mono[i] = sum / static_cast<float>(c);
        MOEKIT_CHECK_ARG(std::isfinite(mono[i]), path, ": audio holds non-finite samples");
      }
      if (resampler) {
        resample_into_pending(mono.data(), mono.size());
      } else {
        pending.insert(pending.end(), mono.begin(), mono.end());
      }
      if (frames_read == info.frames) check_log();
    } else if (resampler && !flushed) {
      resample_into_pending(nullptr, 0);
      flushed = true;
    } else {
      flushed = true;
    }
    // The resampler's tail may run a few samples past the exact length.
    const int64_t made = static_cast<int64_t>(pending.size() - before);
    const int64_t keep = std::min(made, out_total - out_emitted);
    pending.resize(before + static_cast<size_t>(keep));
    out_emitted += keep;
  }
};

AudioReader::AudioReader(const std::string& path, int sample_rate) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  MOEKIT_CHECK_ARG(path_exists(path), path, ": no such file");
  check_regular_file(path, "an audio file");
  m.file = sf_open(path.c_str(), SFM_READ, &m.info);
  if (!m.file) {
    std::string reason = sf_strerror(nullptr);
    throw std::invalid_argument(path + ": not a readable audio file (" + reason + ")");
  }
  const SF_INFO& info = m.info;
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
  m.check_log();
  m.out_rate = sample_rate > 0 ? sample_rate : info.samplerate;
  MOEKIT_CHECK_ARG(m.out_rate >= limits::kMinSampleRate && m.out_rate <= limits::kMaxSampleRate, path,
                   ": cannot resample to ", m.out_rate, " Hz");
  m.out_total = m.out_rate == info.samplerate
                    ? info.frames
                    : std::llround(static_cast<double>(info.frames) * m.out_rate / info.samplerate);
  if (m.out_rate != info.samplerate) {
    const soxr_io_spec_t io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
    const soxr_quality_spec_t quality = soxr_quality_spec(SOXR_VHQ, 0);
    const soxr_runtime_spec_t runtime = soxr_runtime_spec(1);
    soxr_error_t error = nullptr;
    m.resampler = soxr_create(info.samplerate, m.out_rate, 1, &error, &io, &quality, &runtime);
    MOEKIT_CHECK(!error && m.resampler, path, ": cannot resample ", info.samplerate, " -> ", m.out_rate, " Hz: ",
                 error ? error : "soxr_create failed");
  }
}

AudioReader::~AudioReader() = default;

size_t AudioReader::read(std::vector<float>& out, size_t max_samples) {
  Impl& m = *impl_;
  size_t n = 0;
  while (n < max_samples) {
    if (m.pending_pos == m.pending.size()) {
      if (m.flushed) break;
      m.refill();
      continue;
    }
    const size_t take = std::min(max_samples - n, m.pending.size() - m.pending_pos);
    out.insert(out.end(), m.pending.begin() + static_cast<std::ptrdiff_t>(m.pending_pos),
               m.pending.begin() + static_cast<std::ptrdiff_t>(m.pending_pos + take));
    m.pending_pos += take;
    n += take;
  }
  return n;
}

int64_t AudioReader::total_samples() const { return impl_->out_total; }
int AudioReader::sample_rate() const { return impl_->out_rate; }
int AudioReader::file_rate() const { return impl_->info.samplerate; }
int AudioReader::file_channels() const { return impl_->info.channels; }

#else

bool have_audio_files() { return false; }
struct AudioReader::Impl {};
AudioReader::AudioReader(const std::string& path, int) { throw std::invalid_argument(path + ": " + kNoAudio); }
AudioReader::~AudioReader() = default;
size_t AudioReader::read(std::vector<float>&, size_t) { return 0; }
int64_t AudioReader::total_samples() const { return 0; }
int AudioReader::sample_rate() const { return 0; }
int AudioReader::file_rate() const { return 0; }
int AudioReader::file_channels() const { return 0; }

#endif

Audio load_audio(const std::string& path, int sample_rate) {
  AudioReader reader(path, sample_rate);
  Audio audio;
  audio.sample_rate = reader.sample_rate();
  audio.file_channels = reader.file_channels();
  audio.samples.reserve(static_cast<size_t>(reader.total_samples()));
  while (reader.read(audio.samples, size_t{1} << 20) > 0) {
  }
  return audio;
}

Audio read_audio(const std::string& path) { return load_audio(path, 0); }

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
