// Activation checkpointing: gradients with each policy are bitwise equal to the plain forward's
// on CPU, with LoRA dropout active (train mode), for LoRA, full fine-tuning and both at once, in
// fp32 and under bf16 autocast; the random stream after backward is the one the plain run leaves.
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/generated/variable_factories.h>

#include "llt/amp.h"
#include "llt/errors.h"
#include "llt/lora.h"
#include "llt/recompute.h"

namespace llt {
namespace {

enum class Training { kLora, kFull, kLoraAndFull };

Transformer make_model(Training training) {
  ModelArgs args = preset_args("tiny");
  args.n_layers = 3;  // every-k with K = 2 then checkpoints blocks 0 and 2, not 1
  Transformer model(args, torch::TensorOptions().dtype(torch::kFloat));
  model->init_random(5);
  if (training != Training::kFull) {
    LoraOptions lora;
    lora.targets = lora_target_names();
    lora.dropout = 0.1;
    apply_lora(*model, lora);
    torch::NoGradGuard no_grad;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(17);
    for (auto& [name, p] : lora_parameters(*model)) {
      if (name.find("lora_b") != std::string::npos)
        p.copy_(0.05 * at::normal(0, 1, p.sizes(), gen));
    }
  }
  if (training != Training::kLora) {
    for (auto& p : model->parameters()) p.set_requires_grad(true);
  }
  model->train();
  return model;
}

struct Result {
  at::Tensor loss;
  std::vector<std::pair<std::string, at::Tensor>> grads;  // of every trainable parameter
  at::Tensor next_random;                                 // the first draw after backward
};

// One training step's forward and backward from a fixed random state.
Result run(TransformerImpl& model, const RecomputeOptions& options, bool bf16,
           uint64_t seed = 1234) {
  model.zero_grad();
  torch::manual_seed(seed);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const auto tokens = at::randint(512, {2, 12}, gen, torch::TensorOptions().dtype(torch::kLong));
  at::Tensor logits;
  {
    std::optional<AutocastGuard> autocast;
    if (bf16) autocast.emplace(c10::DeviceType::CPU, c10::kBFloat16);
    logits = forward_with_checkpointing(model, tokens, options);  // (B, T, V)
  }
  // Next-token cross-entropy in fp32.
  const auto log_probs = at::log_softmax(logits.narrow(1, 0, 11).to(at::kFloat), /*dim=*/-1);
  const auto loss = at::nll_loss(log_probs.reshape({-1, 512}), tokens.narrow(1, 1, 11).reshape(-1));
  loss.backward();
  Result r;
  r.loss = loss.detach();
  for (const auto& item : model.named_parameters()) {
    if (!item.value().requires_grad()) continue;
    EXPECT_TRUE(item.value().grad().defined()) << item.key();
    r.grads.emplace_back(item.key(), item.value().grad().clone());
  }
  r.next_random = at::rand({4});
  return r;
}

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         torch::equal(a.reshape(-1).contiguous().view(at::kByte),
                      b.reshape(-1).contiguous().view(at::kByte));
}

void expect_same(const Result& plain, const Result& checkpointed, const std::string& what) {
  EXPECT_TRUE(bitwise_equal(plain.loss, checkpointed.loss)) << what;
  ASSERT_EQ(plain.grads.size(), checkpointed.grads.size()) << what;
  for (size_t i = 0; i < plain.grads.size(); ++i) {
    EXPECT_EQ(plain.grads[i].first, checkpointed.grads[i].first);
    EXPECT_TRUE(bitwise_equal(plain.grads[i].second, checkpointed.grads[i].second))
        << what << ": " << plain.grads[i].first << " max diff "
        << (plain.grads[i].second - checkpointed.grads[i].second).abs().max().item<double>();
  }
  EXPECT_TRUE(bitwise_equal(plain.next_random, checkpointed.next_random)) << what;
}

RecomputeOptions policy(const std::string& name) {
  RecomputeOptions o;
  o.policy = *value_of<RecomputePolicy>(name);
  o.every = 2;
  return o;
}

void check_all_policies(Training training, bool bf16) {
  auto model = make_model(training);
  const Result plain = run(*model, policy("none"), bf16);
  ASSERT_GT(plain.grads.size(), 0u);
  for (const std::string name : {"block", "every-k", "ffn"}) {
    expect_same(plain, run(*model, policy(name), bf16), name);
  }
}

TEST(Recompute, LoraGradientsBitwiseEqualWithDropout) {
  check_all_policies(Training::kLora, false);
}

TEST(Recompute, FullFineTuningGradientsBitwiseEqual) {
  check_all_policies(Training::kFull, false);
}

TEST(Recompute, LoraAndFullGradientsBitwiseEqual) {
  check_all_policies(Training::kLoraAndFull, false);
}

TEST(Recompute, Bf16AutocastGradientsBitwiseEqual) {
  check_all_policies(Training::kLora, true);
  check_all_policies(Training::kFull, true);
}

// What the recomputation runs in place of w2: the graph of forward(x) without its values.
// Gradients for x and the weight are the same bits as forward's, for a plain and a LoRA linear,
// in fp32 and under bf16 autocast (fp32 weight: cast copy; bf16 weight and input: none), with the
// weight trainable or frozen; the output is zero, in forward's shape and dtype.
TEST(Recompute, ForwardForGradientsHasTheGradientsOfForward) {
  for (const bool lora : {false, true}) {
    for (const bool bf16 : {false, true}) {
      for (const bool bf16_operands : {false, true}) {
        if (bf16_operands && !bf16) continue;
        for (const bool weight_trains : {false, true}) {
          const std::string what =
              std::string(lora ? "lora" : "plain") + (bf16 ? " bf16" : " fp32") +
              (bf16_operands ? " bf16 operands" : "") + (weight_trains ? " trained" : " frozen");
          const auto dtype = bf16_operands ? at::kBFloat16 : at::kFloat;
          auto gen = at::make_generator<at::CPUGeneratorImpl>(21);
          std::shared_ptr<LinearImpl> linear =
              std::make_shared<LinearImpl>(40, 24, torch::TensorOptions().dtype(dtype));
          {
            torch::NoGradGuard no_grad;
            linear->weight.copy_(at::randn({24, 40}, gen));
          }
          linear->weight.set_requires_grad(weight_trains);
          if (lora) {
            linear = std::make_shared<LoraLinearImpl>(*linear, 4, 8.0, 0.0);
            auto& l = static_cast<LoraLinearImpl&>(*linear);
            torch::NoGradGuard no_grad;
            l.lora_b.copy_(at::randn(l.lora_b.sizes(), gen));
          }
          const auto x0 = at::randn({2, 5, 40}, gen).to(dtype);
          const auto upstream = at::randn({2, 5, 24}, gen);
          auto grads = [&](bool for_gradients) {
            for (auto& p : linear->parameters()) p.mutable_grad().reset();
            // An activation, not a leaf: autocast caches the casts of leaves that need a gradient
            // (the base and adapter would then share one cast of x), never of activations.
            const auto leaf = x0.clone().requires_grad_(true);
            const auto x = leaf * 1;
            at::Tensor out;
            {
              std::optional<AutocastGuard> autocast;
              if (bf16) autocast.emplace(c10::DeviceType::CPU, c10::kBFloat16);
              out = for_gradients ? linear->forward_for_gradients(x) : linear->forward(x);
            }
            out.backward(upstream.to(out.scalar_type()));
            std::vector<at::Tensor> g = {out.detach(), leaf.grad()};
            for (auto& p : linear->parameters()) {
              if (p.requires_grad()) g.push_back(p.grad());
            }
            return g;
          };
          const auto want = grads(false);
          const auto got = grads(true);
          ASSERT_EQ(want.size(), got.size()) << what;
          EXPECT_EQ(got[0].sizes(), want[0].sizes()) << what;
          EXPECT_EQ(got[0].scalar_type(), want[0].scalar_type()) << what;
          if (!lora) EXPECT_EQ(got[0].abs().max().item<float>(), 0.0f) << what;
          for (size_t i = 1; i < want.size(); ++i) {
            EXPECT_TRUE(bitwise_equal(got[i], want[i])) << what << " gradient " << i;
          }
        }
      }
    }
  }
}

TEST(Recompute, DropoutMasksMatter) {
  // The equalities above are not vacuous: another seed (other masks) gives other gradients.
  auto model = make_model(Training::kLora);
  const Result a = run(*model, policy("none"), false);
  const Result b = run(*model, policy("none"), false, /*seed=*/99);
  EXPECT_FALSE(bitwise_equal(a.grads.front().second, b.grads.front().second));
}

TEST(Recompute, PolicyNoneIsTheModelForward) {
  auto model = make_model(Training::kLora);
  model->eval();
  const auto tokens = at::arange(24, torch::TensorOptions().dtype(torch::kLong)).view({2, 12});
  const auto expected = model->forward(tokens);
  for (const std::string name : {"none", "block", "every-k", "ffn"}) {
    EXPECT_TRUE(bitwise_equal(forward_with_checkpointing(*model, tokens, policy(name)), expected))
        << name;
  }
}

TEST(Recompute, CheckpointRunsTheFunctionAgainInBackward) {
  int calls = 0;
  const auto w = at::randn({3, 3}).requires_grad_(true);
  const auto x = at::randn({2, 3});  // needs no gradient, like a frozen base's activations
  auto fn = [&](const at::Tensor& h) {
    ++calls;
    return at::dropout(at::tanh(at::matmul(h, w)), 0.5, /*train=*/true);
  };
  torch::manual_seed(7);
  const auto y = checkpoint(fn, x, {w});
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(y.requires_grad());
  y.sum().backward();
  EXPECT_EQ(calls, 2);
  const auto grad = w.grad().clone();

  w.mutable_grad().reset();
  torch::manual_seed(7);
  fn(x).sum().backward();
  EXPECT_TRUE(bitwise_equal(grad, w.grad()));
  EXPECT_GT(grad.abs().sum().item<double>(), 0);
}

TEST(Recompute, RejectsBadOptions) {
  RecomputeOptions o;
  o.policy = RecomputePolicy::kEveryK;
  o.every = 0;
  EXPECT_THROW(validate_recompute_options(o), InputError);
}

}  // namespace
}  // namespace llt
