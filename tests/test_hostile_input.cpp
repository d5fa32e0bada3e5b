// Hostile and careless input, one case per defect class: each must end in a
// one-line error naming what is wrong (never a crash, a hang or a silent
// success), and no command may clobber an existing output or its own input.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <caffe2/serialize/inline_container.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "asr_test_util.h"
#include "cli_test_util.h"
#include "lm_test_util.h"
#include "moekit/audio/audio_file.h"
#include "moekit/core/config.h"
#include "moekit/core/model_dir.h"
#include "moekit/core/torch_checkpoint.h"
#include "moekit/data/asr_data.h"
#include "moekit/data/hf_tokenizer.h"
#include "moekit/decode/ngram_lm.h"
#include "moekit/decode/recognizer.h"
#include "moekit/models/asr/wenet_import.h"
#include "moekit/models/lm/hf_llama.h"
#include "moekit/models/lm/lm_config.h"
#include "test_util.h"

namespace moekit {
namespace {

namespace fs = std::filesystem;

// Runs the CLI under a 60 s timeout (a hang fails instead of stalling the
// suite) and checks for a one-line error containing `want`.
void expect_cli_error(const std::string& args, const std::string& want) {
  const CliRun run = run_cli(args, "timeout 60");
  EXPECT_NE(run.exit_code, 124) << args << ": hung";
  EXPECT_EQ(run.exit_code, 1) << args << ":\n" << run.output;
  EXPECT_EQ(lines(run.output), 1) << args << ":\n" << run.output;
  EXPECT_EQ(run.output.rfind("moekit: error: ", 0), 0u) << args << ":\n" << run.output;
  EXPECT_NE(run.output.find(want), std::string::npos) << args << ": expected '" << want << "' in:\n" << run.output;
}

std::string saved_asr_model(const std::string& dir) {
  save_asr_model(dir, AsrModel(tiny_asr_config(6)), Units({"<blank>", "<unk>", "a", "b", "\xe2\x96\x81", "<sos/eos>"}));
  return dir;
}

// A config.yaml of `model_dir` with one field replaced.
void set_config_field(const std::string& model_dir, const std::vector<std::string>& path, const YAML::Node& value) {
  YAML::Node root = load_yaml_file(model_dir + "/config.yaml");
  YAML::Node node = root;
  for (size_t i = 0; i + 1 < path.size(); ++i) node.reset(node[path[i]]);
  node[path.back()] = value;
  write_yaml_file(model_dir + "/config.yaml", root);
}

TEST(HostileInput, ZeroAndAbsurdSizesInConfigsAreRefusedByName) {
  const std::string dir = temp_dir("hostile_sizes");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"architecture", "encoder_conf", "attention_heads"}, "0"},
      {{"architecture", "decoder_conf", "attention_heads"}, "0"},
      {{"architecture", "encoder_conf", "num_blocks"}, "100000000"},
      {{"architecture", "input_dim"}, "1000000000"},
      {{"architecture", "fbank_conf", "sample_rate"}, "100000000"},
      {{"architecture", "encoder_conf", "linear_units"}, "-4"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string model = saved_asr_model(dir + "/m" + std::to_string(i));
    set_config_field(model, cases[i].first, YAML::Load(cases[i].second));
    const std::string field = cases[i].first.back();
    expect_cli_error("info " + model, field);
  }
  // The same limits hold for a WeNet train.yaml and a Hugging Face config.json.
  YAML::Node wenet = YAML::Load(
      "input_dim: 80\noutput_dim: 10\nencoder: conformer\ndecoder: bitransformer\n"
      "encoder_conf: {output_size: 16, attention_heads: 0, num_blocks: 1, linear_units: 16}\n"
      "decoder_conf: {attention_heads: 2, num_blocks: 1, r_num_blocks: 1, linear_units: 16}\n");
  EXPECT_NE(error_of<std::invalid_argument>([&] { wenet_config(wenet, "train.yaml"); }).find("attention_heads"),
            std::string::npos);
  LmModel lm(tiny_lm_config());
  export_hf_llama({lm.config(), module_state(lm)}, dir + "/hf");
  nlohmann::json j = nlohmann::json::parse(read_file(dir + "/hf/config.json"));
  j["num_hidden_layers"] = 1000000;
  write_file_atomic(dir + "/hf/config.json", j.dump());
  EXPECT_NE(error_of<std::invalid_argument>([&] { import_hf_llama(dir + "/hf"); }).find("n_layers must be in"),
            std::string::npos);
}

TEST(HostileInput, MessagesNameTheFileAndTheField) {
  // A mapping where train.yaml expects a name: the file is named, not just "bad conversion".
  const YAML::Node wenet = YAML::Load(
      "encoder_conf: {output_size: 16, attention_heads: 2, num_blocks: 1, linear_units: 16,\n"
      "               selfattention_layer_type: {a: 1}}\n");
  const std::string err = error_of<std::invalid_argument>([&] { wenet_config(wenet, "exp/train.yaml"); });
  EXPECT_EQ(err.rfind("exp/train.yaml: ", 0), 0u) << err;
  // Limits print as integers.
  LmConfig c = tiny_lm_config();
  c.d_ffn = 1 << 21;
  const std::string big = error_of<std::invalid_argument>([&] { c.validate(); });
  EXPECT_NE(big.find("d_ffn must be in [1, 1048576], got 2097152"), std::string::npos) << big;
}

TEST(HostileInput, DecodingOptionsOutsideTheirRangeAreRefusedBeforeLoading) {
  const std::string model = saved_asr_model(temp_dir("hostile_decode") + "/m");
  const std::string wav = model + "/x.wav";
  write_wav16(wav, std::vector<float>(16000, 0.1f), 16000);
  expect_cli_error("transcribe " + model + " " + wav + " --beam 1000000000", "--beam must be in [1, 1000]");
  expect_cli_error("transcribe " + model + " " + wav + " --ctc-weight nan", "--ctc-weight");
  expect_cli_error("transcribe " + model + " " + wav + " --chunk-size -5", "--chunk-size");
  expect_cli_error("transcribe " + model + " " + wav + " --left-chunks -3", "--left-chunks");
  write_file_atomic(model + "/lm.arpa", "not a language model\n");
  expect_cli_error("transcribe " + model + " " + wav + " --lm " + model + "/lm.arpa", "--lm needs --lexicon");
  expect_cli_error("transcribe " + model + " " + wav + " --lm-weight inf", "--lm-weight must be a finite number");
  write_file_atomic(model + "/words.txt", "<eps> 0\n");
  expect_cli_error("transcribe " + model + " " + wav + " --lexicon " + model + "/words.txt", "words.txt: no words");
  write_file_atomic(model + "/words.txt", "ab\nba\n");
  expect_cli_error("transcribe " + model + " " + wav + " --lexicon " + model + "/words.txt --lm " + model + "/lm.arpa",
                   "lm.arpa: not an ARPA language model");
}

TEST(HostileInput, AFifoInPlaceOfAFileIsRefusedNotOpened) {
  const std::string model = saved_asr_model(temp_dir("hostile_fifo") + "/m");
  fs::remove(model + "/model.safetensors");
  ASSERT_EQ(::mkfifo((model + "/model.safetensors").c_str(), 0644), 0);
  expect_cli_error("info " + model, "is a FIFO");
  fs::remove(model + "/model.safetensors");
  ASSERT_EQ(::mkfifo((model + "/model.safetensors").c_str(), 0644), 0);
  const std::string wav = model + "/fifo.wav";
  ASSERT_EQ(::mkfifo(wav.c_str(), 0644), 0);
  EXPECT_NE(error_of<std::invalid_argument>([&] { read_audio(wav); }).find("is a FIFO"), std::string::npos);
  EXPECT_NE(error_of<std::invalid_argument>([&] { read_file(wav); }).find("is a FIFO"), std::string::npos);
}

TEST(HostileInput, AudioAtAbsurdRatesOrTooShortIsRefusedInEveryMode) {
  if (!have_audio_files()) GTEST_SKIP() << "built without libsndfile/libsoxr";
  const std::string model = saved_asr_model(temp_dir("hostile_audio") + "/m");
  write_wav16(model + "/slow.wav", std::vector<float>(100, 0.1f), 1);
  EXPECT_NE(error_of<std::invalid_argument>([&] { read_audio(model + "/slow.wav"); }).find("unsupported sample rate 1 Hz"),
            std::string::npos);
  // 20 samples: too short for one encoder frame, whole-file and streaming alike.
  write_wav16(model + "/tiny.wav", std::vector<float>(20, 0.1f), 16000);
  for (const std::string& extra : {std::string(""), std::string(" --chunk-size 4 --streaming")}) {
    const CliRun run = run_cli("transcribe " + model + " " + model + "/tiny.wav" + extra, "timeout 60");
    EXPECT_EQ(run.exit_code, 1) << extra << ":\n" << run.output;
    EXPECT_NE(run.output.find("audio too short"), std::string::npos) << extra << ":\n" << run.output;
  }
}

TEST(HostileInput, LongAudioIsSplitAtItsQuietestPoints) {
  const int rate = 1000;
  // 100 s of tone with 50 ms pauses at 25 s, 47 s and 90 s.
  std::vector<float> samples(100 * rate);
  for (size_t i = 0; i < samples.size(); ++i) samples[i] = 0.5f * std::sin(0.3f * static_cast<float>(i));
  for (int pause : {25, 47, 90})
    for (int i = 0; i < 50; ++i) samples[pause * rate + i] = 0.0f;
  const std::vector<size_t> cuts = quiet_split_points(samples, rate, 30);
  // Each window [pos + 20 s, pos + 30 s] holds one pause; the last piece is short enough.
  ASSERT_EQ(cuts.size(), 3u);
  EXPECT_GE(cuts[0], 25u * rate);
  EXPECT_LT(cuts[0], 25u * rate + 50);
  EXPECT_GE(cuts[1], 47u * rate);
  EXPECT_LT(cuts[1], 47u * rate + 50);
  // No pause in [67 s, 77 s]: the quietest frame there, within the window.
  EXPECT_GE(cuts[2], cuts[1] + 20 * rate);
  EXPECT_LE(cuts[2], cuts[1] + 30 * rate);
  EXPECT_TRUE(quiet_split_points(samples, rate, 0).empty());
  EXPECT_TRUE(quiet_split_points(std::vector<float>(30 * rate), rate, 30).empty());
  // 30 s + 1 sample: the piece after the cut is at least a second long.
  const std::vector<size_t> one = quiet_split_points(std::vector<float>(30 * rate + 1, 0.1f), rate, 30);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_GE(30 * rate + 1 - one[0], static_cast<size_t>(rate));
}

TEST(HostileInput, LongAudioDecodesPieceByPieceAndStreamsInBoundedContext) {
  auto model = std::make_shared<AsrModel>(tiny_asr_config(6));
  const int rate = model->config().fbank.sample_rate;
  std::vector<float> audio(static_cast<size_t>(70 * rate));
  for (size_t i = 0; i < audio.size(); ++i)
    audio[i] = (i / 4000) % 3 == 0 ? 0.0f : 0.3f * std::sin(0.05f * static_cast<float>(i));
  DecodeOptions o;
  o.mode = DecodeMode::CtcPrefixBeam;
  o.max_segment_seconds = 30;
  const Recognizer recognizer(model, Units(), o);
  // Whole-file: the pieces quiet_split_points gives, each decoded alone, joined.
  std::vector<int64_t> want;
  size_t begin = 0;
  const std::vector<size_t> cuts = quiet_split_points(audio, rate, 30);
  ASSERT_EQ(cuts.size(), 2u);
  for (size_t i = 0; i <= cuts.size(); ++i) {
    const size_t end = i < cuts.size() ? cuts[i] : audio.size();
    const auto r = recognizer.recognize(std::vector<float>(audio.begin() + begin, audio.begin() + end));
    want.insert(want.end(), r.tokens.begin(), r.tokens.end());
    begin = end;
  }
  EXPECT_EQ(recognizer.recognize(audio).tokens, want);
  // Read as a stream, the same pieces come out while at most 31 s of audio
  // are held: what has been read, less what has been decoded.
  size_t taken = 0, decoded = 0, most_held = 0;
  std::vector<size_t> ends;
  for_each_quiet_piece(
      [&](std::vector<float>& out, size_t max_samples) {
        const size_t n = std::min({max_samples, size_t{4000}, audio.size() - taken});
        out.insert(out.end(), audio.begin() + taken, audio.begin() + taken + n);
        taken += n;
        most_held = std::max(most_held, taken - decoded);
        return n;
      },
      rate, 30, [&](const std::vector<float>& piece) {
        decoded += piece.size();
        ends.push_back(decoded);
      });
  EXPECT_EQ(ends, (std::vector<size_t>{cuts[0], cuts[1], audio.size()}));
  EXPECT_LE(most_held, static_cast<size_t>(31 * rate + 1));
  if (have_audio_files()) {
    const std::string wav = temp_dir("long_audio") + "/long.wav";
    write_wav16(wav, audio, rate);
    const Audio back = load_audio(wav, rate);
    EXPECT_EQ(recognizer.recognize_file(wav).tokens, recognizer.recognize(back.samples).tokens);
  }
  // Streaming: the current segment never holds more than 30 s of encoder output.
  o.chunk_size = 8;
  const Recognizer streaming(model, Units(), o);
  StreamingSession session(streaming);
  int64_t longest = 0;
  for (size_t pos = 0; pos < audio.size(); pos += 1600) {
    session.accept_waveform(audio.data() + pos, std::min<size_t>(1600, audio.size() - pos));
    longest = std::max(longest, session.encoder_out().size(1));
  }
  EXPECT_LE(longest, 30 * 25);
  EXPECT_GT(longest, 0);
  EXPECT_NO_THROW(session.finish());
}

// A torch.save zip around `pickle`.
std::string torch_zip(const std::string& pickle) {
  std::string bytes;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
    bytes.append(static_cast<const char*>(data), n);
    return n;
  });
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  writer.writeEndOfFile();
  return bytes;
}

TEST(HostileInput, APickleNestedAMillionDeepOrHoldingItselfIsFreedWithoutRecursion) {
  constexpr int kDepth = 1000000;
  // [[[[...]]]]: a million EMPTY_LISTs, each appended into the one below.
  const std::string deep =
      std::string("\x80\x02", 2) + std::string(kDepth, ']') + std::string(kDepth - 1, 'a') + ".";
  EXPECT_NE(error_of<std::invalid_argument>([&] { parse_torch_checkpoint(torch_zip(deep), "deep.pt"); })
                .find("holds no tensors"),
            std::string::npos);
  // l = []; l.append(l): a cycle.
  const char ops[] = "\x80\x02]q\x00h\x00" "a.";
  const std::string cycle(ops, sizeof ops - 1);
  EXPECT_NE(error_of<std::invalid_argument>([&] { parse_torch_checkpoint(torch_zip(cycle), "cycle.pt"); })
                .find("holds no tensors"),
            std::string::npos);
}

// The fuzz targets' seeds and the reproducers of what they found
// (fuzz/corpus/<target>), replayed through the same readers in every build.
TEST(HostileInput, FuzzCorpusFilesAreReadOrRefusedByName) {
  const std::string corpus = std::string(MOEKIT_SOURCE_DIR) + "/fuzz/corpus";
  int files = 0;
  const auto replay = [&](const std::string& target, const std::function<void(const std::string&)>& read) {
    for (const auto& entry : fs::directory_iterator(corpus + "/" + target)) {
      ++files;
      try {
        read(entry.path().string());
      } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(entry.path().filename().string()), std::string::npos) << e.what();
      }
    }
  };
  replay("safetensors", [](const std::string& path) { read_safetensors(path); });
  replay("pickle", [](const std::string& path) { read_torch_checkpoint(path); });
  if (have_audio_files()) replay("audio", [](const std::string& path) { load_audio(path, 16000); });
  replay("decode_words", [](const std::string& path) {  // the language model before the first NUL
    const std::string bytes = read_file(path);
    NgramLm::parse(bytes.substr(0, bytes.find('\0')), path);
  });
  // tokenizer.json, an optional tokenizer_config.json and a text, split at
  // NUL bytes; the files go to a directory named after the corpus file.
  const auto split_at_nul = [](const std::string& bytes, size_t count) {
    std::vector<std::string> parts;
    for (size_t begin = 0; parts.size() < count;) {
      const size_t nul = parts.size() + 1 < count ? bytes.find('\0', begin) : std::string::npos;
      parts.push_back(bytes.substr(begin, nul == std::string::npos ? std::string::npos : nul - begin));
      if (nul == std::string::npos) break;
      begin = nul + 1;
    }
    parts.resize(count);
    return parts;
  };
  int tokenizers = 0;
  replay("hf_tokenizer", [&](const std::string& path) {
    const std::vector<std::string> parts = split_at_nul(read_file(path), 3);
    const std::string dir = temp_dir("fuzz_tokenizer") + "/" + fs::path(path).filename().string();
    make_dirs(dir);
    write_file_atomic(dir + "/tokenizer.json", parts[0]);
    if (!parts[1].empty()) write_file_atomic(dir + "/tokenizer_config.json", parts[1]);
    const HfTokenizer tokenizer(dir + "/tokenizer.json");
    ++tokenizers;
    try {
      tokenizer.decode(tokenizer.encode(parts[2]));
    } catch (const std::invalid_argument&) {  // a text that is not UTF-8
    }
  });
  EXPECT_GE(tokenizers, 7) << "the seeds, made from real tokenizers' settings, must load";
  // A data.list, a Kaldi wav.scp and text, and a units.txt, split at NUL
  // bytes: the speech data a training run reads, and the units it writes
  // read back.
  int speech_sets = 0;
  replay("asr_data", [&](const std::string& path) {
    const std::vector<std::string> parts = split_at_nul(read_file(path), 4);
    const std::string dir = temp_dir("fuzz_asr_data") + "/" + fs::path(path).filename().string();
    make_dirs(dir);
    write_file_atomic(dir + ".list", parts[0]);
    write_file_atomic(dir + "/wav.scp", parts[1]);
    write_file_atomic(dir + "/text", parts[2]);
    if (!parts[3].empty()) Units::parse(parts[3], path);
    for (const std::string& source : {dir + ".list", dir}) {
      try {
        const std::vector<Utterance> data = read_asr_data(source);
        const Units units = build_char_units(data);
        const Units back = Units::parse(units.serialize(), source);
        ASSERT_EQ(back.size(), units.size()) << source;
        for (const Utterance& u : data) EXPECT_EQ(tokenize(u.text, back, u.key), tokenize(u.text, units, u.key));
        ++speech_sets;
      } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(fs::path(path).filename().string()), std::string::npos) << e.what();
      }
    }
  });
  EXPECT_GE(speech_sets, 4) << "the seeds hold two data lists and two Kaldi directories that must load";
  EXPECT_GE(files, 19);
  // The reproducer of a zip whose directory points past the end of the file.
  EXPECT_NE(error_of<std::invalid_argument>([&] { read_torch_checkpoint(corpus + "/pickle/regression-read-past-end.pt"); }),
            "");
}

TEST(HostileInput, TensorsOfTheWrongKindOrSharingBytesAreRefused) {
  const std::string dir = temp_dir("hostile_tensors");
  // An int32 tensor where the model holds floats: refused, not cast.
  FfnStack stack(small_stack_options(8, 1));
  TensorMap weights = module_state(stack);
  const std::string victim = weights.begin()->first;
  weights[victim] = torch::ones(weights[victim].sizes(), torch::kInt32);
  const std::string err = error_of<std::invalid_argument>([&] { load_module_state(stack, weights, "m"); });
  EXPECT_NE(err.find("wrong dtype"), std::string::npos) << err;
  EXPECT_NE(err.find(victim), std::string::npos) << err;
  // A bf16 checkpoint into fp32 weights is a declared float conversion.
  TensorMap bf16 = module_state(stack);
  for (auto& [name, t] : bf16) t = t.to(torch::kBFloat16);
  EXPECT_NO_THROW(load_module_state(stack, bf16, "m"));

  // Two tensors sharing bytes with an empty one sorted between them.
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
      R"("b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
      R"("c":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  file += header + std::string(16, '\0');
  write_file_atomic(dir + "/overlap.safetensors", file);
  EXPECT_NE(error_of<std::invalid_argument>([&] { read_safetensors(dir + "/overlap.safetensors"); })
                .find("overlapping"),
            std::string::npos);
}

TEST(HostileInput, ImportHfReadsOnlyFilesInsideItsInputAndEchoesNoBytes) {
  const std::string dir = temp_dir("hostile_hf");
  LmModel lm(tiny_lm_config());
  export_hf_llama({lm.config(), module_state(lm)}, dir + "/hf");
  fs::create_symlink("/etc/passwd", dir + "/hf/tokenizer.model");
  expect_cli_error("import hf " + dir + "/hf " + dir + "/out", "leads outside");
  EXPECT_FALSE(path_exists(dir + "/out"));
  fs::remove(dir + "/hf/tokenizer.model");
  // A shard symlinked to a system file: refused, and its bytes never shown.
  fs::rename(dir + "/hf/model.safetensors", dir + "/model.safetensors");
  write_file_atomic(dir + "/hf/model.safetensors.index.json",
                    R"({"weight_map": {"model.embed_tokens.weight": "shard-1.safetensors"}})");
  fs::create_symlink("/etc/passwd", dir + "/hf/shard-1.safetensors");
  const CliRun run = run_cli("import hf " + dir + "/hf " + dir + "/out", "timeout 60");
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find("leads outside"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("root"), std::string::npos) << run.output;
  // A units.txt that is some other file: its lines are described, not quoted.
  write_file_atomic(dir + "/units.txt", "root:x:0:0:root:/root:/bin/bash\n");
  const std::string units = error_of<std::invalid_argument>([&] { Units::read(dir + "/units.txt"); });
  EXPECT_NE(units.find("units.txt:1"), std::string::npos) << units;
  EXPECT_EQ(units.find("root"), std::string::npos) << units;
  // JSON syntax errors say where, not what was read.
  write_file_atomic(dir + "/hf/config.json", "root:x:0:0:root");
  const std::string json = error_of<std::invalid_argument>([&] { import_hf_llama(dir + "/hf"); });
  EXPECT_NE(json.find("syntax error at byte"), std::string::npos) << json;
  EXPECT_EQ(json.find("root"), std::string::npos) << json;
}

TEST(HostileInput, WritersRefuseExistingOutputsAndNeverTheirInput) {
  const std::string dir = temp_dir("hostile_outputs");
  LmModel lm(tiny_lm_config());
  save_lm_dir({lm.config(), module_state(lm)}, dir + "/lm");
  export_hf_llama({lm.config(), module_state(lm)}, dir + "/hf");
  // An existing output with a stray file from an ASR model.
  make_dirs(dir + "/out");
  write_file_atomic(dir + "/out/units.txt", "<blank> 0\n");
  expect_cli_error("import hf " + dir + "/hf " + dir + "/out", "pass --force");
  EXPECT_TRUE(path_exists(dir + "/out/units.txt"));
  const CliRun forced = run_cli("import hf " + dir + "/hf " + dir + "/out --force");
  ASSERT_EQ(forced.exit_code, 0) << forced.output;
  EXPECT_FALSE(path_exists(dir + "/out/units.txt")) << "the old output must be replaced whole";
  EXPECT_TRUE(path_exists(dir + "/out/model.safetensors"));
  // A command never writes over its own input, not even with --force.
  for (const std::string& args : {"grow " + dir + "/lm " + dir + "/lm --n-layers 3 --force",
                                   "upcycle " + dir + "/lm " + dir + "/lm/.. --experts 2 --force",
                                   "export hf " + dir + "/lm " + dir + "/lm --force"}) {
    expect_cli_error(args, "is or holds the input");
  }
  EXPECT_NO_THROW(read_lm_dir(dir + "/lm"));
  // Nothing half-written is left beside the outputs.
  for (const auto& entry : fs::directory_iterator(dir))
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
}

}  // namespace
}  // namespace moekit
