#include "moekit/core/runtime.h"

#include "moekit/core/check.h"

#include <dlfcn.h>
#include <unistd.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <iterator>
#include <climits>
#include <cstdlib>
#include <filesystem>

namespace moekit {
namespace {

template <typename Fn>
Fn find_symbol(const char* name) {
  return reinterpret_cast<Fn>(::dlsym(RTLD_DEFAULT, name));
}

}  // namespace

void set_num_threads(int threads) {
  if (threads <= 0) return;
  torch::set_num_threads(threads);
  if (auto set_blas = find_symbol<void (*)(int)>("openblas_set_num_threads")) set_blas(threads);
}

int num_threads() { return torch::get_num_threads(); }

CpuFeatures cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512cd");
#endif
  return f;
}

std::string blas_core_upgrade(const std::string& openblas_core, const CpuFeatures& cpu) {
  // OpenBLAS's x86-64 cores without AVX2 kernels (its fallbacks for CPUs it does not know).
  static const char* const kPreAvx2[] = {"Prescott", "Core2",   "Penryn",    "Dunnington", "Nehalem",  "Sandybridge",
                                         "Atom",     "Opteron", "Opteron(SSE3)", "Barcelona", "Bobcat", "Bulldozer",
                                         "Piledriver", "Steamroller", "Excavator", "Nano"};
  const bool pre_avx2 = std::any_of(std::begin(kPreAvx2), std::end(kPreAvx2),
                                    [&](const char* name) { return openblas_core == name; });
  if (!pre_avx2) return "";
  if (cpu.avx512) return "SkylakeX";
  if (cpu.avx2 && cpu.fma) return "Haswell";
  return "";
}

std::string openblas_core() {
  auto get_corename = find_symbol<char* (*)()>("openblas_get_corename");
  const char* name = get_corename ? get_corename() : nullptr;
  return name ? name : "";
}

void apply_runtime_environment(char** argv, bool thread_wait) {
  bool changed = false;
  if (thread_wait && std::getenv(kThreadWaitMarker) == nullptr) {
    for (const ThreadWaitSetting& s : kThreadWaitSettings) {
      if (std::getenv(s.variable) == nullptr && std::getenv(s.unless_set) == nullptr) {
        ::setenv(s.variable, s.value, 0);
        changed = true;
      }
    }
    ::setenv(kThreadWaitMarker, "1", 0);
  }
  // A core the user chose (or this function chose before the re-exec) stays.
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr) {
    const std::string core = blas_core_upgrade(openblas_core(), cpu_features());
    if (!core.empty()) {
      ::setenv("OPENBLAS_CORETYPE", core.c_str(), 0);
      ::setenv("MOEKIT_SET_OPENBLAS_CORETYPE", openblas_core().c_str(), 1);  // what OpenBLAS had picked
      changed = true;
    }
  }
  if (changed) ::execv("/proc/self/exe", argv);  // returns only on failure
}

void apply_thread_wait_settings(char** argv) { apply_runtime_environment(argv, true); }

namespace {
using SetThreadsFn = void (*)(int);
using GetThreadsFn = int (*)();
SetThreadsFn openblas_set_threads() {
  static const SetThreadsFn fn = find_symbol<SetThreadsFn>("openblas_set_num_threads");
  return fn;
}
GetThreadsFn openblas_get_threads() {
  static const GetThreadsFn fn = find_symbol<GetThreadsFn>("openblas_get_num_threads");
  return fn;
}
}  // namespace

ScopedSingleThreadedBlas::ScopedSingleThreadedBlas() {
  if (openblas_set_threads() != nullptr && openblas_get_threads() != nullptr) {
    saved_threads_ = openblas_get_threads()();
    if (saved_threads_ != 1) openblas_set_threads()(1);
  }
}

ScopedSingleThreadedBlas::~ScopedSingleThreadedBlas() {
  if (saved_threads_ > 1) openblas_set_threads()(saved_threads_);
}

BlasInfo blas_info() {
  BlasInfo info;
  void* sgemm = ::dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info where{};
  if (sgemm != nullptr && ::dladdr(sgemm, &where) != 0 && where.dli_fname != nullptr) {
    std::error_code ec;
    std::filesystem::path resolved = std::filesystem::canonical(where.dli_fname, ec);
    info.library = ec ? where.dli_fname : resolved.string();
  }
  if (auto get_config = find_symbol<char* (*)()>("openblas_get_config")) {
    info.name = "OpenBLAS";
    info.config = get_config();
    if (auto get_threads = find_symbol<int (*)()>("openblas_get_num_threads")) info.threads = get_threads();
  } else if (find_symbol<void*>("mkl_get_max_threads") != nullptr) {
    info.name = "MKL";
  } else if (info.library.find("/blas/") != std::string::npos ||
             info.library.find("libblas.so") != std::string::npos) {
    info.name = "reference BLAS";
    info.reference = true;
  } else {
    info.name = info.library.empty() ? "none found" : "unknown";
  }
  return info;
}

double gemm_gflops(int n, double seconds) {
  torch::NoGradGuard no_grad;
  // Constant inputs: a probe must not consume the global RNG (training runs resume it exactly).
  torch::Tensor a = torch::full({n, n}, 0.5f);
  torch::Tensor b = torch::full({n, n}, 0.25f);
  torch::Tensor c = torch::empty({n, n});
  torch::mm_out(c, a, b);  // warm-up
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  int64_t runs = 0;
  double elapsed = 0.0;
  do {
    torch::mm_out(c, a, b);
    ++runs;
    elapsed = std::chrono::duration<double>(clock::now() - start).count();
  } while (elapsed < seconds);
  return 2.0 * n * n * static_cast<double>(n) * runs / elapsed / 1e9;
}

c10::Device parse_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  MOEKIT_CHECK_ARG(name == "cuda" || name.rfind("cuda:", 0) == 0, "unknown device '", name,
                   "' (cpu, cuda or cuda:N)");
  int index = 0;
  if (name.size() > 5) {
    const std::string digits = name.substr(5);
    MOEKIT_CHECK_ARG(!digits.empty() && digits.size() < 4 && digits.find_first_not_of("0123456789") == std::string::npos,
                     "unknown device '", name, "' (cpu, cuda or cuda:N)");
    index = std::stoi(digits);
  }
  MOEKIT_CHECK_ARG(torch::cuda::is_available(), "device '", name,
                   "': this LibTorch sees no CUDA device (built without CUDA, or no GPU/driver here)");
  const int count = static_cast<int>(torch::cuda::device_count());
  MOEKIT_CHECK_ARG(index < count, "device '", name, "': only ", count, " CUDA device(s) here");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
}

void synchronize_device(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

}  // namespace moekit
