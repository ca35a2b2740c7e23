// Autoregressive decoding for a batch of prompts, with or without the KV cache.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "llt/model.h"
#include "llt/options.h"  // SamplingOptions

namespace llt {

struct GenerateOptions {
  SamplingOptions sampling;
  bool kv_cache = true;           // false: recompute the whole prefix every step
  std::vector<int64_t> stop_ids;  // generation of a sequence ends at (and excludes) any of these
};

// One prompt's result.
struct Generation {
  std::vector<int64_t> prompt_ids;  // as given (BOS included if the caller added it)
  std::vector<int64_t> ids;         // generated ids only, stop token excluded
  bool stopped = false;             // ended on a stop id rather than max_new_tokens
};

struct GenerateResult {
  std::vector<Generation> sequences;  // one per prompt, in order
  double seconds = 0;                 // wall time of the whole batch, prefill included
  int64_t forward_calls = 0;          // model forwards run
};

// Decodes `prompts` together, Meta-style: all sequences share positions; decoding starts at the
// shortest prompt, and a longer prompt's own tokens override what was sampled at its positions.
// Each sequence only ever attends to its real tokens, so no padding mask is needed and greedy
// ids do not depend on the batch. Throws InputError on an empty prompt or one longer than the
// model's max_seq_len, and NonFiniteError when the logits hold NaN/inf.
GenerateResult generate(TransformerImpl& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options);

// Chooses one token per row of `logits` (B, V), fp32, per `options`. Greedy when temperature is 0.
at::Tensor sample_next(const at::Tensor& logits, const SamplingOptions& options,
                       at::Generator& generator);

}  // namespace llt
