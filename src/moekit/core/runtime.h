#pragma once
// Runtime settings that are not model hyperparameters: threads and the BLAS
// behind LibTorch.
#include <string>

namespace moekit {

// Sets LibTorch's intra-op threads and, when OpenBLAS is the BLAS in use, its
// thread count too, so that both agree (LibTorch does not do the latter).
void set_num_threads(int threads);

// Threads LibTorch's intra-op pool uses.
int num_threads();

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

}  // namespace moekit
