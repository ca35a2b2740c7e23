// Memory probes (DESIGN.md "Memory logs"): host bytes counted by a wrapper around LibTorch's CPU
// allocator (1.13 keeps no CPU statistics), the CUDA caching allocator's statistics, the
// process's RSS, an optional cap that turns host allocations past N bytes into
// llt::OutOfMemoryError (to test the OOM path on CPU, where a cgroup limit kills the process
// instead). The analytic estimate to compare them with is lib/llt/memory_estimate.
#pragma once

#include <cstdint>
#include <string>

#include <c10/core/Device.h>

namespace llt {

// Bytes of tensors allocated through LibTorch's CPU allocator since the counter was installed.
struct HostMemoryStats {
  int64_t current = 0;      // bytes held now
  int64_t peak = 0;         // most held at once since install or reset_host_peak()
  int64_t allocations = 0;  // allocate() calls counted
  int64_t cached = 0;       // idle bytes in the large-block cache (not counted in current)
};

// Wraps the CPU allocator with the counter (process-wide; later calls do nothing). Tensors that
// already exist are not counted, nor freed from the count. Throws RuntimeError if another
// allocator with a higher priority keeps LibTorch from using it.
void install_host_memory_counter();
bool host_memory_counter_installed();
HostMemoryStats host_memory_stats();  // zeros before install
void reset_host_peak();               // peak = current

// With the counter installed, an allocation that would take the counted bytes past `bytes`
// throws OutOfMemoryError instead (0 = no cap). A real allocation failure of the wrapped
// allocator is reported as OutOfMemoryError too.
void set_host_memory_cap(int64_t bytes);

// The memory cap of a run on `device`, in bytes (0 = none): on the CPU the counted host bytes
// (set_host_memory_cap); on CUDA the caching allocator's per-process memory fraction, bytes / the
// device's total memory (the CUDA context is outside it). Throws InputError when `bytes` is more
// than the device has, or a CUDA device is asked of a build without CUDA.
void set_memory_cap(const c10::Device& device, int64_t bytes);
// The InputError set_memory_cap would throw, thrown before anything is loaded or written.
void check_memory_cap(const c10::Device& device, int64_t bytes);

// The counting allocator's cache of freed large blocks (32 MiB and up, which glibc would return
// to the kernel and fault in again, zeroed, at the next allocation): at most `bytes` idle bytes
// kept, reused for requests of the same size (rounded to 2 MiB); 0 turns caching off and frees
// what is kept. Off until set. A failed allocation empties the cache and retries.
void set_host_cache_limit(int64_t bytes);
// The limit llt-finetune uses: LLT_HOST_CACHE_MB if set (0 = off; InputError if not a
// non-negative integer), else a quarter of the memory the job may use (physical memory, or
// SLURM_MEM_PER_NODE when it holds a number of MB), at most 8 GiB.
int64_t host_cache_limit_from_env();
int64_t host_cache_limit();
void empty_host_cache();

// The CUDA caching allocator's counters for one device.
struct DeviceMemoryStats {
  int64_t allocated = 0;       // bytes in tensors now
  int64_t reserved = 0;        // bytes the allocator holds from the driver now
  int64_t peak_allocated = 0;  // since start or reset_device_peak()
  int64_t peak_reserved = 0;
};

// True when llt was built against a LibTorch with CUDA (the statistics below are compiled in).
bool cuda_memory_stats_compiled();
// Stats of CUDA device `index`; zeros when not compiled in or CUDA is unavailable.
DeviceMemoryStats cuda_memory_stats(int index);
void reset_cuda_peak(int index);

// Resident set size from /proc/self/status (VmRSS, VmHWM); zeros where unreadable.
struct ProcessMemory {
  int64_t rss = 0;
  int64_t peak_rss = 0;
};
ProcessMemory process_memory();

// One memory.jsonl sample for `device`: CUDA from the caching allocator; CPU from the counter
// (reserved = allocated: there is no cache), plus the process's RSS either way.
struct MemorySample {
  int64_t allocated = 0, reserved = 0, peak_allocated = 0, peak_reserved = 0;
  int64_t rss = 0, peak_rss = 0;
};
MemorySample sample_memory(const c10::Device& device);

}  // namespace llt
