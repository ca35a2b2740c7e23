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

namespace llt {
namespace {

#ifdef LLT_WITH_CUDA
// Bytes as GiB with two decimals, for messages (the CUDA memory cap's).
std::string format_gib(int64_t bytes) {
  char out[32];
  std::snprintf(out, sizeof out, "%.2f", static_cast<double>(bytes) / double(int64_t{1} << 30));
  return out;
}
#endif

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

}  // namespace llt
