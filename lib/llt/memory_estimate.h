// An analytic estimate of what a training step holds (DESIGN.md "Memory logs"), by kind, to
// compare with the probes of lib/llt/memory and to size a run before it starts.
#pragma once

#include <algorithm>
#include <cstdint>

#include <c10/core/ScalarType.h>

#include "llt/model.h"
#include "llt/options.h"

namespace llt {

// What a training step holds, by kind, in bytes.
struct MemoryBreakdown {
  int64_t parameters = 0;        // frozen base weights in base_dtype + trainable ones in fp32
  int64_t gradients = 0;         // fp32, trainable only
  int64_t optimizer_state = 0;   // AdamW exp_avg + exp_avg_sq, fp32, trainable only
  int64_t activations = 0;       // held at the end of the forward: saved for backward, log-probs
                                 // and their fp32 log-probabilities
  int64_t recompute = 0;         // checkpointing: one recomputed block's activations in backward
  int64_t head_activations = 0;  // the part of `activations` the head (final norm, projection,
                                 // log-probs) holds: freed before any block is recomputed
  int64_t block_backward = 0;    // a block's backward at work: the feed-forward's gradients,
                                 // three (B, T, F), and two fp32 (B, T, D) (in and out)
  int64_t loss_backward = 0;     // backward's first steps: the fp32 gradients of the log-probs
                                 // and of the logits, (rows, V) each, beside the activations
  int64_t optimizer_temporaries = 0;  // AdamW's step: sqrt(exp_avg_sq) and its quotient, both
                                      // the size of the parameter being updated (the largest one)
  // The peak: what stays allocated, plus the largest transient: the backward's activations with
  // the loss's gradients (at its start) or, later, a block's backward (its working gradients and,
  // with checkpointing, its recomputed activations) beside what the blocks still hold (the head's
  // share and the loss's gradients are freed by then), or the optimizer step's temporaries
  // (never alive with activations).
  int64_t total() const {
    const int64_t backward = std::max(activations + loss_backward,
                                      activations - head_activations + recompute + block_backward);
    return parameters + gradients + optimizer_state + std::max(backward, optimizer_temporaries);
  }
};

struct MemoryEstimateOptions {
  LoraOptions lora;                          // lora.rank 0 = full fine-tuning
  Dtype precision = Dtype::kFp32;            // fp32 | bf16 | fp16 (autocast compute dtype)
  c10::ScalarType base_dtype = c10::kFloat;  // storage of frozen base weights (LoRA)
  int64_t batch = 1;                         // sequences per micro-batch
  int64_t seq_len = 512;                     // tokens per sequence
  int64_t loss_rows = 0;                     // positions the loss scores per micro-batch (label
                                             // tokens: the output projection's rows);
                                             // 0 = batch * seq_len
  RecomputeOptions recompute;                // activation checkpointing policy
  bool attention_saves_scores = false;       // the attention kernel keeps (H, T, T) probabilities
                                             // (llt::attention_saves_scores(device))
};

// An analytic estimate for `args` (Meta's architecture as lib/llt/model implements it): exact
// for parameters, gradients and optimizer state; for activations, a count of the tensors autograd
// saves per block (norms in fp32, matmul inputs in the compute dtype, the attention kernel's
// inputs and output, LoRA's first block without what its gradient-free input spares, the
// scored rows' log-probs): 0.96-1.00x the counted bytes on the configurations
// tests/test_memory_estimate.cpp runs (fp32 exact to a few kB without checkpointing).
// Throws InputError on non-positive batch/seq_len or --grad-checkpoint-every.
MemoryBreakdown estimate_training_memory(const ModelArgs& args,
                                         const MemoryEstimateOptions& options);

}  // namespace llt
