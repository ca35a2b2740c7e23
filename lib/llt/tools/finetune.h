// llt-finetune: LoRA or full fine-tuning of a LLaMA model on an llt-tokenize dataset, with
// gradient accumulation, mixed precision, activation checkpointing, memory logs and resume.
// The numerics are DESIGN.md's "Training numerics"; the run folder is DESIGN.md's flow.
#pragma once

#include <csignal>
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

// llt-finetune's whole run (parse, run, exit code) for its launcher (apps/llt-finetune), which
// loads this library only after it has caught the stop signals itself: `stopped` is the
// launcher's flag, set by a stop signal that came while the library was loading.
extern "C" int llt_finetune_main(int argc, char** argv, const volatile sig_atomic_t* stopped);
