#pragma once
// Audio input: any format libsndfile reads (WAV, FLAC, OGG, ...; any sample
// format), mixed down to mono and resampled with libsoxr. Both libraries are
// optional build components; without them these functions throw an error
// naming the package to install.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moekit {

struct Audio {
  std::vector<float> samples;  // mono, full scale = 1.0
  int sample_rate = 0;
  int file_channels = 0;  // channels in the file before the mono mixdown
};

bool have_audio_files();  // built with libsndfile + libsoxr

// Reads a file block by block, mixed down to mono (the channels' mean) and
// resampled (libsoxr, VHQ) to `sample_rate` as it goes (0: the file's own
// rate), so that an hour of 44.1 kHz stereo costs no more memory than a
// second of it. Errors (one line, naming the file): unreadable, not audio,
// an absurd rate, no samples, non-finite samples, truncated (fewer frames
// than the header promises; found when the reader gets there).
class AudioReader {
 public:
  AudioReader(const std::string& path, int sample_rate = 0);
  ~AudioReader();
  AudioReader(const AudioReader&) = delete;
  AudioReader& operator=(const AudioReader&) = delete;

  // Appends up to `max_samples` samples to `out`; returns how many (0 once
  // the file is exhausted). The samples do not depend on how the file is
  // read: any sequence of calls yields the same stream.
  size_t read(std::vector<float>& out, size_t max_samples);
  // Samples the stream holds in all (at the output rate).
  int64_t total_samples() const;
  int sample_rate() const;    // of the samples read()
  int file_rate() const;
  int file_channels() const;  // before the mono mixdown

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A whole file at its own rate, mixed down to mono.
Audio read_audio(const std::string& path);

// A whole file resampled to `sample_rate`, mixed down to mono.
Audio load_audio(const std::string& path, int sample_rate);

// Writes 16-bit PCM mono WAV atomically (recipes, tests).
void write_wav16(const std::string& path, const std::vector<float>& samples, int sample_rate);

}  // namespace moekit
