#include "moekit/data/sentencepiece.h"

#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include "moekit/core/check.h"
#include "moekit/core/file_io.h"

namespace moekit {
namespace {

// The SentencePiece library in this process, through the moekit_spm module
// (spm_shim.cpp, which says why it is loaded with RTLD_DEEPBIND and never
// linked). Found as $MOEKIT_SPM_MODULE ("none": never), else
// libmoekit_spm.so beside the running executable, else where the build put
// it. Models are loaded once per file version (path, size, mtime).
class SpmModule {
 public:
  static SpmModule& instance() {
    static SpmModule* module = new SpmModule;  // never unloaded: models may outlive static destruction
    return *module;
  }
  bool loaded() const { return handle_ != nullptr; }

  // spm_encode's output lines for `texts`.
  std::vector<std::string> encode(const std::string& path, const std::vector<std::string>& texts, bool as_ids,
                                  const std::string& what) {
    void* m = model(path, what);
    std::vector<std::string> lines;
    std::string out(256, '\0');
    for (const std::string& text : texts) {
      long n = encode_(m, text.data(), text.size(), as_ids ? 1 : 0, out.data(), out.size());
      if (n >= 0 && static_cast<size_t>(n) >= out.size()) {
        out.resize(static_cast<size_t>(n) + 1);
        n = encode_(m, text.data(), text.size(), as_ids ? 1 : 0, out.data(), out.size());
      }
      MOEKIT_CHECK_ARG(n >= 0, what, ": SentencePiece could not encode a text");
      lines.emplace_back(out.data(), static_cast<size_t>(n));
    }
    return lines;
  }

  // spm_export_vocab's output.
  std::string vocab(const std::string& path, const std::string& what) {
    void* m = model(path, what);
    const long n = vocab_(m, nullptr, 0);
    std::string out(static_cast<size_t>(n) + 1, '\0');
    vocab_(m, out.data(), out.size());
    out.resize(static_cast<size_t>(n));
    return out;
  }

 private:
  using LoadFn = void* (*)(const char*, char*, size_t);
  using FreeFn = void (*)(void*);
  using EncodeFn = long (*)(void*, const char*, size_t, int, char*, size_t);
  using VocabFn = long (*)(void*, char*, size_t);

  struct Model {
    uintmax_t size = 0;
    std::filesystem::file_time_type mtime;
    std::shared_ptr<void> handle;
  };

  SpmModule() {
    const char* env = std::getenv("MOEKIT_SPM_MODULE");
    std::vector<std::string> candidates;
    if (env != nullptr && *env != '\0') {
      if (std::string(env) == "none") return;
      candidates.push_back(env);
    } else {
      std::error_code ec;
      const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
      if (!ec) candidates.push_back((exe.parent_path() / "libmoekit_spm.so").string());
#ifdef MOEKIT_SPM_MODULE_PATH
      candidates.push_back(MOEKIT_SPM_MODULE_PATH);
#endif
    }
    for (const std::string& path : candidates) {
      if (!path_exists(path)) continue;
      void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (h == nullptr) continue;
      load_ = reinterpret_cast<LoadFn>(::dlsym(h, "moekit_spm_load"));
      free_ = reinterpret_cast<FreeFn>(::dlsym(h, "moekit_spm_free"));
      encode_ = reinterpret_cast<EncodeFn>(::dlsym(h, "moekit_spm_encode"));
      vocab_ = reinterpret_cast<VocabFn>(::dlsym(h, "moekit_spm_vocab"));
      if (load_ && free_ && encode_ && vocab_) {
        handle_ = h;
        return;
      }
      ::dlclose(h);
    }
  }

  void* model(const std::string& path, const std::string& what) {
    std::error_code ec;
    const uintmax_t size = std::filesystem::file_size(path, ec);
    MOEKIT_CHECK_ARG(!ec, what, ": cannot read the SentencePiece model ", path);
    const auto mtime = std::filesystem::last_write_time(path, ec);
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = models_.find(path);
    if (it != models_.end() && it->second.size == size && it->second.mtime == mtime) return it->second.handle.get();
    char err[512] = {0};
    void* m = load_(path.c_str(), err, sizeof err);
    MOEKIT_CHECK_ARG(m != nullptr, what, ": not a SentencePiece model (", err, ")");
    models_[path] = Model{size, mtime, std::shared_ptr<void>(m, free_)};
    return m;
  }

  void* handle_ = nullptr;
  LoadFn load_ = nullptr;
  FreeFn free_ = nullptr;
  EncodeFn encode_ = nullptr;
  VocabFn vocab_ = nullptr;
  std::mutex mutex_;
  std::map<std::string, Model> models_;
};

std::atomic<bool>& in_process_flag() {
  static std::atomic<bool> flag{true};
  return flag;
}

bool use_module() { return in_process_flag().load() && SpmModule::instance().loaded(); }

}  // namespace

bool sentencepiece_in_process() { return use_module(); }
void set_sentencepiece_in_process(bool enabled) { in_process_flag().store(enabled); }

std::string spm_export_vocab(const std::string& model, const std::string& what) {
  if (use_module()) return SpmModule::instance().vocab(model, what);
  return run_sentencepiece_tool("spm_export_vocab --model=" + shell_quote(model), what);
}

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
  if (use_module()) return true;
  return std::system("command -v spm_encode > /dev/null 2>&1 && command -v spm_export_vocab > /dev/null 2>&1") == 0;
}

std::vector<std::string> spm_encode_lines(const std::string& model, const std::vector<std::string>& texts,
                                          const std::string& output_format, const std::string& what) {
  for (const auto& t : texts) {
    MOEKIT_CHECK_ARG(t.find('\n') == std::string::npos, what, ": a text to encode holds a line break");
  }
  if (use_module()) {
    MOEKIT_CHECK_ARG(output_format == "piece" || output_format == "id", what, ": output format ", output_format,
                     " is not piece or id");
    return SpmModule::instance().encode(model, texts, output_format == "id", what);
  }
  std::string input;  // the tool reads one text per line
  for (const auto& t : texts) input += t + "\n";
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
                   ": SentencePiece not found (neither the moekit_spm module nor the tools spm_encode and "
                   "spm_export_vocab); install the sentencepiece package");
  try {
    units();
  } catch (const std::exception&) {
    throw std::invalid_argument(model_path + ": not a SentencePiece model");
  }
}

Units SentencePieceTokenizer::units() const {
  const std::string vocab = spm_export_vocab(path_, path_);
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
