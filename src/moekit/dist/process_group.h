#pragma once
// Process groups for training past one process, on LibTorch's c10d (the
// collective engine torchrun, DeepSpeed and Megatron use): Gloo over TCP for
// CPU tensors, NCCL for CUDA tensors where c10d has it (a CUDA LibTorch 2;
// elsewhere Gloo moves CUDA tensors too), rendezvous through c10d's TCPStore.
//
// A run is described the way torchrun and Slurm's launchers describe it, by
// environment variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT (`moekit launch -n N -- ...` sets them for N local processes).
// With none of them set a command runs as one process and every collective
// is the identity, so single-process code paths need no special case.
//
// Every collective waits at most the group's timeout: a peer that died or
// hangs makes the call throw std::runtime_error ("dist: all_reduce on rank 0
// of 2 failed: ...") instead of blocking the run for ever.
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moekit::dist {

// Where this process stands in a run, from the launcher's variables.
struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;

  bool distributed() const { return world_size > 1; }
  // Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT. None set:
  // one process. Set partly or to values that do not fit together (a rank
  // outside the world, a port outside 1..65535, WORLD_SIZE > 1 without a
  // master): std::invalid_argument naming the variable.
  static LaunchEnv from_environment();
};

// A TCP port the kernel calls free on `addr` now (bound to port 0 and
// released), for a launcher that picks MASTER_PORT; "localhost" means
// 127.0.0.1, an address that is not an IPv4 literal every interface.
// Throws std::runtime_error naming the address when none can be had.
int free_tcp_port(const std::string& addr = "127.0.0.1");

// Whether this build can run distributed (LibTorch with c10d's Gloo and the
// Gloo headers at build time).
bool gloo_available();

// A collective started and not yet waited for.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  // Returns once it is complete; throws as the blocking collectives do.
  virtual void wait() = 0;
};

class Group {
 public:
  // One process: rank 0 of 1.
  static std::shared_ptr<Group> single();
  // Joins the run `env` describes (rendezvous at MASTER_ADDR:MASTER_PORT;
  // rank 0 hosts the store). Waits at most `timeout` for the other ranks and
  // for every later collective. A single-process env gives single().
  static std::shared_ptr<Group> init(const LaunchEnv& env, std::chrono::milliseconds timeout);

  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // The global ranks of this group's members, in group-rank order.
  const std::vector<int>& members() const { return members_; }

  // A group of some of this group's ranks; every member of `ranks` (group
  // ranks of this group, in the new group's order) calls it with the same
  // `ranks` and `name`, the others do not call it. Names must be unique per
  // run.
  std::shared_ptr<Group> subgroup(const std::vector<int>& ranks, const std::string& name) const;

  // In place, over the group: the element-wise sum.
  void all_reduce_sum(std::vector<torch::Tensor>& tensors) const;
  // all_reduce_sum started now, in the background: the tensors hold the
  // sums once wait() returns (and must not be touched before). The time
  // spent in wait() counts as collective time, so work overlapping it does
  // not.
  std::unique_ptr<PendingCollective> all_reduce_sum_async(std::vector<torch::Tensor>& tensors) const;
  // In place: every member gets `root`'s values.
  void broadcast(std::vector<torch::Tensor>& tensors, int root) const;
  // Every member's `t` (same shape on all), in group-rank order.
  std::vector<torch::Tensor> all_gather(const torch::Tensor& t) const;
  // Rows of `input` (contiguous blocks, send_counts[r] rows to member r)
  // exchanged: the result holds recv_counts[r] rows from member r, in
  // member order. Not differentiable (see all_to_all.h).
  torch::Tensor all_to_all(const torch::Tensor& input, const std::vector<int64_t>& send_counts,
                           const std::vector<int64_t>& recv_counts) const;
  // Waits for every member.
  void barrier() const;

  // The state behind a distributed group (c10d), defined in the .cpp.
  struct Backend;

 private:
  Group() = default;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> members_{0};
  std::shared_ptr<Backend> backend_;  // null: one process
};

// Seconds this process has spent inside collectives of any group so far
// (waiting for slower peers included): a run's communication share.
double collective_seconds();

// The whole run's group for this process, set once by the command that
// starts a run (init_from_environment) and read by the trainer; single()
// until then.
std::shared_ptr<Group> world();
// LaunchEnv::from_environment() + Group::init, stored as world(). The
// timeout applies to the rendezvous and to every collective.
std::shared_ptr<Group> init_from_environment(std::chrono::milliseconds timeout);

}  // namespace moekit::dist
