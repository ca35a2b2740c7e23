#include "llt/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "llt/errors.h"
#include "llt/loss.h"
#include "llt/runtime.h"

namespace llt {
namespace {

void check_sequence(const ScoredSequence& s, size_t i, const ModelArgs& args) {
  const auto n = static_cast<int64_t>(s.ids.size());
  const std::string where =
      "sequence " + std::to_string(i) + " (index " + std::to_string(s.index) + ")";
  if (s.first_target < 1 || s.first_target >= n) {
    throw InputError(where + ": first scored position " + std::to_string(s.first_target) +
                     " is outside [1, " + std::to_string(n) + "): nothing to score");
  }
  if (n > args.max_seq_len) {
    throw InputError(where + ": " + std::to_string(n) + " tokens, more than the model's " +
                     "max_seq_len " + std::to_string(args.max_seq_len));
  }
  for (const int32_t id : s.ids) {
    if (id < 0 || id >= args.vocab_size) {
      throw InputError(where + ": token id " + std::to_string(id) + " is outside the " +
                       "model's vocabulary [0, " + std::to_string(args.vocab_size) + ")");
    }
  }
}

// Scores sequences [first, last) in one forward; appends their scores to `result`.
void score_batch(TransformerImpl& model, const std::vector<ScoredSequence>& sequences, size_t first,
                 size_t last, int64_t pad_id, PerplexityResult& result) {
  const auto b = static_cast<int64_t>(last - first);
  int64_t t = 0;
  for (size_t i = first; i < last; ++i) t = std::max<int64_t>(t, sequences[i].ids.size());
  // Right-padded inputs; targets hold the scored tokens and kIgnoreIndex everywhere else.
  auto input = at::full({b, t}, pad_id, at::kLong);          // (B, T)
  auto targets = at::full({b, t}, kIgnoreIndex, at::kLong);  // (B, T)
  auto* in = input.data_ptr<int64_t>();
  auto* tg = targets.data_ptr<int64_t>();
  for (size_t i = first; i < last; ++i) {
    const auto& s = sequences[i];
    const int64_t row = static_cast<int64_t>(i - first) * t;
    for (size_t j = 0; j < s.ids.size(); ++j) in[row + j] = s.ids[j];
    for (size_t j = s.first_target; j < s.ids.size(); ++j) tg[row + j] = s.ids[j];
    result.forward_tokens += static_cast<int64_t>(s.ids.size());
  }
  const auto device = model.tok_embeddings->weight.device();
  // hidden[:, t] predicts targets[:, t + 1]: only scored positions go through the output
  // projection (lib/llt/loss); fp32 log-softmax whatever the compute dtype.
  const auto scored = select_scored_rows(model.hidden(input.to(device)), targets.to(device));
  const auto nll = at::cross_entropy_loss(model.logits(scored.hidden).to(at::kFloat),
                                          scored.targets, /*weight=*/{}, at::Reduction::None);
  const auto sums = at::zeros({b}, nll.options().dtype(at::kDouble))  // (B)
                        .index_add_(0, at::div(scored.rows, std::max<int64_t>(t - 1, 1), "floor"),
                                    nll.to(at::kDouble))
                        .cpu();
  const auto* sum = sums.data_ptr<double>();
  for (size_t i = first; i < last; ++i) {
    const auto& s = sequences[i];
    SequenceScore score;
    score.index = s.index;
    score.start = s.start;
    score.tokens = static_cast<int64_t>(s.ids.size()) - s.first_target;
    score.nll_sum = sum[i - first];
    if (!std::isfinite(score.nll_sum)) {
      throw NonFiniteError("sequence " + std::to_string(i) + " (index " + std::to_string(s.index) +
                           "): non-finite loss (NaN/inf): " +
                           non_finite_causes(model.tok_embeddings->weight.scalar_type()));
    }
    result.tokens += score.tokens;
    result.nll_sum += score.nll_sum;
    result.sequences.push_back(score);
  }
}

}  // namespace

double PerplexityResult::perplexity() const {
  return std::exp(mean_nll());
}

std::vector<ScoredSequence> dataset_sequences(const Dataset& dataset, ScoredTokens tokens) {
  std::vector<ScoredSequence> out(dataset.size());
  for (int64_t i = 0; i < dataset.size(); ++i) {
    const SampleView v = dataset.sample(i);
    auto& s = out[i];
    s.ids.assign(v.ids, v.ids + v.length);
    // Labels are -100 on the first source_length tokens (BOS and the prompt), as in training.
    s.first_target = tokens == ScoredTokens::kLabels ? v.source_length : 1;
    s.index = v.source_index;
    if (s.first_target < 1 || s.first_target >= v.length) {
      throw InputError(dataset.dir().string() + ": sample " + std::to_string(i) + " (record " +
                       std::to_string(v.source_index) + ") has no token to score (--tokens " +
                       name_of(tokens) + ")");
    }
  }
  return out;
}

std::vector<ScoredSequence> text_windows(const std::vector<int32_t>& ids, int64_t window,
                                         int64_t stride) {
  if (window < 2) {
    throw InputError("--window " + std::to_string(window) + ": must be at least 2 tokens");
  }
  if (stride < 1 || stride > window) {
    throw InputError("--stride " + std::to_string(stride) + ": must be in [1, --window " +
                     std::to_string(window) + "]");
  }
  const auto n = static_cast<int64_t>(ids.size());
  if (n < 2) {
    throw InputError("the text has " + std::to_string(n) + " token(s) with BOS: nothing to score");
  }
  std::vector<ScoredSequence> out;
  int64_t scored_to = 1;  // tokens [1, scored_to) are scored; token 0 has no prediction
  for (int64_t begin = 0; scored_to < n; begin += stride) {
    const int64_t end = std::min(begin + window, n);
    ScoredSequence s;
    s.ids.assign(ids.begin() + begin, ids.begin() + end);
    // Score only what earlier windows did not; a window's own first token has no prediction.
    s.first_target = std::max<int64_t>(1, scored_to - begin);
    s.index = static_cast<int64_t>(out.size());
    s.start = begin;
    scored_to = end;
    // With stride == window a window's first token is never predicted; skip a final window
    // that would hold only that token.
    if (s.first_target < end - begin) out.push_back(std::move(s));
  }
  return out;
}

PerplexityResult score_sequences(TransformerImpl& model,
                                 const std::vector<ScoredSequence>& sequences, int64_t batch_size,
                                 int64_t pad_id) {
  if (sequences.empty()) throw InputError("nothing to score: no sequences");
  if (batch_size < 1) {
    throw InputError("--batch-size " + std::to_string(batch_size) + ": must be at least 1");
  }
  const ModelArgs& args = model.args();
  for (size_t i = 0; i < sequences.size(); ++i) check_sequence(sequences[i], i, args);
  if (pad_id < 0 || pad_id >= args.vocab_size) pad_id = 0;  // any real id: pads are never scored

  c10::InferenceMode inference;
  const auto started = std::chrono::steady_clock::now();
  PerplexityResult result;
  for (size_t first = 0; first < sequences.size(); first += batch_size) {
    const size_t last = std::min(sequences.size(), first + static_cast<size_t>(batch_size));
    score_batch(model, sequences, first, last, pad_id, result);
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace llt
