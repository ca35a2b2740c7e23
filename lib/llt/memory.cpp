#include "llt/memory.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <fstream>
#include <limits>
#include <mutex>
#include <string>
#include <unordered_map>

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>

#ifdef LLT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "llt/compat.h"
#include "llt/errors.h"
#include "llt/lora.h"
#include "llt/recompute.h"

namespace llt {
namespace {

// Bytes as GiB with two decimals, for messages.
std::string format_gib(int64_t bytes) {
  char out[32];
  std::snprintf(out, sizeof out, "%.2f", static_cast<double>(bytes) / double(int64_t{1} << 30));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Counting CPU allocator

std::atomic<int64_t> g_current{0};
std::atomic<int64_t> g_peak{0};
std::atomic<int64_t> g_allocations{0};
std::atomic<int64_t> g_cap{0};  // 0 = none

// Live counted allocations by data pointer. The DataPtrs handed out have context == data (the
// "raw" form, which mkldnn's bf16 kernels require), so the wrapped allocator's own DataPtr and
// the size are kept here until the deleter is called with the data pointer.
struct CountedAllocation {
  c10::DataPtr inner;
  int64_t bytes;  // requested
  int64_t block;  // the cached block's size (bytes rounded up), 0 when not cacheable
};
std::mutex g_live_mutex;  // guards g_live, g_idle and g_idle_bytes
std::unordered_map<void*, CountedAllocation>* g_live = nullptr;  // never destroyed (exit order)

// Large-block cache. glibc serves blocks from 32 MiB up (llt's M_MMAP_THRESHOLD, glibc's maximum)
// with fresh mmap'd pages, which the kernel zeroes on first touch and takes back on free. A
// training step allocates the same large tensors every time (gradients, autocast's weight copies,
// AdamW's temporaries): gigabytes of page faults a step for the 7B shape, where the kernel's
// page clearing was over half of the profile. Freed blocks this large are kept, by size rounded
// to 2 MiB, and handed out again for the same size; a failed allocation empties the cache and
// retries. Counted bytes (current, peak, the cap) stay the requested bytes; idle cached bytes
// are reported as reserved on top, as CUDA's caching allocator reports them.
constexpr int64_t kCacheMinBytes = int64_t{32} << 20;
constexpr int64_t kCacheGranule = int64_t{2} << 20;
std::unordered_multimap<int64_t, c10::DataPtr>* g_idle = nullptr;  // block size -> free blocks
int64_t g_idle_bytes = 0;
std::atomic<int64_t> g_idle_bytes_now{0};  // g_idle_bytes, readable without the lock
std::atomic<int64_t> g_cache_limit{0};     // most idle bytes kept; 0 = no caching

int64_t cache_block_size(int64_t bytes) {
  if (bytes < kCacheMinBytes || g_cache_limit.load() <= 0) return 0;
  return (bytes + kCacheGranule - 1) / kCacheGranule * kCacheGranule;
}

// Takes an idle block of exactly `block` bytes, or returns an empty DataPtr.
c10::DataPtr take_idle(int64_t block) {
  std::lock_guard<std::mutex> lock(g_live_mutex);
  auto it = g_idle->find(block);
  if (it == g_idle->end()) return {};
  c10::DataPtr out = std::move(it->second);
  g_idle->erase(it);
  g_idle_bytes -= block;
  g_idle_bytes_now.store(g_idle_bytes);
  return out;
}

void empty_idle_cache() {
  std::unordered_multimap<int64_t, c10::DataPtr> released;  // freed after the lock is dropped
  {
    std::lock_guard<std::mutex> lock(g_live_mutex);
    if (g_idle == nullptr) return;
    released.swap(*g_idle);
    g_idle_bytes = 0;
    g_idle_bytes_now.store(0);
  }
}

void free_counted(void* data) {
  CountedAllocation allocation;
  {
    std::lock_guard<std::mutex> lock(g_live_mutex);
    auto it = g_live->find(data);
    if (it == g_live->end()) return;  // not ours: cannot happen for pointers we handed out
    allocation = std::move(it->second);
    g_live->erase(it);
    if (allocation.block > 0 && g_idle_bytes + allocation.block <= g_cache_limit.load()) {
      g_idle->emplace(allocation.block, std::move(allocation.inner));
      g_idle_bytes += allocation.block;
      g_idle_bytes_now.store(g_idle_bytes);
    }
  }
  g_current.fetch_sub(allocation.bytes);
}  // an uncached allocation.inner frees the memory through the wrapped allocator's deleter

void raise_peak(int64_t now) {
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
}

class CountingAllocator final : public compat::AllocatorBase {
 public:
  explicit CountingAllocator(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate_bytes(size_t n) const override {
    const auto bytes = static_cast<int64_t>(n);
    const int64_t now = g_current.fetch_add(bytes) + bytes;
    const int64_t cap = g_cap.load();
    if (n > 0 && cap > 0 && now > cap) {
      g_current.fetch_sub(bytes);
      throw OutOfMemoryError("host memory cap: allocating " + std::to_string(bytes) +
                             " bytes with " + std::to_string(now - bytes) +
                             " in use would exceed the cap of " + std::to_string(cap) + " bytes");
    }
    const int64_t block = cache_block_size(bytes);
    c10::DataPtr inner = block > 0 ? take_idle(block) : c10::DataPtr();
    if (!inner) {
      const auto size = static_cast<size_t>(block > 0 ? block : bytes);
      try {
        inner = inner_->allocate(size);
      } catch (const c10::Error&) {
        empty_idle_cache();  // give the cached blocks back and try once more
        try {
          inner = inner_->allocate(size);
        } catch (const c10::Error& e) {
          g_current.fetch_sub(bytes);
          throw OutOfMemoryError("host allocation of " + std::to_string(bytes) +
                                 " bytes failed: " + e.what_without_backtrace());
        }
      }
    }
    void* data = inner.get();
    if (data == nullptr) {  // zero bytes: nothing to count
      g_current.fetch_sub(bytes);
      return inner;
    }
    raise_peak(now);
    g_allocations.fetch_add(1);
    {
      std::lock_guard<std::mutex> lock(g_live_mutex);
      g_live->emplace(data, CountedAllocation{std::move(inner), bytes, block});
    }
    return {data, data, &free_counted, c10::Device(c10::kCPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &free_counted; }

 private:
  c10::Allocator* inner_;
};

CountingAllocator* g_counter = nullptr;  // never deleted: counted tensors may outlive everything
std::mutex g_install_mutex;

// ---------------------------------------------------------------------------------------------
// Activation estimate

struct Sizes {
  double n;         // tokens per micro-batch, B * T
  double d, kvd;    // D, KV * hd
  double f;         // FFN size F
  double heads_t2;  // B * H * T * T: attention probabilities
  double heads_t;   // B * H * T: the fused kernel's row log-sum-exp
  bool scores;      // attention keeps its probabilities for backward (reference kernel)
  double c;         // bytes of the compute dtype
  bool autocast;    // compute dtype below fp32: linear inputs are cast copies
  bool full;        // full fine-tuning: base weights need their inputs saved
};

// Bytes a LoRA adapter on a linear map with `in` inputs saves: the dropout mask (fp32) and the
// dropped input (in the compute dtype) or, without dropout, the input; A's output for B.
double lora_adapter_bytes(const Sizes& s, double in, const LoraOptions& lora) {
  const double input = lora.dropout > 0 ? s.n * in * (4 + s.c) : s.n * in * s.c;
  return input + s.n * static_cast<double>(lora.rank) * s.c;
}

double lora_targets_bytes(const Sizes& s, const LoraOptions& lora, bool attention) {
  if (s.full) return 0;
  double bytes = 0;
  for (const auto& t : lora.targets) {
    const bool in_attention = t == "wq" || t == "wk" || t == "wv" || t == "wo";
    if (in_attention != attention) continue;
    const double in = t == "w2" ? s.f : s.d;  // wo's input is H * hd = D
    bytes += lora_adapter_bytes(s, in, lora);
  }
  return bytes;
}

// RMSNorm in fp32: its input (and rsqrt) always. When its weight trains, also the normalised
// input (for the weight's gradient) and, without autocast, its output, which the trainable
// linears after it save (under autocast they save cast copies, counted with them).
double norm_bytes(const Sizes& s) {
  const double tensors = s.full ? (s.autocast ? 2 : 3) : 1;
  return s.n * s.d * 4 * tensors + s.n * 4;
}

// attention_norm .. wo (the part `ffn` checkpointing keeps).
double attention_bytes(const Sizes& s, const LoraOptions& lora) {
  double bytes = norm_bytes(s);
  const double casts = s.full && s.autocast ? 3 * s.n * s.d * s.c : 0;  // wq/wk/wv inputs, cast
  if (s.scores) {
    bytes += (s.n * s.d + s.n * s.kvd) * s.c;            // q and k for the scores matmul
    bytes += s.heads_t2 * (4 + (s.autocast ? s.c : 0));  // fp32 softmax output (+ its cast)
    bytes += s.n * s.kvd * s.c;                          // v for probs @ v
    if (s.full) bytes += casts + s.n * s.d * s.c;        // wo's input
  } else {
    // Fused kernel: q, k, v, its output (also wo's input) and the row log-sum-exp.
    bytes += (2 * s.n * s.d + 2 * s.n * s.kvd) * s.c + s.heads_t * 4 + casts;
  }
  return bytes + lora_targets_bytes(s, lora, /*attention=*/true);
}

// ffn_norm .. w2.
double ffn_bytes(const Sizes& s, const LoraOptions& lora) {
  double bytes = norm_bytes(s);
  bytes += 3 * s.n * s.f * s.c;  // silu input and output, w3 output
  if (s.full) bytes += s.n * s.f * s.c + (s.autocast ? 2 * s.n * s.d * s.c : 0);  // w2 in, casts
  return bytes + lora_targets_bytes(s, lora, /*attention=*/false);
}

int64_t dtype_bytes(c10::ScalarType t) {
  return static_cast<int64_t>(c10::elementSize(t));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Probes

void install_host_memory_counter() {
  std::lock_guard<std::mutex> lock(g_install_mutex);
  if (g_counter != nullptr) return;
  g_live = new std::unordered_map<void*, CountedAllocation>();
  g_idle = new std::unordered_multimap<int64_t, c10::DataPtr>();
  g_counter = new CountingAllocator(c10::GetCPUAllocator());
  c10::SetCPUAllocator(g_counter, /*priority=*/0);
  if (c10::GetCPUAllocator() != g_counter) {
    throw RuntimeError(
        "cannot install the counting CPU allocator: another allocator with a "
        "higher priority is registered");
  }
}

bool host_memory_counter_installed() {
  std::lock_guard<std::mutex> lock(g_install_mutex);
  return g_counter != nullptr;
}

HostMemoryStats host_memory_stats() {
  return {g_current.load(), g_peak.load(), g_allocations.load(), g_idle_bytes_now.load()};
}

void set_host_cache_limit(int64_t bytes) {
  g_cache_limit.store(std::max<int64_t>(bytes, 0));
  if (bytes <= 0) empty_idle_cache();
}

int64_t host_cache_limit() { return g_cache_limit.load(); }

int64_t host_cache_limit_from_env() {
  constexpr int64_t kMiB = int64_t{1} << 20;
  auto megabytes = [](const char* name, const char* value) {
    char* end = nullptr;
    errno = 0;
    const long long mb = std::strtoll(value, &end, 10);
    if (end == value || *end != '\0' || mb < 0 || errno != 0) {
      throw InputError(std::string(name) + ": expected a non-negative number of MB, got '" +
                       value + "'");
    }
    return static_cast<int64_t>(mb) * kMiB;
  };
  if (const char* v = std::getenv("LLT_HOST_CACHE_MB")) return megabytes("LLT_HOST_CACHE_MB", v);
  int64_t memory = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  if (const char* v = std::getenv("SLURM_MEM_PER_NODE")) {  // SLURM's own: MB; else ignored
    char* end = nullptr;
    const long long mb = std::strtoll(v, &end, 10);
    if (end != v && *end == '\0' && mb > 0) memory = std::min(memory, int64_t{mb} * kMiB);
  }
  return std::min<int64_t>(memory / 4, 8192 * kMiB);
}

void empty_host_cache() { empty_idle_cache(); }

void reset_host_peak() {
  g_peak.store(g_current.load());
}

void set_host_memory_cap(int64_t bytes) {
  g_cap.store(std::max<int64_t>(bytes, 0));
}

// The total memory of CUDA `device` after checking that a cap of `bytes` fits in it (what
// check_memory_cap promises); InputError otherwise, or in a build without CUDA.
static int64_t cuda_total_for_cap(const c10::Device& device, int64_t bytes) {
#ifdef LLT_WITH_CUDA
  const c10::DeviceIndex index = device.has_index() ? device.index() : 0;
  const auto total = static_cast<int64_t>(at::cuda::getDeviceProperties(index)->totalGlobalMem);
  if (bytes > total) {
    throw InputError("--memory-cap-gib " + format_gib(bytes) + ": more than the " +
                     format_gib(total) + " GiB of " + device.str());
  }
  return total;
#else
  (void)bytes;
  throw InputError("--memory-cap-gib: " + device.str() + " in a build without CUDA");
#endif
}

void check_memory_cap(const c10::Device& device, int64_t bytes) {
  if (device.is_cuda()) cuda_total_for_cap(device, bytes);
}

void set_memory_cap(const c10::Device& device, int64_t bytes) {
  bytes = std::max<int64_t>(bytes, 0);
  if (!device.is_cuda()) {
    set_host_memory_cap(bytes);
    return;
  }
  const auto total = static_cast<double>(cuda_total_for_cap(device, bytes));
#ifdef LLT_WITH_CUDA
  const double fraction = bytes == 0 ? 1.0 : static_cast<double>(bytes) / total;
  c10::cuda::CUDACachingAllocator::setMemoryFraction(
      fraction, device.has_index() ? device.index() : 0);
#else
  (void)total;
#endif
}

bool cuda_memory_stats_compiled() {
#ifdef LLT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

DeviceMemoryStats cuda_memory_stats(int index) {
  DeviceMemoryStats out;
#ifdef LLT_WITH_CUDA
  if (!torch::cuda::is_available()) return out;
  // [0] is StatType::AGGREGATE in every version's StatArray.
  const auto stats =
      c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  out.allocated = stats.allocated_bytes[0].current;
  out.reserved = stats.reserved_bytes[0].current;
  out.peak_allocated = stats.allocated_bytes[0].peak;
  out.peak_reserved = stats.reserved_bytes[0].peak;
#else
  (void)index;
#endif
  return out;
}

void reset_cuda_peak(int index) {
#ifdef LLT_WITH_CUDA
  if (torch::cuda::is_available()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(index));
  }
#else
  (void)index;
#endif
}

ProcessMemory process_memory() {
  ProcessMemory out;
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    int64_t kb = 0;
    if (key == "VmRSS:" && in >> kb) out.rss = kb * 1024;
    if (key == "VmHWM:" && in >> kb) out.peak_rss = kb * 1024;
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return out;
}

MemorySample sample_memory(const c10::Device& device) {
  MemorySample s;
  if (device.is_cuda()) {
    const auto d = cuda_memory_stats(device.has_index() ? device.index() : 0);
    s.allocated = d.allocated;
    s.reserved = d.reserved;
    s.peak_allocated = d.peak_allocated;
    s.peak_reserved = d.peak_reserved;
  } else {
    const auto h = host_memory_stats();
    s.allocated = h.current;
    s.reserved = h.current + h.cached;
    s.peak_allocated = s.peak_reserved = h.peak;
  }
  const auto p = process_memory();
  s.rss = p.rss;
  s.peak_rss = p.peak_rss;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Estimate

namespace {

// Elements of the largest trainable parameter: an adapter matrix for LoRA, else the largest
// weight (the embedding table or output projection, an FFN or an attention matrix).
int64_t largest_trainable_parameter(const ModelArgs& args, const LoraOptions& lora) {
  const int64_t d = args.dim, kvd = args.kv_heads() * args.head_dim(), f = args.ffn_hidden();
  if (lora.rank == 0) return std::max({args.vocab_size * d, f * d, d * d, kvd * d});
  int64_t largest = 0;
  for (const auto& name : lora.targets) {
    const bool kv = name == "wk" || name == "wv";
    const bool ffn = name == "w1" || name == "w2" || name == "w3";
    const int64_t other = kv ? kvd : ffn ? f : d;  // the side that is not dim
    largest = std::max(largest, lora.rank * std::max(d, other));
  }
  return largest;
}

}  // namespace

MemoryBreakdown estimate_training_memory(const ModelArgs& args, const MemoryEstimateOptions& o) {
  if (o.batch < 1 || o.seq_len < 1) {
    throw InputError("memory estimate: batch " + std::to_string(o.batch) + " and seq_len " +
                     std::to_string(o.seq_len) + " must be >= 1");
  }
  validate_recompute_options(o.recompute);
  const bool full = o.lora.rank == 0;
  const int64_t total_params = args.num_parameters();
  const int64_t trainable = full ? total_params : count_lora_parameters(args, o.lora);

  MemoryBreakdown m;
  m.parameters = full ? total_params * 4 : total_params * dtype_bytes(o.base_dtype) + trainable * 4;
  m.gradients = trainable * 4;
  m.optimizer_state = trainable * 8;
  // torch::optim::AdamW computes denom = (exp_avg_sq.sqrt() / c).add_(eps): two fp32 temporaries
  // the size of the parameter, alive together (the +13% seen on full fp32 fine-tuning).
  m.optimizer_temporaries = 2 * 4 * largest_trainable_parameter(args, o.lora);

  const double b = static_cast<double>(o.batch), t = static_cast<double>(o.seq_len);
  Sizes s;
  s.n = b * t;
  s.d = static_cast<double>(args.dim);
  s.kvd = static_cast<double>(args.kv_heads() * args.head_dim());
  s.f = static_cast<double>(args.ffn_hidden());
  s.heads_t2 = b * static_cast<double>(args.n_heads) * t * t;
  s.heads_t = b * static_cast<double>(args.n_heads) * t;
  s.scores = o.attention_saves_scores;
  s.autocast = o.precision != Dtype::kFp32;
  s.c = s.autocast ? 2 : 4;
  s.full = full;

  const double attention = attention_bytes(s, o.lora), ffn = ffn_bytes(s, o.lora);
  const double block_input = s.n * s.d * 4;  // what a checkpoint keeps: the fp32 residual
  const auto policy = o.recompute.policy;
  // Under autocast, a linear whose weight is stored in another dtype than the compute dtype (all
  // of them in full fine-tuning: fp32 masters; the frozen base in LoRA unless --base-dtype is the
  // compute dtype) casts it each forward, and backward keeps the cast copy to compute the input's
  // gradient. Checkpointed blocks keep none (their forward runs without autograd) and remake them
  // in backward. Measured on the 7B shape: 659 MB of 661 MB activations for bf16 LoRA, fp32 base.
  const c10::ScalarType compute = o.precision == Dtype::kFp16 ? c10::kHalf : c10::kBFloat16;
  const bool casts = s.autocast && (full || o.base_dtype != compute);
  const double attention_w = casts ? (2 * s.d * s.d + 2 * s.d * s.kvd) * s.c : 0;
  const double ffn_w = casts ? 3 * s.d * s.f * s.c : 0;
  double blocks = 0;
  for (int64_t i = 0; i < args.n_layers; ++i) {
    const bool whole =
        policy == RecomputePolicy::kBlock ||
        (policy == RecomputePolicy::kEveryK && i % o.recompute.every == 0);
    if (whole) {
      blocks += block_input;
    } else if (policy == RecomputePolicy::kFfn) {
      blocks += attention + attention_w + block_input;
    } else {
      blocks += attention + attention_w + ffn + ffn_w;
    }
  }
  // LoRA's first block (kept or recomputed): its input (the frozen embedding's output) needs no
  // gradient, and neither does attention_norm's output, so that norm saves nothing, wq/wk/wv
  // keep no cast weight copy, and their adapters' dropout keeps no mask (only the dropped input,
  // for A's gradient).
  double first_block_spared = norm_bytes(s) + (casts ? (s.d * s.d + 2 * s.d * s.kvd) * s.c : 0);
  for (const auto& t : o.lora.targets) {
    const bool reads_norm = t == "wq" || t == "wk" || t == "wv";
    if (o.lora.dropout > 0 && reads_norm) first_block_spared += s.n * s.d * 4;
  }
  const bool first_whole = policy == RecomputePolicy::kBlock || policy == RecomputePolicy::kEveryK;
  if (!full && args.n_layers > 0 && !first_whole) blocks -= first_block_spared;
  // Head (lib/llt/loss): the final norm's saved tensors (its output is not among them: the
  // projection takes a gathered copy of the scored rows, which it saves when it trains), and the
  // fp32 log-probs of the scored rows, which cross-entropy keeps (the logits are gone by then).
  const double vocab = static_cast<double>(args.vocab_size);
  const double rows = o.loss_rows > 0 ? static_cast<double>(o.loss_rows) : s.n;
  const double head = s.n * s.d * 4 * (full ? 2 : 1) + s.n * 4 +
                      (full ? rows * s.d * (s.autocast ? s.c : 4) : 0) + rows * vocab * 4;
  const double head_w = casts ? vocab * s.d * s.c : 0;  // the output projection's cast copy
  m.activations = static_cast<int64_t>(blocks + head + head_w);
  m.head_activations = static_cast<int64_t>(head + head_w);
  m.block_backward = static_cast<int64_t>(3 * s.n * s.f * s.c + 2 * s.n * s.d * 4);
  // Cross-entropy's backward: the gradient of the log-probs and that of the logits, both fp32,
  // alive together before log-softmax's saved output is freed.
  m.loss_backward = static_cast<int64_t>(2 * rows * vocab * 4);
  if (policy == RecomputePolicy::kBlock || policy == RecomputePolicy::kEveryK) {
    m.recompute = static_cast<int64_t>(attention + attention_w + ffn + ffn_w);
    // Only block 0 recomputed (a 1-layer model, or every-k with K >= n_layers): with LoRA it
    // spares what its gradient-free input spares (above).
    const bool only_first =
        args.n_layers <=
        (policy == RecomputePolicy::kBlock ? 1 : o.recompute.every);
    if (!full && only_first) m.recompute -= static_cast<int64_t>(first_block_spared);
  } else if (policy == RecomputePolicy::kFfn) {
    m.recompute = static_cast<int64_t>(ffn + ffn_w);
  }
  return m;
}

}  // namespace llt
