#include "llt/distributed.h"

#include <algorithm>
#include <iostream>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <string>
#include <utility>

#include <ATen/ATen.h>
#include <torch/cuda.h>

#ifdef LLT_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include "llt/compat.h"  // the c10d headers, with LLT_WITH_GLOO / LLT_WITH_NCCL (CMake)
#include "llt/errors.h"

namespace llt {
namespace {

// Ports below Linux's ephemeral range (32768-60999), so a derived port never collides with a
// connection's local port; one per SLURM job (array tasks have their own job ids).
constexpr int kDerivedPortBase = 16384;
constexpr int kDerivedPortSpan = 16384;
constexpr int kTorchDefaultPort = 29500;  // torchrun's MASTER_PORT default
constexpr int64_t kMaxScalars = 8;        // ProcessGroup::sum's buffer

const char* const kVariables[] = {
    "WORLD_SIZE",         "RANK",           "LOCAL_RANK",
    "MASTER_ADDR",        "MASTER_PORT",    "SLURM_STEP_NUM_TASKS",
    "SLURM_PROCID",       "SLURM_LOCALID",  "SLURM_STEP_NODELIST",
    "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID",
};

const std::string* lookup(const Environment& env, const std::string& name) {
  const auto it = env.find(name);
  return it == env.end() || it->second.empty() ? nullptr : &it->second;
}

// A non-negative integer from `text`; `what` names its source in the error.
int64_t parse_count(const std::string& text, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || n < 0) {
    throw InputError(what + ": expected a non-negative integer, got '" + text + "'");
  }
  return n;
}

int parse_port(const std::string& text, const std::string& what) {
  const int64_t port = parse_count(text, what);
  if (port < 1 || port > 65535) {
    throw InputError(what + ": expected a port in 1..65535, got '" + text + "'");
  }
  return static_cast<int>(port);
}

// The rendezvous port when --dist-init does not give one.
int default_port(const DistributedOptions& o, const Environment& env) {
  if (o.port > 0) return static_cast<int>(o.port);
  if (const auto* v = lookup(env, "MASTER_PORT")) return parse_port(*v, "MASTER_PORT");
  if (const auto* v = lookup(env, "SLURM_JOB_ID")) {
    return kDerivedPortBase + static_cast<int>(parse_count(*v, "SLURM_JOB_ID") % kDerivedPortSpan);
  }
  return kTorchDefaultPort;
}

// "tcp://host:port", bracketing an IPv6 address.
// An IPv6 host gets brackets unless it has them already (MASTER_ADDR=[::1]).
std::string tcp_address(const std::string& host, int port) {
  const bool bare_ipv6 = host.find(':') != std::string::npos && host.front() != '[';
  return "tcp://" + (bare_ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// Splits at commas outside brackets. `what` names the list in errors.
std::vector<std::string> split_top_level(const std::string& list, const std::string& what) {
  std::vector<std::string> parts;
  std::string part;
  int depth = 0;
  for (const char c : list) {
    if (c == '[') ++depth;
    if (c == ']' && --depth < 0) throw InputError(what + ": unmatched ']'");
    if (c == ',' && depth == 0) {
      parts.push_back(part);
      part.clear();
    } else {
      part += c;
    }
  }
  if (depth != 0) throw InputError(what + ": unmatched '['");
  parts.push_back(part);
  return parts;
}

// The values of one bracket's contents: "01-03,7" -> 01 02 03 7.
std::vector<std::string> expand_ranges(const std::string& ranges, const std::string& what) {
  std::vector<std::string> out;
  for (const auto& item : split_top_level(ranges, what)) {
    const auto dash = item.find('-');
    const std::string lo = item.substr(0, dash);
    const std::string hi = dash == std::string::npos ? lo : item.substr(dash + 1);
    const bool digits = !lo.empty() && !hi.empty() &&
                        lo.find_first_not_of("0123456789") == std::string::npos &&
                        hi.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || lo.size() > 9 || hi.size() > 9 || std::stol(lo) > std::stol(hi)) {
      throw InputError(what + ": expected N or N-M (N <= M) inside [], got '" + item + "'");
    }
    for (long i = std::stol(lo); i <= std::stol(hi); ++i) {
      std::string s = std::to_string(i);
      if (s.size() < lo.size()) s.insert(0, lo.size() - s.size(), '0');  // keep the padding
      out.push_back(s);
    }
  }
  return out;
}

// One host pattern, maybe with several bracket groups ("a[1-2]b[3,4]"): their product.
std::vector<std::string> expand_pattern(const std::string& pattern, const std::string& what) {
  const auto open = pattern.find('[');
  if (open == std::string::npos) return {pattern};
  const auto close = pattern.find(']', open);
  if (close == std::string::npos) throw InputError(what + ": unmatched '['");
  const std::string prefix = pattern.substr(0, open);
  std::vector<std::string> out;
  for (const auto& value : expand_ranges(pattern.substr(open + 1, close - open - 1), what)) {
    for (const auto& rest : expand_pattern(pattern.substr(close + 1), what)) {
      out.push_back(prefix + value + rest);
    }
  }
  return out;
}

}  // namespace

Environment process_environment() {
  Environment env;
  for (const char* name : kVariables) {
    if (const char* value = std::getenv(name)) env[name] = value;
  }
  return env;
}

std::vector<std::string> expand_hostlist(const std::string& hostlist, const std::string& what) {
  const std::string where = what + " '" + hostlist + "'";
  std::vector<std::string> hosts;
  for (const auto& pattern : split_top_level(hostlist, where)) {
    if (pattern.empty()) throw InputError(where + ": empty host name");
    for (auto& host : expand_pattern(pattern, where)) hosts.push_back(std::move(host));
  }
  return hosts;
}

Rendezvous parse_dist_init(const std::string& init) {
  const std::string expected =
      "--dist-init: expected file:///SHARED/PATH or tcp://HOST:PORT, got '" + init + "'";
  Rendezvous r;
  if (init.rfind("file://", 0) == 0) {
    r.path = init.substr(7);
    if (r.path.empty() || r.path.front() != '/') throw InputError(expected);
    return r;
  }
  if (init.rfind("tcp://", 0) != 0) throw InputError(expected);
  const std::string address = init.substr(6);
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) throw InputError(expected);
  r.host = address.substr(0, colon);
  if (r.host.front() == '[' && r.host.back() == ']') r.host = r.host.substr(1, r.host.size() - 2);
  if (r.host.empty()) throw InputError(expected);
  r.port = parse_port(address.substr(colon + 1), "--dist-init " + init);
  return r;
}

DistributedConfig resolve_distributed_config(const DistributedOptions& o, const Environment& env) {
  DistributedConfig c;
  if (o.world_size > 0) {
    c.world_size = static_cast<int>(o.world_size), c.origin = "--world-size";
  } else if (const auto* v = lookup(env, "WORLD_SIZE")) {
    c.world_size = static_cast<int>(parse_count(*v, "WORLD_SIZE")), c.origin = "WORLD_SIZE";
  } else if (const auto* v = lookup(env, "SLURM_STEP_NUM_TASKS")) {
    c.world_size = static_cast<int>(parse_count(*v, "SLURM_STEP_NUM_TASKS"));
    c.origin = "SLURM_STEP_NUM_TASKS";
  } else {
    c.origin = "default";
  }
  if (c.world_size < 1) throw InputError(c.origin + ": expected a world size >= 1, got 0");
  if (c.world_size == 1) {
    if (o.rank > 0) {
      throw InputError("--rank " + std::to_string(o.rank) + ": the world size is 1 (" + c.origin +
                       "); pass --world-size N");
    }
    return c;
  }
  const std::string world = "world size " + std::to_string(c.world_size) + " (" + c.origin + ")";

  std::string rank_origin;
  int64_t rank = -1;
  if (o.rank >= 0) {
    rank = o.rank, rank_origin = "--rank";
  } else if (const auto* v = lookup(env, "RANK")) {
    rank = parse_count(*v, "RANK"), rank_origin = "RANK";
  } else if (const auto* v = lookup(env, "SLURM_PROCID")) {
    rank = parse_count(*v, "SLURM_PROCID"), rank_origin = "SLURM_PROCID";
  } else {
    throw InputError(world + ": no rank; pass --rank N or set RANK (srun sets SLURM_PROCID)");
  }
  if (rank >= c.world_size) {
    throw InputError(rank_origin + " " + std::to_string(rank) + ": expected a rank below the " +
                     world);
  }
  c.rank = static_cast<int>(rank);
  c.local_rank = c.rank;
  if (const auto* v = lookup(env, "LOCAL_RANK")) {
    c.local_rank = static_cast<int>(parse_count(*v, "LOCAL_RANK"));
  } else if (const auto* v = lookup(env, "SLURM_LOCALID")) {
    c.local_rank = static_cast<int>(parse_count(*v, "SLURM_LOCALID"));
  }

  if (!o.init.empty()) {
    c.init = o.init;
  } else if (const auto* v = lookup(env, "MASTER_ADDR")) {
    c.init = tcp_address(*v, default_port(o, env));
  } else {
    // srun starts rank 0 on the first node of the step (its default block distribution).
    for (const char* name : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
      if (const auto* v = lookup(env, name)) {
        c.init = tcp_address(expand_hostlist(*v, name).front(), default_port(o, env));
        break;
      }
    }
  }
  if (c.init.empty()) {
    throw InputError(world +
                     ": no rendezvous; pass --dist-init file:///SHARED/PATH or "
                     "tcp://HOST:PORT, set MASTER_ADDR, or launch with srun");
  }
  parse_dist_init(c.init);  // a malformed address fails here, before any process waits
  return c;
}

bool gloo_compiled() {
#ifdef LLT_WITH_GLOO
  return true;
#else
  return false;
#endif
}

c10::Device device_for_rank(const c10::Device& device, const DistributedConfig& config) {
  if (config.world_size <= 1 || !device.is_cuda() || device.has_index()) return device;
  const auto visible = static_cast<int>(torch::cuda::device_count());
  return c10::Device(c10::kCUDA,
                     static_cast<c10::DeviceIndex>(visible > 0 ? config.local_rank % visible : 0));
}

std::vector<std::vector<size_t>> gradient_buckets(const std::vector<at::Tensor>& tensors,
                                                  int64_t bucket_bytes) {
  std::vector<std::vector<size_t>> buckets;
  int64_t filled = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t bytes = tensors[i].numel() * static_cast<int64_t>(sizeof(float));
    if (buckets.empty() || filled + bytes > bucket_bytes) {
      buckets.emplace_back();
      filled = 0;
    }
    buckets.back().push_back(i);
    filled += bytes;
  }
  return buckets;
}

// ---------------------------------------------------------------------------------------------
// ProcessGroup

#if defined(LLT_WITH_GLOO) || defined(LLT_WITH_NCCL)

namespace {
std::string first_line(const std::string& text) {
  return text.substr(0, text.find('\n'));
}
}  // namespace

struct ProcessGroup::Impl {
  DistributedConfig config;
  c10::Device device{c10::kCPU};
  std::chrono::milliseconds timeout{0};
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<compat::CollectiveBackend> backend;
  at::Tensor scalars;  // (kMaxScalars,) fp64 on `device`: ProcessGroup::sum's buffer
  at::Tensor gradient_buffer;  // fp32, the largest bucket: prepare_gradients() to the reduction

  // Starts a collective and waits for it; turns a peer's failure or a timeout into one
  // RuntimeError line.
  void run(const std::function<c10::intrusive_ptr<c10d::Work>()>& start,
           const std::string& what) const {
    try {
      start()->wait();
    } catch (const std::exception& e) {
      throw RuntimeError("distributed: " + what + " failed on rank " + std::to_string(config.rank) +
                         " of " + std::to_string(config.world_size) +
                         " (another rank exited, or did not answer within --dist-timeout " +
                         std::to_string(timeout.count() / 1000) + " s): " + first_line(e.what()));
    }
  }

  void all_reduce(at::Tensor& tensor, const std::string& what) const {
    std::vector<at::Tensor> tensors{tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    run([&] { return backend->allreduce(tensors, options); }, what);
  }
};

namespace {

c10::intrusive_ptr<c10d::Store> connect_store(const DistributedConfig& c,
                                              std::chrono::milliseconds timeout) {
  const Rendezvous r = parse_dist_init(c.init);
  c10::intrusive_ptr<c10d::Store> store;
  if (!r.path.empty()) {
    store = c10::make_intrusive<c10d::FileStore>(r.path, c.world_size);
  } else {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(r.port);
    options.isServer = c.rank == 0;  // rank 0 serves the store, the others connect to it
    options.numWorkers = static_cast<std::size_t>(c.world_size);
    options.waitWorkers = true;
    options.timeout = timeout;
    store = c10::make_intrusive<c10d::TCPStore>(r.host, options);
  }
  store->setTimeout(timeout);
  return store;
}

#ifdef LLT_WITH_GLOO
c10::intrusive_ptr<compat::CollectiveBackend> make_gloo(
    const c10::intrusive_ptr<c10d::Store>& store, const DistributedConfig& c,
    std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create();
  options->timeout = timeout;
  // GLOO_SOCKET_IFNAME picks the network interface, as in PyTorch; else the address this
  // host's name resolves to (loopback if it resolves to none).
  const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
  if (interface != nullptr && *interface != '\0') {
    const std::string name(interface);
    options->devices.push_back(
        c10d::ProcessGroupGloo::createDeviceForInterface(name.substr(0, name.find(','))));
  } else {
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, c.rank, c.world_size, options);
}
#endif

#ifdef LLT_WITH_NCCL
c10::intrusive_ptr<compat::CollectiveBackend> make_nccl(
    const c10::intrusive_ptr<c10d::Store>& store, const DistributedConfig& c,
    const c10::Device& device, std::chrono::milliseconds timeout) {
  c10::cuda::set_device(device.index());  // NCCL's communicator lives on the current device
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, c.rank, c.world_size, options);
}
#endif

}  // namespace

ProcessGroup::ProcessGroup(const DistributedConfig& config, const c10::Device& device,
                           double timeout_s)
    : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.config = config;
  m.device = device;
  m.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
#ifndef LLT_WITH_NCCL
  if (device.is_cuda()) {
    throw InputError("world size " + std::to_string(config.world_size) + " on " + device.str() +
                     ": this build of llt has no NCCL (nccl.h was not found at configure time)");
  }
#endif
#ifndef LLT_WITH_GLOO
  if (!device.is_cuda()) {
    throw InputError("world size " + std::to_string(config.world_size) +
                     " on the CPU: this build of llt has no Gloo (install libgloo-dev and "
                     "reconfigure)");
  }
#endif
  try {
    m.store = connect_store(config, m.timeout);
#ifdef LLT_WITH_NCCL
    if (device.is_cuda()) m.backend = make_nccl(m.store, config, device, m.timeout);
#endif
#ifdef LLT_WITH_GLOO
    if (!device.is_cuda()) m.backend = make_gloo(m.store, config, m.timeout);
#endif
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw RuntimeError("distributed: rank " + std::to_string(config.rank) + " of " +
                       std::to_string(config.world_size) + " could not join the others at " +
                       config.init + " within --dist-timeout " +
                       std::to_string(m.timeout.count() / 1000) + " s: " + first_line(e.what()));
  }
  m.scalars = at::zeros({kMaxScalars}, at::TensorOptions().dtype(at::kDouble).device(device));
}

ProcessGroup::~ProcessGroup() {
  if (!impl_ || !impl_->backend) return;
  try {
    compat::shutdown_backend(*impl_->backend);
  } catch (const std::exception& e) {  // leaving anyway: say so, never throw from here
    std::cerr << "llt: warning: closing the process group: " << first_line(e.what()) << "\n";
  }
}

int ProcessGroup::rank() const {
  return impl_->config.rank;
}
int ProcessGroup::world_size() const {
  return impl_->config.world_size;
}

std::vector<double> ProcessGroup::sum(const std::vector<double>& values) {
  const auto n = static_cast<int64_t>(values.size());
  TORCH_CHECK(n > 0 && n <= kMaxScalars, "ProcessGroup::sum takes 1..", kMaxScalars, " values");
  std::vector<double> out(values);
  // from_blob views `out` without allocating: this must work when host allocations fail.
  const auto host = at::from_blob(out.data(), {n}, at::TensorOptions().dtype(at::kDouble));
  auto buffer = impl_->scalars.narrow(/*dim=*/0, 0, n);
  buffer.copy_(host);
  impl_->all_reduce(buffer, "all-reduce of the step's totals");
  host.copy_(buffer);
  return out;
}

void ProcessGroup::prepare_gradients(const std::vector<at::Tensor>& params,
                                     int64_t bucket_bytes) {
  int64_t largest = 0;
  std::vector<at::Tensor> grads;
  for (const auto& p : params) {
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    grads.push_back(p.grad());
  }
  for (const auto& bucket : gradient_buckets(grads, bucket_bytes)) {
    int64_t n = 0;
    for (const size_t i : bucket) n += grads[i].numel();
    largest = std::max(largest, n);
  }
  auto& buffer = impl_->gradient_buffer;
  if (!buffer.defined() || buffer.numel() < largest || buffer.device() != impl_->device) {
    buffer = at::Tensor();  // free the old one first
    buffer = at::empty({largest}, at::TensorOptions().dtype(at::kFloat).device(impl_->device));
  }
}

void ProcessGroup::all_reduce_gradients(const std::vector<at::Tensor>& params,
                                        int64_t bucket_bytes) {
  prepare_gradients(params, bucket_bytes);  // nothing to allocate when prepared
  std::vector<at::Tensor> grads;
  for (const auto& p : params) grads.push_back(p.grad());
  const at::Tensor buffer = impl_->gradient_buffer;
  for (const auto& bucket : gradient_buckets(grads, bucket_bytes)) {
    // Each gradient is copied into its slice of the buffer (views and copy_, converting to
    // fp32: no allocation), the slice is all-reduced and copied back.
    int64_t offset = 0;
    for (const size_t i : bucket) {
      const int64_t n = grads[i].numel();
      buffer.narrow(/*dim=*/0, offset, n).view(grads[i].sizes()).copy_(grads[i]);
      offset += n;
    }
    auto flat = buffer.narrow(/*dim=*/0, 0, offset);  // one all-reduce per bucket
    impl_->all_reduce(flat, "all-reduce of the gradients");
    offset = 0;
    for (const size_t i : bucket) {
      const int64_t n = grads[i].numel();
      grads[i].copy_(flat.narrow(/*dim=*/0, offset, n).view(grads[i].sizes()));
      offset += n;
    }
  }
  impl_->gradient_buffer = at::Tensor();  // held during the reduction only
}

void ProcessGroup::release_gradient_buffer() {
  impl_->gradient_buffer = at::Tensor();
}

std::vector<at::Tensor> ProcessGroup::all_gather(const at::Tensor& tensor) {
  auto& m = *impl_;
  std::vector<at::Tensor> inputs{tensor.to(m.device).contiguous()};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < m.config.world_size; ++r) outputs[0].push_back(at::empty_like(inputs[0]));
  m.run([&] { return m.backend->allgather(outputs, inputs); }, "all-gather");
  std::vector<at::Tensor> gathered;
  for (const auto& t : outputs[0]) gathered.push_back(t.cpu());
  return gathered;
}

#else  // built without Gloo and NCCL: world size 1 only

struct ProcessGroup::Impl {};

ProcessGroup::ProcessGroup(const DistributedConfig& config, const c10::Device& device, double) {
  throw InputError("world size " + std::to_string(config.world_size) + " on " + device.str() +
                   ": this build of llt has no distributed backend (install libgloo-dev for "
                   "CPU runs, or build against a CUDA LibTorch with nccl.h, and reconfigure)");
}
ProcessGroup::~ProcessGroup() = default;
int ProcessGroup::rank() const {
  return 0;
}
int ProcessGroup::world_size() const {
  return 1;
}
std::vector<double> ProcessGroup::sum(const std::vector<double>& values) {
  return values;
}
void ProcessGroup::prepare_gradients(const std::vector<at::Tensor>&, int64_t) {}
void ProcessGroup::all_reduce_gradients(const std::vector<at::Tensor>&, int64_t) {}
void ProcessGroup::release_gradient_buffer() {}
std::vector<at::Tensor> ProcessGroup::all_gather(const at::Tensor& tensor) {
  return {tensor};
}

#endif

}  // namespace llt
