#include "llt/runtime.h"

#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <ATen/CPUGeneratorImpl.h>
#ifdef LLT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif

#include "llt/errors.h"

namespace llt {
namespace {

bool g_malloc_tuning = false;

// glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): blocks below
// it come from the heap and are reused; larger ones are mmap'd, where the page-fault cost is
// small next to the work done on such a tensor.
constexpr int kMmapThreshold = 32 * 1024 * 1024;
// Never give freed heap memory back to the kernel during a run.
constexpr int kTrimThreshold = 1 << 30;

}  // namespace

void init_process() {
  const char* env = std::getenv("LLT_MALLOC_TUNING");
  if (env != nullptr && std::string(env) == "0") return;
  g_malloc_tuning = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 &&
                    mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
}

bool malloc_tuning_active() { return g_malloc_tuning; }

int resolve_threads(int requested) {
  if (requested > 0) return requested;
  if (const char* slurm = std::getenv("SLURM_CPUS_PER_TASK")) {
    char* end = nullptr;
    const long n = std::strtol(slurm, &end, 10);
    if (end == slurm || *end != '\0' || n <= 0) {
      throw InputError(std::string("SLURM_CPUS_PER_TASK: expected a positive integer, got '") +
                       slurm + "'");
    }
    return static_cast<int>(n);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

int configure_threads(int requested) {
  const int n = resolve_threads(requested);
  at::set_num_threads(n);
  return n;
}

c10::Device resolve_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? c10::Device("cuda") : c10::Device("cpu");
  if (name == "cpu") return c10::Device("cpu");
  if (name.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) {
      throw InputError("--device " + name + ": no CUDA device is available in this build/machine");
    }
    return c10::Device(name);
  }
  throw InputError("--device: expected auto, cpu or cuda[:N], got '" + name + "'");
}

at::Generator seeded_generator(const c10::Device& device, uint64_t seed) {
  if (device.is_cpu()) return at::make_generator<at::CPUGeneratorImpl>(seed);
#ifdef LLT_WITH_CUDA
  if (device.is_cuda()) {
    auto gen = at::make_generator<at::CUDAGeneratorImpl>(device.has_index() ? device.index() : 0);
    gen.set_current_seed(seed);
    return gen;
  }
#endif
  throw InputError("no random generator for device " + device.str() + " in this build");
}

std::string device_without_bf16(const c10::Device& device) {
#ifdef LLT_WITH_CUDA
  if (device.is_cuda() && torch::cuda::is_available()) {
    // bf16 arithmetic (cuBLAS bf16 GEMMs included) needs compute capability 8.0 (Ampere).
    const cudaDeviceProp* p = device.has_index() ? at::cuda::getDeviceProperties(device.index())
                                                 : at::cuda::getCurrentDeviceProperties();
    int major = p->major, minor = p->minor;
    // LLT_CUDA_CAPABILITY=M.N: the capability to assume instead, so that the refusal a P100
    // (6.0) gets can be tested on a newer GPU.
    if (const char* v = std::getenv("LLT_CUDA_CAPABILITY")) {
      if (std::sscanf(v, "%d.%d", &major, &minor) != 2) {
        throw InputError("LLT_CUDA_CAPABILITY: expected MAJOR.MINOR (e.g. 6.0), got '" +
                         std::string(v) + "'");
      }
    }
    if (major < 8) {
      return std::string(p->name) + " (compute capability " + std::to_string(major) + "." +
             std::to_string(minor) + ")";
    }
  }
#else
  (void)device;
#endif
  return "";
}

c10::ScalarType scalar_type(Dtype dtype) {
  return dtype == Dtype::kFp32 ? c10::kFloat : dtype == Dtype::kBf16 ? c10::kBFloat16 : c10::kHalf;
}

c10::ScalarType resolve_dtype(Dtype dtype, const c10::Device& device, const std::string& flag) {
  if (dtype == Dtype::kBf16) {
    const std::string gpu = device_without_bf16(device);
    if (!gpu.empty()) {
      throw InputError(flag + " bf16: " + gpu + " has no bf16 arithmetic; use fp16 or fp32");
    }
  }
  if (dtype == Dtype::kFp16 && device.is_cpu()) {
    throw InputError(flag + " fp16: not supported on CPU (LibTorch CPU kernels lack half "
                     "matmul/softmax); use bf16 or fp32");
  }
  return scalar_type(dtype);
}

std::string dtype_name(c10::ScalarType dtype) {
  for (const auto& [name, d] : names(Dtype{})) {
    if (scalar_type(d) == dtype) return name;
  }
  return c10::toString(dtype);
}

std::string non_finite_causes(c10::ScalarType dtype) {
  std::string causes = "the model's weights (or --adapter) hold NaN/inf";
  if (dtype != c10::kFloat) {
    causes += ", or --dtype " + dtype_name(dtype) + " is too narrow for its activations (try " +
              "--dtype fp32)";
  }
  return causes;
}

}  // namespace llt
