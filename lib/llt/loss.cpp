#include "llt/loss.h"

#include <ATen/ATen.h>

#include "llt/amp.h"
#include "llt/dataset.h"
#include "llt/recompute.h"

namespace llt {

ScoredRows select_scored_rows(const at::Tensor& hidden, const at::Tensor& targets) {
  TORCH_CHECK(hidden.dim() == 3, "hidden must be (B, T, D), got ", hidden.sizes());
  TORCH_CHECK(
      targets.dim() == 2 && targets.size(0) == hidden.size(0) && targets.size(1) == hidden.size(1),
      "targets must be (B, T) = ", hidden.sizes().slice(0, 2), ", got ", targets.sizes());
  const int64_t b = hidden.size(0), t = hidden.size(1), d = hidden.size(2);
  const auto next = targets.slice(/*dim=*/1, 1);         // (B, T - 1)
  const auto where = at::nonzero(next != kIgnoreIndex);  // (n, 2): (b, t)
  const auto batch = where.select(/*dim=*/1, 0), position = where.select(/*dim=*/1, 1);
  ScoredRows s;
  s.rows = batch * (t - 1) + position;
  s.targets = next.reshape({-1}).index_select(0, s.rows);
  // (B * T, D) is a view of a contiguous hidden: one gather, no (B, T - 1, D) copy.
  s.hidden = hidden.reshape({b * t, d}).index_select(0, batch * t + position);
  return s;
}

at::Tensor label_token_loss_sum(const at::Tensor& logits, const at::Tensor& labels) {
  const int64_t vocab = logits.size(-1);
  // logits[:, t] predicts labels[:, t + 1]
  const auto shifted_logits = logits.slice(/*dim=*/1, 0, -1).to(at::kFloat).reshape({-1, vocab});
  const auto shifted_labels = labels.slice(/*dim=*/1, 1).reshape({-1});
  return at::cross_entropy_loss(shifted_logits, shifted_labels, /*weight=*/{}, at::Reduction::Sum,
                                /*ignore_index=*/kIgnoreIndex);
}

at::Tensor model_label_loss_sum(TransformerImpl& model, const at::Tensor& tokens,
                                const at::Tensor& labels, const RecomputeOptions& recompute,
                                std::optional<c10::ScalarType> autocast) {
  at::Tensor logits, targets;
  {
    std::optional<AutocastGuard> guard;
    if (autocast) guard.emplace(tokens.device().type(), *autocast);
    const auto scored =
        select_scored_rows(hidden_with_checkpointing(model, tokens, recompute), labels);
    logits = model.logits(scored.hidden);  // (n, V), compute dtype
    targets = scored.targets;
  }
  return at::cross_entropy_loss(logits.to(at::kFloat), targets, /*weight=*/{}, at::Reduction::Sum);
}

}  // namespace llt
