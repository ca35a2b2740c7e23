// Data parallelism (DESIGN.md "Training numerics"): one process per GPU (or CPU process), each
// with a full copy of the model and its own slice of the data; gradients are summed across the
// processes before every optimizer step. Processes find each other through a c10d store
// (file:///PATH on a shared filesystem, or tcp://HOST:PORT served by rank 0) and talk through
// c10d's Gloo (CPU) or NCCL (CUDA) backend.
//
// Where rank, world size and the rendezvous come from (resolve_distributed_config):
//   world size  --world-size, else WORLD_SIZE (torchrun), else SLURM_STEP_NUM_TASKS (set by srun
//               for its tasks; an sbatch shell alone is one process), else 1
//   rank        --rank, else RANK, else SLURM_PROCID
//   local rank  LOCAL_RANK, else SLURM_LOCALID, else the rank (picks cuda:<local rank>)
//   rendezvous  --dist-init, else tcp://MASTER_ADDR:<port>, else tcp://<first host of
//               SLURM_STEP_NODELIST | SLURM_JOB_NODELIST | SLURM_NODELIST>:<port>
//   port        --dist-port, else MASTER_PORT, else 16384 + SLURM_JOB_ID % 16384, else 29500
//   Gloo's NIC  GLOO_SOCKET_IFNAME (first of a comma list), else the address of the host's name
// World size 1 needs none of it and creates no process group.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "llt/options.h"

namespace llt {

// This process's place in a data-parallel run.
struct DistributedConfig {
  int world_size = 1;
  int rank = 0;
  int local_rank = 0;  // rank among the processes of this node
  std::string init;    // file:///PATH | tcp://HOST:PORT; "" when world_size == 1
  std::string origin;  // where world_size came from, for messages ("--world-size", "SLURM...")
};

// Environment variables by name (only those resolve_distributed_config reads).
using Environment = std::map<std::string, std::string>;

// The variables resolve_distributed_config reads, from this process's environment.
Environment process_environment();

// Resolves rank, world size, local rank and the rendezvous (see the table at the top) from the
// flags and `env`. Throws InputError naming the flag or variable on a malformed value, a rank
// outside [0, world size), or world size > 1 with no rendezvous address.
DistributedConfig resolve_distributed_config(const DistributedOptions& options,
                                             const Environment& env);

// Expands SLURM's compressed hostlist syntax: "node[01-03,07],gpu-a[1-2]b[3,4],login"
// -> node01 node02 node03 node07 gpu-a1b3 gpu-a1b4 gpu-a2b3 gpu-a2b4 login (ranges keep the
// zero padding of their lower bound). Throws InputError naming `what` on a malformed list.
std::vector<std::string> expand_hostlist(const std::string& hostlist,
                                         const std::string& what = "hostlist");

// A parsed --dist-init address.
struct Rendezvous {
  std::string path;  // file:// : the store file (every rank must see the same file)
  std::string host;  // tcp:// : rank 0's host, where the store server listens
  int port = 0;
};
// Parses file:///PATH or tcp://HOST:PORT (HOST may be [IPv6]). Throws InputError otherwise.
Rendezvous parse_dist_init(const std::string& init);

// The device of this rank: with world size > 1, a "cuda" device without an index becomes
// cuda:<local rank modulo visible devices>; anything else is returned unchanged.
c10::Device device_for_rank(const c10::Device& device, const DistributedConfig& config);

// The trainable tensors of each gradient bucket, by index: consecutive runs of tensors whose
// total fp32 size stays within `bucket_bytes` (a tensor larger than that is a bucket alone).
std::vector<std::vector<size_t>> gradient_buckets(const std::vector<at::Tensor>& tensors,
                                                  int64_t bucket_bytes);

// Whether this build has c10d's Gloo backend (CPU data parallelism; LLT_USE_GLOO and its
// headers at configure time). Without it a world size > 1 on the CPU is an InputError.
bool gloo_compiled();

// A c10d process group over the run's processes: Gloo for a CPU device, NCCL for CUDA. Every
// rank must call the collectives in the same order. A collective that fails (a peer exited, or
// did not answer within the timeout) throws RuntimeError naming the operation.
class ProcessGroup {
 public:
  // Joins the others at config.init; returns when all config.world_size processes have joined.
  // Throws InputError when this build lacks the backend for `device` (no Gloo headers, or no
  // NCCL), RuntimeError when the rendezvous fails or times out after `timeout_s` seconds.
  ProcessGroup(const DistributedConfig& config, const c10::Device& device, double timeout_s);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const;
  int world_size() const;

  // Element-wise sum over ranks of a few (at most 8) numbers. Uses a buffer made at start-up,
  // so it works while this process is out of host memory (to tell the others so).
  std::vector<double> sum(const std::vector<double>& values);

  // Replaces each tensor's .grad with its sum over ranks: buckets of at most `bucket_bytes`
  // (gradient_buckets) are copied into one fp32 buffer (the largest bucket's size, freed at the
  // end), all-reduced and copied back. A trainable tensor without a gradient gets zeros first,
  // so every rank sends the same layout.
  void all_reduce_gradients(const std::vector<at::Tensor>& params, int64_t bucket_bytes);

  // Makes everything all_reduce_gradients allocates (the zero gradients and the buffer), so that
  // running out of memory there (OutOfMemoryError or a c10::Error, thrown here) can be agreed on
  // with sum() before any rank enters the gradients' collectives. No collective.
  void prepare_gradients(const std::vector<at::Tensor>& params, int64_t bucket_bytes);
  // Frees a buffer prepare_gradients made when the reduction is not going to run.
  void release_gradient_buffer();

  // Every rank's `tensor` (same shape and dtype on all ranks), in rank order, on the CPU.
  std::vector<at::Tensor> all_gather(const at::Tensor& tensor);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llt
