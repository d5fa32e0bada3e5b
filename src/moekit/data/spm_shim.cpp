// A C interface to libsentencepiece, built as its own loadable module
// (moekit_spm). MoEKit loads it with dlopen(RTLD_LOCAL | RTLD_DEEPBIND), never
// links it: Debian's libsentencepiece.so.0 carries its own copy of
// protobuf-lite 3.14 with exported symbols, while LibTorch links the
// system's libprotobuf 3.21. Linked into one process, the dynamic linker
// binds libprotobuf's start-up code to SentencePiece's copy (a segfault in
// DescriptorPool::InternalAddGeneratedFile before main); loaded later
// without DEEPBIND, SentencePiece's code binds to libprotobuf 3.21 and its
// version check aborts. With DEEPBIND the module and its dependencies
// resolve to their own copy first, and LOCAL keeps it out of everyone
// else's way (data/sentencepiece.cpp).
//
// Texts and results cross as bytes: a line of output is what spm_encode
// prints for the line (pieces or ids joined by spaces); the vocabulary what
// spm_export_vocab prints (piece, tab, score per line).
#include <sentencepiece_processor.h>

#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace {

// Copies s into out when it fits (with a terminating NUL); returns its length.
size_t give(const std::string& s, char* out, size_t cap) {
  if (s.size() < cap) std::memcpy(out, s.c_str(), s.size() + 1);
  return s.size();
}

}  // namespace

extern "C" {

// A loaded model, or null with the reason in err (NUL-terminated, cut to cap).
void* moekit_spm_load(const char* path, char* err, size_t cap) {
  auto* sp = new sentencepiece::SentencePieceProcessor;
  const sentencepiece::util::Status status = sp->Load(path);
  if (!status.ok()) {
    const std::string message = status.ToString();
    if (cap > 0) {
      const size_t n = std::min(message.size(), cap - 1);
      std::memcpy(err, message.data(), n);
      err[n] = '\0';
    }
    delete sp;
    return nullptr;
  }
  return sp;
}

void moekit_spm_free(void* model) { delete static_cast<sentencepiece::SentencePieceProcessor*>(model); }

// spm_encode's line for `text` (pieces, or ids when as_ids); the length it
// needs, written to out when it fits; -1 when SentencePiece fails.
long moekit_spm_encode(void* model, const char* text, size_t length, int as_ids, char* out, size_t cap) {
  const auto* sp = static_cast<const sentencepiece::SentencePieceProcessor*>(model);
  std::string line;
  if (as_ids) {
    std::vector<int> ids;
    if (!sp->Encode(absl::string_view(text, length), &ids).ok()) return -1;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
  } else {
    std::vector<std::string> pieces;
    if (!sp->Encode(absl::string_view(text, length), &pieces).ok()) return -1;
    for (size_t i = 0; i < pieces.size(); ++i) line += (i ? " " : "") + pieces[i];
  }
  return static_cast<long>(give(line, out, cap));
}

// spm_export_vocab's output; the length it needs, written to out when it fits.
long moekit_spm_vocab(void* model, char* out, size_t cap) {
  const auto* sp = static_cast<const sentencepiece::SentencePieceProcessor*>(model);
  std::ostringstream vocab;
  for (int id = 0; id < sp->GetPieceSize(); ++id) vocab << sp->IdToPiece(id) << "\t" << sp->GetScore(id) << "\n";
  return static_cast<long>(give(vocab.str(), out, cap));
}

}  // extern "C"
