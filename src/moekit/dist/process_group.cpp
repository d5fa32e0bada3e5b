#include "moekit/dist/process_group.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <mutex>

#include "moekit/core/check.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#ifdef MOEKIT_HAVE_GLOO
#ifndef USE_C10D_GLOO  // LibTorch's CMake config sets it where c10d has Gloo
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/version.h>
// LibTorch 2 made the backends (Gloo, NCCL) c10d::Backend, no longer
// c10d::ProcessGroup; both have the collectives used here.
#if TORCH_VERSION_MAJOR >= 2
using CollectiveBackend = c10d::Backend;
#else
using CollectiveBackend = c10d::ProcessGroup;
#endif
// CUDA tensors go through NCCL where c10d has it (a CUDA LibTorch 2).
#if defined(USE_C10D_NCCL) && TORCH_VERSION_MAJOR >= 2
#define MOEKIT_HAVE_NCCL 1
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif

namespace moekit::dist {

namespace {

const char* env_or_null(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

int parse_int_env(const char* name, const char* text, int lo, int hi) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text, &end, 10);
  MOEKIT_CHECK_ARG(end != text && *end == '\0' && errno == 0 && v >= lo && v <= hi, "launch environment: ", name,
                   "='", text, "' is not an integer in [", lo, ", ", hi, "]");
  return static_cast<int>(v);
}

std::atomic<int64_t> collective_ns{0};

// The first line of an exception text (c10 errors append a backtrace).
std::string first_line(const std::string& text) {
  const auto end = text.find('\n');
  return end == std::string::npos ? text : text.substr(0, end);
}

}  // namespace

LaunchEnv LaunchEnv::from_environment() {
  LaunchEnv env;
  const char* names[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"};
  int set = 0;
  for (const char* n : names) set += env_or_null(n) != nullptr;
  if (set == 0) return env;
  for (const char* n : {"RANK", "WORLD_SIZE"})
    MOEKIT_CHECK_ARG(env_or_null(n) != nullptr, "launch environment: ", n,
                     " is not set (a distributed run needs RANK and WORLD_SIZE, and MASTER_ADDR and MASTER_PORT "
                     "when WORLD_SIZE > 1; `moekit launch -n N -- ...` sets them)");
  constexpr int kMaxWorld = 1 << 16;
  env.world_size = parse_int_env("WORLD_SIZE", env_or_null("WORLD_SIZE"), 1, kMaxWorld);
  env.rank = parse_int_env("RANK", env_or_null("RANK"), 0, env.world_size - 1);
  if (const char* v = env_or_null("LOCAL_RANK")) env.local_rank = parse_int_env("LOCAL_RANK", v, 0, kMaxWorld);
  if (env.world_size > 1) {
    for (const char* n : {"MASTER_ADDR", "MASTER_PORT"})
      MOEKIT_CHECK_ARG(env_or_null(n) != nullptr, "launch environment: ", n, " is not set (WORLD_SIZE is ",
                       env.world_size, ")");
  }
  if (const char* v = env_or_null("MASTER_ADDR")) env.master_addr = v;
  if (const char* v = env_or_null("MASTER_PORT")) env.master_port = parse_int_env("MASTER_PORT", v, 1, 65535);
  return env;
}

#ifdef MOEKIT_HAVE_GLOO

struct Group::Backend {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> options;
  c10::intrusive_ptr<CollectiveBackend> pg;    // Gloo: CPU tensors (and CUDA ones without NCCL)
  c10::intrusive_ptr<CollectiveBackend> nccl;  // CUDA tensors, where c10d has NCCL and a GPU is here
  std::chrono::milliseconds timeout{0};

  CollectiveBackend& for_tensor(const torch::Tensor& t) const { return nccl && t.is_cuda() ? *nccl : *pg; }
};

namespace {

// An NCCL backend beside Gloo's on the same store (its keys under a prefix
// of their own); null without NCCL in this LibTorch or without a GPU. NCCL
// makes its communicators at the first collective on CUDA tensors.
c10::intrusive_ptr<CollectiveBackend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int size,
                                                std::chrono::milliseconds timeout) {
#ifdef MOEKIT_HAVE_NCCL
  if (!torch::cuda::is_available()) return {};
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::make_intrusive<c10d::PrefixStore>("nccl", store), rank,
                                                     size, options);
#else
  (void)store;
  (void)rank;
  (void)size;
  (void)timeout;
  return {};
#endif
}

std::shared_ptr<::gloo::transport::Device> make_device(const std::string& master_addr) {
  // GLOO_SOCKET_IFNAME as PyTorch reads it; a loopback master means a
  // one-host run; otherwise the address this host's name resolves to.
  if (const char* ifname = env_or_null("GLOO_SOCKET_IFNAME"))
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  if (master_addr == "127.0.0.1" || master_addr == "localhost")
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

template <class F>
void collective(const char* op, int rank, int size, std::chrono::milliseconds timeout, F&& run) {
  const auto start = std::chrono::steady_clock::now();
  struct Count {
    std::chrono::steady_clock::time_point start;
    ~Count() {
      collective_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
                           .count();
    }
  } count{start};
  try {
    run();
  } catch (const c10::Error& e) {
    throw std::runtime_error(str_cat("dist: ", op, " on rank ", rank, " of ", size,
                                     " failed (a peer left the run or did not answer within the timeout of ",
                                     timeout.count() / 1000.0, " s): ", first_line(e.what_without_backtrace())));
  } catch (const std::exception& e) {
    throw std::runtime_error(str_cat("dist: ", op, " on rank ", rank, " of ", size,
                                     " failed (a peer left the run or did not answer within the timeout of ",
                                     timeout.count() / 1000.0, " s): ", first_line(e.what())));
  }
}

}  // namespace

bool gloo_available() { return true; }

std::shared_ptr<Group> Group::init(const LaunchEnv& env, std::chrono::milliseconds timeout) {
  if (!env.distributed()) return single();
  MOEKIT_CHECK_ARG(timeout.count() > 0, "dist: the timeout must be positive");
  auto backend = std::make_shared<Backend>();
  backend->timeout = timeout;
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(env.master_port);
  store_options.isServer = env.rank == 0;
  store_options.numWorkers = static_cast<size_t>(env.world_size);
  store_options.waitWorkers = false;
  store_options.timeout = timeout;
  try {
    backend->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
  } catch (const std::exception& e) {
    const std::string why = first_line(e.what());
    if (env.rank == 0)
      throw std::runtime_error(str_cat("dist: rank 0 cannot serve the rendezvous at ", env.master_addr, ":",
                                       env.master_port, " (MASTER_ADDR:MASTER_PORT; is the port in use?): ", why));
    throw std::runtime_error(str_cat("dist: rank ", env.rank, " cannot reach the rendezvous at ", env.master_addr,
                                     ":", env.master_port, " within ", timeout.count() / 1000.0, " s: ", why));
  }
  // Every rank must agree on the world size (a launcher started with two
  // values would otherwise wait for a rank that never comes).
  try {
    const std::string mine = std::to_string(env.world_size);
    backend->store->set("moekit/world_size/" + std::to_string(env.rank),
                        std::vector<uint8_t>(mine.begin(), mine.end()));
    if (env.rank != 0) {
      const std::string key = "moekit/world_size/0";
      backend->store->wait({key}, timeout);
      const std::vector<uint8_t> v = backend->store->get(key);
      const std::string theirs(v.begin(), v.end());
      MOEKIT_CHECK_ARG(theirs == mine, "launch environment: WORLD_SIZE is ", mine, " on rank ", env.rank,
                       " but ", theirs, " on rank 0");
    }
  } catch (const std::invalid_argument&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(str_cat("dist: rank ", env.rank, " of ", env.world_size, ": rendezvous failed: ",
                                     first_line(e.what())));
  }
  backend->options = c10d::ProcessGroupGloo::Options::create(timeout);
  backend->options->devices.push_back(make_device(env.master_addr));
  collective("rendezvous", env.rank, env.world_size, timeout, [&] {
    backend->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(backend->store, env.rank, env.world_size,
                                                              backend->options);
    backend->nccl = make_nccl(backend->store, env.rank, env.world_size, timeout);
  });
  std::shared_ptr<Group> group(new Group());
  group->rank_ = env.rank;
  group->size_ = env.world_size;
  group->members_.resize(env.world_size);
  for (int r = 0; r < env.world_size; ++r) group->members_[r] = r;
  group->backend_ = std::move(backend);
  return group;
}

std::shared_ptr<Group> Group::subgroup(const std::vector<int>& ranks, const std::string& name) const {
  const auto it = std::find(ranks.begin(), ranks.end(), rank_);
  MOEKIT_CHECK_ARG(it != ranks.end(), "dist: subgroup '", name, "' does not include the calling rank ", rank_);
  std::shared_ptr<Group> group(new Group());
  group->rank_ = static_cast<int>(it - ranks.begin());
  group->size_ = static_cast<int>(ranks.size());
  group->members_.clear();
  for (int r : ranks) {
    MOEKIT_CHECK_ARG(r >= 0 && r < size_, "dist: subgroup '", name, "' names rank ", r, " of a group of ", size_);
    group->members_.push_back(members_[r]);
  }
  if (group->size_ == 1 || !backend_) return group;
  auto backend = std::make_shared<Backend>(*backend_);
  backend->store = c10::make_intrusive<c10d::PrefixStore>("moekit/group/" + name, backend_->store);
  collective("subgroup rendezvous", rank_, size_, backend_->timeout, [&] {
    backend->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(backend->store, group->rank_, group->size_,
                                                              backend->options);
    backend->nccl = make_nccl(backend->store, group->rank_, group->size_, backend_->timeout);
  });
  group->backend_ = std::move(backend);
  return group;
}

void Group::all_reduce_sum(std::vector<torch::Tensor>& tensors) const {
  if (!backend_ || tensors.empty()) return;
  collective("all_reduce", rank_, size_, backend_->timeout, [&] { backend_->for_tensor(tensors[0]).allreduce(tensors)->wait(); });
}

namespace {
struct NothingPending : PendingCollective {
  void wait() override {}
};
}  // namespace

std::unique_ptr<PendingCollective> Group::all_reduce_sum_async(std::vector<torch::Tensor>& tensors) const {
  if (!backend_ || tensors.empty()) return std::make_unique<NothingPending>();
  struct Pending : PendingCollective {
    c10::intrusive_ptr<c10d::Work> work;
    int rank = 0, size = 0;
    std::chrono::milliseconds timeout{0};
    void wait() override {
      if (!work) return;
      collective("all_reduce", rank, size, timeout, [&] { work->wait(); });
      work.reset();
    }
  };
  auto pending = std::make_unique<Pending>();
  pending->rank = rank_;
  pending->size = size_;
  pending->timeout = backend_->timeout;
  collective("all_reduce", rank_, size_, backend_->timeout, [&] { pending->work = backend_->for_tensor(tensors[0]).allreduce(tensors); });
  return pending;
}

void Group::broadcast(std::vector<torch::Tensor>& tensors, int root) const {
  MOEKIT_CHECK_ARG(root >= 0 && root < size_, "dist: broadcast from rank ", root, " of a group of ", size_);
  if (!backend_ || tensors.empty()) return;
  c10d::BroadcastOptions options;
  options.rootRank = root;
  collective("broadcast", rank_, size_, backend_->timeout,
             [&] { backend_->for_tensor(tensors[0]).broadcast(tensors, options)->wait(); });
}

std::vector<torch::Tensor> Group::all_gather(const torch::Tensor& t) const {
  if (!backend_) return {t};
  std::vector<torch::Tensor> input{t.contiguous()};
  std::vector<std::vector<torch::Tensor>> output(1);
  for (int r = 0; r < size_; ++r) output[0].push_back(torch::empty_like(input[0]));
  collective("all_gather", rank_, size_, backend_->timeout,
             [&] { backend_->for_tensor(input[0]).allgather(output, input)->wait(); });
  return output[0];
}

torch::Tensor Group::all_to_all(const torch::Tensor& input, const std::vector<int64_t>& send_counts,
                                const std::vector<int64_t>& recv_counts) const {
  MOEKIT_CHECK_ARG(static_cast<int>(send_counts.size()) == size_ && static_cast<int>(recv_counts.size()) == size_,
                   "dist: all_to_all needs one send and one receive count per member (", size_, ")");
  int64_t sent = 0, received = 0;
  for (int r = 0; r < size_; ++r) {
    MOEKIT_CHECK_ARG(send_counts[r] >= 0 && recv_counts[r] >= 0, "dist: all_to_all: negative row count");
    sent += send_counts[r];
    received += recv_counts[r];
  }
  MOEKIT_CHECK_ARG(input.dim() >= 1 && input.size(0) == sent, "dist: all_to_all sends ", sent, " rows of ",
                   input.dim() >= 1 ? input.size(0) : 0);
  std::vector<int64_t> out_shape = input.sizes().vec();
  out_shape[0] = received;
  torch::Tensor output = torch::empty(out_shape, input.options());
  if (!backend_) {
    output.copy_(input);
    return output;
  }
  torch::Tensor in = input.contiguous();
  std::vector<int64_t> send(send_counts), recv(recv_counts);
  collective("all_to_all", rank_, size_, backend_->timeout,
             [&] { backend_->for_tensor(in).alltoall_base(output, in, recv, send)->wait(); });
  return output;
}

void Group::barrier() const {
  if (!backend_) return;
  collective("barrier", rank_, size_, backend_->timeout, [&] { backend_->pg->barrier()->wait(); });
}

#else  // no Gloo in this build: one process only

struct Group::Backend {};

bool gloo_available() { return false; }

std::shared_ptr<Group> Group::init(const LaunchEnv& env, std::chrono::milliseconds) {
  MOEKIT_CHECK_ARG(!env.distributed(), "dist: this build has no c10d Gloo backend (install libgloo-dev and "
                                       "rebuild), so WORLD_SIZE must be 1, got ", env.world_size);
  return single();
}

std::shared_ptr<Group> Group::subgroup(const std::vector<int>& ranks, const std::string& name) const {
  MOEKIT_CHECK_ARG(ranks.size() == 1 && ranks[0] == 0, "dist: subgroup '", name, "' of a one-process run");
  return single();
}

void Group::all_reduce_sum(std::vector<torch::Tensor>&) const {}
std::unique_ptr<PendingCollective> Group::all_reduce_sum_async(std::vector<torch::Tensor>&) const {
  struct NothingPending : PendingCollective {
    void wait() override {}
  };
  return std::make_unique<NothingPending>();
}
void Group::broadcast(std::vector<torch::Tensor>&, int root) const {
  MOEKIT_CHECK_ARG(root == 0, "dist: broadcast from rank ", root, " of a group of 1");
}
std::vector<torch::Tensor> Group::all_gather(const torch::Tensor& t) const { return {t}; }
torch::Tensor Group::all_to_all(const torch::Tensor& input, const std::vector<int64_t>& send_counts,
                                const std::vector<int64_t>& recv_counts) const {
  MOEKIT_CHECK_ARG(send_counts.size() == 1 && recv_counts.size() == 1 && send_counts[0] == recv_counts[0] &&
                       input.size(0) == send_counts[0],
                   "dist: all_to_all counts do not match a one-process group");
  return input.clone();
}
void Group::barrier() const {}

#endif

Group::~Group() = default;

double collective_seconds() { return static_cast<double>(collective_ns.load()) * 1e-9; }

std::shared_ptr<Group> Group::single() { return std::shared_ptr<Group>(new Group()); }

namespace {
std::mutex world_mutex;
std::shared_ptr<Group>& world_slot() {
  static std::shared_ptr<Group> slot;
  return slot;
}
}  // namespace

std::shared_ptr<Group> world() {
  std::lock_guard<std::mutex> lock(world_mutex);
  auto& slot = world_slot();
  if (!slot) slot = Group::single();
  return slot;
}

std::shared_ptr<Group> init_from_environment(std::chrono::milliseconds timeout) {
  auto group = Group::init(LaunchEnv::from_environment(), timeout);
  std::lock_guard<std::mutex> lock(world_mutex);
  world_slot() = group;
  return group;
}

int free_tcp_port(const std::string& addr) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  MOEKIT_CHECK(fd >= 0, "dist: cannot open a socket: ", std::strerror(errno));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;
  sa.sin_addr.s_addr = ::inet_addr(addr == "localhost" ? "127.0.0.1" : addr.c_str());
  if (sa.sin_addr.s_addr == INADDR_NONE) sa.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof(sa);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0;
  const int error = errno;
  ::close(fd);
  MOEKIT_CHECK(ok, "dist: no free port on ", addr, ": ", std::strerror(error));
  return ntohs(sa.sin_port);
}

}  // namespace moekit::dist
