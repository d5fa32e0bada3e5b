#pragma once
// Runtime settings that are not model hyperparameters: threads, the BLAS
// behind LibTorch, the device models run on.
#include <c10/core/Device.h>

#include <string>

namespace moekit {

// Sets LibTorch's intra-op threads and, when OpenBLAS is the BLAS in use, its
// thread count too, so that both agree (LibTorch does not do the latter).
void set_num_threads(int threads);

// Threads LibTorch's intra-op pool uses.
int num_threads();

// The wait settings of the two thread pools behind LibTorch on CPU: libgomp's
// (ATen's parallel loops) and OpenBLAS's own. Both spin for a long time after
// each piece of work (libgomp ~300,000 iterations, OpenBLAS 2^28 cycles), so
// with two or more threads each pool burns the cores the other one needs
// whenever work alternates between ATen ops and GEMMs: on 2 cores, U2++
// training with 2 threads ran 1.75x slower than with 1 (bench/results/2026-11-24.md,
// "Thread pools: training with 2 threads").
// Both libraries read these variables once, when they are loaded.
struct ThreadWaitSetting {
  const char* variable;
  const char* value;
  const char* unless_set;  // another variable that also controls the same wait
};
inline constexpr ThreadWaitSetting kThreadWaitSettings[] = {
    {"GOMP_SPINCOUNT", "3000", "OMP_WAIT_POLICY"},
    {"OPENBLAS_THREAD_TIMEOUT", "10", "GOTO_THREAD_TIMEOUT"},
};
// Set in the environment once the settings are applied; set it yourself to
// keep the libraries' defaults.
inline constexpr const char* kThreadWaitMarker = "MOEKIT_THREAD_WAIT";

// Puts kThreadWaitSettings into the environment (a variable the user set
// stays as it is), and OPENBLAS_CORETYPE where blas_core_upgrade() names a
// core, then, when anything changed, re-executes the running program with
// argv so that the libraries see them. Returns when nothing had to change or
// the re-exec failed (the program then runs with the defaults). Call before
// any output or side effect: the program starts over.
void apply_thread_wait_settings(char** argv);
// The same with the thread-wait part optional (the CLI skips it for one
// thread, where the pools do not contend).
void apply_runtime_environment(char** argv, bool thread_wait);

// OpenBLAS built with DYNAMIC_ARCH (Debian's) picks its kernels by CPU model
// when it loads; a model it does not know (0.3.21: Intel family 6 model 207,
// Emerald Rapids) gets the SSE3 "Prescott" kernels, 4.8x slower at fp32 GEMM
// there (34 against 165 GFLOP/s, 1 thread) than the AVX-512 ones the CPU
// runs. Given the core OpenBLAS chose and the CPU's features, the core to ask
// for through OPENBLAS_CORETYPE ("SkylakeX" with AVX-512 F/BW/VL/DQ/CD,
// "Haswell" with AVX2 and FMA), or "" when the chosen core already uses AVX2
// or the CPU offers nothing better. Only pre-AVX2 choices are replaced.
struct CpuFeatures {
  bool avx2 = false, fma = false, avx512 = false;  // avx512: F, BW, VL, DQ and CD
};
CpuFeatures cpu_features();
std::string blas_core_upgrade(const std::string& openblas_core, const CpuFeatures& cpu);
// The running OpenBLAS's core ("" when the BLAS is not OpenBLAS).
std::string openblas_core();

// While alive, OpenBLAS runs single-threaded (restored afterwards), so that
// many threads can each run their own small GEMMs, as MoE experts want.
// A no-op when the BLAS is not OpenBLAS.
class ScopedSingleThreadedBlas {
 public:
  ScopedSingleThreadedBlas();
  ~ScopedSingleThreadedBlas();
  ScopedSingleThreadedBlas(const ScopedSingleThreadedBlas&) = delete;
  ScopedSingleThreadedBlas& operator=(const ScopedSingleThreadedBlas&) = delete;

 private:
  int saved_threads_ = -1;
};

struct BlasInfo {
  std::string library;      // shared object that provides sgemm_ (resolved path)
  std::string name;         // "OpenBLAS", "reference BLAS", "MKL", ... or "unknown"
  std::string config;       // openblas_get_config() where available
  int threads = -1;         // BLAS threads where the library reports them
  bool reference = false;   // true when the slow netlib reference BLAS is active
};

// Which BLAS LibTorch's GEMMs run on (found through the loaded sgemm_ symbol).
BlasInfo blas_info();

// Measures single-precision GEMM throughput (n x n x n) in GFLOP/s with the
// current thread settings; takes about `seconds` of wall time.
double gemm_gflops(int n = 512, double seconds = 0.3);

// "cpu", "cuda" or "cuda:N" as a device LibTorch can use here; a clear error
// names what is missing (no CUDA in this LibTorch, no such GPU).
c10::Device parse_device(const std::string& name);

// Waits for the device's queued work (a no-op on the CPU): timers around GPU
// work must call it before reading the clock.
void synchronize_device(const c10::Device& device);

}  // namespace moekit
