// `moekit bench kernels`: MoEKit's CPU kernels against their alternatives,
// side by side in one run (JSON):
// - panels: how fast the weight-panel kernel streams packed weights from
//   memory, per variant (software prefetch or not) and page size (2 MiB
//   transparent huge pages or 4 KiB), at several row counts, next to the
//   read-bandwidth probe;
// - int8: the int8 kernel's variants (kernels/int8_kernel.h) on the same
//   matrices as int8 panels (2 MiB pages), in weights per second beside the
//   float panels' (gb_per_s / 4);
// - bf16: the panel kernel's bf16 variants (panel_linear_bf16) on the same
//   matrices as bf16 panels (2 MiB pages): half the bytes per weight;
// - silu: the SiLU kernel's variants against ATen's silu, on a block that
//   stays in cache (as an FFN's hidden activations do).
// Run it with one thread: the kernels as one core runs them.
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "bench_util.h"
#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/core/runtime.h"
#include "moekit/kernels/int8_kernel.h"
#include "moekit/kernels/panel_kernel.h"
#include "moekit/kernels/silu_kernel.h"

namespace moekit::cli {
namespace {

struct BenchKernelsOptions {
  int64_t in = 2048, out = 256;  // one weight matrix [out, in], packed; the buffer holds many
  int64_t megabytes = 512;       // buffer size: well above the last-level cache share of one core
  std::vector<int64_t> rows = {1, 2, 4, 8, 12, 16, 24};
  int rounds = 3;
  int64_t silu_floats = 65536;
};

// A buffer of `bytes` with or without huge pages (a plain mapping, so the
// caching allocator's choice does not decide it).
struct Mapping {
  Mapping(size_t bytes, bool huge) : bytes_(bytes) {
#if defined(__linux__)
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    MOEKIT_CHECK(p != MAP_FAILED, "bench kernels: cannot map ", bytes, " bytes");
    madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    data_ = static_cast<float*>(p);
#else
    MOEKIT_CHECK_ARG(!huge, "bench kernels: huge pages need Linux");
    data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    MOEKIT_CHECK(data_ != nullptr, "bench kernels: cannot allocate ", bytes, " bytes");
#endif
  }
  ~Mapping() {
#if defined(__linux__)
    munmap(data_, bytes_);
#else
    std::free(data_);
#endif
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  size_t bytes_;
  float* data_ = nullptr;
};

}  // namespace

void add_bench_kernels_command(CLI::App& bench, const GlobalOptions& global) {
  auto o = std::make_shared<BenchKernelsOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "kernels", "CPU kernels side by side: weight panels streaming from memory (GB/s), SiLU vs ATen (JSON)");
  cmd->add_option("--in", o->in, "Input width of each packed matrix")->capture_default_str();
  cmd->add_option("--out", o->out, "Output width of each packed matrix (a multiple of 32)")->capture_default_str();
  cmd->add_option("--megabytes", o->megabytes, "Weights streamed per pass (MB)")->capture_default_str();
  cmd->add_option("--rows", o->rows, "Row counts (list)")->capture_default_str()->delimiter(',');
  cmd->add_option("--rounds", o->rounds, "Interleaved rounds; the best is reported")->capture_default_str();
  cmd->add_option("--silu-floats", o->silu_floats, "SiLU block size (floats)")->capture_default_str();
  cmd->callback([o, &global] {
    apply_runtime(global);
    MOEKIT_CHECK_ARG(o->in >= 1 && o->out >= detail::kPanelWidth && o->out % detail::kPanelWidth == 0,
                     "bench kernels: --in must be >= 1 and --out a positive multiple of ", detail::kPanelWidth);
    MOEKIT_CHECK_ARG(o->megabytes >= 1 && o->rounds >= 1, "bench kernels: bad --megabytes/--rounds");
    int64_t max_rows = 0;
    for (int64_t r : o->rows) {
      MOEKIT_CHECK_ARG(r >= 1 && r <= 4096, "bench kernels: --rows must lie in 1..4096, got ", r);
      max_rows = std::max(max_rows, r);
    }
    const int64_t matrix_floats = o->in * o->out;
    const int64_t matrices =
        std::max<int64_t>(1, (o->megabytes << 20) / (matrix_floats * static_cast<int64_t>(sizeof(float))));
    const size_t bytes = static_cast<size_t>(matrices * matrix_floats) * sizeof(float);
    std::vector<float> x(static_cast<size_t>(max_rows * o->in), 0.01f), y(static_cast<size_t>(max_rows * o->out));
    const auto variants = detail::panel_variants();
    nlohmann::json results = nlohmann::json::array();
    for (bool huge : {true, false}) {
      Mapping buffer(bytes, huge);
      for (size_t i = 0; i < bytes / sizeof(float); ++i) buffer.data_[i] = 1e-3f * static_cast<float>(i % 7);
      // best[variant][rows] over rounds; the variants alternate inside a round.
      std::vector<std::vector<double>> best(variants.size(), std::vector<double>(o->rows.size(), 1e30));
      for (int round = 0; round < o->rounds; ++round) {
        for (size_t ri = 0; ri < o->rows.size(); ++ri) {
          for (size_t v = 0; v < variants.size(); ++v) {
            const auto start = Clock::now();
            for (int64_t m = 0; m < matrices; ++m) {
              variants[v].second(x.data(), o->rows[ri], o->in, o->in, buffer.data_ + m * matrix_floats, nullptr, 0,
                                 o->out, y.data(), o->out);
            }
            best[v][ri] = std::min(best[v][ri], std::chrono::duration<double>(Clock::now() - start).count());
          }
        }
      }
      for (size_t v = 0; v < variants.size(); ++v) {
        for (size_t ri = 0; ri < o->rows.size(); ++ri) {
          results.push_back({{"variant", variants[v].first},
                             {"pages", huge ? "2MiB-advised" : "4KiB"},
                             {"rows", o->rows[ri]},
                             {"gb_per_s", static_cast<double>(bytes) / best[v][ri] / 1e9}});
        }
      }
    }
    // int8: the same number of matrices, packed as int8 panels.
    nlohmann::json int8_results = nlohmann::json::array();
    {
      const auto int8_variants = detail::int8_panel_variants();
      const int64_t in4 = detail::int8_padded_inputs(o->in);
      const int64_t matrix_bytes = detail::int8_panel_bytes(o->in) * (o->out / detail::kPanelWidth);
      Mapping qbuf(static_cast<size_t>(matrices * matrix_bytes), true);
      auto* qdata = reinterpret_cast<int8_t*>(qbuf.data_);
      std::vector<int8_t> w(static_cast<size_t>(o->in * o->out));
      for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<int8_t>(static_cast<int>(i % 255) - 127);
      const std::vector<float> w_scale(static_cast<size_t>(o->out), 1e-3f);
      detail::pack_int8_panels(w.data(), w_scale.data(), o->out, o->in, qdata);
      for (int64_t m = 1; m < matrices; ++m) std::memcpy(qdata + m * matrix_bytes, qdata, matrix_bytes);
      const std::vector<uint8_t> xq(static_cast<size_t>(max_rows * in4), 130);
      const std::vector<detail::RowQuant> xs(static_cast<size_t>(max_rows), detail::RowQuant{0.01f, 128});
      std::vector<std::vector<double>> best(int8_variants.size(), std::vector<double>(o->rows.size(), 1e30));
      for (int round = 0; round < o->rounds; ++round) {
        for (size_t ri = 0; ri < o->rows.size(); ++ri) {
          for (size_t v = 0; v < int8_variants.size(); ++v) {
            const auto start = Clock::now();
            for (int64_t m = 0; m < matrices; ++m) {
              int8_variants[v].second(xq.data(), xs.data(), o->rows[ri], in4, o->in, qdata + m * matrix_bytes,
                                      nullptr, 0, o->out, y.data(), o->out);
            }
            best[v][ri] = std::min(best[v][ri], std::chrono::duration<double>(Clock::now() - start).count());
          }
        }
      }
      for (size_t v = 0; v < int8_variants.size(); ++v) {
        for (size_t ri = 0; ri < o->rows.size(); ++ri) {
          int8_results.push_back(
              {{"variant", int8_variants[v].first},
               {"rows", o->rows[ri]},
               {"g_weights_per_s", static_cast<double>(matrices * matrix_floats) / best[v][ri] / 1e9},
               {"gb_per_s", static_cast<double>(matrices * matrix_bytes) / best[v][ri] / 1e9}});
        }
      }
    }
    // bf16: the same number of matrices as bf16 panels.
    nlohmann::json bf16_results = nlohmann::json::array();
    {
      const auto bf16_variants = detail::panel_bf16_variants();
      Mapping hbuf(bytes / 2, true);
      auto* hdata = reinterpret_cast<uint16_t*>(hbuf.data_);
      for (size_t i = 0; i < bytes / sizeof(float); ++i) {  // the float buffer's values, upper halves
        const float value = 1e-3f * static_cast<float>(i % 7);
        uint32_t bits;
        std::memcpy(&bits, &value, sizeof(bits));
        hdata[i] = static_cast<uint16_t>(bits >> 16);
      }
      std::vector<std::vector<double>> best(bf16_variants.size(), std::vector<double>(o->rows.size(), 1e30));
      for (int round = 0; round < o->rounds; ++round) {
        for (size_t ri = 0; ri < o->rows.size(); ++ri) {
          for (size_t v = 0; v < bf16_variants.size(); ++v) {
            const auto start = Clock::now();
            for (int64_t m = 0; m < matrices; ++m) {
              bf16_variants[v].second(x.data(), o->rows[ri], o->in, o->in, hdata + m * matrix_floats, nullptr, 0,
                                      o->out, y.data(), o->out);
            }
            best[v][ri] = std::min(best[v][ri], std::chrono::duration<double>(Clock::now() - start).count());
          }
        }
      }
      for (size_t v = 0; v < bf16_variants.size(); ++v) {
        for (size_t ri = 0; ri < o->rows.size(); ++ri) {
          bf16_results.push_back(
              {{"variant", bf16_variants[v].first},
               {"rows", o->rows[ri]},
               {"g_weights_per_s", static_cast<double>(matrices * matrix_floats) / best[v][ri] / 1e9},
               {"gb_per_s", static_cast<double>(bytes / 2) / best[v][ri] / 1e9}});
        }
      }
    }
    // SiLU: every variant and ATen's silu_out on the same block, alternating.
    MOEKIT_CHECK_ARG(o->silu_floats >= 1, "bench kernels: bad --silu-floats");
    torch::NoGradGuard no_grad;
    const torch::Tensor sx = torch::randn({o->silu_floats}) * 4;
    torch::Tensor sy = torch::empty_like(sx);
    std::vector<std::pair<std::string, std::function<void()>>> silus;
    for (const auto& [name, fn] : detail::silu_variants()) {
      silus.emplace_back(name, [&, fn = fn] { fn(sx.data_ptr<float>(), nullptr, sy.data_ptr<float>(), sx.numel()); });
    }
    silus.emplace_back("aten", [&] { at::silu_out(sy, sx); });
    std::vector<double> silu_best(silus.size(), 1e30);
    for (int round = 0; round < o->rounds; ++round) {
      for (size_t v = 0; v < silus.size(); ++v) {
        silu_best[v] = std::min(silu_best[v], time_sample(silus[v].second, 0.2));
      }
    }
    nlohmann::json silu_results = nlohmann::json::array();
    for (size_t v = 0; v < silus.size(); ++v) {
      silu_results.push_back({{"variant", silus[v].first},
                              {"g_floats_per_s", static_cast<double>(o->silu_floats) / silu_best[v] / 1e9}});
    }
    nlohmann::json j;
    j["benchmark"] = "kernels";
    j["threads"] = num_threads();
    j["panels"] = {{"bytes_per_pass", static_cast<double>(bytes)},
                   {"matrix", {o->out, o->in}},
                   {"read_bandwidth_gb_per_s", read_bandwidth_bytes_per_s() / 1e9},
                   {"results", results}};
    j["int8"] = {{"matrix", {o->out, o->in}}, {"results", int8_results}};
    j["bf16"] = {{"matrix", {o->out, o->in}}, {"results", bf16_results}};
    j["silu"] = {{"floats", o->silu_floats}, {"results", silu_results}};
    std::cout << json_text(j, 2) << std::endl;
  });
}

}  // namespace moekit::cli
