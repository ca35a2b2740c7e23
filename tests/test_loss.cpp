// The training loss: label-token cross-entropy, with the output projection run only on the rows
// whose next token is a label. Checked against the textbook form on full logits (value and every
// trainable gradient, LoRA and full fine-tuning, fp32 and bf16 autocast, with checkpointing), by
// hand on a small case, and on the edge cases: unscored rows get exactly zero gradient, a batch
// without labels gives 0.
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include "llt/amp.h"
#include "llt/dataset.h"
#include "llt/lora.h"
#include "llt/loss.h"
#include "llt/recompute.h"

namespace llt {
namespace {

TEST(Loss, LabelTokenSumIgnoresMaskedPositions) {
  const auto logits = at::randn({2, 4, 7});
  auto labels = at::tensor({-100, -100, 3, 5, -100, 1, 2, -100}, at::kLong).view({2, 4});
  const double got = label_token_loss_sum(logits, labels).item<double>();
  // By hand: positions t predict labels[t + 1]: (0,1)->3, (0,2)->5, (1,0)->1, (1,1)->2.
  const auto logp = at::log_softmax(logits.to(at::kDouble), -1);
  const double want =
      -(logp[0][1][3] + logp[0][2][5] + logp[1][0][1] + logp[1][1][2]).item<double>();
  EXPECT_NEAR(got, want, 1e-5);
}

TEST(Loss, SelectScoredRowsByHand) {
  const auto hidden = at::arange(2 * 4 * 3, at::kFloat).view({2, 4, 3});
  const auto labels = at::tensor({-100, -100, 3, 5, -100, 1, 2, -100}, at::kLong).view({2, 4});
  const auto s = select_scored_rows(hidden, labels);
  // Scored (b, t): (0,1), (0,2), (1,0), (1,1).
  EXPECT_TRUE(at::equal(s.targets, at::tensor({3, 5, 1, 2}, at::kLong)));
  EXPECT_TRUE(at::equal(s.rows, at::tensor({1, 2, 3, 4}, at::kLong)));  // b * (T - 1) + t
  const auto want = at::stack({hidden[0][1], hidden[0][2], hidden[1][0], hidden[1][1]});
  EXPECT_TRUE(at::equal(s.hidden, want));
}

TEST(Loss, UnscoredRowsGetExactlyZeroGradient) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const auto hidden = at::randn({2, 5, 6}, gen).requires_grad_(true);
  const auto weight = at::randn({11, 6}, gen);
  const auto labels =
      at::tensor({-100, -100, 3, 5, 9, -100, 1, -100, 2, -100}, at::kLong).view({2, 5});
  const auto s = select_scored_rows(hidden, labels);
  at::cross_entropy_loss(at::linear(s.hidden, weight), s.targets, {}, at::Reduction::Sum)
      .backward();
  const auto fast = hidden.grad().clone();
  hidden.mutable_grad().reset();
  label_token_loss_sum(at::linear(hidden, weight), labels).backward();
  const auto full = hidden.grad();
  // Scored positions: (0,1) (0,2) (0,3) (1,0) (1,2); every other row is exactly 0 in both.
  const auto scored = at::zeros({2, 5}, at::kBool);
  for (auto [b, t] : std::vector<std::pair<int, int>>{{0, 1}, {0, 2}, {0, 3}, {1, 0}, {1, 2}}) {
    scored[b][t] = true;
  }
  const auto unscored = scored.logical_not().unsqueeze(-1).expand_as(fast);
  EXPECT_EQ(fast.masked_select(unscored).abs().max().item<float>(), 0.0f);
  EXPECT_EQ(full.masked_select(unscored).abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(at::allclose(fast, full, 1e-6, 1e-6));
}

TEST(Loss, NoLabelGivesZeroAndZeroGradients) {
  const auto hidden = at::randn({1, 4, 6}).requires_grad_(true);
  const auto weight = at::randn({11, 6});
  const auto labels = at::full({1, 4}, kIgnoreIndex, at::kLong);
  const auto s = select_scored_rows(hidden, labels);
  EXPECT_EQ(s.hidden.size(0), 0);
  const auto loss =
      at::cross_entropy_loss(at::linear(s.hidden, weight), s.targets, {}, at::Reduction::Sum);
  EXPECT_EQ(loss.item<float>(), 0.0f);
  loss.backward();
  EXPECT_EQ(hidden.grad().abs().max().item<float>(), 0.0f);
}

TEST(Loss, ShapeErrors) {
  EXPECT_THROW(select_scored_rows(at::zeros({2, 4}), at::zeros({2, 4}, at::kLong)), c10::Error);
  EXPECT_THROW(select_scored_rows(at::zeros({2, 4, 3}), at::zeros({2, 5}, at::kLong)), c10::Error);
}

struct Case {
  bool lora;
  bool bf16;
  std::string policy;
};

// max |a - b| / max |b|.
double relative_error(const at::Tensor& a, const at::Tensor& b) {
  const auto bd = b.to(at::kDouble);
  return ((a.to(at::kDouble) - bd).abs().max() / bd.abs().max()).item<double>();
}

// The model's loss through model_label_loss_sum against the textbook form on full logits:
// same value and same gradient for every trainable parameter (the same dropout masks: the
// random state is reset before each).
TEST(Loss, ModelLossEqualsTheFullLogitsForm) {
  const std::vector<Case> cases = {{true, false, "none"},
                                   {false, false, "none"},
                                   {true, false, "block"},
                                   {true, true, "none"},
                                   {false, true, "block"}};
  for (const auto& c : cases) {
    const std::string what =
        std::string(c.lora ? "lora " : "full ") + (c.bf16 ? "bf16 " : "fp32 ") + c.policy;
    ModelArgs args = preset_args("tiny");
    Transformer model(args, at::TensorOptions().dtype(at::kFloat));
    model->init_random(3);
    if (c.lora) {
      LoraOptions lora;
      lora.dropout = 0.1;
      apply_lora(*model, lora);
      torch::NoGradGuard no_grad;
      for (auto& [name, p] : lora_parameters(*model)) {
        if (name.find("lora_b") != std::string::npos) p.normal_(0, 0.05);
      }
    } else {
      for (auto& p : model->parameters()) p.set_requires_grad(true);
    }
    model->train();
    auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
    const auto tokens = at::randint(512, {2, 24}, gen, at::TensorOptions().dtype(at::kLong));
    auto labels = tokens.clone();
    labels.narrow(1, 0, 9).fill_(kIgnoreIndex);      // a prompt of 9 tokens ...
    labels[1].narrow(0, 18, 6).fill_(kIgnoreIndex);  // ... and padding on the second sample
    RecomputeOptions recompute;
    recompute.policy = *value_of<RecomputePolicy>(c.policy);
    const std::optional<c10::ScalarType> autocast =
        c.bf16 ? std::optional<c10::ScalarType>(at::kBFloat16) : std::nullopt;

    auto step = [&](bool fast) {
      model->zero_grad();
      torch::manual_seed(99);
      at::Tensor loss;
      if (fast) {
        loss = model_label_loss_sum(*model, tokens, labels, recompute, autocast);
      } else {
        at::Tensor logits;
        {
          std::optional<AutocastGuard> guard;
          if (c.bf16) guard.emplace(c10::DeviceType::CPU, at::kBFloat16);
          logits = forward_with_checkpointing(*model, tokens, recompute);
        }
        loss = label_token_loss_sum(logits, labels);
      }
      loss.backward();
      std::vector<std::pair<std::string, at::Tensor>> grads;
      for (const auto& item : model->named_parameters()) {
        if (item.value().requires_grad())
          grads.emplace_back(item.key(), item.value().grad().clone());
      }
      return std::make_pair(loss.item<double>(), grads);
    };
    const auto [fast_loss, fast_grads] = step(true);
    const auto [full_loss, full_grads] = step(false);
    const double tol = c.bf16 ? 2e-3 : 1e-5;
    EXPECT_NEAR(fast_loss, full_loss, tol * std::abs(full_loss)) << what;
    ASSERT_EQ(fast_grads.size(), full_grads.size());
    ASSERT_FALSE(fast_grads.empty());
    for (size_t i = 0; i < fast_grads.size(); ++i) {
      EXPECT_LT(relative_error(fast_grads[i].second, full_grads[i].second), c.bf16 ? 2e-2 : 1e-5)
          << what << " " << fast_grads[i].first;
    }
  }
}

}  // namespace
}  // namespace llt
