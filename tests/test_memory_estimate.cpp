// The analytic training-memory estimate: exact parameter/gradient/optimizer bytes for 7B, the
// order of the recompute policies, and activations, the backward's peak and the optimizer step's
// temporaries against the bytes the counting CPU allocator (lib/llt/memory) sees in real steps.
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "llt/amp.h"
#include "llt/errors.h"
#include "llt/lora.h"
#include "llt/loss.h"
#include "llt/memory.h"
#include "llt/memory_estimate.h"
#include "llt/model.h"
#include "llt/optim.h"
#include "llt/recompute.h"

namespace llt {
namespace {

// The counting allocator installed: the estimate is compared with what it counts.
class Memory : public ::testing::Test {
 protected:
  void SetUp() override { install_host_memory_counter(); }
  void TearDown() override {
    set_host_memory_cap(0);
    set_host_cache_limit(0);
  }
};

TEST(MemoryEstimate, SevenBillionLoraAndFull) {
  const ModelArgs args = preset_args("llama2_7b");
  ASSERT_EQ(args.num_parameters(), 6'738'415'616);
  MemoryEstimateOptions o;  // r = 16 on wq, wv: 8,388,608 trainable
  o.base_dtype = c10::kHalf;
  o.precision = Dtype::kFp16;
  const auto lora = estimate_training_memory(args, o);
  EXPECT_EQ(lora.parameters, 6'738'415'616LL * 2 + 8'388'608LL * 4);
  EXPECT_EQ(lora.gradients, 8'388'608LL * 4);
  EXPECT_EQ(lora.optimizer_state, 8'388'608LL * 8);

  o.lora.rank = 0;  // full fine-tuning: fp32 weights, gradients and two moments
  o.precision = Dtype::kFp32;
  const auto full = estimate_training_memory(args, o);
  EXPECT_EQ(full.parameters, 6'738'415'616LL * 4);
  EXPECT_EQ(full.gradients, 6'738'415'616LL * 4);
  EXPECT_EQ(full.optimizer_state, 6'738'415'616LL * 8);
}

// The optimizer step's transient, counted: one AdamW step over a full model (state already
// created by a first step) peaks at the estimate's two temporaries of the largest parameter.
TEST_F(Memory, OptimizerTemporariesMatchTheCountedStep) {
  ModelArgs args = preset_args("tiny");
  args.vocab_size = 512;  // the embedding table is the largest parameter
  Transformer model(args, at::TensorOptions().dtype(at::kFloat));
  model->init_random(3);
  NamedParameters params;
  for (const auto& item : model->named_parameters()) params.emplace_back(item.key(), item.value());
  OptimOptions oo;
  AdamW optimizer(params, oo);
  auto fill_grads = [&] {
    for (auto& [name, p] : params) p.mutable_grad() = at::ones_like(p);
  };
  fill_grads();
  optimizer.step(1e-3);  // creates the moments
  fill_grads();
  const int64_t before = host_memory_stats().current;
  reset_host_peak();
  optimizer.step(1e-3);
  const int64_t transient = host_memory_stats().peak - before;
  MemoryEstimateOptions o;
  o.lora.rank = 0;
  const auto estimate = estimate_training_memory(args, o);
  EXPECT_EQ(estimate.optimizer_temporaries, 2 * 4 * args.vocab_size * args.dim);
  EXPECT_GE(transient, estimate.optimizer_temporaries);
  EXPECT_LT(transient, estimate.optimizer_temporaries + 64 * 1024);  // allocator alignment only
  o.lora.rank = 16;  // LoRA on wq, wv: the largest adapter matrix, B of wq (dim x r) or A
  EXPECT_EQ(estimate_training_memory(args, o).optimizer_temporaries, 2 * 4 * 16 * args.dim);
}

TEST(MemoryEstimate, CheckpointingOrdersActivations) {
  const ModelArgs args = preset_args("llama2_7b");
  MemoryEstimateOptions o;
  auto with = [&](const std::string& policy) {
    o.recompute.policy = *value_of<RecomputePolicy>(policy);
    return estimate_training_memory(args, o);
  };
  const auto none = with("none"), ffn = with("ffn"), every2 = with("every-k"),
             block = with("block");
  EXPECT_GT(none.activations, ffn.activations);
  EXPECT_GT(ffn.activations, block.activations);
  EXPECT_GT(none.activations, every2.activations);
  EXPECT_GT(every2.activations, block.activations);
  EXPECT_EQ(none.recompute, 0);
  EXPECT_GT(block.recompute, 0);
  o.recompute.every = 0;
  EXPECT_THROW(estimate_training_memory(args, o), InputError);
}

// Counted bytes the forward leaves alive (saved activations, the scored rows' fp32 log-probs)
// against the estimate, on a small model where nothing but activations is allocated in between.
TEST_F(Memory, EstimateTracksCountedActivations) {
  ModelArgs args = preset_args("tiny");
  args.dim = 128;
  args.n_heads = 4;
  args.n_kv_heads = 2;
  args.vocab_size = 256;
  struct Case {
    bool lora;
    std::string precision, policy;
  };
  const std::vector<Case> cases = {
      {true, "fp32", "none"},  {true, "fp32", "block"},  {true, "fp32", "ffn"},
      {false, "fp32", "none"}, {false, "fp32", "block"}, {false, "fp32", "ffn"},
      {true, "bf16", "none"},  {false, "bf16", "none"},  {false, "bf16", "ffn"},
  };
  for (const auto& c : cases) {
    Transformer model(args, at::TensorOptions().dtype(at::kFloat));
    model->init_random(1);
    MemoryEstimateOptions o;
    o.lora.targets = {"wq", "wv", "w2"};
    if (c.lora) {
      apply_lora(*model, o.lora);
    } else {
      o.lora.rank = 0;
    }
    o.precision = *value_of<Dtype>(c.precision);
    o.batch = 2;
    o.seq_len = 64;
    o.recompute.policy = *value_of<RecomputePolicy>(c.policy);
    model->train();
    const auto tokens = at::randint(256, {2, 64}, at::TensorOptions().dtype(at::kLong));
    auto labels = tokens.clone();
    labels.narrow(/*dim=*/1, 0, 30).fill_(-100);  // a prompt of 30 tokens: 2 * 34 label tokens
    o.loss_rows = 2 * 34;
    const int64_t before = host_memory_stats().current;
    std::optional<c10::ScalarType> autocast;
    if (c.precision == "bf16") autocast = c10::kBFloat16;
    // The loss as llt-finetune computes it; what it holds until backward is what we count.
    const auto loss = model_label_loss_sum(*model, tokens, labels, o.recompute, autocast);
    const double measured = static_cast<double>(host_memory_stats().current - before);
    const double estimated = static_cast<double>(estimate_training_memory(args, o).activations);
    const std::string what = (c.lora ? "lora " : "full ") + c.precision + " " + c.policy;
    std::printf("%-18s measured %9.0f estimated %9.0f ratio %.3f\n", what.c_str(), measured,
                estimated, estimated / measured);
    // Issue 4 asks for 15%; the estimate does better, and a regression should show.
    EXPECT_GT(estimated / measured, 0.94) << what;
    EXPECT_LT(estimated / measured, 1.06) << what;
  }
}

// The backward's peak above what was allocated before the forward, against what the estimate's
// peak puts above the weights and the optimizer state (gradients, then the larger of:
// activations with the loss's gradients, or a block's backward, its working gradients and any
// recomputed activations, beside what the blocks still hold once the head's tensors are freed).
// LoRA, so gradients are the adapters' few bytes. Two regimes: weight casts dominating (bf16
// autocast on an fp32 base, dim 512, as on the 7B shape) and activations dominating (dim 128,
// two sequences of 64). 1 and 2 layers: a 1-layer model recomputes only block 0, whose
// gradient-free input spares its norm, casts and dropout masks.
TEST_F(Memory, EstimateTracksTheBackwardPeak) {
  struct Case {
    int64_t dim, layers;
    std::string precision, policy;
  };
  const std::vector<Case> cases = {{512, 1, "bf16", "block"}, {512, 2, "bf16", "block"},
                                   {512, 1, "bf16", "none"},  {512, 2, "bf16", "ffn"},
                                   {128, 1, "fp32", "block"}, {128, 2, "fp32", "none"},
                                   {128, 2, "bf16", "block"}, {128, 1, "fp32", "ffn"}};
  for (const auto& c : cases) {
    const bool wide = c.dim == 512;
    ModelArgs args = preset_args("tiny");
    args.dim = c.dim;
    args.n_heads = wide ? 8 : 4;
    args.n_kv_heads = wide ? 4 : 2;
    args.vocab_size = wide ? 2048 : 256;
    args.n_layers = c.layers;
    Transformer model(args, at::TensorOptions().dtype(at::kFloat));
    model->init_random(1);
    MemoryEstimateOptions o;
    apply_lora(*model, o.lora);
    o.precision = *value_of<Dtype>(c.precision);
    o.batch = wide ? 1 : 2;
    o.seq_len = wide ? 32 : 64;
    o.loss_rows = o.batch * o.seq_len / 2;  // the second half of each sequence is labels
    o.recompute.policy = *value_of<RecomputePolicy>(c.policy);
    model->train();
    const auto tokens =
        at::randint(args.vocab_size, {o.batch, o.seq_len}, at::TensorOptions().dtype(at::kLong));
    auto labels = tokens.clone();
    labels.narrow(/*dim=*/1, 0, o.seq_len / 2).fill_(-100);
    std::optional<c10::ScalarType> autocast;
    if (c.precision == "bf16") autocast = c10::kBFloat16;
    const int64_t before = host_memory_stats().current;
    reset_host_peak();
    model_label_loss_sum(*model, tokens, labels, o.recompute, autocast).backward();
    const double measured = static_cast<double>(host_memory_stats().peak - before);
    const auto e = estimate_training_memory(args, o);
    const double estimated = static_cast<double>(e.total() - e.parameters - e.optimizer_state);
    const std::string what = "dim " + std::to_string(c.dim) + ", " + std::to_string(c.layers) +
                             " layer(s), " + c.precision + " " + c.policy;
    std::printf("%-28s measured %9.0f estimated %9.0f ratio %.3f\n", what.c_str(), measured,
                estimated, estimated / measured);
    EXPECT_GT(estimated / measured, 0.85) << what;  // issue 4's bound: within 15%
    EXPECT_LT(estimated / measured, 1.15) << what;
  }
}

}  // namespace
}  // namespace llt
