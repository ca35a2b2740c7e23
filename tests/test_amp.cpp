// Mixed precision: the autocast guard sets and restores autocast state and really casts CPU
// matmuls to bf16; the fp16 loss scaler's logic (scale, unscale, inf/nan detection, skip and
// backoff, recovery, growth, state round trip), checked in fp32 with injected infs.
#include <limits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include "llt/amp.h"
#include "llt/errors.h"
#include "llt/runtime.h"

namespace llt {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(Autocast, GuardSetsAndRestoresState) {
  const AutocastState before = current_autocast_state();
  EXPECT_FALSE(before.cpu_enabled);
  {
    AutocastGuard guard(c10::DeviceType::CPU, c10::kBFloat16);
    const AutocastState inside = current_autocast_state();
    EXPECT_TRUE(inside.cpu_enabled);
    EXPECT_EQ(inside.cpu_dtype, c10::kBFloat16);
    EXPECT_EQ(inside.cuda_enabled, before.cuda_enabled);  // the other device untouched
    {
      AutocastGuard off(before);  // nested: exactly the recorded state
      EXPECT_EQ(current_autocast_state(), before);
    }
    EXPECT_EQ(current_autocast_state(), inside);
  }
  EXPECT_EQ(current_autocast_state(), before);
}

TEST(Autocast, GuardRestoresStateWhenLeftByException) {
  const AutocastState before = current_autocast_state();
  try {
    AutocastGuard guard(c10::DeviceType::CPU, c10::kBFloat16);
    throw std::runtime_error("leave");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(current_autocast_state(), before);
}

TEST(Autocast, Bf16OnCpuCastsMatmuls) {
  const auto a = at::randn({4, 8});
  const auto b = at::randn({8, 3});
  {
    AutocastGuard guard(c10::DeviceType::CPU, c10::kBFloat16);
    EXPECT_EQ(at::matmul(a, b).scalar_type(), at::kBFloat16);
    EXPECT_EQ(at::linear(a, b.t()).scalar_type(), at::kBFloat16);
    // The bf16 result is the product of the bf16-rounded inputs.
    const auto expected =
        at::matmul(a.to(at::kBFloat16).to(at::kFloat), b.to(at::kBFloat16).to(at::kFloat));
    EXPECT_LT((at::matmul(a, b).to(at::kFloat) - expected).abs().max().item<double>(),
              0.02 * expected.abs().max().item<double>());
  }
  EXPECT_EQ(at::matmul(a, b).scalar_type(), at::kFloat);
}

TEST(Autocast, RejectsUnsupportedDtypes) {
  EXPECT_THROW(AutocastGuard(c10::DeviceType::CPU, c10::kHalf), InputError);
  EXPECT_THROW(AutocastGuard(c10::DeviceType::CUDA, c10::kFloat), InputError);
  EXPECT_FALSE(current_autocast_state().cpu_enabled);
}

// Which dtypes a device takes (runtime.h): the CPU computes in bf16, not in fp16. (A GPU below
// compute capability 8.0, a P100, refuses bf16 with its name: CUDA builds only, not run here.)
TEST(Dtypes, CpuTakesBf16AndRefusesFp16) {
  const c10::Device cpu("cpu");
  EXPECT_EQ(device_without_bf16(cpu), "");
  EXPECT_EQ(resolve_dtype(Dtype::kBf16, cpu), c10::kBFloat16);
  EXPECT_EQ(resolve_dtype(Dtype::kFp32, cpu), c10::kFloat);
  EXPECT_THROW(resolve_dtype(Dtype::kFp16, cpu), InputError);
}

// A parameter whose gradient after backward of scaler.scale(loss) is known: loss = sum(w * x),
// so d loss / d w = x.
struct Problem {
  at::Tensor w = at::zeros({4}).requires_grad_(true);
  at::Tensor x = at::tensor({0.5f, -1.0f, 2.0f, 0.25f});

  void backward(const LossScaler& scaler, bool inject_inf = false) {
    w.mutable_grad().reset();
    scaler.scale((w * x).sum()).backward();
    if (inject_inf) {
      at::NoGradGuard no_grad;
      w.grad()[2] = kInf;  // an fp16 overflow somewhere in backward
    }
  }
};

TEST(LossScaler, ScalesAndUnscalesExactly) {
  LossScaler scaler;
  EXPECT_EQ(scaler.current_scale(), 65536.0);
  Problem p;
  p.backward(scaler);
  EXPECT_TRUE(at::equal(p.w.grad(), p.x * 65536.0f));
  EXPECT_FALSE(scaler.unscale({p.w}));
  EXPECT_TRUE(at::equal(p.w.grad(), p.x));  // powers of two: exact
  EXPECT_TRUE(scaler.update(false));
  EXPECT_EQ(scaler.state().good_steps, 1);
}

TEST(LossScaler, SkipsBacksOffRecoversAndGrows) {
  LossScalerOptions options;
  options.init_scale = 1024;
  options.growth_interval = 3;
  LossScaler scaler(options);
  Problem p;

  // An inf gradient: the step is skipped and the scale halves.
  p.backward(scaler, /*inject_inf=*/true);
  const bool found_inf = scaler.unscale({p.w});
  EXPECT_TRUE(found_inf);
  EXPECT_FALSE(scaler.update(found_inf));
  EXPECT_EQ(scaler.current_scale(), 512);
  EXPECT_EQ(scaler.state().skipped_steps, 1);

  // Two good steps, then another overflow: the good-step count starts over.
  for (int i = 0; i < 2; ++i) {
    p.backward(scaler);
    EXPECT_TRUE(scaler.update(scaler.unscale({p.w})));
    EXPECT_TRUE(at::equal(p.w.grad(), p.x));
  }
  EXPECT_EQ(scaler.state().good_steps, 2);
  p.backward(scaler, true);
  EXPECT_FALSE(scaler.update(scaler.unscale({p.w})));
  EXPECT_EQ(scaler.current_scale(), 256);
  EXPECT_EQ(scaler.state().good_steps, 0);
  EXPECT_EQ(scaler.state().skipped_steps, 2);

  // Recovery: growth_interval good steps in a row double the scale.
  for (int i = 0; i < 3; ++i) {
    p.backward(scaler);
    EXPECT_TRUE(scaler.update(scaler.unscale({p.w})));
    EXPECT_EQ(scaler.current_scale(), i < 2 ? 256 : 512) << i;
  }
  EXPECT_EQ(scaler.state().good_steps, 0);
}

TEST(LossScaler, DetectsNanAndIgnoresMissingGradients) {
  LossScaler scaler;
  Problem p;
  const auto unused = at::zeros({2}).requires_grad_(true);  // no .grad
  p.backward(scaler);
  {
    at::NoGradGuard no_grad;
    p.w.grad()[0] = std::numeric_limits<float>::quiet_NaN();
  }
  EXPECT_TRUE(scaler.unscale({unused, p.w}));
  EXPECT_FALSE(scaler.unscale({unused}));
}

TEST(LossScaler, StateRoundTripContinuesTheSameSequence) {
  LossScalerOptions options;
  options.growth_interval = 2;
  LossScaler a(options);
  a.update(true);
  a.update(false);
  LossScaler b(options);
  b.load_state(a.state());
  EXPECT_EQ(b.state().scale, a.state().scale);
  EXPECT_EQ(b.state().good_steps, 1);
  EXPECT_EQ(b.state().skipped_steps, 1);
  a.update(false);
  b.update(false);
  EXPECT_EQ(a.current_scale(), 65536.0);  // 65536 / 2 * 2
  EXPECT_EQ(b.current_scale(), a.current_scale());
  EXPECT_THROW(b.load_state(LossScalerState{0.0, 0, 0}), InputError);
}

TEST(LossScaler, DisabledOnlyChecks) {
  LossScalerOptions options;
  options.enabled = false;
  LossScaler scaler(options);
  EXPECT_EQ(scaler.current_scale(), 1.0);
  Problem p;
  p.backward(scaler);
  EXPECT_TRUE(at::equal(p.w.grad(), p.x));
  EXPECT_FALSE(scaler.unscale({p.w}));
  p.backward(scaler, true);
  EXPECT_TRUE(scaler.unscale({p.w}));
  EXPECT_FALSE(scaler.update(true));
  EXPECT_EQ(scaler.current_scale(), 1.0);
  EXPECT_EQ(scaler.state().skipped_steps, 0);
}

TEST(LossScaler, RejectsBadOptions) {
  LossScalerOptions bad;
  bad.growth_interval = 0;
  EXPECT_THROW(LossScaler{bad}, InputError);
  bad = LossScalerOptions{};
  bad.backoff_factor = 1.0;
  EXPECT_THROW(LossScaler{bad}, InputError);
}

}  // namespace
}  // namespace llt
