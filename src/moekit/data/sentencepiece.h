#pragma once
// SentencePiece (BPE / unigram) units for ASR, as WeNet uses them: the
// transcript is split into pieces by a SentencePiece model, pieces map to
// ids through units.txt. Decoding needs only units.txt ("▁" = space).
//
// The model runs in this process through the moekit_spm module (a small C
// interface to libsentencepiece, loaded with dlopen and RTLD_DEEPBIND:
// Debian's libsentencepiece carries its own protobuf-lite 3.14 with exported
// symbols, LibTorch the system's libprotobuf 3.21, and linking both crashes
// before main; data/spm_shim.cpp says how). Where the module is absent (a
// build without libsentencepiece-dev, or MOEKIT_SPM_MODULE=none), the same
// functions run SentencePiece's command-line tools (spm_encode,
// spm_export_vocab) once per batch of texts, with the same results.
#include <string>
#include <vector>

#include "moekit/data/units.h"

namespace moekit {

bool have_sentencepiece();
// Whether SentencePiece runs in this process (the module loaded and not
// turned off by set_sentencepiece_in_process(false), which tests use to
// compare it with the tools).
bool sentencepiece_in_process();
void set_sentencepiece_in_process(bool enabled);

// spm_export_vocab's output for `model`: one "piece<TAB>score" line per id.
std::string spm_export_vocab(const std::string& model, const std::string& what);

// 'text' quoted for /bin/sh.
std::string shell_quote(const std::string& text);
// Runs a SentencePiece command line (stderr discarded); returns its stdout,
// or throws std::invalid_argument naming `what` when it fails.
std::string run_sentencepiece_tool(const std::string& command, const std::string& what);  // spm_encode and spm_export_vocab on PATH

// Runs spm_encode with `model` on `texts` (one line each; a text holding a
// line break is refused) through a temporary file, removed afterwards;
// returns spm_encode's output line for each text. output_format: piece | id.
std::vector<std::string> spm_encode_lines(const std::string& model, const std::vector<std::string>& texts,
                                          const std::string& output_format, const std::string& what);

class SentencePieceTokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& model_path);

  // <blank>, <unk>, the model's pieces (controls and <unk> left out), <sos/eos>.
  Units units() const;
  // Pieces of each text mapped through `units`; pieces without a unit become
  // <unk>, or raise an error naming them when `units` has none.
  std::vector<std::vector<int64_t>> encode(const std::vector<std::string>& texts, const Units& units,
                                           const std::string& where) const;
  std::vector<int64_t> encode(const std::string& text, const Units& units, const std::string& where) const {
    return encode(std::vector<std::string>{text}, units, where).at(0);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace moekit
