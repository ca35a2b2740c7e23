// The optimizer: AdamW steps with clipping equal python3-torch's torch.optim.AdamW and
// clip_grad_norm_ (tests/assets/optim/adamw.json, data_prep/make_optim_goldens.py); the
// learning-rate schedule at chosen steps; clipping by hand; optimizer state save/load.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_support.h"
#include "llt/errors.h"
#include "llt/optim.h"

namespace llt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A float32 tensor from nested JSON lists of exact decimal doubles.
at::Tensor from_json(const json& j) {
  if (j.is_array() && !j.empty() && j.front().is_array()) {
    std::vector<at::Tensor> rows;
    for (const auto& row : j) rows.push_back(from_json(row));
    return at::stack(rows);
  }
  std::vector<float> values;
  for (const auto& v : j) values.push_back(static_cast<float>(v.get<double>()));
  return at::tensor(values);
}

bool bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() &&
         at::equal(a.contiguous().view(at::kInt), b.contiguous().view(at::kInt));
}

json golden() {
  std::ifstream in(fs::path(LLT_TEST_ASSETS) / "optim" / "adamw.json");
  if (!in) throw std::runtime_error("missing tests/assets/optim/adamw.json");
  return json::parse(in);
}

OptimOptions golden_options(const json& g) {
  OptimOptions o;
  o.beta1 = g["betas"][0];
  o.beta2 = g["betas"][1];
  o.eps = g["eps"];
  o.weight_decay = g["weight_decay"];
  o.grad_clip = g["max_norm"];
  return o;
}

using testing::TempDir;

// The golden's parameters, named as a model's: w is a matrix (decayed), b a norm weight.
NamedParameters golden_params(const json& g) {
  return {{"layers.0.attention.wq.weight", from_json(g["initial"]["w"]).requires_grad_(true)},
          {"layers.0.ffn_norm.weight", from_json(g["initial"]["b"]).requires_grad_(true)}};
}

// Sets the golden gradients of `step` (0-based), clips, steps; returns the norm.
double golden_step(AdamW& opt, const json& g, size_t step) {
  const json& s = g["steps"][step];
  opt.parameters()[0].second.mutable_grad() = from_json(s["grad"]["w"]);
  opt.parameters()[1].second.mutable_grad() = from_json(s["grad"]["b"]);
  const double norm = clip_grad_norm(opt.tensors(), g["max_norm"].get<double>());
  opt.step(s["lr"].get<double>());
  return norm;
}

TEST(AdamW, StepsEqualPyTorch) {
  const json g = golden();
  AdamW opt(golden_params(g), golden_options(g));
  for (size_t i = 0; i < g["steps"].size(); ++i) {
    const json& s = g["steps"][i];
    const double norm = golden_step(opt, g, i);
    EXPECT_EQ(static_cast<float>(norm), static_cast<float>(s["grad_norm"].get<double>())) << i;
    EXPECT_TRUE(bitwise_equal(opt.parameters()[0].second.grad(), from_json(s["clipped_grad"]["w"])))
        << "step " << i;
    EXPECT_TRUE(bitwise_equal(opt.parameters()[1].second.grad(), from_json(s["clipped_grad"]["b"])))
        << "step " << i;
    EXPECT_TRUE(bitwise_equal(opt.parameters()[0].second, from_json(s["param"]["w"])))
        << "step " << i << " max diff "
        << (opt.parameters()[0].second - from_json(s["param"]["w"])).abs().max().item<double>();
    EXPECT_TRUE(bitwise_equal(opt.parameters()[1].second, from_json(s["param"]["b"])))
        << "step " << i << " max diff "
        << (opt.parameters()[1].second - from_json(s["param"]["b"])).abs().max().item<double>();
  }
  EXPECT_EQ(opt.state_bytes(), 2 * (12 + 4) * 4);
}

TEST(AdamW, StateSaveLoadContinuesBitwise) {
  const json g = golden();
  TempDir dir;
  AdamW uninterrupted(golden_params(g), golden_options(g));
  AdamW first(golden_params(g), golden_options(g));
  for (size_t i = 0; i < 2; ++i) {
    golden_step(uninterrupted, g, i);
    golden_step(first, g, i);
  }
  first.save(dir.path / "optimizer.safetensors");

  // A resumed run: parameters as saved with the model, a fresh optimizer loading its state.
  NamedParameters params = golden_params(g);
  for (size_t k = 0; k < params.size(); ++k) {
    params[k].second.detach().copy_(first.parameters()[k].second.detach());
  }
  AdamW resumed(params, golden_options(g));
  resumed.load(dir.path / "optimizer.safetensors");
  for (size_t i = 2; i < g["steps"].size(); ++i) {
    golden_step(uninterrupted, g, i);
    golden_step(resumed, g, i);
  }
  for (size_t k = 0; k < params.size(); ++k) {
    EXPECT_TRUE(
        bitwise_equal(resumed.parameters()[k].second, uninterrupted.parameters()[k].second));
    EXPECT_TRUE(bitwise_equal(resumed.parameters()[k].second,
                              from_json(g["steps"][3]["param"][k == 0 ? "w" : "b"])));
  }
}

TEST(AdamW, LoadRejectsOtherParameters) {
  const json g = golden();
  TempDir dir;
  AdamW opt(golden_params(g), golden_options(g));
  golden_step(opt, g, 0);
  opt.save(dir.path / "state.safetensors");
  NamedParameters other = {{"layers.0.attention.wq.weight", at::zeros({4, 3})},
                           {"layers.0.ffn_norm.weight", at::zeros({4})}};
  AdamW wrong_shape(other, golden_options(g));
  EXPECT_THROW(wrong_shape.load(dir.path / "state.safetensors"), InputError);
  NamedParameters fewer = {golden_params(g).front()};
  AdamW extra_in_file(fewer, golden_options(g));
  EXPECT_THROW(extra_in_file.load(dir.path / "state.safetensors"), InputError);
  EXPECT_THROW(opt.load(dir.path / "missing.safetensors"), InputError);
}

TEST(AdamW, NoWeightDecayOnVectors) {
  // Zero gradients: Adam's update is 0, so only decoupled weight decay can move a parameter.
  OptimOptions o;
  o.weight_decay = 0.5;
  NamedParameters params = {{"w", at::ones({2, 2}).requires_grad_(true)},
                            {"norm.weight", at::ones({2}).requires_grad_(true)}};
  AdamW opt(params, o);
  for (auto& [name, p] : params) p.mutable_grad() = at::zeros_like(p);
  opt.step(0.1);
  EXPECT_TRUE(at::allclose(params[0].second, at::full({2, 2}, 1.0 - 0.1 * 0.5)));
  EXPECT_TRUE(at::equal(params[1].second, at::ones({2})));
}

TEST(Schedule, ValuesAtChosenSteps) {
  OptimOptions o;
  o.lr = 1e-3;
  o.warmup_steps = 4;
  // Warmup: lr * step / W for all schedules.
  for (const auto s : {LrSchedule::kConstant, LrSchedule::kCosine, LrSchedule::kLinear}) {
    o.lr_schedule = s;
    EXPECT_DOUBLE_EQ(scheduled_lr(o, 1, 14), 0.25e-3) << name_of(s);
    EXPECT_DOUBLE_EQ(scheduled_lr(o, 4, 14), 1e-3) << name_of(s);
    EXPECT_DOUBLE_EQ(scheduled_lr(o, 5, 14), 1e-3) << name_of(s);  // first decay step: progress 0
  }
  // 10 decay steps (5..14): progress (step - 5) / 10.
  o.lr_schedule = LrSchedule::kConstant;
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 14, 14), 1e-3);
  o.lr_schedule = LrSchedule::kLinear;
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 10, 14), 0.5e-3);
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 14, 14), 0.1e-3);
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 20, 14), 0.0);  // past the end
  o.lr_schedule = LrSchedule::kCosine;
  EXPECT_NEAR(scheduled_lr(o, 10, 14), 0.5e-3, 1e-18);       // cos(pi / 2) = 0
  EXPECT_NEAR(scheduled_lr(o, 7, 14), 0.9045085e-3, 1e-10);  // (1 + cos(0.2 pi)) / 2
  EXPECT_NEAR(scheduled_lr(o, 20, 14), 0.0, 1e-18);
  // No warmup: the first step runs at the full rate.
  o.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 1, 8), 1e-3);
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 5, 8), 0.5e-3);  // progress 4 / 8
}

TEST(Schedule, RejectsBadInput) {
  OptimOptions o;
  EXPECT_THROW(scheduled_lr(o, 0, 10), InputError);
  o = OptimOptions{};
  o.lr = 0;
  EXPECT_THROW(validate_optim_options(o), InputError);
  o = OptimOptions{};
  o.warmup_steps = -1;
  EXPECT_THROW(validate_optim_options(o), InputError);
}

TEST(ClipGradNorm, ByHand) {
  // Gradients (3, 4) and (0, 0, 12): global norm 13.
  auto a = at::zeros({2}).requires_grad_(true);
  auto b = at::zeros({3}).requires_grad_(true);
  auto unused = at::zeros({1}).requires_grad_(true);
  a.mutable_grad() = at::tensor({3.0f, 4.0f});
  b.mutable_grad() = at::tensor({0.0f, 0.0f, 12.0f});
  EXPECT_FLOAT_EQ(clip_grad_norm({a, b, unused}, 0), 13.0);  // off: only measures
  EXPECT_TRUE(at::equal(a.grad(), at::tensor({3.0f, 4.0f})));
  EXPECT_FLOAT_EQ(clip_grad_norm({a, b}, 20.0), 13.0);  // under the limit: unchanged
  EXPECT_TRUE(at::equal(a.grad(), at::tensor({3.0f, 4.0f})));
  EXPECT_FLOAT_EQ(clip_grad_norm({a, b}, 6.5), 13.0);  // halves them
  EXPECT_NEAR(a.grad()[1].item<double>(), 2.0, 1e-6);
  EXPECT_NEAR(b.grad()[2].item<double>(), 6.0, 1e-6);
  EXPECT_NEAR(clip_grad_norm({a, b}, 0), 6.5, 1e-5);
  EXPECT_EQ(clip_grad_norm({unused}, 1.0), 0.0);
}

}  // namespace
}  // namespace llt
