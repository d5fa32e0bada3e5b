#include "moekit/data/sentencepiece.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"

namespace moekit {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string run_sentencepiece_tool(const std::string& command, const std::string& what) {
  FILE* pipe = ::popen((command + " 2>/dev/null").c_str(), "r");
  MOEKIT_CHECK(pipe, what, ": cannot start ", command);
  std::string out;
  char buffer[65536];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  const int status = ::pclose(pipe);
  MOEKIT_CHECK_ARG(status == 0, what, ": SentencePiece failed (is it a SentencePiece model? is the `sentencepiece` ",
                   "package installed?)");
  return out;
}

bool have_sentencepiece() {
  return std::system("command -v spm_encode > /dev/null 2>&1 && command -v spm_export_vocab > /dev/null 2>&1") == 0;
}

std::vector<std::string> spm_encode_lines(const std::string& model, const std::vector<std::string>& texts,
                                          const std::string& output_format, const std::string& what) {
  std::string input;
  for (const auto& t : texts) {
    MOEKIT_CHECK_ARG(t.find('\n') == std::string::npos, what, ": a text to encode holds a line break");
    input += t + "\n";
  }
  char name[] = "/tmp/moekit_spm_XXXXXX";
  const int fd = ::mkstemp(name);
  MOEKIT_CHECK(fd >= 0, what, ": cannot create a temporary file");
  ::close(fd);
  std::string out;
  try {
    write_file_atomic(name, input);
    out = run_sentencepiece_tool(
        "spm_encode --model=" + shell_quote(model) + " --output_format=" + output_format + " < " + shell_quote(name),
        what);
  } catch (...) {
    std::remove(name);
    throw;
  }
  std::remove(name);
  std::vector<std::string> lines;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  MOEKIT_CHECK(lines.size() == texts.size(), what, ": spm_encode returned ", lines.size(), " lines for ",
               texts.size(), " texts");
  return lines;
}

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path) : path_(model_path) {
  MOEKIT_CHECK_ARG(path_exists(model_path), model_path, ": no such SentencePiece model");
  MOEKIT_CHECK_ARG(have_sentencepiece(), model_path,
                   ": SentencePiece tools (spm_encode, spm_export_vocab) not found; install the sentencepiece package");
  try {
    units();
  } catch (const std::exception&) {
    throw std::invalid_argument(model_path + ": not a SentencePiece model");
  }
}

Units SentencePieceTokenizer::units() const {
  const std::string vocab = run_sentencepiece_tool("spm_export_vocab --model=" + shell_quote(path_), path_);
  std::vector<std::string> symbols = {"<blank>", "<unk>"};
  std::istringstream in(vocab);
  std::string line;
  while (std::getline(in, line)) {
    const std::string piece = line.substr(0, line.find('\t'));
    if (piece.empty() || piece == "<unk>" || piece == "<s>" || piece == "</s>") continue;
    symbols.push_back(piece);
  }
  MOEKIT_CHECK_ARG(symbols.size() > 2, path_, ": not a SentencePiece model (no pieces)");
  symbols.push_back("<sos/eos>");
  return Units(symbols);
}

std::vector<std::vector<int64_t>> SentencePieceTokenizer::encode(const std::vector<std::string>& texts,
                                                                 const Units& units, const std::string& where) const {
  const std::vector<std::string> lines = spm_encode_lines(path_, texts, "piece", where);
  std::vector<std::vector<int64_t>> result;
  for (const std::string& line : lines) {
    std::vector<int64_t> ids;
    std::istringstream pieces(line);
    std::string p;
    while (pieces >> p) {
      int64_t id = units.id(p);
      if (id < 0) {
        MOEKIT_CHECK_ARG(units.unk_id() >= 0, where, ": piece '", p, "' has no unit and the units have no <unk>");
        id = units.unk_id();
      }
      ids.push_back(id);
    }
    result.push_back(std::move(ids));
  }
  return result;
}

}  // namespace moekit
