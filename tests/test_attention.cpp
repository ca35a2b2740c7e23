// The fused CPU attention kernel against the reference formulation evaluated in fp64 by ATen's
// autograd (matmul, mask, softmax, matmul): outputs, log-sum-exp and the gradients of q, k, v,
// for grouped-query heads, head sizes off the 16-key blocking, KV-cache continuations (S > T),
// single-token decoding, extreme scores and bf16 inputs; that the kernel is deterministic
// whatever the thread count; and the reference kernel's causal mask.
#include <cmath>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "llt/attention.h"

namespace llt {
namespace {

struct Case {
  int64_t b, h, kv, t, s, hd;
};

struct Inputs {
  at::Tensor q, k, v, weight;  // weight: the random cotangent of the output (loss = sum(out * w))
};

Inputs make_inputs(const Case& c, double scale = 1.0, uint64_t seed = 0) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  Inputs in;
  in.q = at::randn({c.b, c.h, c.t, c.hd}, gen, f32) * scale;
  in.k = at::randn({c.b, c.kv, c.s, c.hd}, gen, f32) * scale;
  in.v = at::randn({c.b, c.kv, c.s, c.hd}, gen, f32);
  in.weight = at::randn({c.b, c.h, c.t, c.hd}, gen, f32);
  return in;
}

struct Result {
  at::Tensor out, dq, dk, dv;
};

template <typename Fn>
Result run(Fn fn, const Inputs& in, at::ScalarType dtype) {
  auto q = in.q.to(dtype).requires_grad_(true);
  auto k = in.k.to(dtype).requires_grad_(true);
  auto v = in.v.to(dtype).requires_grad_(true);
  auto out = fn(q, k, v);
  (out.to(at::kDouble) * in.weight.to(at::kDouble)).sum().backward();
  return {out.detach(), q.grad(), k.grad(), v.grad()};
}

Result reference64(const Inputs& in) { return run(causal_attention_reference, in, at::kDouble); }
Result fused32(const Inputs& in) { return run(causal_attention_fused, in, at::kFloat); }

double max_rel_err(const at::Tensor& got, const at::Tensor& want) {
  const auto w = want.to(at::kDouble);
  const double denom = std::max(w.abs().max().item<double>(), 1e-30);
  return (got.to(at::kDouble) - w).abs().max().item<double>() / denom;
}

class FusedAttention : public ::testing::TestWithParam<Case> {};

TEST_P(FusedAttention, OutputAndGradientsEqualTheFp64Reference) {
  const Case c = GetParam();
  const auto in = make_inputs(c);
  const auto want = reference64(in);
  const auto got = fused32(in);
  ASSERT_EQ(got.out.sizes(), want.out.sizes());
  EXPECT_EQ(got.out.scalar_type(), at::kFloat);
  EXPECT_LT(max_rel_err(got.out, want.out), 2e-6);
  EXPECT_LT(max_rel_err(got.dq, want.dq), 1e-5);
  EXPECT_LT(max_rel_err(got.dk, want.dk), 1e-5);
  EXPECT_LT(max_rel_err(got.dv, want.dv), 1e-5);
}

TEST_P(FusedAttention, LogSumExpIsThatOfTheMaskedScores) {
  const Case c = GetParam();
  const auto in = make_inputs(c);
  const auto [out, lse] = fused_attention_forward(in.q, in.k, in.v);
  EXPECT_EQ(out.sizes(), (at::IntArrayRef{c.b, c.t, c.h, c.hd}));
  const int64_t n_rep = c.h / c.kv;
  const auto kk = in.k.to(at::kDouble).repeat_interleave(n_rep, 1);
  auto scores = at::matmul(in.q.to(at::kDouble), kk.transpose(2, 3)) / std::sqrt(c.hd);
  const auto mask = at::ones({c.t, c.s}, at::kBool).triu(c.s - c.t + 1);
  scores = scores.masked_fill(mask, -INFINITY);
  EXPECT_LT(max_rel_err(lse, scores.logsumexp(-1)), 1e-6);
}

TEST_P(FusedAttention, Bf16InputsGiveBf16ResultsCloseToTheReference) {
  const Case c = GetParam();
  const auto in = make_inputs(c);
  // The same bf16-rounded inputs on both sides; the fused kernel computes in fp32 throughout,
  // the reference in fp64: the gap is the bf16 rounding of the outputs and gradients.
  Inputs rounded = in;
  rounded.q = in.q.to(at::kBFloat16).to(at::kFloat);
  rounded.k = in.k.to(at::kBFloat16).to(at::kFloat);
  rounded.v = in.v.to(at::kBFloat16).to(at::kFloat);
  const auto want = reference64(rounded);
  const auto got = run(causal_attention_fused, rounded, at::kBFloat16);
  EXPECT_EQ(got.out.scalar_type(), at::kBFloat16);
  EXPECT_EQ(got.dq.scalar_type(), at::kBFloat16);
  EXPECT_EQ(got.dk.scalar_type(), at::kBFloat16);
  EXPECT_LT(max_rel_err(got.out, want.out), 8e-3);
  EXPECT_LT(max_rel_err(got.dq, want.dq), 8e-3);
  EXPECT_LT(max_rel_err(got.dk, want.dk), 8e-3);
  EXPECT_LT(max_rel_err(got.dv, want.dv), 8e-3);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, FusedAttention,
    ::testing::Values(Case{1, 8, 4, 37, 37, 8},     // stories260K's heads, GQA, T off the blocking
                      Case{2, 4, 4, 16, 16, 16},    // batch 2, exactly one key block
                      Case{1, 4, 1, 33, 33, 128},   // LLaMA-2's head_dim, one kv head (MQA)
                      Case{2, 6, 2, 5, 29, 8},      // a KV-cache continuation: 5 queries at 24..28
                      Case{1, 8, 4, 1, 50, 8},      // decoding one token against 50 keys
                      Case{1, 2, 2, 1, 3, 6}),      // one query, 3 keys, head_dim not a multiple of 8
    [](const ::testing::TestParamInfo<Case>& info) {
      const Case& c = info.param;
      return "b" + std::to_string(c.b) + "h" + std::to_string(c.h) + "kv" + std::to_string(c.kv) +
             "t" + std::to_string(c.t) + "s" + std::to_string(c.s) + "hd" +
             std::to_string(c.hd);
    });

TEST(FusedAttentionNumerics, LargeScoresStayFiniteAndMatch) {
  // Scores of several hundred: exp overflows without the max shift.
  const Case c{1, 4, 2, 40, 40, 16};
  const auto in = make_inputs(c, /*scale=*/8.0, /*seed=*/3);
  const auto want = reference64(in);
  const auto got = fused32(in);
  ASSERT_TRUE(at::isfinite(got.out).all().item<bool>());
  ASSERT_TRUE(at::isfinite(got.dq).all().item<bool>());
  EXPECT_LT(max_rel_err(got.out, want.out), 1e-5);
  EXPECT_LT(max_rel_err(got.dv, want.dv), 1e-5);
  // dq and dk: the softmax is nearly one-hot, so gradients are differences of nearly equal fp32
  // terms scaled by |q|, |k| ~ 8; compare them at fp32's resolution of those terms.
  EXPECT_LT(max_rel_err(got.dq, want.dq), 1e-4);
  EXPECT_LT(max_rel_err(got.dk, want.dk), 1e-4);
}

TEST(FusedAttentionNumerics, BitwiseEqualAcrossThreadCountsAndRuns) {
  const Case c{2, 8, 4, 45, 45, 8};
  const auto in = make_inputs(c, 1.0, 7);
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = fused32(in);
  at::set_num_threads(2);
  const auto two = fused32(in);
  const auto again = fused32(in);
  at::set_num_threads(before);
  for (const auto& r : {two, again}) {
    EXPECT_TRUE(at::equal(one.out, r.out));
    EXPECT_TRUE(at::equal(one.dq, r.dq));
    EXPECT_TRUE(at::equal(one.dk, r.dk));
    EXPECT_TRUE(at::equal(one.dv, r.dv));
  }
}

TEST(FusedAttentionNumerics, FirstQueryAttendsOnlyItself) {
  const Case c{1, 2, 2, 6, 6, 8};
  const auto in = make_inputs(c, 1.0, 11);
  const auto out = causal_attention_fused(in.q, in.k, in.v);
  // Row 0 sees key 0 alone: its output is v[0] exactly (probability 1).
  EXPECT_TRUE(at::allclose(out.select(2, 0), in.v.select(2, 0), 0, 1e-7));
}

TEST(FusedAttentionNumerics, RejectsMismatchedShapes) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const auto q = at::zeros({1, 6, 4, 8}, f32);
  EXPECT_THROW(causal_attention_fused(q, at::zeros({1, 4, 4, 8}, f32), at::zeros({1, 4, 4, 8}, f32)),
               c10::Error);  // 4 kv heads do not divide 6
  EXPECT_THROW(causal_attention_fused(q, at::zeros({1, 2, 3, 8}, f32), at::zeros({1, 2, 3, 8}, f32)),
               c10::Error);  // fewer keys than queries
}

TEST(AttentionKernel, CpuUsesTheFusedKernel) {
  if (std::getenv("LLT_ATTENTION") != nullptr) GTEST_SKIP() << "LLT_ATTENTION is set";
  EXPECT_EQ(attention_kernel_for(c10::Device(c10::kCPU), false), AttentionKernel::kFused);
  EXPECT_EQ(attention_kernel_for(c10::Device(c10::kCPU), true), AttentionKernel::kFused);
  EXPECT_FALSE(attention_saves_scores(c10::Device(c10::kCPU)));
}

TEST(CausalMask, ShapeAndValues) {
  const int64_t t = 3, start = 2;
  const auto mask = causal_mask(t, start, at::kCPU);
  ASSERT_EQ(mask.sizes(), (std::vector<int64_t>{t, start + t}));
  EXPECT_EQ(mask.scalar_type(), at::kFloat);
  const auto m = mask.accessor<float, 2>();
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t j = 0; j < start + t; ++j) {
      if (j <= start + i) {
        EXPECT_EQ(m[i][j], 0.0f) << i << " " << j;
      } else {
        EXPECT_EQ(m[i][j], -std::numeric_limits<float>::infinity()) << i << " " << j;
      }
    }
  }
  const auto square = causal_mask(4, 0, at::kCPU);
  EXPECT_TRUE(at::equal(square.isinf(), at::ones({4, 4}, at::kBool).triu(1)));
}

}  // namespace
}  // namespace llt
