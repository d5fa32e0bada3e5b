#pragma once
// Audio input: any format libsndfile reads (WAV, FLAC, OGG, ...; any sample
// format), mixed down to mono and resampled with libsoxr. Both libraries are
// optional build components; without them these functions throw an error
// naming the package to install.
#include <string>
#include <vector>

namespace moekit {

struct Audio {
  std::vector<float> samples;  // mono, full scale = 1.0
  int sample_rate = 0;
  int file_channels = 0;  // channels in the file before the mono mixdown
};

bool have_audio_files();  // built with libsndfile + libsoxr

// Reads a whole file and mixes its channels down to mono (their mean).
// Errors (one line, naming the file): unreadable, not audio, no samples,
// truncated (fewer frames than the header promises).
Audio read_audio(const std::string& path);

// High-quality resampling (libsoxr, VHQ); returns the input when the rates agree.
std::vector<float> resample(const std::vector<float>& samples, int from_rate, int to_rate);

// read_audio + resample to `sample_rate`.
Audio load_audio(const std::string& path, int sample_rate);

// Writes 16-bit PCM mono WAV atomically (recipes, tests).
void write_wav16(const std::string& path, const std::vector<float>& samples, int sample_rate);

}  // namespace moekit
