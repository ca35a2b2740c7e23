// Perplexity: the mean next-token negative log-likelihood of a model over chosen tokens, and its
// exponential. One way to score every input (dataset samples, windows of a text): a sequence of
// ids and the first position whose token is scored. The logits at position t - 1 predict the
// token at t; its NLL is -log_softmax(logits[t - 1])[ids[t]], computed in fp32 from the logits of
// whatever compute dtype the model runs in, and summed in fp64.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "llt/dataset.h"
#include "llt/model.h"
#include "llt/options.h"  // ScoredTokens

namespace llt {

// One sequence to score: tokens ids[first_target..] are scored, each predicted from the tokens
// before it in `ids` (so first_target >= 1: the first token has no prediction).
struct ScoredSequence {
  std::vector<int32_t> ids;
  int64_t first_target = 1;
  int64_t index = 0;  // reported with the score: source record index, or window number
  int64_t start = 0;  // where ids[0] sits in the source text (windows); 0 for samples
};

// The score of one sequence.
struct SequenceScore {
  int64_t index = 0;
  int64_t start = 0;
  int64_t tokens = 0;  // scored tokens: ids.size() - first_target
  double nll_sum = 0;  // sum of their NLL, nats
};

struct PerplexityResult {
  std::vector<SequenceScore> sequences;  // in input order
  int64_t tokens = 0;                    // scored tokens, all sequences
  int64_t forward_tokens = 0;            // tokens run through the model (padding excluded)
  double nll_sum = 0;
  double seconds = 0;  // wall time of the forwards and scoring

  double mean_nll() const { return tokens > 0 ? nll_sum / static_cast<double>(tokens) : 0.0; }
  double perplexity() const;  // exp(mean_nll())
};

// Which tokens of a dataset sample count: labels (the response: the labels llt-finetune trains
// on, prompt masked) or all (every token after the first). Throws InputError on a dataset sample
// that leaves nothing to score.
std::vector<ScoredSequence> dataset_sequences(const Dataset& dataset, ScoredTokens tokens);

// Sliding windows over a tokenized text (Hugging Face's "Perplexity of fixed-length models"):
// windows of at most `window` tokens start every `stride` tokens; each scores only the tokens no
// earlier window scored, so every token but the text's first is scored once when stride <
// window (with stride == window, each window's first token has no context in it and is not
// scored, as in Hugging Face's recipe). Throws InputError on window < 2, stride < 1, stride > window or fewer than 2 ids.
std::vector<ScoredSequence> text_windows(const std::vector<int32_t>& ids, int64_t window,
                                         int64_t stride);

// Scores `sequences`, `batch_size` per forward, right-padded with `pad_id` (padding never
// changes a score: attention is causal and padded positions are not scored). Runs under
// InferenceMode on the model's device. Throws InputError on an empty sequence list, a sequence
// longer than the model's max_seq_len, an id outside the vocabulary or first_target outside
// [1, ids.size()), and NonFiniteError when a sequence's loss is NaN/inf.
PerplexityResult score_sequences(TransformerImpl& model,
                                 const std::vector<ScoredSequence>& sequences, int64_t batch_size,
                                 int64_t pad_id);

}  // namespace llt
