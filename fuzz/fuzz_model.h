// Targets that build a model from fuzzed configuration only build small ones (a fuzzed header
// may describe a 10^15-parameter model, which is a valid refusal by the allocator, not a bug).
#pragma once

#include "llt/model.h"

namespace llt::fuzz {

// At most 16 layers (num_parameters() lists every tensor: 2^20 layers would take seconds), a
// million parameters and a RoPE table of at most a million entries.
inline bool small_enough(const ModelArgs& args) {
  constexpr int64_t kLimit = 1 << 20;
  return args.n_layers <= 16 && args.dim <= 4096 && args.num_parameters() <= kLimit &&
         args.max_seq_len <= kLimit / args.head_dim();
}

}  // namespace llt::fuzz
