// The optimizer step of fine-tuning (DESIGN.md "Training numerics"): the next window of up to
// grad_accum micro-batches, forward and backward of each under autocast with activations
// recomputed per policy, the loss normalised over the window's label tokens, (data parallel) the
// ranks' agreement and gradient all-reduce, fp16 loss scaling, clipping and the AdamW update.
// It knows no tool and no run folder: llt-finetune (lib/llt/tools/finetune) logs what it returns.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "llt/amp.h"
#include "llt/dataset.h"
#include "llt/distributed.h"
#include "llt/model.h"
#include "llt/optim.h"
#include "llt/options.h"
#include "llt/train_state.h"

namespace llt {

// What a Trainer does in each step; the fields mirror llt-finetune's flags.
struct TrainConfig {
  int64_t batch_size = 1;  // samples per micro-batch
  int64_t grad_accum = 8;  // micro-batches per optimizer step
  int64_t epochs = 1;      // passes over the data: the schedule's length
  int64_t max_steps = 0;   // stop after this many optimizer steps; 0 = the schedule's end
  bool shuffle = true;     // a seeded permutation per epoch
  uint64_t seed = 0;       // data order (the same permutation on every rank)
  Dtype precision = Dtype::kFp32;  // autocast compute dtype; fp16 also scales the loss
  LossNormalization loss_normalization = LossNormalization::kTokens;
  RecomputeOptions recompute;
  OptimOptions optim;
  double bucket_mib = 25;  // data parallel: MiB of gradients per all-reduce
};

// The parameters that train (requires_grad), with names, and the model's counts.
struct ParameterSplit {
  NamedParameters trainable;
  int64_t trainable_count = 0;
  int64_t total_count = 0;
  int64_t parameter_bytes = 0;  // every parameter's storage
};
ParameterSplit split_parameters(TransformerImpl& model);

// Bytes held by the gradients of `params` now.
int64_t gradient_bytes(const ParameterSplit& params);

// What one optimizer step consumed: one window, or the sum of every rank's windows.
struct StepTotals {
  int64_t tokens = 0;
  int64_t label_tokens = 0;  // the loss's denominator (LossNormalization::kTokens)
  int64_t samples = 0;       // real samples (an epoch's wrap-around repeats are not counted)
  int64_t batches = 0;
};

// One optimizer step, as Trainer::step returns it.
struct StepResult {
  StepTotals totals;
  double loss = 0;       // mean label-token loss of the window (all ranks')
  double lr = 0;         // the schedule's rate for this step
  double grad_norm = 0;  // global L2 norm before clipping
  bool skipped = false;  // non-finite gradients: no update (fp16 lowers its scale and goes on)
  bool non_finite = false;  // non-finite loss or gradients without loss scaling: no update; stop
  // Data parallel: the ranks that ran out of memory in this step, and this rank's message if it
  // did; all ranks stop. (One process: out of memory is thrown.)
  int64_t oom_ranks = 0;
  std::string oom;
  bool stop = false;  // a stop was requested (on any rank): stop after this step
  int64_t gradient_bytes = 0;  // held by the gradients before they were dropped
};

// True for the messages LibTorch and llt give when memory runs out.
bool is_out_of_memory(const std::string& what);

class Trainer {
 public:
  // Trains the parameters of `model` that require grad, on `data` (padding with `pad_id`), on
  // `device`. `group`: the data-parallel ranks (nullptr for one process). `stop_requested` is
  // read after every step (and agreed on by the ranks). Throws InputError on bad options.
  Trainer(TransformerImpl& model, const Dataset& data, int64_t pad_id, const c10::Device& device,
          const TrainConfig& config, ProcessGroup* group, const std::atomic<bool>& stop_requested);

  int64_t batches_per_epoch() const;
  int64_t total_steps() const;  // the schedule's length: epochs * steps per epoch
  int64_t last_step() const;    // max_steps, else total_steps
  bool done() const { return state_.step >= last_step(); }
  const ParameterSplit& parameters() const { return params_; }
  const AdamW& optimizer() const { return optimizer_; }
  const TrainState& state() const { return state_; }
  TrainState& state() { return state_; }

  // Continues from a step-N folder (load_train_state): weights, moments, data position, scale.
  void resume(const std::filesystem::path& dir);

  // Whether to stop before training starts (a stop requested while loading; the ranks agree).
  bool stop_agreed();

  // One optimizer step; updates state() except elapsed_s. `mark(phase)`, when set, is called
  // after the first micro-batch's forward ("after_first_forward") and backward
  // ("after_first_backward") and after the update ("after_first_optimizer_step").
  StepResult step(const std::function<void(const std::string&)>& mark = nullptr);

  // Writes the state into `checkpoints` (rank 0, `write`), adding the time to state().saving_s.
  // A collective in a data-parallel run (every rank's generator goes into the state): every rank
  // calls it.
  void save(const std::filesystem::path& checkpoints, bool write);

 private:
  struct Window;
  Window next_window();
  double accumulate(const Window& w, const StepTotals& totals,
                    const std::function<void(const std::string&)>& mark);
  StepResult forward_backward_parallel(const std::function<void(const std::string&)>& mark);
  void update(StepResult& s);

  TransformerImpl& model_;
  const Dataset& data_;
  int64_t pad_id_;
  c10::Device device_;
  TrainConfig config_;
  ProcessGroup* group_;
  const std::atomic<bool>& stop_requested_;
  ParameterSplit params_;
  AdamW optimizer_;
  LossScaler scaler_;
  BatchSampler sampler_;
  int64_t steps_per_epoch_ = 0;
  int64_t repeats_per_epoch_ = 0;  // samples each epoch repeats so every rank has as many
  TrainState state_;
};

}  // namespace llt
