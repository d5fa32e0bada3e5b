#include "moekit/data/lm_tokenizer.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/data/hf_tokenizer.h"
#include "moekit/data/sentencepiece.h"

namespace moekit {

void TokenizerTrainOptions::validate() const {
  MOEKIT_CHECK_ARG(!input.empty() && path_exists(input), "tokenizer: no such input file '", input, "'");
  MOEKIT_CHECK_ARG(!output.empty(), "tokenizer: no output path");
  MOEKIT_CHECK_ARG(vocab_size >= 8, "tokenizer: vocab_size must be >= 8, got ", vocab_size);
  MOEKIT_CHECK_ARG(model_type == "bpe" || model_type == "unigram", "tokenizer: model_type must be bpe or unigram, got '",
                   model_type, "'");
  MOEKIT_CHECK_ARG(character_coverage > 0 && character_coverage <= 1, "tokenizer: character_coverage must be in (0, 1]");
  MOEKIT_CHECK_ARG(input_sentence_size >= 0, "tokenizer: input_sentence_size must be >= 0");
  for (const std::string& symbol : user_defined_symbols) {
    MOEKIT_CHECK_ARG(!symbol.empty() && symbol.find_first_of(", \t\n") == std::string::npos,
                     "tokenizer: user-defined symbol '", symbol, "' must be non-empty, without commas or spaces");
  }
}

void train_tokenizer(const TokenizerTrainOptions& o) {
  o.validate();
  MOEKIT_CHECK_ARG(std::system("command -v spm_train > /dev/null 2>&1") == 0,
                   "tokenizer: spm_train not found; install the sentencepiece package");
  const std::string prefix = o.output + ".tmp" + std::to_string(::getpid());
  std::ostringstream cmd;
  cmd << "spm_train --input=" << shell_quote(o.input) << " --model_prefix=" << shell_quote(prefix)
      << " --vocab_size=" << o.vocab_size << " --model_type=" << o.model_type
      << " --character_coverage=" << o.character_coverage << " --byte_fallback=" << (o.byte_fallback ? "true" : "false")
      << " --random_seed=" << o.seed << " --num_threads=1 --minloglevel=2";
  if (o.split_digits) cmd << " --split_digits=true";
  if (!o.user_defined_symbols.empty()) {
    std::string symbols;
    for (const std::string& symbol : o.user_defined_symbols) symbols += (symbols.empty() ? "" : ",") + symbol;
    cmd << " --user_defined_symbols=" << shell_quote(symbols);
  }
  if (o.input_sentence_size > 0) cmd << " --input_sentence_size=" << o.input_sentence_size << " --shuffle_input_sentence=true";
  // spm_train's own message says why it failed (e.g. a vocabulary too large for the text).
  const std::string log = prefix + ".log";
  const int status = std::system((cmd.str() + " > " + shell_quote(log) + " 2>&1").c_str());
  std::string reason;
  if (status != 0 && path_exists(log)) {
    std::istringstream in(read_file(log));
    std::string line;
    std::string fallback;
    while (std::getline(in, line)) {
      if (reason.empty() && line.find("Check failed") != std::string::npos) reason = line.substr(line.find("Check failed"));
      // "... Internal: ./src/x.cc(580) [condition] The reason." -> "The reason."
      if (reason.empty() && line.find("Internal:") != std::string::npos && line.rfind("] ") != std::string::npos) {
        reason = line.substr(line.rfind("] ") + 2);
      }
      if (line.find("rror") != std::string::npos) fallback = line;
    }
    if (reason.empty()) reason = fallback;
  }
  std::remove(log.c_str());
  std::remove((prefix + ".vocab").c_str());
  if (status != 0) {
    std::remove((prefix + ".model").c_str());
    throw std::invalid_argument("tokenizer: spm_train failed on " + o.input + (reason.empty() ? "" : ": " + reason));
  }
  MOEKIT_CHECK(std::rename((prefix + ".model").c_str(), o.output.c_str()) == 0, "tokenizer: cannot write ", o.output);
}

namespace {
bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}
}  // namespace

std::string find_lm_tokenizer(const std::string& model_dir, const std::string& override_path) {
  if (!override_path.empty()) return override_path;
  for (const char* name : {"tokenizer.model", "tokenizer.json"}) {
    const std::string path = model_dir + "/" + name;
    if (path_exists(path)) return path;
  }
  throw std::invalid_argument(model_dir + ": no tokenizer.model or tokenizer.json (pass --tokenizer)");
}

void copy_lm_tokenizer(const std::string& path, const std::string& dir) {
  if (!ends_with(path, ".json")) {
    write_file_atomic(dir + "/tokenizer.model", read_file(path));
    return;
  }
  write_file_atomic(dir + "/tokenizer.json", read_file(path));
  // Beside it, as HfTokenizer looks for it.
  const std::string config = (std::filesystem::path(path).parent_path() / "tokenizer_config.json").string();
  if (path_exists(config))
    write_file_atomic(dir + "/tokenizer_config.json", read_file(config));
}

LmTokenizer::LmTokenizer(const std::string& model_path) : path_(model_path) {
  MOEKIT_CHECK_ARG(path_exists(model_path), model_path, ": no such tokenizer model");
  if (ends_with(model_path, ".json")) {
    hf_ = std::make_shared<const HfTokenizer>(model_path);
    pieces_.resize(static_cast<size_t>(hf_->vocab_size()));
    for (int64_t i = 0; i < hf_->vocab_size(); ++i) pieces_[static_cast<size_t>(i)] = hf_->token(i);
    bos_ = hf_->bos_id();
    eos_ = hf_->eos_id();
    return;
  }
  MOEKIT_CHECK_ARG(have_sentencepiece(), model_path,
                   ": SentencePiece not found (neither the moekit_spm module nor the tools spm_encode and "
                   "spm_export_vocab); install the sentencepiece package");
  std::string vocab;
  try {
    vocab = spm_export_vocab(path_, path_);
  } catch (const std::exception&) {
    throw std::invalid_argument(model_path + ": not a SentencePiece model");
  }
  std::istringstream in(vocab);
  std::string line;
  while (std::getline(in, line)) pieces_.push_back(line.substr(0, line.find('\t')));
  MOEKIT_CHECK_ARG(pieces_.size() >= 2, model_path, ": not a SentencePiece model (no pieces)");
  for (size_t i = 0; i < pieces_.size(); ++i) {
    if (pieces_[i] == "<s>") bos_ = static_cast<int64_t>(i);
    if (pieces_[i] == "</s>") eos_ = static_cast<int64_t>(i);
  }
}

int64_t LmTokenizer::id_of(const std::string& piece) const {
  if (hf_) return hf_->id_of(piece);
  for (size_t i = 0; i < pieces_.size(); ++i) {
    if (pieces_[i] == piece) return static_cast<int64_t>(i);
  }
  return -1;
}

namespace {

std::vector<std::vector<int64_t>> parse_id_lines(const std::string& out) {
  std::vector<std::vector<int64_t>> lines;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    std::vector<int64_t> ids;
    std::istringstream words(line);
    int64_t id;
    while (words >> id) ids.push_back(id);
    lines.push_back(std::move(ids));
  }
  return lines;
}

}  // namespace

std::vector<std::vector<int64_t>> LmTokenizer::encode(const std::vector<std::string>& texts) const {
  if (hf_) {
    std::vector<std::vector<int64_t>> out;
    for (const std::string& text : texts) out.push_back(hf_->encode(text, /*add_special_tokens=*/false));
    return out;
  }
  std::string out;
  for (const std::string& line : spm_encode_lines(path_, texts, "id", path_)) out += line + "\n";
  return parse_id_lines(out);
}

std::vector<int64_t> LmTokenizer::encode_file(const std::string& path) const {
  MOEKIT_CHECK_ARG(path_exists(path) && !is_directory(path), path, ": no such text file");
  if (hf_) {
    std::vector<int64_t> stream;
    std::istringstream in(read_file(path));
    std::string line;
    int64_t number = 0;
    while (std::getline(in, line)) {
      ++number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      std::vector<int64_t> ids;
      try {
        ids = hf_->encode(line, /*add_special_tokens=*/false);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(path + ":" + std::to_string(number) + ": " + e.what());
      }
      if (ids.empty()) continue;  // blank lines
      stream.insert(stream.end(), ids.begin(), ids.end());
      if (eos_ >= 0) stream.push_back(eos_);
    }
    return stream;
  }
  std::string out;
  if (sentencepiece_in_process()) {
    // Line by line as spm_encode reads the file (a last line without '\n' too).
    std::vector<std::string> lines;
    std::istringstream in(read_file(path));
    std::string line;
    while (std::getline(in, line)) lines.push_back(line);
    for (const std::string& ids : spm_encode_lines(path_, lines, "id", path)) out += ids + "\n";
  } else {
    out = run_sentencepiece_tool(
        "spm_encode --model=" + shell_quote(path_) + " --output_format=id < " + shell_quote(path), path);
  }
  std::vector<int64_t> stream;
  for (auto& ids : parse_id_lines(out)) {
    if (ids.empty()) continue;  // blank lines
    stream.insert(stream.end(), ids.begin(), ids.end());
    if (eos_ >= 0) stream.push_back(eos_);
  }
  return stream;
}

std::string LmTokenizer::decode(const std::vector<int64_t>& ids) const {
  if (hf_) return hf_->decode(ids, /*skip_special_tokens=*/true);
  std::string text;
  for (int64_t id : ids) {
    MOEKIT_CHECK_ARG(id >= 0 && id < vocab_size(), path_, ": token id ", id, " is outside the vocabulary of ",
                     vocab_size());
    const std::string& p = pieces_[static_cast<size_t>(id)];
    if (p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>') {
      text += static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16));
    } else if (p.size() >= 3 && p.front() == '<' && p.back() == '>') {
      continue;  // <s>, </s>, <unk>, <pad>
    } else {
      for (size_t i = 0; i < p.size();) {
        if (p.compare(i, 3, "\xe2\x96\x81") == 0) {
          text += ' ';
          i += 3;
        } else {
          text += p[i++];
        }
      }
    }
  }
  if (!text.empty() && text.front() == ' ') text.erase(0, 1);
  return text;
}

void check_tokenizer_fits(const LmTokenizer& tokenizer, const std::string& path, int64_t model_vocab) {
  MOEKIT_CHECK_ARG(tokenizer.vocab_size() <= model_vocab, path, ": the tokenizer has ", tokenizer.vocab_size(),
                   " ids, more than the model's vocabulary of ", model_vocab);
}

}  // namespace moekit
