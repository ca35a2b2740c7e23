#include "llt/optim.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include "llt/compat.h"
#include "llt/errors.h"
#include "llt/safetensors.h"

namespace llt {
namespace {

constexpr double kPi = 3.14159265358979323846;

using StateMap = std::decay_t<decltype(std::declval<torch::optim::AdamW&>().state())>;

StateMap::key_type state_key(const at::Tensor& p) { return compat::optimizer_state_key<StateMap>(p); }

torch::optim::AdamWOptions adamw_options(const OptimOptions& o, double weight_decay) {
  return torch::optim::AdamWOptions(o.lr)
      .betas(std::make_tuple(o.beta1, o.beta2))
      .eps(o.eps)
      .weight_decay(weight_decay)
      .amsgrad(false);
}

}  // namespace

void validate_optim_options(const OptimOptions& o) {
  auto fail = [](const std::string& flag, const std::string& why) {
    throw InputError(flag + ": " + why);
  };
  if (!(o.lr > 0) || !std::isfinite(o.lr)) fail("--lr", "must be > 0, got " + std::to_string(o.lr));
  if (o.warmup_steps < 0) {
    fail("--warmup-steps", "must be >= 0, got " + std::to_string(o.warmup_steps));
  }
  if (!(o.weight_decay >= 0)) {
    fail("--weight-decay", "must be >= 0, got " + std::to_string(o.weight_decay));
  }
  if (!(o.grad_clip >= 0)) {
    fail("--grad-clip", "must be >= 0 (0 = off), got " + std::to_string(o.grad_clip));
  }
  if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1)) {
    fail("AdamW betas",
         "must be in [0, 1), got " + std::to_string(o.beta1) + ", " + std::to_string(o.beta2));
  }
  if (!(o.eps > 0)) fail("AdamW eps", "must be > 0, got " + std::to_string(o.eps));
}

double scheduled_lr(const OptimOptions& o, int64_t step, int64_t total_steps) {
  validate_optim_options(o);
  if (step < 1 || total_steps < 1) {
    throw InputError("learning-rate schedule: step " + std::to_string(step) + " of " +
                     std::to_string(total_steps) + " (both must be >= 1)");
  }
  const int64_t w = o.warmup_steps;
  if (step <= w) return o.lr * static_cast<double>(step) / static_cast<double>(w);
  if (o.lr_schedule == LrSchedule::kConstant) return o.lr;
  // step > w here, so step <= total_steps implies total_steps - w >= 1.
  const double progress =
      step > total_steps ? 1.0
                         : static_cast<double>(step - w - 1) / static_cast<double>(total_steps - w);
  if (o.lr_schedule == LrSchedule::kCosine) return o.lr * 0.5 * (1.0 + std::cos(kPi * progress));
  return o.lr * (1.0 - progress);  // linear
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return 0.0;
  // As torch.nn.utils.clip_grad_norm_ (1.13): the norm of the per-tensor norms.
  const auto device = grads.front().device();
  std::vector<at::Tensor> norms;
  for (const auto& g : grads) norms.push_back(at::norm(g, 2).to(device));
  const at::Tensor total = at::norm(at::stack(norms), 2);
  if (max_norm > 0) {
    // Python's `max_norm / (total + 1e-6)` is reciprocal() * max_norm; clamped to at most 1.
    const at::Tensor coef = at::clamp_max((total + 1e-6).reciprocal() * max_norm, 1.0);
    for (auto& g : grads) g.mul_(coef.to(g.device()));
  }
  return total.item<double>();
}

// ---------------------------------------------------------------------------------------------
// AdamW

AdamW::AdamW(NamedParameters params, const OptimOptions& options) : params_(std::move(params)) {
  validate_optim_options(options);
  if (params_.empty()) throw InputError("AdamW: no trainable parameters");
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& [name, p] : params_) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decay.empty()) {
    groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                   adamw_options(options, options.weight_decay)));
  }
  if (!no_decay.empty()) {
    groups.emplace_back(no_decay,
                        std::make_unique<torch::optim::AdamWOptions>(adamw_options(options, 0)));
  }
  impl_ = std::make_unique<torch::optim::AdamW>(std::move(groups), adamw_options(options, 0));
}

AdamW::~AdamW() = default;

void AdamW::step(double lr) {
  for (auto& group : impl_->param_groups()) group.options().set_lr(lr);
  impl_->step();
}

void AdamW::zero_grad() {
  for (const auto& [name, p] : params_) {
    if (p.grad().defined()) p.mutable_grad().reset();
  }
}

std::vector<at::Tensor> AdamW::tensors() const {
  std::vector<at::Tensor> out;
  for (const auto& [name, p] : params_) out.push_back(p);
  return out;
}

int64_t AdamW::state_bytes() const {
  int64_t bytes = 0;
  for (const auto& [key, state] : impl_->state()) {
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*state);
    for (const auto& t : {s.exp_avg(), s.exp_avg_sq()}) {
      if (t.defined()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
    }
  }
  return bytes;
}

void AdamW::save(const std::filesystem::path& path) const {
  NamedTensors tensors;
  for (const auto& [name, p] : params_) {
    const auto it = impl_->state().find(state_key(p));
    at::Tensor exp_avg, exp_avg_sq;
    int64_t step = 0;
    if (it != impl_->state().end()) {
      const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
      exp_avg = s.exp_avg();
      exp_avg_sq = s.exp_avg_sq();
      step = s.step();
    } else {  // not stepped yet: zero moments at step 0 are the same optimizer
      exp_avg = at::zeros_like(p);
      exp_avg_sq = at::zeros_like(p);
    }
    tensors.emplace_back(name + ".exp_avg", exp_avg);
    tensors.emplace_back(name + ".exp_avg_sq", exp_avg_sq);
    tensors.emplace_back(name + ".step", at::full({1}, step, at::kLong));
  }
  write_safetensors(path, tensors, {{"format", "llt-adamw"}, {"format_version", "1"}});
}

void AdamW::load(const std::filesystem::path& path) {
  SafetensorsFile file(path);
  std::set<std::string> expected;
  auto read = [&](const std::string& key, const std::vector<int64_t>& shape) {
    expected.insert(key);
    const TensorInfo* info = file.find(key);
    if (info == nullptr) throw InputError(path.string() + ": missing tensor '" + key + "'");
    if (info->shape != shape) {
      throw InputError(path.string() + ": tensor '" + key + "' has shape " +
                       shape_string(info->shape) + ", expected " + shape_string(shape));
    }
    return file.read(key);
  };
  // Read and check everything before replacing any state.
  std::vector<std::unique_ptr<torch::optim::AdamWParamState>> states;
  for (const auto& [name, p] : params_) {
    auto state = std::make_unique<torch::optim::AdamWParamState>();
    const auto shape = p.sizes().vec();
    state->exp_avg(read(name + ".exp_avg", shape).to(p.options()));
    state->exp_avg_sq(read(name + ".exp_avg_sq", shape).to(p.options()));
    const int64_t step = read(name + ".step", {1}).to(at::kLong).item<int64_t>();
    if (step < 0) {
      throw InputError(path.string() + ": tensor '" + name + ".step' is negative (" +
                       std::to_string(step) + ")");
    }
    state->step(step);
    states.push_back(std::move(state));
  }
  for (const auto& info : file.tensors()) {
    if (!expected.count(info.name)) {
      throw InputError(path.string() + ": unexpected tensor '" + info.name +
                       "' (not optimizer state of these parameters)");
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    impl_->state()[state_key(params_[i].second)] = std::move(states[i]);
  }
}

}  // namespace llt
