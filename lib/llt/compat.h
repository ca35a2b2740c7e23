// The one place that knows LibTorch versions apart: Debian's 1.13 here, a CUDA 2.x on the
// cluster. Everything else calls these wrappers. Include it from .cpp files only.
//   - Autocast: 1.13 has per-device functions (is_enabled/is_cpu_enabled,
//     get_autocast_gpu_dtype/get_autocast_cpu_dtype); 2.4 made them take a DeviceType and
//     deprecated the old ones.
//   - c10::Allocator: 1.13 declares `DataPtr allocate(size_t) const`; 2.3 dropped the const and
//     added a pure virtual `copy_data`.
//   - c10d (distributed.cpp only, the one file compiled with USE_C10D_GLOO / USE_C10D_NCCL): in
//     1.13 ProcessGroupGloo and ProcessGroupNCCL derive from c10d::ProcessGroup; 2.0 moved the
//     collectives into c10d::Backend, which they derive from instead, and made ProcessGroup a
//     dispatcher over backends. llt holds the backend object itself and calls its virtual
//     collectives, whose signatures did not change. Options: 1.13 takes the timeout in
//     ProcessGroupGloo::Options::create, NCCL's create takes only a stream priority; both keep a
//     `timeout` member, which is what llt sets.
//   - torch::optim keys per-parameter state by the parameter's TensorImpl: its address printed
//     to a std::string in 1.13, the address itself (void*) in 2.x.
#pragma once

#include <cstddef>
#include <cstring>
#include <sstream>
#include <string>
#include <type_traits>

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <torch/version.h>

#if defined(LLT_WITH_GLOO) || defined(LLT_WITH_NCCL)
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif
#endif
#ifdef LLT_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef LLT_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#define LLT_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||      \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace llt::compat {

// Autocast for `device` (kCPU or kCUDA; other types are never enabled here).
inline bool autocast_enabled(c10::DeviceType device) {
#if LLT_TORCH_AT_LEAST(2, 4)
  return at::autocast::is_autocast_enabled(device);
#else
  return device == c10::DeviceType::CUDA ? at::autocast::is_enabled()
                                         : at::autocast::is_cpu_enabled();
#endif
}

inline void set_autocast_enabled(c10::DeviceType device, bool enabled) {
#if LLT_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_enabled(device, enabled);
#else
  if (device == c10::DeviceType::CUDA) {
    at::autocast::set_enabled(enabled);
  } else {
    at::autocast::set_cpu_enabled(enabled);
  }
#endif
}

// The lower-precision dtype autocast casts to on `device`.
inline c10::ScalarType autocast_dtype(c10::DeviceType device) {
#if LLT_TORCH_AT_LEAST(2, 4)
  return at::autocast::get_autocast_dtype(device);
#else
  return device == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype()
                                         : at::autocast::get_autocast_cpu_dtype();
#endif
}

inline void set_autocast_dtype(c10::DeviceType device, c10::ScalarType dtype) {
#if LLT_TORCH_AT_LEAST(2, 4)
  at::autocast::set_autocast_dtype(device, dtype);
#else
  if (device == c10::DeviceType::CUDA) {
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
}

// A c10::Allocator for either API. Derive from it and implement allocate_bytes. Neither
// `allocate` says `override` on purpose: the const one overrides in 1.13, the non-const one in
// 2.3+, and the other is a plain overload.
struct AllocatorBase : c10::Allocator {
  virtual c10::DataPtr allocate_bytes(size_t n) const = 0;
  c10::DataPtr allocate(size_t n) const { return allocate_bytes(n); }
  c10::DataPtr allocate(size_t n) { return allocate_bytes(n); }
  // Pure virtual in 2.3+ (used by Allocator::clone); unused by 1.13.
  void copy_data(void* dest, const void* src, size_t count) const { std::memcpy(dest, src, count); }
};

// The key under which torch::optim keeps `p`'s state, for a state map of type StateMap
// (decltype of Optimizer::state()).
template <typename StateMap>
typename StateMap::key_type optimizer_state_key(const at::Tensor& p) {
  if constexpr (std::is_same_v<typename StateMap::key_type, std::string>) {
    std::ostringstream os;  // what 1.13's c10::guts::to_string does
    os << p.unsafeGetTensorImpl();
    return os.str();
  } else {
    return p.unsafeGetTensorImpl();
  }
}

// Restricts CUDA's scaled_dot_product_attention to the math backend (on) or lifts that (off):
// the fused backends' backward accumulates with atomics, so bitwise tests need the math one.
// LibTorch 1.13 has no SDPA, so nothing to set there.
inline void set_math_attention_only(bool on) {
#if LLT_TORCH_AT_LEAST(2, 0)
  at::globalContext().setSDPUseFlash(!on);
  at::globalContext().setSDPUseMemEfficient(!on);
#if LLT_TORCH_AT_LEAST(2, 5)
  at::globalContext().setSDPUseCuDNN(!on);
#endif
  at::globalContext().setSDPUseMath(true);
#else
  (void)on;
#endif
}

// c10d: see the note at the top. Only distributed.cpp defines LLT_WITH_GLOO / LLT_WITH_NCCL.
#if defined(LLT_WITH_GLOO) || defined(LLT_WITH_NCCL)
#if LLT_TORCH_AT_LEAST(2, 0)
using CollectiveBackend = c10d::Backend;
#else
using CollectiveBackend = c10d::ProcessGroup;
#endif

// Ends the backend's communicators before it is destroyed: 2.x's ProcessGroupNCCL warns (and
// aborts its communicators) when destroyed without shutdown(); 1.13 has no shutdown.
inline void shutdown_backend(CollectiveBackend& backend) {
#if LLT_TORCH_AT_LEAST(2, 0)
  backend.shutdown();
#else
  (void)backend;
#endif
}
#endif

}  // namespace llt::compat
