// Memory probes: the counting CPU allocator follows a tensor's life; the memory cap throws
// OutOfMemoryError (also from inside ATen ops and backward) and the process carries on; RSS;
// the analytic estimate: exact parameter/gradient/optimizer bytes for 7B, activations against
// the counted bytes of real forwards.
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
#include "llt/model.h"
#include "llt/optim.h"
#include "llt/recompute.h"

namespace llt {
namespace {

constexpr int64_t kMiB = 1 << 20;

class Memory : public ::testing::Test {
 protected:
  void SetUp() override { install_host_memory_counter(); }
  void TearDown() override {
    set_host_memory_cap(0);
    set_host_cache_limit(0);
  }
};

// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST_F(Memory, FreedLargeBlocksAreReusedAndNotCounted) {
  set_host_cache_limit(256 * kMiB);
  const int64_t before = host_memory_stats().current;
  void* first = nullptr;
  {
    const auto t = at::empty({40 * kMiB / 4}, at::kFloat);  // 40 MiB: above glibc's mmap threshold
    first = t.data_ptr();
    EXPECT_EQ(host_memory_stats().current - before, 40 * kMiB);  // counted as requested
  }
  EXPECT_EQ(host_memory_stats().current, before);
  EXPECT_EQ(host_memory_stats().cached, 40 * kMiB);  // a multiple of 2 MiB already
  {
    // The same rounded size (39 MiB + 1 byte -> 40 MiB) gets the same block back.
    const auto t = at::empty({39 * kMiB + 1}, at::kByte);
    EXPECT_EQ(t.data_ptr(), first);
    EXPECT_EQ(host_memory_stats().cached, 0);
    EXPECT_EQ(host_memory_stats().current - before, 39 * kMiB + 1);
    const auto other = at::empty({50 * kMiB}, at::kByte);  // another size: a new block
    EXPECT_NE(other.data_ptr(), first);
  }
  EXPECT_EQ(host_memory_stats().cached, 40 * kMiB + 50 * kMiB);
  {
    // A reused block holds whatever was there, as from malloc; ops that need zeros write them.
    const auto zeros = at::zeros({50 * kMiB}, at::kByte);
    EXPECT_EQ(host_memory_stats().cached, 40 * kMiB);
    EXPECT_EQ(zeros.sum().item<int64_t>(), 0);
  }
  empty_host_cache();
  EXPECT_EQ(host_memory_stats().cached, 0);
  EXPECT_EQ(host_memory_stats().current, before);
}

TEST_F(Memory, SmallBlocksAndBlocksOverTheLimitAreNotCached) {
  set_host_cache_limit(64 * kMiB);
  { const auto small = at::empty({4 * kMiB}, at::kByte); }  // below 32 MiB: glibc's heap
  EXPECT_EQ(host_memory_stats().cached, 0);
  { const auto big = at::empty({100 * kMiB}, at::kByte); }  // over the limit by itself
  EXPECT_EQ(host_memory_stats().cached, 0);
  {
    const auto a = at::empty({40 * kMiB}, at::kByte);
    const auto b = at::empty({40 * kMiB}, at::kByte);
  }  // the first freed fits, the second would take the cache to 80 MiB
  EXPECT_EQ(host_memory_stats().cached, 40 * kMiB);
  set_host_cache_limit(0);  // off: frees what is kept
  EXPECT_EQ(host_memory_stats().cached, 0);
  { const auto c = at::empty({40 * kMiB}, at::kByte); }
  EXPECT_EQ(host_memory_stats().cached, 0);
}

// Steps whose large tensors (a 48 MB weight's gradient, its temporaries) come from reused blocks
// give the bits of steps whose blocks are fresh (zeroed by the kernel): nothing relies on
// fresh memory being zero.
TEST_F(Memory, StepsWithReusedBlocksEqualStepsWithFreshOnes) {
  auto run = [](int64_t cache_limit) {
    set_host_cache_limit(cache_limit);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
    auto w = at::randn({3000, 4000}, gen).mul_(0.01).requires_grad_(true);
    const auto x = at::randn({8, 4000}, gen);
    for (int step = 0; step < 4; ++step) {
      const auto loss = at::matmul(x, w.t()).tanh().pow(2).sum();
      loss.backward();
      {
        at::NoGradGuard no_grad;
        w.sub_(w.grad() * 1e-3 + w.grad().sign() * 1e-4);
      }
      w.mutable_grad().reset();  // set_to_none, as llt's AdamW::zero_grad
    }
    const auto cached = host_memory_stats().cached;
    set_host_cache_limit(0);
    return std::make_pair(w.detach().clone(), cached);
  };
  const auto [fresh, none_cached] = run(0);
  const auto [reused, some_cached] = run(512 * kMiB);
  EXPECT_EQ(none_cached, 0);
  EXPECT_GT(some_cached, 0);
  EXPECT_TRUE(at::equal(fresh, reused));
}

TEST(HostCacheLimit, FromTheEnvironment) {
  {
    ScopedEnv env("LLT_HOST_CACHE_MB", "100");
    EXPECT_EQ(host_cache_limit_from_env(), 100 * kMiB);
  }
  {
    ScopedEnv env("LLT_HOST_CACHE_MB", "0");
    EXPECT_EQ(host_cache_limit_from_env(), 0);
  }
  for (const char* bad : {"", "-1", "12x", "lots"}) {
    ScopedEnv env("LLT_HOST_CACHE_MB", bad);
    EXPECT_THROW(host_cache_limit_from_env(), InputError) << bad;
  }
  ScopedEnv unset("LLT_HOST_CACHE_MB", nullptr);
  {
    ScopedEnv job("SLURM_MEM_PER_NODE", "2000");  // a 2000 MB job: a quarter of it
    EXPECT_EQ(host_cache_limit_from_env(), 500 * kMiB);
  }
  ScopedEnv no_job("SLURM_MEM_PER_NODE", nullptr);
  const int64_t limit = host_cache_limit_from_env();
  EXPECT_GT(limit, 0);
  EXPECT_LE(limit, 8192 * kMiB);
}

TEST_F(Memory, CountsRiseAndFallWithATensor) {
  ASSERT_TRUE(host_memory_counter_installed());
  const int64_t before = host_memory_stats().current;
  reset_host_peak();
  {
    const auto t = at::empty({4 * kMiB / 4}, at::kFloat);  // 4 MiB
    const auto during = host_memory_stats();
    EXPECT_GE(during.current - before, 4 * kMiB);
    EXPECT_LT(during.current - before, 4 * kMiB + 4096);
    EXPECT_GE(during.peak, during.current);
  }
  const auto after = host_memory_stats();
  EXPECT_EQ(after.current, before);
  EXPECT_GE(after.peak - before, 4 * kMiB);
  reset_host_peak();
  EXPECT_EQ(host_memory_stats().peak, after.current);
}

TEST_F(Memory, CapThrowsOutOfMemoryAndTheProcessCarriesOn) {
  const int64_t before = host_memory_stats().current;
  set_host_memory_cap(before + kMiB);
  EXPECT_THROW(at::empty({4 * kMiB / 4}, at::kFloat), OutOfMemoryError);
  EXPECT_EQ(host_memory_stats().current, before);  // nothing leaked by the failure
  EXPECT_NO_THROW(at::empty({1024}, at::kFloat));  // small ones still fit

  // From inside an op, and from backward.
  const auto a = at::randn({256, 256});  // 256 KiB each
  set_host_memory_cap(host_memory_stats().current + 300 * 1024);
  EXPECT_THROW(at::matmul(at::cat({a, a}), a), OutOfMemoryError);
  set_host_memory_cap(0);
  const auto w = at::randn({512, 512}).requires_grad_(true);
  const auto loss = at::matmul(a, w.narrow(0, 0, 256)).sum();
  set_host_memory_cap(host_memory_stats().current + 64 * 1024);
  EXPECT_THROW(loss.backward(), OutOfMemoryError);

  set_host_memory_cap(0);
  const auto big = at::ones({16 * kMiB / 4});
  EXPECT_EQ(big.sum().item<float>(), 16 * kMiB / 4);
}

TEST_F(Memory, ProcessRss) {
  const auto p = process_memory();
  EXPECT_GT(p.rss, 10 * kMiB);  // libtorch alone
  EXPECT_GE(p.peak_rss, p.rss);
  const auto s = sample_memory(c10::Device(c10::kCPU));
  EXPECT_EQ(s.allocated, host_memory_stats().current);
  EXPECT_GT(s.rss, 0);
}

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
