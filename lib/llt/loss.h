// The training loss (DESIGN.md "Training numerics"): next-token cross-entropy over label tokens
// only, in fp32. Only the positions whose next token is a label go through the output
// projection: on Alpaca the prompt is about half of every sample, so this skips about half of
// the (n, V) logits, their log-softmax and their gradients (V = 32,000 for LLaMA-2), and the
// projection's share of the step (on a 1-layer 7B-shaped model, a third of its matmul work).
// Unscored rows get an exactly zero gradient, as their ignored cross-entropy terms give.
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include "llt/model.h"
#include "llt/options.h"

namespace llt {

// The rows of hidden states (B, T, D) whose next token is scored: targets (B, T) at t + 1 is
// not kIgnoreIndex (labels: prompt and padding are -100).
struct ScoredRows {
  at::Tensor hidden;   // (n, D): hidden[b, t] for each scored (b, t), in row-major order
  at::Tensor targets;  // (n) int64: targets[b, t + 1]
  at::Tensor rows;     // (n) int64: b * (T - 1) + t, the row in a (B, T - 1) layout
};
ScoredRows select_scored_rows(const at::Tensor& hidden, const at::Tensor& targets);

// The textbook form from full logits (B, T, V): logits[:, t] predict labels[:, t + 1]; -100 is
// ignored. Summed, fp32. For tests and references.
at::Tensor label_token_loss_sum(const at::Tensor& logits, const at::Tensor& labels);

// The model's summed label-token loss (fp32 scalar) on tokens and labels (B, T), both on the
// model's device: blocks checkpointed per `recompute`, the forward (output projection included)
// under autocast to `autocast` when set, cross-entropy in fp32 on the scored rows only. Equals
// label_token_loss_sum(forward_with_checkpointing(...), labels) up to rounding.
at::Tensor model_label_loss_sum(TransformerImpl& model, const at::Tensor& tokens,
                                const at::Tensor& labels, const RecomputeOptions& recompute,
                                std::optional<c10::ScalarType> autocast = std::nullopt);

}  // namespace llt
