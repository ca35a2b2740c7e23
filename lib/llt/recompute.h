// Activation checkpointing (LibTorch has no C++ torch.utils.checkpoint): a custom autograd
// function runs a piece of the model without keeping its activations and runs it again in
// backward. The recomputation replays the random-number state of the forward (CPU, and the
// CUDA generator of the input's device), so dropout draws the same masks, and re-enters the
// forward's autocast state: checkpointed gradients are bitwise equal to plain ones on CPU.
//
// Policies (--grad-checkpoint): none; block (every transformer block); every-k (blocks 0, K, 2K,
// ...); ffn (only the feed-forward half of every block: h + w2(silu(w1 x) * w3 x) on x =
// ffn_norm(h), the part holding the largest activations, (B, T, F) three times).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "llt/model.h"
#include "llt/options.h"

namespace llt {

// Throws InputError when `every` < 1.
void validate_recompute_options(const RecomputeOptions& options);

// Runs fn(x) keeping only x, and recomputes it in backward. `params` are the trainable tensors
// fn reads (requires_grad): they must be passed, or an fn whose input needs no gradient (a frozen
// base) would return an output that needs none, and their gradients would be lost.
// Backward runs `for_gradients` (default fn): a function with fn's graph whose output values
// may differ, since backward reads only the graph (it may skip work no gradient needs).
using RecomputedFn = std::function<at::Tensor(const at::Tensor&)>;
at::Tensor checkpoint(RecomputedFn fn, const at::Tensor& x, const std::vector<at::Tensor>& params,
                      RecomputedFn for_gradients = nullptr);

// The model's forward (tokens (B, T) int64 -> logits (B, T, V), no KV cache) with the blocks
// checkpointed by `options`. With policy none it is exactly TransformerImpl::forward. Throws as
// validate_recompute_options.
at::Tensor forward_with_checkpointing(TransformerImpl& model, const at::Tensor& tokens,
                                      const RecomputeOptions& options);

// Its first half: the final norm's output (B, T, D) (TransformerImpl::hidden, checkpointed).
at::Tensor hidden_with_checkpointing(TransformerImpl& model, const at::Tensor& tokens,
                                     const RecomputeOptions& options);

}  // namespace llt
