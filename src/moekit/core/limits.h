#pragma once
// Upper bounds on the sizes a config may ask for. They sit far above any
// model that fits a machine; they exist so that a mistyped size
// (`num_blocks: 100000000`) is refused with a message naming the field
// instead of growing memory until the process is killed.
namespace moekit::limits {

constexpr double kLayers = 1024;        // blocks of one stack
constexpr double kWidth = 1 << 17;      // model width, feature width
constexpr double kHidden = 1 << 20;     // FFN / expert hidden width
constexpr double kHeads = 1024;         // attention heads
constexpr double kExperts = 4096;       // experts of one MoE layer
constexpr double kVocab = 1 << 24;      // output units / tokenizer pieces
constexpr double kSeqLen = 1 << 24;     // positions
constexpr double kKernel = 1024;        // convolution kernel size

// Audio sample rates: outside these no recording exists, and resampling
// from 1 Hz to 16 kHz would turn a short file into hours of audio.
constexpr int kMinSampleRate = 1000;
constexpr int kMaxSampleRate = 768000;

}  // namespace moekit::limits
