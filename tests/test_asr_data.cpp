// Audio files, units, data lists and ASR training: bad input gives one clear
// error each, resampling and mixdown are right, and a killed run resumes to
// exactly the weights of an uninterrupted one.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <unistd.h>
#include <random>

#include "asr_test_util.h"
#include "resume_test_util.h"
#include "test_util.h"
#include "moekit/audio/audio_file.h"
#include "moekit/audio/fbank.h"
#include "moekit/core/file_io.h"
#include "moekit/core/model_dir.h"
#include "moekit/data/asr_data.h"
#include "moekit/data/lm_tokenizer.h"
#include "moekit/data/sentencepiece.h"
#include "moekit/decode/recognizer.h"
#include "moekit/models/asr/wenet_import.h"
#include "moekit/train/asr_task.h"

using namespace moekit;

namespace {

std::vector<float> sine(double freq, int rate, double seconds, double amplitude = 0.5) {
  std::vector<float> out(static_cast<size_t>(rate * seconds));
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(amplitude * std::sin(2 * M_PI * freq * i / rate));
  return out;
}

// A 16-bit PCM WAV with any channel count, written byte by byte.
std::string wav_bytes(const std::vector<std::vector<float>>& channels, int rate) {
  auto put = [](std::string& s, uint32_t v, int n) {
    for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  const uint32_t c = static_cast<uint32_t>(channels.size());
  const uint32_t frames = static_cast<uint32_t>(channels[0].size());
  std::string s = "RIFF";
  put(s, 36 + frames * c * 2, 4);
  s += "WAVEfmt ";
  put(s, 16, 4);
  put(s, 1, 2);
  put(s, c, 2);
  put(s, static_cast<uint32_t>(rate), 4);
  put(s, static_cast<uint32_t>(rate) * c * 2, 4);
  put(s, c * 2, 2);
  put(s, 16, 2);
  s += "data";
  put(s, frames * c * 2, 4);
  for (uint32_t i = 0; i < frames; ++i)
    for (uint32_t k = 0; k < c; ++k)
      put(s, static_cast<uint32_t>(static_cast<int16_t>(std::lrint(channels[k][i] * 32767.f))) & 0xffff, 2);
  return s;
}


}  // namespace

// Kaldi's fbank for one frame in double precision with a plain DFT: DC
// removal, pre-emphasis, povey window, zero padding to a power of two,
// power spectrum, mel_banks, log.
std::vector<double> naive_fbank_frame(const float* samples, const FbankOptions& o) {
  const int window = o.window_size();
  int padded = 1;
  while (padded < window) padded <<= 1;
  std::vector<double> x(samples, samples + window);
  double mean = 0;
  for (double v : x) mean += v / window;
  for (double& v : x) v -= mean;
  for (int i = window - 1; i >= 0; --i) x[i] -= o.preemphasis * x[i > 0 ? i - 1 : 0];
  for (int i = 0; i < window; ++i) x[i] *= std::pow(0.5 - 0.5 * std::cos(2 * M_PI * i / (window - 1)), 0.85);
  const torch::Tensor banks = mel_banks(o).to(torch::kDouble);
  std::vector<double> out(static_cast<size_t>(o.num_mel_bins), 0.0);
  for (int k = 0; k <= padded / 2; ++k) {
    double re = 0, im = 0;
    for (int i = 0; i < window; ++i) {
      re += x[i] * std::cos(2 * M_PI * k * i / padded);
      im -= x[i] * std::sin(2 * M_PI * k * i / padded);
    }
    for (int m = 0; m < o.num_mel_bins; ++m) out[m] += banks[m][k].item<double>() * (re * re + im * im);
  }
  for (double& v : out) v = std::log(std::max(v, 1.1920929e-07));
  return out;
}

TEST(Fbank, EqualsANaiveDftWhenOptionsChangeBetweenCalls) {
  // compute_fbank keeps each thread's window and mel matrix for the options
  // of its last call: a call with other options must not reuse them.
  FbankOptions a;  // 16 kHz, 80 bins, 400-sample windows
  FbankOptions b;
  b.sample_rate = 8000;
  b.num_mel_bins = 23;
  b.low_freq = 64;
  b.frame_length_ms = 32;  // 256 samples: no padding
  std::vector<float> audio = sine(440, 16000, 0.05, 3000);
  for (size_t i = 0; i < audio.size(); ++i) audio[i] += static_cast<float>(700 * std::sin(0.37 * i * i));
  const torch::Tensor wave = torch::from_blob(audio.data(), {static_cast<int64_t>(audio.size())}, torch::kFloat);
  for (const FbankOptions* o : {&a, &b, &a, &b}) {
    const torch::Tensor feats = compute_fbank(wave, *o);
    ASSERT_EQ(feats.size(0), o->num_frames(wave.numel()));
    ASSERT_EQ(feats.size(1), o->num_mel_bins);
    for (int64_t t = 0; t < feats.size(0); t += 2) {
      const std::vector<double> want = naive_fbank_frame(audio.data() + t * o->window_shift(), *o);
      for (int m = 0; m < o->num_mel_bins; ++m)
        ASSERT_NEAR(feats[t][m].item<double>(), want[m], 2e-3) << "rate " << o->sample_rate << " frame " << t;
    }
  }
}

TEST(AudioFiles, BadFilesGiveOneLineErrors) {
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  const std::string dir = temp_dir("audio_bad");
  write_file_atomic(dir + "/text.wav", "this is not audio at all\n");
  write_file_atomic(dir + "/empty.wav", wav_bytes({{}}, 16000));
  const std::string good = wav_bytes({sine(440, 16000, 0.5)}, 16000);
  write_file_atomic(dir + "/truncated.wav", good.substr(0, good.size() / 2));
  write_file_atomic(dir + "/zero_bytes.wav", "");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {dir + "/text.wav", "not a readable audio file"},
      {dir + "/empty.wav", "no samples"},
      {dir + "/truncated.wav", "truncated"},
      {dir + "/zero_bytes.wav", "not a readable audio file"},
      {dir + "/missing.wav", "no such file"},
      {dir, "is a directory"},
  };
  for (const auto& [path, expected] : cases) {
    const std::string message = error_of<std::invalid_argument>([&] { read_audio(path); });
    EXPECT_NE(message.find(expected), std::string::npos) << path << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_EQ(message.rfind(path, 0), 0u) << "error should name the file: " << message;
  }
}

TEST(AudioFiles, StereoIsMixedDownAndOtherRatesResampled) {
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  const std::string dir = temp_dir("audio_ok");
  const auto left = sine(300, 8000, 1.0, 0.6), right = sine(300, 8000, 1.0, 0.2);
  write_file_atomic(dir + "/stereo8k.wav", wav_bytes({left, right}, 8000));
  const Audio raw = read_audio(dir + "/stereo8k.wav");
  EXPECT_EQ(raw.file_channels, 2);
  EXPECT_EQ(raw.sample_rate, 8000);
  ASSERT_EQ(raw.samples.size(), left.size());
  for (size_t i = 0; i < left.size(); i += 97) EXPECT_NEAR(raw.samples[i], 0.5f * (left[i] + right[i]), 1e-4);
  const Audio audio = load_audio(dir + "/stereo8k.wav", 16000);
  EXPECT_EQ(audio.sample_rate, 16000);
  ASSERT_EQ(audio.samples.size(), 16000u);
  // The 300 Hz tone survives: compare the middle against the analytic signal at 16 kHz.
  const auto expected = sine(300, 16000, 1.0, 0.4);
  double worst = 0;
  for (size_t i = 2000; i < 14000; ++i) worst = std::max(worst, std::abs(double(audio.samples[i]) - expected[i]));
  EXPECT_LT(worst, 2e-3);
}

TEST(AudioFiles, ReadingInAnyPiecesGivesTheSameStream) {
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  const std::string dir = temp_dir("audio_pieces");
  // Long enough for several of the reader's file blocks (32768 frames).
  const auto left = sine(300, 8000, 10.0, 0.6), right = sine(700, 8000, 10.0, 0.2);
  write_file_atomic(dir + "/stereo8k.wav", wav_bytes({left, right}, 8000));
  for (int rate : {8000, 16000, 22050}) {
    const Audio whole = load_audio(dir + "/stereo8k.wav", rate);
    ASSERT_EQ(static_cast<double>(whole.samples.size()), std::round(10.0 * rate)) << rate;
    for (size_t piece : {size_t{1}, size_t{977}, size_t{40000}}) {
      AudioReader reader(dir + "/stereo8k.wav", rate);
      EXPECT_EQ(reader.total_samples(), static_cast<int64_t>(whole.samples.size()));
      std::vector<float> got;
      size_t calls = 0;
      while (reader.read(got, piece) > 0) ++calls;
      EXPECT_EQ(reader.read(got, piece), 0u);
      EXPECT_EQ(got, whole.samples) << rate << " Hz in pieces of " << piece;
      EXPECT_EQ(calls, (whole.samples.size() + piece - 1) / piece);
    }
  }
  // A cut-off file fails when the reader reaches the cut, naming the file.
  const std::string good = wav_bytes({sine(440, 16000, 5.0)}, 16000);
  write_file_atomic(dir + "/truncated.wav", good.substr(0, good.size() * 3 / 4));
  const std::string message = error_of<std::invalid_argument>([&] {
    AudioReader reader(dir + "/truncated.wav", 16000);
    std::vector<float> out;
    while (reader.read(out, 1000) > 0) {
    }
  });
  EXPECT_EQ(message.rfind(dir + "/truncated.wav: truncated", 0), 0u) << message;
}

TEST(Units, ParseAndTokenize) {
  const Units units = Units::parse("<blank> 0\n<unk> 1\na 2\nb 3\n\xe2\x96\x81 4\n<sos/eos> 5\n", "u");
  EXPECT_EQ(units.size(), 6);
  EXPECT_EQ(tokenize("ab ba", units, "t"), (std::vector<int64_t>{2, 3, 4, 3, 2}));
  EXPECT_EQ(tokenize("abz", units, "t"), (std::vector<int64_t>{2, 3, 1}));  // unknown -> <unk>
  EXPECT_EQ(units.to_text({2, 3, 4, 3, 2, 5}), "ab ba");
  const Units no_unk = Units::parse("<blank> 0\na 1\n<sos/eos> 2\n", "u");
  EXPECT_NE(error_of<std::invalid_argument>([&] { tokenize("az", no_unk, "utt7"); }).find("character 'z'"), std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([] { Units::parse("a 0\n", "u"); }).find("must be <blank>"), std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([] { Units::parse("<blank> 0\na 2\n", "u"); }).find("id 1 is missing"), std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([] { Units::parse("<blank> 0\na x\n", "u"); }).find("not an integer"), std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([] { Units::parse("<blank> 0\na 1\na 2\n", "u"); }).find("twice"), std::string::npos);
}

TEST(AsrData, ListsAndKaldiDirectories) {
  const std::string dir = temp_dir("asr_lists");
  write_file_atomic(dir + "/data.list", "{\"key\": \"u1\", \"wav\": \"a.wav\", \"txt\": \"hello\"}\n\n"
                                        "{\"key\": \"u2\", \"wav\": \"/abs/b.wav\", \"txt\": \"world\"}\n");
  auto data = read_asr_data(dir + "/data.list");
  ASSERT_EQ(data.size(), 2u);
  EXPECT_EQ(data[0].wav, dir + "/a.wav");
  EXPECT_EQ(data[1].wav, "/abs/b.wav");
  write_file_atomic(dir + "/bad.list", "{\"key\": \"u1\", \"wav\": \"a.wav\"}\n");
  EXPECT_NE(error_of<std::invalid_argument>([&] { read_asr_data(dir + "/bad.list"); }).find("bad.list:1"), std::string::npos);
  make_dirs(dir + "/kaldi");
  write_file_atomic(dir + "/kaldi/wav.scp", "u1 /x/a.wav\nu2 /x/b.wav\n");
  write_file_atomic(dir + "/kaldi/text", "u1 hello there\nu2 world\n");
  data = read_asr_data(dir + "/kaldi");
  ASSERT_EQ(data.size(), 2u);
  EXPECT_EQ(data[0].text, "hello there");
  write_file_atomic(dir + "/kaldi/text", "u1 hello there\n");
  EXPECT_NE(error_of<std::invalid_argument>([&] { read_asr_data(dir + "/kaldi"); }).find("no transcript for utterance u2"), std::string::npos);
  EXPECT_EQ(text_to_chars("a  b"), (std::vector<std::string>{"a", "\xe2\x96\x81", "b"}));
}

// A transcript in Latin-1 would become units of single bytes, and a second
// transcript for an utterance would replace the first: both are refused with
// the file and line.
TEST(AsrData, BrokenTranscriptsAreRefusedByFileAndLine) {
  const std::string dir = temp_dir("asr_broken");
  make_dirs(dir + "/kaldi");
  write_file_atomic(dir + "/kaldi/wav.scp", "u1 /x/a.wav\nu2 /x/b.wav\n");
  const auto error_for_text = [&](const std::string& text) {
    write_file_atomic(dir + "/kaldi/text", text);
    return error_of<std::invalid_argument>([&] { read_asr_data(dir + "/kaldi"); });
  };
  EXPECT_EQ(error_for_text("u1 gr\xfc\xdf\nu2 b\n"), dir + "/kaldi/text:1: invalid UTF-8");
  EXPECT_EQ(error_for_text("u1 a\n\nu2 \xc3\n"), dir + "/kaldi/text:3: invalid UTF-8");
  EXPECT_EQ(error_for_text("u1 a\nu2 b\nu1 c\n"), dir + "/kaldi/text:3: utterance u1 was already given on line 1");
  EXPECT_EQ(error_for_text("u1 gr\xc3\xbc\xc3\x9f\nu2 b\n"), "");  // UTF-8 "grüß"
  EXPECT_EQ(read_asr_data(dir + "/kaldi")[0].text, "gr\xc3\xbc\xc3\x9f");
  write_file_atomic(dir + "/kaldi/wav.scp", "u1 /x/a.wav\nu2 /x/b.wav\nu1 /x/c.wav\n");
  EXPECT_EQ(error_of<std::invalid_argument>([&] { read_asr_data(dir + "/kaldi"); }),
            dir + "/kaldi/wav.scp:3: utterance u1 was already given on line 1");

  const auto error_for_list = [&](const std::string& text) {
    write_file_atomic(dir + "/data.list", text);
    return error_of<std::invalid_argument>([&] { read_asr_data(dir + "/data.list"); });
  };
  EXPECT_NE(error_for_list("{\"key\": \"u1\", \"wav\": \"a.wav\", \"txt\": \"gr\xfc\xdf\"}\n").find("data.list:1: not a data.list line"),
            std::string::npos);
  EXPECT_EQ(error_for_list("{\"key\": \"\", \"wav\": \"a.wav\", \"txt\": \"a\"}\n"), dir + "/data.list:1: empty key");
  EXPECT_EQ(error_for_list("{\"key\": \"u1\", \"wav\": \"a.wav\", \"txt\": \"a\"}\n{\"key\": \"u2\", \"wav\": \"\", \"txt\": \"a\"}\n"),
            dir + "/data.list:2: empty wav");
}

// White space other than a space inside a transcript (a tab, a form feed, a
// line break escaped in JSON) is a word boundary like a space: as a unit of
// its own it would make a units.txt line that cannot be read back.
TEST(AsrData, EveryAsciiWhiteSpaceIsAWordBoundaryAndUnitsStayReadable) {
  const std::string b = "\xe2\x96\x81";
  EXPECT_EQ(text_to_chars(" a\vb\f\fc\r\n d\t"), (std::vector<std::string>{"a", b, "b", b, "c", b, "d"}));
  EXPECT_EQ(text_to_chars("\xc3\xbc \xe3\x80\x80x"), (std::vector<std::string>{"\xc3\xbc", b, "\xe3\x80\x80", "x"}));
  const std::string dir = temp_dir("asr_spaces");
  write_file_atomic(dir + "/data.list", "{\"key\": \"u1\", \"wav\": \"a.wav\", \"txt\": \"a\\u000bb\\nc\\td\"}\n");
  const Units units = build_char_units(read_asr_data(dir + "/data.list"));
  const Units back = Units::parse(units.serialize(), "units.txt");
  ASSERT_EQ(back.size(), units.size());
  EXPECT_EQ(units.size(), 2 + 5 + 1);  // <blank> <unk>, a b c d and the boundary, <sos/eos>
  for (int64_t i = 0; i < units.size(); ++i) EXPECT_EQ(back.symbol(i), units.symbol(i));
  EXPECT_EQ(error_of<std::invalid_argument>([] { Units({"<blank>", "a b"}).serialize(); }),
            "units: unit 1 is empty or holds white space, which units.txt cannot store");
  EXPECT_EQ(error_of<std::invalid_argument>([] { Units({"<blank>", ""}).serialize(); }),
            "units: unit 1 is empty or holds white space, which units.txt cannot store");
}

TEST(AsrData, ErrorRates) {
  ErrorRates r;
  r.add("the cat sat", "the bat sat down");
  EXPECT_EQ(r.words, 3);
  EXPECT_EQ(r.word_edits, 2);  // cat->bat, +down
  EXPECT_EQ(r.chars, 9);
  EXPECT_EQ(r.char_edits, 5);  // c->b, +d +o +w +n
}

namespace {

// A tiny corpus of tones: each "word" is a pitch, so the task is learnable.
std::vector<Utterance> tone_corpus(const std::string& dir, int count, uint64_t seed) {
  std::mt19937 rng(static_cast<unsigned>(seed));
  const char* letters = "abcd";
  std::vector<Utterance> out;
  for (int i = 0; i < count; ++i) {
    std::string text;
    std::vector<float> samples;
    const int n = 2 + static_cast<int>(rng() % 3);
    for (int k = 0; k < n; ++k) {
      const int which = static_cast<int>(rng() % 4);
      text += letters[which];
      const auto tone = sine(300.0 + 250.0 * which, 16000, 0.12, 0.3);
      samples.insert(samples.end(), tone.begin(), tone.end());
      samples.insert(samples.end(), 800, 0.0f);
    }
    const std::string path = dir + "/utt" + std::to_string(i) + ".wav";
    write_wav16(path, samples, 16000);
    out.push_back({"utt" + std::to_string(i), path, text});
  }
  return out;
}

std::shared_ptr<AsrModel> tiny_model(int64_t vocab) {
  AsrConfig c = tiny_asr_config(vocab);
  c.fbank.dither = 0.1;
  return std::make_shared<AsrModel>(c);
}

}  // namespace

TEST(AsrTraining, KilledRunResumesToTheSameWeights) {
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  const std::string dir = temp_dir("asr_resume");
  const auto train_data = tone_corpus(dir, 12, 1);
  const std::vector<Utterance> cv(train_data.begin(), train_data.begin() + 3);
  const Units units = build_char_units(train_data);
  AsrDataOptions data;
  data.batch_size = 4;
  TrainerOptions o;
  o.epochs = 2;
  o.warmup_steps = 3;
  o.log_interval = 100;
  o.average_last = 1;
  o.seed = 5;
  auto run = [&](const std::string& exp, int64_t max_steps, bool resume) {
    torch::manual_seed(o.seed);
    auto model = tiny_model(units.size());
    AsrTrainTask task(model, units, train_data, cv, data, o.seed);
    TrainerOptions oo = o;
    oo.max_steps = max_steps;
    return train(task, oo, exp, resume);
  };
  expect_killed_run_resumes(dir, 4, 6, run);  // 3 steps an epoch: stops in the middle of epoch 2
  EXPECT_TRUE(path_exists(dir + "/killed/final/units.txt"));
}

// A corpus over dataset_conf.in_memory_mb is read again for each batch:
// the same batches, losses and weights as holding it, for dithered features
// (made afresh from the samples) and plain ones (made once when held), with
// nothing held; a file that changes under the run is a clear error.
TEST(AsrTraining, ReadingTheAudioPerBatchTrainsAsHoldingIt) {
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  const std::string dir = temp_dir("asr_streamed");
  const auto train_data = tone_corpus(dir, 12, 2);
  const std::vector<Utterance> cv(train_data.begin(), train_data.begin() + 3);
  const Units units = build_char_units(train_data);
  TrainerOptions o;
  o.epochs = 2;
  o.warmup_steps = 3;
  o.log_interval = 1;
  o.average_last = 1;
  o.seed = 7;
  for (const double dither : {0.1, 0.0}) {
    auto run = [&](const std::string& exp, int64_t in_memory_mb, int64_t* held) {
      torch::manual_seed(o.seed);
      AsrConfig c = tiny_asr_config(units.size());
      c.fbank.dither = dither;
      auto model = std::make_shared<AsrModel>(c);
      AsrDataOptions data;
      data.batch_size = 4;
      data.in_memory_mb = in_memory_mb;
      AsrTrainTask task(model, units, train_data, cv, data, o.seed);
      *held = task.held_bytes();
      return train(task, o, exp, false);
    };
    const std::string tag = dither > 0 ? "dither" : "plain";
    int64_t held = 0, streamed_held = -1;
    const TrainSummary a = run(dir + "/held_" + tag, 64, &held);
    const TrainSummary b = run(dir + "/read_" + tag, 0, &streamed_held);
    EXPECT_GT(held, 0);
    EXPECT_EQ(streamed_held, 0);
    EXPECT_EQ(a.steps, b.steps);
    // Every logged loss, gradient norm and validation figure (not the speed).
    const auto records = [](const std::string& path) {
      std::vector<nlohmann::json> out;
      std::istringstream in(read_file(path));
      for (std::string line; std::getline(in, line);) {
        nlohmann::json j = nlohmann::json::parse(line);
        j.erase("frames_per_s");
        out.push_back(j);
      }
      return out;
    };
    const auto ra = records(dir + "/held_" + tag + "/metrics.jsonl");
    EXPECT_GT(ra.size(), 4u);
    EXPECT_EQ(ra, records(dir + "/read_" + tag + "/metrics.jsonl")) << tag;
    const TensorMap wa = read_model_weights(a.final_dir), wb = read_model_weights(b.final_dir);
    ASSERT_EQ(wa.size(), wb.size());
    for (const auto& [name, t] : wa) EXPECT_TRUE(t.equal(wb.at(name))) << tag << " " << name;
  }
  // A file cut short after the start: its batch names it.
  torch::manual_seed(o.seed);
  AsrDataOptions data;
  data.batch_size = 12;
  data.in_memory_mb = 0;
  AsrTrainTask task(std::make_shared<AsrModel>(tiny_asr_config(units.size())), units, train_data, cv, data, o.seed);
  write_wav16(train_data[5].wav, std::vector<float>(4000, 0.1f), 16000);
  const std::string error = error_of<std::invalid_argument>([&] { task.train_batch(0, 0); });
  EXPECT_NE(error.find(train_data[5].wav + ": gives"), std::string::npos) << error;
  EXPECT_NE(error.find("the file changed"), std::string::npos) << error;
}

TEST(SentencePiece, UnitsAndPiecesRoundTrip) {
  if (!have_sentencepiece() || std::system("command -v spm_train > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "SentencePiece tools (package sentencepiece) not installed";
  const std::string dir = temp_dir("spm");
  std::string text;
  const char* words[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "speech", "model"};
  std::mt19937 rng(3);
  for (int i = 0; i < 300; ++i) {
    for (int k = 0; k < 6; ++k) text += std::string(k ? " " : "") + words[rng() % 10];
    text += "\n";
  }
  write_file_atomic(dir + "/text.txt", text);
  const std::string cmd = "spm_train --input=" + dir + "/text.txt --model_prefix=" + dir +
                          "/bpe --vocab_size=40 --model_type=bpe --minloglevel=2 > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const SentencePieceTokenizer spm(dir + "/bpe.model");
  const Units units = spm.units();
  EXPECT_EQ(units.symbol(0), "<blank>");
  EXPECT_EQ(units.symbol(units.size() - 1), "<sos/eos>");
  const auto ids = spm.encode("the lazy fox", units, "t");
  EXPECT_GE(ids.size(), 3u);
  for (int64_t id : ids) EXPECT_GT(id, 1);  // no <blank>, no <unk>
  EXPECT_EQ(units.to_text(ids), "the lazy fox");
  EXPECT_NE(error_of<std::invalid_argument>([&] { SentencePieceTokenizer bad(dir + "/text.txt"); })
                .find("not a SentencePiece model"),
            std::string::npos);
}

// SentencePiece in this process (the moekit_spm module next to LibTorch)
// gives what its command-line tools give: pieces, ids, the vocabulary and a
// whole file's ids, on varied text; a broken model is refused either way.
TEST(SentencePiece, InProcessEqualsTheCommandLineTools) {
  if (std::system("command -v spm_train > /dev/null 2>&1 && command -v spm_encode > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "SentencePiece tools (package sentencepiece) not installed";
  if (!sentencepiece_in_process())
    GTEST_SKIP() << "the moekit_spm module was not built (libsentencepiece-dev absent) or MOEKIT_SPM_MODULE=none";
  const std::string dir = temp_dir("spm_in_process");
  std::string text;
  for (int i = 0; i < 300; ++i)
    text += "Line " + std::to_string(i) + ": naïve café, the cat sat on the mat; 数字 " + std::to_string(i * 7) + "\n";
  write_file_atomic(dir + "/text.txt", text);
  for (const std::string type : {"bpe", "unigram"}) {
    const std::string cmd = "spm_train --input=" + dir + "/text.txt --model_prefix=" + dir + "/" + type +
                            " --model_type=" + type +
                            (type == "bpe" ? " --vocab_size=400 --byte_fallback=true" : " --vocab_size=60") + " --minloglevel=2 > /dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << type;
    const std::string model = dir + "/" + type + ".model";
    const std::vector<std::string> texts = {"the cat", "", "  two  spaces\tand a tab", "naïve café 😀 ünknown ŧext",
                                            "Line 12: 数字 84", "x"};
    std::map<bool, std::vector<std::vector<std::string>>> got;
    std::map<bool, std::string> vocab;
    std::map<bool, std::vector<int64_t>> file_ids;
    for (bool in_process : {true, false}) {
      set_sentencepiece_in_process(in_process);
      EXPECT_EQ(sentencepiece_in_process(), in_process);
      got[in_process] = {spm_encode_lines(model, texts, "piece", "t"), spm_encode_lines(model, texts, "id", "t")};
      vocab[in_process] = spm_export_vocab(model, "t");
      file_ids[in_process] = LmTokenizer(model).encode_file(dir + "/text.txt");
      EXPECT_NE(error_of<std::invalid_argument>([&] { SentencePieceTokenizer bad(dir + "/text.txt"); })
                    .find("not a SentencePiece model"),
                std::string::npos);
    }
    set_sentencepiece_in_process(true);
    EXPECT_EQ(got[true], got[false]) << type;
    EXPECT_EQ(vocab[true], vocab[false]) << type;
    EXPECT_EQ(file_ids[true], file_ids[false]) << type;
    EXPECT_FALSE(file_ids[true].empty());
  }
}
