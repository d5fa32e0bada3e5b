#include "moekit/data/sentencepiece.h"

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"

#ifdef MOEKIT_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace moekit {

#ifdef MOEKIT_HAVE_SENTENCEPIECE

bool have_sentencepiece() { return true; }

struct SentencePieceTokenizer::Impl {
  sentencepiece::SentencePieceProcessor processor;
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : impl_(std::make_unique<Impl>()), path_(model_path) {
  MOEKIT_CHECK_ARG(path_exists(model_path), model_path, ": no such SentencePiece model");
  const auto status = impl_->processor.Load(model_path);
  MOEKIT_CHECK_ARG(status.ok(), model_path, ": not a SentencePiece model (", status.ToString(), ")");
}

Units SentencePieceTokenizer::units() const {
  std::vector<std::string> symbols = {"<blank>", "<unk>"};
  for (int i = 0; i < impl_->processor.GetPieceSize(); ++i) {
    if (impl_->processor.IsControl(i) || impl_->processor.IsUnknown(i)) continue;
    symbols.push_back(impl_->processor.IdToPiece(i));
  }
  symbols.push_back("<sos/eos>");
  return Units(symbols);
}

std::vector<int64_t> SentencePieceTokenizer::encode(const std::string& text, const Units& units,
                                                    const std::string& where) const {
  std::vector<std::string> pieces;
  const auto status = impl_->processor.Encode(text, &pieces);
  MOEKIT_CHECK_ARG(status.ok(), where, ": SentencePiece failed (", status.ToString(), ")");
  std::vector<int64_t> ids;
  for (const auto& p : pieces) {
    int64_t id = units.id(p);
    if (id < 0) {
      MOEKIT_CHECK_ARG(units.unk_id() >= 0, where, ": piece '", p, "' has no unit and the units have no <unk>");
      id = units.unk_id();
    }
    ids.push_back(id);
  }
  return ids;
}

#else

bool have_sentencepiece() { return false; }
struct SentencePieceTokenizer::Impl {};
SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path) : path_(model_path) {
  throw std::invalid_argument(model_path + ": this build has no SentencePiece support: install libsentencepiece-dev, "
                              "then rebuild");
}
Units SentencePieceTokenizer::units() const { return Units(); }
std::vector<int64_t> SentencePieceTokenizer::encode(const std::string&, const Units&, const std::string&) const {
  return {};
}

#endif

SentencePieceTokenizer::~SentencePieceTokenizer() = default;
SentencePieceTokenizer::SentencePieceTokenizer(SentencePieceTokenizer&&) noexcept = default;

}  // namespace moekit
