// The optimizer side of a training step: AdamW with decoupled weight decay (matrices only), the
// learning-rate schedule as a pure function of the step, global gradient-norm clipping, and the
// optimizer state in a file for resuming.
//
// AdamW is LibTorch's torch::optim::AdamW: checked against python3-torch's torch.optim.AdamW
// (same update, bias corrections, decoupled decay p *= 1 - lr * wd, eps outside the sqrt) by
// tests/test_optim.cpp on goldens from data_prep/make_optim_goldens.py, bitwise on CPU.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "llt/options.h"

namespace torch::optim {
class AdamW;
}

namespace llt {

// Throws InputError naming the flag on lr <= 0, an unknown --lr-schedule, warmup-steps < 0,
// weight-decay < 0, grad-clip < 0, or betas/eps outside their ranges.
void validate_optim_options(const OptimOptions& options);

// Learning rate of optimizer step `step` (1-based, as metrics.jsonl) of `total_steps`:
// warmup  step <= W: lr * step / W (never 0, full at step W);
// then    progress p = (step - W - 1) / (total_steps - W), in [0, 1): constant lr;
//         cosine lr * (1 + cos(pi p)) / 2; linear lr * (1 - p). Steps past total_steps (a resumed
//         run with a larger --max-steps) take p = 1 (lr 0 for cosine and linear).
// Throws InputError on step < 1 or total_steps < 1 (and as validate_optim_options).
double scheduled_lr(const OptimOptions& options, int64_t step, int64_t total_steps);

// Global L2 norm of the gradients of `params` (those with a .grad), computed as
// torch.nn.utils.clip_grad_norm_ does; when max_norm > 0, multiplies every gradient by
// min(1, max_norm / (norm + 1e-6)). Returns the norm before clipping (inf/nan passed through;
// call it on unscaled gradients). 0 when no parameter has a gradient.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

using NamedParameters = std::vector<std::pair<std::string, at::Tensor>>;

class AdamW {
 public:
  // Optimizes the named trainable tensors: those with dim >= 2 decay by options.weight_decay,
  // 1-D ones (norm weights) never. Throws as validate_optim_options, InputError if empty.
  AdamW(NamedParameters params, const OptimOptions& options);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One update of every parameter that has a gradient, at learning rate `lr`.
  void step(double lr);
  // Drops every gradient (set to undefined, as zero_grad(set_to_none=True)).
  void zero_grad();
  const NamedParameters& parameters() const { return params_; }
  std::vector<at::Tensor> tensors() const;

  // Bytes held by the moments (exp_avg, exp_avg_sq) now: 0 before the first step.
  int64_t state_bytes() const;

  // Writes the state to a safetensors file: per parameter "<name>.exp_avg", "<name>.exp_avg_sq"
  // (fp32) and "<name>.step" (int64 [1]). RuntimeError on I/O failure.
  void save(const std::filesystem::path& path) const;
  // Reads a file written by save for the same parameters. Throws InputError naming the file and
  // the key on a missing, extra or mis-shaped tensor.
  void load(const std::filesystem::path& path);

 private:
  NamedParameters params_;
  std::unique_ptr<torch::optim::AdamW> impl_;
};

}  // namespace llt
