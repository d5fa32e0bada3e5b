// moekit: the command-line front end. Only this file turns errors into exit
// codes; library code throws.
#include <c10/util/Exception.h>
#include <torch/version.h>
#include <yaml-cpp/yaml.h>

#include <iostream>
#include <string>
#include <thread>

#include "commands.h"
#include "moekit/core/cpu_allocator.h"
#include "moekit/core/mapped_file.h"
#include "moekit/core/runtime.h"
#include "moekit/core/version.h"

namespace moekit::cli {
namespace {
char** program_argv = nullptr;
}  // namespace

void add_force_flag(CLI::App& cmd, bool& force) {
  cmd.add_flag("--force", force, "Replace an existing output (never the input itself)");
}

void apply_runtime(const GlobalOptions& global) {
  const int threads = global.threads > 0 ? global.threads : static_cast<int>(std::thread::hardware_concurrency());
  // Thread pools only contend with two or more threads; a single-threaded
  // run keeps its start-up time (loading LibTorch twice costs ~0.6 s here).
  // An OpenBLAS that fell back to pre-AVX2 kernels is started over with better ones.
  apply_runtime_environment(program_argv, /*thread_wait=*/threads > 1);
  set_num_threads(std::max(threads, 1));
}

}  // namespace moekit::cli

namespace {

// First line only: errors are one line.
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

int main(int argc, char** argv) {
  using namespace moekit::cli;
  program_argv = argv;
  moekit::install_caching_cpu_allocator();
  CLI::App app{"MoEKit: Mixture-of-Experts models - train, grow, upcycle, route, extract, decode, benchmark"};
  app.set_version_flag("--version", std::string("moekit ") + MOEKIT_VERSION + " (LibTorch " + TORCH_VERSION + ")");
  app.require_subcommand(1);
  app.fallthrough();
  GlobalOptions global;
  app.add_option("--threads", global.threads, "Intra-op threads for LibTorch and the BLAS (0 = all cores)")
      ->capture_default_str();
  app.add_option("--device", global.device,
                 "Where models run: cpu, cuda or cuda:N (transcribe, translate, eval, generate, bench)")
      ->capture_default_str();
  app.add_option("--dist-timeout", global.dist_timeout_s,
                 "Distributed training: seconds to wait for the other processes at the rendezvous and at every "
                 "collective before stopping with an error")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag_callback(
      "--no-mmap", [] { moekit::set_file_mapping(false); },
      "Read model files into memory instead of mapping them (mapping is refused on some FUSE and network file "
      "systems, which falls back to reading by itself): more resident memory, and the loaded weights stay as read "
      "whatever happens to the file");
  add_info_command(app, global);
  add_bench_command(app, global);
  add_import_command(app, global);
  add_transcribe_command(app, global);
  add_train_command(app, global);
  add_eval_command(app, global);
  add_tokenizer_command(app, global);
  add_generate_command(app, global);
  add_scale_commands(app, global);
  add_translate_command(app, global);
  add_extract_command(app, global);
  add_quantize_command(app, global);
  add_distill_command(app, global);
  add_serve_command(app, global);
  add_launch_command(app, global);
  add_consolidate_command(app, global);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::RuntimeError& e) {  // a command's own exit status (launch), reported by it already
    return e.get_exit_code();
  } catch (const CLI::ParseError& e) {
    std::cerr << "moekit: error: " << first_line(e.what()) << " (see moekit --help)\n";
    return e.get_exit_code() != 0 ? e.get_exit_code() : 2;
  } catch (const c10::Error& e) {
    std::cerr << "moekit: error: " << first_line(e.what_without_backtrace()) << "\n";
    return 1;
  } catch (const YAML::Exception& e) {  // a reader that did not name its file
    std::cerr << "moekit: error: invalid YAML value"
              << (e.mark.is_null() ? std::string() : " (line " + std::to_string(e.mark.line + 1) + ")") << ": "
              << first_line(e.msg) << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "moekit: error: " << first_line(e.what()) << "\n";
    return 1;
  }
  return 0;
}
