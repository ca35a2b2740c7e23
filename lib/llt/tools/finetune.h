// llt-finetune: LoRA or full fine-tuning of a LLaMA model on an llt-tokenize dataset, with
// gradient accumulation, mixed precision, activation checkpointing, memory logs and resume.
// The numerics are DESIGN.md's "Training numerics"; the run folder is DESIGN.md's flow.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "llt/tools/options.h"

namespace llt::tools {

// Runs llt-finetune end to end and returns the exit code (0, 3 oom, 4 nan, 75 preempted).
// Throws llt::Error on bad input before training starts.
int run_finetune(const FinetuneToolOptions& options);

// Asks run_finetune to stop as SIGUSR1/SIGTERM do (its handlers are installed first thing): a
// running loop checkpoints after the current step and returns 75; a run not yet training returns
// 75 before it starts, writing no checkpoint. run_finetune clears the request when it returns.
void request_stop();

}  // namespace llt::tools
