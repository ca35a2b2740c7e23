#include "llt/amp.h"

#include <cmath>
#include <string>

#include <ATen/ATen.h>

#include "llt/compat.h"
#include "llt/errors.h"

namespace llt {

AutocastState current_autocast_state() {
  AutocastState s;
  s.cpu_enabled = compat::autocast_enabled(c10::DeviceType::CPU);
  s.cpu_dtype = compat::autocast_dtype(c10::DeviceType::CPU);
  s.cuda_enabled = compat::autocast_enabled(c10::DeviceType::CUDA);
  s.cuda_dtype = compat::autocast_dtype(c10::DeviceType::CUDA);
  return s;
}

namespace {

void set_autocast_state(const AutocastState& s) {
  compat::set_autocast_enabled(c10::DeviceType::CPU, s.cpu_enabled);
  compat::set_autocast_dtype(c10::DeviceType::CPU, s.cpu_dtype);
  compat::set_autocast_enabled(c10::DeviceType::CUDA, s.cuda_enabled);
  compat::set_autocast_dtype(c10::DeviceType::CUDA, s.cuda_dtype);
}

AutocastState with_device(AutocastState s, c10::DeviceType device, c10::ScalarType dtype) {
  const std::string name = c10::toString(dtype);
  if (device == c10::DeviceType::CPU) {
    if (dtype != c10::kBFloat16) {
      throw InputError("autocast on CPU takes bf16, got " + name +
                       " (LibTorch has no fp16 CPU kernels; use --precision bf16 or fp32)");
    }
    s.cpu_enabled = true;
    s.cpu_dtype = dtype;
  } else if (device == c10::DeviceType::CUDA) {
    if (dtype != c10::kHalf && dtype != c10::kBFloat16) {
      throw InputError("autocast on CUDA takes fp16 or bf16, got " + name);
    }
    s.cuda_enabled = true;
    s.cuda_dtype = dtype;
  } else {
    throw InputError("autocast: device type " + c10::DeviceTypeName(device) +
                     " is not supported (cpu or cuda)");
  }
  return s;
}

}  // namespace

AutocastGuard::AutocastGuard(const AutocastState& state) {
  enter(state);
}

AutocastGuard::AutocastGuard(c10::DeviceType device, c10::ScalarType dtype) {
  enter(with_device(current_autocast_state(), device, dtype));
}

void AutocastGuard::enter(const AutocastState& state) {
  previous_ = current_autocast_state();
  set_autocast_state(state);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast_state(previous_);
}

// ---------------------------------------------------------------------------------------------
// LossScaler

LossScaler::LossScaler(const LossScalerOptions& options) : options_(options) {
  if (!(options.init_scale > 0) || !std::isfinite(options.init_scale)) {
    throw InputError("loss scaler: init_scale must be positive and finite, got " +
                     std::to_string(options.init_scale));
  }
  if (!(options.growth_factor > 1)) {
    throw InputError("loss scaler: growth_factor must be > 1, got " +
                     std::to_string(options.growth_factor));
  }
  if (!(options.backoff_factor > 0 && options.backoff_factor < 1)) {
    throw InputError("loss scaler: backoff_factor must be in (0, 1), got " +
                     std::to_string(options.backoff_factor));
  }
  if (options.growth_interval < 1) {
    throw InputError("loss scaler: growth_interval must be >= 1, got " +
                     std::to_string(options.growth_interval));
  }
  state_.scale = options.enabled ? options.init_scale : 1.0;
}

at::Tensor LossScaler::scale(const at::Tensor& loss) const {
  return options_.enabled ? loss * state_.scale : loss;
}

bool LossScaler::unscale(const std::vector<at::Tensor>& params) const {
  at::NoGradGuard no_grad;
  at::Tensor all_finite;  // a bool on the gradients' device: one host sync at the end
  const double inv_scale = 1.0 / state_.scale;  // exact for powers of two
  for (const auto& p : params) {
    at::Tensor g = p.grad();
    if (!g.defined()) continue;
    if (options_.enabled) g.mul_(inv_scale);
    const at::Tensor finite = at::isfinite(g).all();
    all_finite =
        all_finite.defined() ? at::logical_and(all_finite, finite.to(all_finite.device())) : finite;
  }
  return all_finite.defined() && !all_finite.item<bool>();
}

bool LossScaler::update(bool found_inf) {
  if (!options_.enabled) return !found_inf;
  if (found_inf) {
    state_.scale *= options_.backoff_factor;
    state_.good_steps = 0;
    ++state_.skipped_steps;
    return false;
  }
  if (++state_.good_steps == options_.growth_interval) {
    state_.scale *= options_.growth_factor;
    state_.good_steps = 0;
  }
  return true;
}

void LossScaler::load_state(const LossScalerState& state) {
  if (!(state.scale > 0) || !std::isfinite(state.scale) || state.good_steps < 0 ||
      state.skipped_steps < 0) {
    throw InputError("loss scaler state: scale " + std::to_string(state.scale) + ", good_steps " +
                     std::to_string(state.good_steps) + ", skipped_steps " +
                     std::to_string(state.skipped_steps) + " is not a valid state");
  }
  state_ = state;
}

}  // namespace llt
