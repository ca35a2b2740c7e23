// Mixed precision (DESIGN.md "Training numerics"): an RAII autocast guard (LibTorch 1.13 has none
// in C++) and a dynamic loss scaler for fp16 (LibTorch has no C++ GradScaler, and 1.13's AMP
// unscale/update ops are CUDA-only), written with plain tensor ops so its logic is tested on CPU.
//
// fp16 recipe per optimizer step, as PyTorch's GradScaler:
//   scaler.scale(loss).backward()          (each micro-batch)
//   found_inf = scaler.unscale(params)     (grads now true-sized: clip here)
//   if (!found_inf) optimizer.step()
//   scaler.update(found_inf)               (backoff and skip, or count towards growth)
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace llt {

// This thread's autocast settings for CPU and CUDA.
struct AutocastState {
  bool cpu_enabled = false;
  c10::ScalarType cpu_dtype = c10::kBFloat16;
  bool cuda_enabled = false;
  c10::ScalarType cuda_dtype = c10::kHalf;

  bool operator==(const AutocastState& o) const {
    return cpu_enabled == o.cpu_enabled && cpu_dtype == o.cpu_dtype &&
           cuda_enabled == o.cuda_enabled && cuda_dtype == o.cuda_dtype;
  }
};

AutocastState current_autocast_state();

// Sets autocast for a scope and restores the previous settings when it ends. Like Python's
// torch.autocast it counts nesting, and leaving the outermost scope clears autocast's cache of
// casted weights. Run backward() outside the scope (as PyTorch recommends).
class AutocastGuard {
 public:
  // Exactly `state` (used to re-enter a recorded state, e.g. in activation recomputation).
  explicit AutocastGuard(const AutocastState& state);
  // Autocast on `device` to `dtype`, the other device unchanged: CPU takes bf16; CUDA takes fp16
  // or bf16. Throws InputError otherwise (LibTorch 1.13 has no fp16 autocast on CPU).
  AutocastGuard(c10::DeviceType device, c10::ScalarType dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  void enter(const AutocastState& state);
  AutocastState previous_;
};

struct LossScalerOptions {
  double init_scale = 65536.0;     // 2^16, GradScaler's default
  double growth_factor = 2.0;      // scale *= this after growth_interval finite steps in a row
  double backoff_factor = 0.5;     // scale *= this on a step with inf/nan gradients
  int64_t growth_interval = 2000;  // GradScaler's default
  bool enabled = true;             // false (fp32, bf16): scale 1, unscale only checks
};

// What a resumed run needs to continue the same scale sequence.
struct LossScalerState {
  double scale = 65536.0;
  int64_t good_steps = 0;     // finite steps since the last growth or backoff
  int64_t skipped_steps = 0;  // optimizer steps skipped for inf/nan gradients, in total
};

class LossScaler {
 public:
  // Throws InputError on a non-positive scale, factors that do not grow/shrink, or interval < 1.
  explicit LossScaler(const LossScalerOptions& options = {});

  // loss * scale (the loss itself when disabled).
  at::Tensor scale(const at::Tensor& loss) const;
  // Divides every defined .grad of `params` by the scale in place and returns true if any
  // gradient holds inf or nan (one host sync for all of them). When disabled: only checks.
  bool unscale(const std::vector<at::Tensor>& params) const;
  // Ends the step: on found_inf halves the scale (backoff), resets the good-step count and
  // counts a skipped step; else counts a good step and doubles the scale (growth) every
  // growth_interval good steps. Returns !found_inf, i.e. whether the step was taken.
  bool update(bool found_inf);

  double current_scale() const { return state_.scale; }
  bool enabled() const { return options_.enabled; }
  LossScalerState state() const { return state_; }
  void load_state(const LossScalerState& state);

 private:
  LossScalerOptions options_;
  LossScalerState state_;
};

}  // namespace llt
