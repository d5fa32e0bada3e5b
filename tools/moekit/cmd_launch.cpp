// moekit launch: N local processes of one command, each told its place in
// the run the way torchrun tells it (RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Signals reach every process;
// the run ends with the first failing process's exit status, the others
// stopped after a grace period.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <iostream>
#include <thread>

#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/dist/process_group.h"

namespace moekit::cli {

namespace {

volatile std::sig_atomic_t forwarded_signal = 0;
void remember_signal(int sig) { forwarded_signal = sig; }

// The exit status a shell would report.
int status_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

struct LaunchOptions {
  int processes = 2;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;
  int node_rank = 0;
  int nodes = 1;
  double grace_s = 30;
  std::vector<std::string> command;
};

int run_launch(const LaunchOptions& o) {
  MOEKIT_CHECK_ARG(!o.command.empty(), "launch: no command (moekit launch -n N -- COMMAND ...)");
  MOEKIT_CHECK_ARG(o.processes >= 1, "launch: -n must be >= 1, got ", o.processes);
  MOEKIT_CHECK_ARG(o.nodes >= 1 && o.node_rank >= 0 && o.node_rank < o.nodes, "launch: --node-rank ", o.node_rank,
                   " of --nodes ", o.nodes);
  MOEKIT_CHECK_ARG(o.nodes == 1 || o.master_port > 0,
                   "launch: a run over several hosts needs --master-port (the same on every host)");
  MOEKIT_CHECK_ARG(o.master_port >= 0 && o.master_port <= 65535, "launch: --master-port ", o.master_port,
                   " is not a port");
  const int port = o.master_port > 0 ? o.master_port : dist::free_tcp_port(o.master_addr);
  const int world = o.processes * o.nodes;
  std::vector<char*> argv;
  for (const std::string& a : o.command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  struct sigaction sa {};
  sa.sa_handler = remember_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);

  std::vector<pid_t> children(o.processes, -1);
  for (int local = 0; local < o.processes; ++local) {
    const pid_t pid = ::fork();
    MOEKIT_CHECK(pid >= 0, "launch: fork failed: ", std::strerror(errno));
    if (pid == 0) {
      for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, SIG_DFL);
      const int rank = o.node_rank * o.processes + local;
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(o.processes).c_str(), 1);
      ::setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::execvp(argv[0], argv.data());
      std::cerr << "moekit launch: cannot run '" << o.command[0] << "': " << std::strerror(errno) << "\n";
      ::_exit(127);
    }
    children[local] = pid;
  }

  int running = o.processes, result = 0;
  bool failed = false, stopping = false;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  auto signal_all = [&](int sig) {
    for (pid_t pid : children)
      if (pid > 0) ::kill(pid, sig);
  };
  while (running > 0) {
    if (forwarded_signal != 0) {
      const int sig = forwarded_signal;
      forwarded_signal = 0;
      signal_all(sig);
      if (!failed) result = 128 + sig;
      failed = true;
    }
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (int local = 0; local < o.processes; ++local) {
        if (children[local] != pid) continue;
        children[local] = -1;
        --running;
        const int code = status_code(status);
        if (code != 0 && !failed) {
          failed = true;
          result = code;
          // One write: the ranks print to the same stream, and a line sent in
          // pieces can come out with theirs in between.
          std::cerr << str_cat("moekit launch: rank ", o.node_rank * o.processes + local, " exited with status ", code,
                               "; stopping the others within ", o.grace_s, " s\n");
          stop_deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(o.grace_s * 1000));
        }
      }
      continue;
    }
    if (pid < 0 && errno != EINTR) break;
    if (failed && !stopping && std::chrono::steady_clock::now() >= stop_deadline) {
      signal_all(SIGTERM);
      stopping = true;
      stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    } else if (stopping && std::chrono::steady_clock::now() >= stop_deadline) {
      signal_all(SIGKILL);
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return result;
}

}  // namespace

void add_launch_command(CLI::App& app, const GlobalOptions&) {
  auto o = std::make_shared<LaunchOptions>();
  auto* cmd = app.add_subcommand(
      "launch", "Run N local processes of a command as one distributed run (torchrun's variables: RANK, "
                "LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): moekit launch -n 2 -- moekit train lm ...");
  cmd->add_option("-n,--nproc", o->processes, "Processes on this host")->capture_default_str();
  cmd->add_option("--master-addr", o->master_addr, "Address of rank 0's host (the rendezvous)")
      ->capture_default_str();
  cmd->add_option("--master-port", o->master_port, "Rendezvous port (0: a free one; give one for several hosts)")
      ->capture_default_str();
  cmd->add_option("--nodes", o->nodes, "Hosts in the run, each running `moekit launch`")->capture_default_str();
  cmd->add_option("--node-rank", o->node_rank, "This host's index among --nodes")->capture_default_str();
  cmd->add_option("--grace", o->grace_s,
                  "Seconds the other processes get to stop by themselves after one fails, then SIGTERM")
      ->capture_default_str();
  cmd->add_option("command", o->command, "The command every process runs (after --)")->required();
  cmd->callback([o] {
    const int code = run_launch(*o);
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace moekit::cli
