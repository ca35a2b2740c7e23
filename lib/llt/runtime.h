// Process-level set-up shared by every tool: allocator tuning, threads, device and dtype.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Generator.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "llt/options.h"  // Dtype

namespace llt {

// Called first in every tool's main(). Raises glibc's mmap and trim thresholds so freed tensor
// memory is reused instead of handed back to the kernel and page-faulted in again on the next
// allocation (measured in bench/: up to several x on small models). LLT_MALLOC_TUNING=0 turns
// it off, for measurement.
void init_process();

// Whether init_process() applied the allocator tuning.
bool malloc_tuning_active();

// Threads to use: `requested` if > 0, else SLURM_CPUS_PER_TASK if set, else all cores.
// Throws InputError on a SLURM_CPUS_PER_TASK that is not a positive integer.
int resolve_threads(int requested);

// Sets intra-op threads for ATen (and OpenMP/OpenBLAS through it); returns the count used.
int configure_threads(int requested);

// "auto" -> cuda if available else cpu; "cpu"; "cuda" or "cuda:N" (InputError if no CUDA).
c10::Device resolve_device(const std::string& name);

// A new random generator of `device` (CPU or CUDA) seeded with `seed`, apart from the default
// generators. Throws InputError for CUDA in a build without CUDA.
at::Generator seeded_generator(const c10::Device& device, uint64_t seed);

// fp32 -> kFloat, bf16 -> kBFloat16, fp16 -> kHalf.
c10::ScalarType scalar_type(Dtype dtype);

// scalar_type(dtype), checked against the device: fp16 on a CPU device is an InputError
// (LibTorch's CPU kernels lack half matmul/softmax: PLATFORM.md); so is bf16 on a GPU without it.
c10::ScalarType resolve_dtype(Dtype dtype, const c10::Device& device,
                              const std::string& flag = "--dtype");

// "" when `device` computes in bf16; else the GPU's name and compute capability (a CUDA device
// below 8.0: the P100 is 6.0). Always "" for the CPU and in a build without CUDA.
std::string device_without_bf16(const c10::Device& device);

// The short name of a dtype: "fp32", "bf16", "fp16".
std::string dtype_name(c10::ScalarType dtype);

// The likely causes of NaN/inf logits from a model computing in `dtype`, for a NonFiniteError:
// "the model's weights (or --adapter) hold NaN/inf", and for bf16/fp16 a --dtype too narrow.
std::string non_finite_causes(c10::ScalarType dtype);

}  // namespace llt
