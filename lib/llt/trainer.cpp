#include "llt/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/autograd.h>

#include "llt/errors.h"
#include "llt/loss.h"
#include "llt/memory.h"
#include "llt/recompute.h"
#include "llt/runtime.h"
#include "llt/sha256.h"

namespace llt {
namespace fs = std::filesystem;

namespace {

// Bytes in tensors on `device` now, as memory.jsonl's `allocated` counts them (the host counter
// on the CPU, the caching allocator on CUDA), without sample_memory()'s read of /proc.
int64_t allocated_now(const c10::Device& device) {
  if (device.is_cuda()) return cuda_memory_stats(device.has_index() ? device.index() : 0).allocated;
  return host_memory_stats().current;
}

// Runs `body`; returns "" or the message of the out-of-memory error it threw (other errors
// propagate).
template <typename Fn>
std::string out_of_memory_in(Fn&& body) {
  try {
    body();
  } catch (const OutOfMemoryError& e) {
    return e.what();
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    if (!is_out_of_memory(what)) throw;
    return what.substr(0, what.find('\n'));
  }
  return "";
}

SamplerOptions sampler_options(const TrainConfig& c, ProcessGroup* group) {
  SamplerOptions s;
  s.batch_size = c.batch_size;
  s.shuffle = c.shuffle;
  s.seed = c.seed;  // the same permutation on every rank ...
  s.rank = group ? group->rank() : 0;  // ... of which rank r takes samples r, r + W, r + 2W ...
  s.world_size = group ? group->world_size() : 1;
  return s;
}

LossScalerOptions scaler_options(const TrainConfig& c) {
  LossScalerOptions s;
  s.enabled = c.precision == Dtype::kFp16;
  return s;
}

}  // namespace

ParameterSplit split_parameters(TransformerImpl& model) {
  ParameterSplit s;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const auto& p = item.value();
    s.total_count += p.numel();
    s.parameter_bytes += p.numel() * static_cast<int64_t>(p.element_size());
    if (p.requires_grad()) {
      s.trainable.emplace_back(item.key(), p);
      s.trainable_count += p.numel();
    }
  }
  return s;
}

int64_t gradient_bytes(const ParameterSplit& params) {
  int64_t bytes = 0;
  for (const auto& [name, p] : params.trainable) {
    if (p.grad().defined()) bytes += p.grad().numel() * static_cast<int64_t>(p.grad().element_size());
  }
  return bytes;
}

bool is_out_of_memory(const std::string& what) {
  return what.find("out of memory") != std::string::npos ||
         what.find("can't allocate memory") != std::string::npos;
}

struct Trainer::Window {
  std::vector<Batch> batches;
  StepTotals totals;
};

Trainer::Trainer(TransformerImpl& model, const Dataset& data, int64_t pad_id,
                 const c10::Device& device, const TrainConfig& config, ProcessGroup* group,
                 const std::atomic<bool>& stop_requested)
    : model_(model),
      data_(data),
      pad_id_(pad_id),
      device_(device),
      config_(config),
      group_(group),
      stop_requested_(stop_requested),
      params_(split_parameters(model)),
      optimizer_(params_.trainable, config.optim),
      scaler_(scaler_options(config)),
      sampler_(data, sampler_options(config, group)) {
  // Per rank: so one step of W ranks with accumulation A consumes the window of one process
  // with accumulation W * A (every rank has the same number of batches per epoch).
  steps_per_epoch_ = (sampler_.batches_per_epoch() + config.grad_accum - 1) / config.grad_accum;
  const int64_t world = group ? group->world_size() : 1;
  repeats_per_epoch_ = sampler_.samples_per_epoch() * world - data.size();
  state_.data_sha256 = samples_sha256(data.manifest());
}

int64_t Trainer::batches_per_epoch() const { return sampler_.batches_per_epoch(); }
int64_t Trainer::total_steps() const { return config_.epochs * steps_per_epoch_; }
int64_t Trainer::last_step() const {
  return config_.max_steps > 0 ? config_.max_steps : total_steps();
}

void Trainer::resume(const fs::path& dir) {
  DistributedConfig dist;
  dist.world_size = group_ ? group_->world_size() : 1;
  dist.rank = group_ ? group_->rank() : 0;
  const std::string data_sha256 = state_.data_sha256;
  state_ = load_train_state(dir, params_.trainable, optimizer_, dist);  // reads only
  const std::string where = (dir / "state.json").string();
  // Before the samples' identity, state.json held the sha256 of manifest.json: still accepted.
  if (!state_.data_sha256.empty() && state_.data_sha256 != data_sha256 &&
      state_.data_sha256 != sha256_file(data_.dir() / "manifest.json")) {
    throw InputError(where + ": the run trained on samples with sha256 " + state_.data_sha256 +
                     ", --data " + data_.dir().string() + " holds samples with sha256 " +
                     data_sha256 + "; resume with the same --data, or start a new run folder");
  }
  state_.data_sha256 = data_sha256;
  if (state_.step > total_steps()) {
    throw InputError(where + ": step " + std::to_string(state_.step) +
                     " lies beyond this run's schedule of " + std::to_string(total_steps()) +
                     " steps (--data, --epochs, --batch-size, --grad-accum)");
  }
  sampler_.set_position(state_.data);
  scaler_.load_state(state_.scaler);
}

bool Trainer::stop_agreed() {
  const bool mine = stop_requested_.load();
  return group_ ? group_->sum({mine ? 1.0 : 0.0})[0] > 0 : mine;
}

// The next optimizer step's micro-batches: up to grad_accum, never across an epoch's end.
Trainer::Window Trainer::next_window() {
  Window w;
  const int64_t left = sampler_.batches_per_epoch() - sampler_.position().cursor;
  const int64_t n = std::min(config_.grad_accum, left > 0 ? left : config_.grad_accum);
  for (int64_t i = 0; i < n; ++i) {
    const auto indices = sampler_.next();
    w.batches.push_back(collate(data_, indices, pad_id_));
    w.totals.tokens += w.batches.back().tokens;
    w.totals.label_tokens += w.batches.back().label_tokens;
    w.totals.samples += static_cast<int64_t>(indices.size());
  }
  w.totals.batches = static_cast<int64_t>(w.batches.size());
  return w;
}

// Forward and backward of one window; returns the summed label-token loss (fp32, unscaled).
// The loss is normalised by `totals` (the window's own, or all ranks' in a data-parallel run).
// state_.activations becomes at least what each micro-batch's forward held at its end (loss
// computed, before backward) above what was allocated when it started: what the estimate's
// `activations` counts (DESIGN.md Table 1).
double Trainer::accumulate(const Window& w, const StepTotals& totals,
                           const std::function<void(const std::string&)>& mark) {
  std::optional<c10::ScalarType> autocast;
  if (config_.precision != Dtype::kFp32) autocast = scalar_type(config_.precision);
  double loss_sum = 0;
  for (const auto& batch : w.batches) {
    const int64_t forward_start = allocated_now(device_);
    const auto sum = model_label_loss_sum(model_, batch.input_ids.to(device_),
                                          batch.labels.to(device_), config_.recompute, autocast);
    state_.activations = std::max(state_.activations, allocated_now(device_) - forward_start);
    const bool first = mark && &batch == &w.batches.front();
    if (first) mark("after_first_forward");
    // tokens: every label token of the window weighs the same, so N micro-batches of 1 give the
    // gradient of one batch of N (and W ranks with N each, that of one rank with W * N).
    // micro-batch: the seed's mean per micro-batch, averaged.
    const double denom = config_.loss_normalization == LossNormalization::kTokens
                             ? static_cast<double>(totals.label_tokens)
                             : static_cast<double>(batch.label_tokens * totals.batches);
    scaler_.scale(sum / denom).backward();
    if (first) mark("after_first_backward");
    loss_sum += sum.item<double>();
  }
  return loss_sum;
}

// The ranks agree, in two small all-reduces, first on the global window's totals (the loss is
// normalised by all ranks' label tokens), then on the loss and on whether any rank ran out of
// memory or was asked to stop; then, unless one ran out, they sum the gradients. Every rank makes
// the same collectives in the same order whatever happened locally, so none waits forever.
// The gradients' buffer is allocated (prepare_gradients) before the agreement, so the
// all-reduce itself allocates nothing. Returns the loss summed, not yet divided.
StepResult Trainer::forward_backward_parallel(
    const std::function<void(const std::string&)>& mark) {
  ProcessGroup& group = *group_;
  const auto bucket_bytes = static_cast<int64_t>(config_.bucket_mib * 1024 * 1024);
  const auto trainable = optimizer_.tensors();
  StepResult s;
  Window w;
  s.oom = out_of_memory_in([&] { w = next_window(); });
  const StepTotals& mine = w.totals;
  const auto totals = group.sum({static_cast<double>(mine.tokens),
                                 static_cast<double>(mine.label_tokens),
                                 static_cast<double>(mine.samples),
                                 static_cast<double>(mine.batches), s.oom.empty() ? 0.0 : 1.0});
  s.totals = {static_cast<int64_t>(totals[0]), static_cast<int64_t>(totals[1]),
              static_cast<int64_t>(totals[2]), static_cast<int64_t>(totals[3])};
  double loss_sum = 0;
  if (totals[4] == 0) {
    s.oom = out_of_memory_in([&] {
      loss_sum = accumulate(w, s.totals, mark);
      group.prepare_gradients(trainable, bucket_bytes);
    });
  }
  const auto agreed = group.sum(
      {loss_sum, s.oom.empty() ? 0.0 : 1.0, stop_requested_.load() ? 1.0 : 0.0});
  s.loss = agreed[0];
  s.oom_ranks = static_cast<int64_t>(std::max(totals[4], agreed[1]));
  s.stop = agreed[2] > 0;
  if (s.oom_ranks == 0) {
    group.all_reduce_gradients(trainable, bucket_bytes);
  } else {
    group.release_gradient_buffer();
  }
  // Every rank ends its epoch at the same step; the epoch's repeats were trained on (and their
  // tokens count) but are subtracted from the samples then.
  if (sampler_.position().cursor == sampler_.batches_per_epoch()) {
    s.totals.samples -= repeats_per_epoch_;
  }
  return s;
}

void Trainer::update(StepResult& s) {
  const auto tensors = optimizer_.tensors();
  // fp16 loss scaling unscales and scans every gradient for inf/nan. Without it, a non-finite
  // gradient shows in the global norm computed anyway: the scan (an isfinite copy of every
  // gradient) cost ~1.1 s a step, 15%, in full fine-tuning of the 7B shape.
  s.skipped = scaler_.enabled() && scaler_.unscale(tensors);
  s.grad_norm = clip_grad_norm(tensors, config_.optim.grad_clip);
  if (!scaler_.enabled()) s.skipped = !std::isfinite(s.grad_norm);
  // Without fp16 loss scaling nothing can recover from non-finite values: stop before the
  // optimizer writes them into the weights. (Ranks agree: loss and gradients are summed.)
  s.non_finite = !scaler_.enabled() && (!std::isfinite(s.loss) || s.skipped);
  if (!s.non_finite && !s.skipped) optimizer_.step(s.lr);
}

StepResult Trainer::step(const std::function<void(const std::string&)>& mark) {
  StepResult s;
  if (group_) {
    s = forward_backward_parallel(mark);
    if (s.oom_ranks > 0) return s;
  } else {
    const Window w = next_window();
    s.totals = w.totals;
    s.loss = accumulate(w, s.totals, mark);
  }
  s.loss /= static_cast<double>(s.totals.label_tokens);
  s.lr = scheduled_lr(config_.optim, state_.step + 1, total_steps());
  if (group_) {
    // Running out of memory after the backward (clipping, the optimizer's state and its step's
    // temporaries: where full fine-tuning usually does) is caught here and agreed on in one more
    // small all-reduce that every rank makes, so all stop with status oom.
    s.oom = out_of_memory_in([&] { update(s); });
    s.oom_ranks = static_cast<int64_t>(group_->sum({s.oom.empty() ? 0.0 : 1.0})[0]);
    if (s.oom_ranks > 0) return s;
  } else {
    update(s);
  }
  if (s.non_finite) return s;
  if (mark) mark("after_first_optimizer_step");
  scaler_.update(s.skipped);
  s.gradient_bytes = gradient_bytes(params_);
  optimizer_.zero_grad();

  state_.step += 1;
  state_.data = sampler_.position();
  state_.scaler = scaler_.state();
  state_.tokens += s.totals.tokens;
  state_.label_tokens += s.totals.label_tokens;
  state_.samples += s.totals.samples;
  if (!group_) s.stop = stop_requested_.load();
  return s;
}

void Trainer::save(const fs::path& checkpoints, bool write) {
  std::vector<std::string> rank_rng_states;
  if (group_) {
    for (const auto& t : group_->all_gather(at::detail::getDefaultCPUGenerator().get_state())) {
      rank_rng_states.push_back(hex_bytes(t));
    }
  }
  if (!write) return;
  const auto t0 = std::chrono::steady_clock::now();
  save_train_state(checkpoints, state_, params_.trainable, optimizer_,
                   group_ ? group_->world_size() : 1, rank_rng_states);
  state_.saving_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace llt
