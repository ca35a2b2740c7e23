// CUDA (CTest label `gpu`): what only a GPU can check. Every test skips, saying why, where no
// CUDA device is visible (a CPU build, or a CUDA build on a machine without a GPU); they are what
// scripts/gpu-check.sh runs on a GPU machine.
//   - CUDA equals CPU: stories260K's fp32 logits within fp32 tolerance; greedy ids equal except
//     where the CPU's top-2 margin is a near-tie.
//   - Checkpointed gradients equal plain ones bitwise on CUDA with dropout (CUDA RNG replay),
//     under deterministic algorithms and the math attention backend.
//   - fp16 autocast and the loss scaler: an injected inf skips the step and halves the scale;
//     20 fp16 steps follow the fp32 losses.
//   - bf16 is refused below compute capability 8.0 (capability injected: LLT_CUDA_CAPABILITY).
//   - The caching allocator's statistics in memory.jsonl; --memory-cap-gib caps it: oom, exit 3,
//     summary written.
//   - NCCL: 2 ranks on 2 GPUs give the losses of 1 rank with twice the accumulation.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include "llt/amp.h"
#include "llt/compat.h"
#include "llt/generate.h"
#include "llt/io.h"
#include "llt/lora.h"
#include "llt/recompute.h"
#include "llt/weights.h"
#include "test_support.h"

namespace llt {
namespace {

namespace fs = std::filesystem;
using testing::fresh_dir;
using testing::run_tool;

const std::string kStories = std::string(LLT_SOURCE_DIR) + "/assets/models/stories260K";

#define LLT_REQUIRE_CUDA_DEVICES(n)                                                        \
  do {                                                                                     \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible to this build"; \
    if (static_cast<int>(torch::cuda::device_count()) < (n))                              \
      GTEST_SKIP() << "needs " << (n) << " CUDA devices, " << torch::cuda::device_count()  \
                   << " visible";                                                          \
  } while (0)

LoadedModel stories(const c10::Device& device) {
  LoadOptions o;
  o.device = device;
  return load_model(kStories + "/stories260K.bin", o);
}

at::Tensor fixed_tokens(int64_t batch, int64_t length, int64_t vocab) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  return at::randint(1, vocab, {batch, length}, gen, at::TensorOptions().dtype(at::kLong));
}

std::vector<nlohmann::json> jsonl(const fs::path& path) {
  std::istringstream in(read_file(path));
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

// A tokenized split of the first `n` shipped Alpaca records, for the tool runs below.
std::string tokenized(const fs::path& dir, int n) {
  const std::string data = (dir / "data").string();
  const auto r = run_tool("llt-tokenize --tokenizer " + kStories + "/tok512.model --output " +
                          data + " --first " + std::to_string(n) + " --max-len 320 --threads 1");
  EXPECT_EQ(r.code, 0) << r.output;
  return data;
}

std::string finetune(const std::string& data, const fs::path& out) {
  return "llt-finetune --model " + kStories + "/stories260K.bin --data " + data + " --output " +
         out.string() + " --device cuda --shuffle off --seed 3 --threads 1 ";
}

TEST(Cuda, Fp32LogitsEqualCpu) {
  LLT_REQUIRE_CUDA_DEVICES(1);
  auto cpu = stories(c10::Device("cpu"));
  auto gpu = stories(c10::Device("cuda"));
  const auto tokens = fixed_tokens(2, 64, cpu.args.vocab_size);
  at::NoGradGuard no_grad;
  const auto a = cpu.model->forward(tokens);
  const auto b = gpu.model->forward(tokens.to(c10::Device("cuda"))).cpu();
  // fp32 with TF32 off (LibTorch's default for matmul): only summation order differs.
  const double diff = (a - b).abs().max().item<double>();
  EXPECT_LT(diff, 1e-4) << "max |logit difference| " << diff << " (logits up to "
                        << a.abs().max().item<double>() << ")";
}

TEST(Cuda, GreedyIdsEqualCpuWhereTheMarginIsClear) {
  LLT_REQUIRE_CUDA_DEVICES(1);
  auto cpu = stories(c10::Device("cpu"));
  auto gpu = stories(c10::Device("cuda"));
  const std::vector<std::vector<int64_t>> prompts = {{1, 403, 407, 261}, {1, 365, 300}};
  GenerateOptions o;
  o.sampling.max_new_tokens = 96;
  const auto a = generate(*cpu.model, prompts, o);
  const auto b = generate(*gpu.model, prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& x = a.sequences[i].ids;
    const auto& y = b.sequences[i].ids;
    const auto split = std::mismatch(x.begin(), x.end(), y.begin(), y.end());
    if (split.first == x.end()) continue;  // identical
    // Where they part, the CPU's two best logits must be a near-tie.
    std::vector<int64_t> prefix = prompts[i];
    prefix.insert(prefix.end(), x.begin(), split.first);
    at::NoGradGuard no_grad;
    const auto logits = cpu.model->forward(at::tensor(prefix).unsqueeze(0))[0][-1];
    const auto top = std::get<0>(logits.topk(2));
    const double margin = (top[0] - top[1]).item<double>();
    EXPECT_LT(margin, 1e-4) << "prompt " << i << " parts at new token "
                            << (split.first - x.begin()) << " with a top-2 margin of " << margin;
  }
}

// A 3-block LoRA + full model with dropout on CUDA (every-k with K = 2 checkpoints blocks 0
// and 2), built on the device as load_model does (the RoPE tables are no module buffers).
// lora_b gets non-zero values so that dropout reaches the base gradients too.
Transformer checkpointing_model() {
  ModelArgs args = preset_args("tiny");
  args.n_layers = 3;
  Transformer model(args, at::TensorOptions().dtype(at::kFloat).device(c10::Device("cuda")));
  model->init_random(5);
  LoraOptions lora;
  lora.targets = lora_target_names();
  lora.dropout = 0.1;
  torch::manual_seed(7);  // LoRA's A init draws from the CUDA generator
  apply_lora(*model, lora);
  at::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(17);
  for (auto& [name, p] : lora_parameters(*model)) {
    if (name.find("lora_b") != std::string::npos) {
      p.copy_(0.05 * at::normal(0, 1, p.sizes(), gen));
    }
  }
  for (auto& p : model->parameters()) p.set_requires_grad(true);
  model->train();
  return model;
}

// One forward and backward of `model` from a fixed random state: every gradient, then the
// first draw after backward (the stream the recomputation must leave as the plain run does).
std::vector<at::Tensor> checkpointed_gradients(TransformerImpl& model, const std::string& policy,
                                               uint64_t seed = 1234) {
  model.zero_grad();
  RecomputeOptions r;
  r.policy = *value_of<RecomputePolicy>(policy);
  r.every = 2;
  const int64_t vocab = model.tok_embeddings->weight.size(0);
  const c10::Device cuda("cuda");
  torch::manual_seed(seed);  // seeds the CUDA generators too
  const auto tokens = fixed_tokens(2, 16, vocab).to(cuda);
  const auto logits = forward_with_checkpointing(model, tokens, r);
  const auto log_probs = at::log_softmax(logits.narrow(1, 0, 15), -1);
  at::nll_loss(log_probs.reshape({-1, vocab}), tokens.narrow(1, 1, 15).reshape(-1)).backward();
  std::vector<at::Tensor> grads;
  for (const auto& p : model.parameters()) grads.push_back(p.grad().cpu());
  grads.push_back(at::rand({4}, at::TensorOptions().device(cuda)).cpu());
  return grads;
}

TEST(Cuda, CheckpointedGradientsBitwiseEqualWithDropout) {
  LLT_REQUIRE_CUDA_DEVICES(1);
  // Bitwise needs deterministic kernels and the math attention backend (the fused SDPA
  // backwards accumulate with atomics). cuBLAS reads this before its first handle.
  setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", 1);
  at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
  compat::set_math_attention_only(true);
  auto model = checkpointing_model();
  const auto plain = checkpointed_gradients(*model, "none");
  for (const std::string policy : {"block", "every-k", "ffn"}) {
    const auto again = checkpointed_gradients(*model, policy);
    ASSERT_EQ(plain.size(), again.size());
    for (size_t i = 0; i < plain.size(); ++i) {
      EXPECT_TRUE(at::equal(plain[i], again[i]))
          << policy << ": tensor " << i << " max diff "
          << (plain[i] - again[i]).abs().max().item<double>();
    }
  }
  // Dropout matters: another seed (other masks) gives other gradients, so the equality above
  // is not vacuous.
  const auto other = checkpointed_gradients(*model, "none", /*seed=*/99);
  EXPECT_FALSE(at::equal(plain.front(), other.front()));
  compat::set_math_attention_only(false);
  at::globalContext().setDeterministicAlgorithms(false, false);
}

TEST(Cuda, Fp16LossScalerSkipsAnInfStepAndHalvesTheScale) {
  LLT_REQUIRE_CUDA_DEVICES(1);
  auto m = stories(c10::Device("cuda"));
  for (auto& p : m.model->parameters()) p.set_requires_grad(true);
  const auto tokens = fixed_tokens(1, 32, m.args.vocab_size).to(c10::Device("cuda"));
  LossScaler scaler;
  const double scale = scaler.current_scale();
  at::Tensor loss;
  {
    AutocastGuard fp16(c10::DeviceType::CUDA, c10::kHalf);
    const auto logits = m.model->forward(tokens);
    EXPECT_EQ(logits.scalar_type(), c10::kHalf);
    loss = at::cross_entropy_loss(logits.narrow(1, 0, 31).reshape({-1, m.args.vocab_size}).to(
                                      at::kFloat),
                                  tokens.narrow(1, 1, 31).reshape(-1));
  }
  scaler.scale(loss).backward();
  auto params = m.model->parameters();
  EXPECT_FALSE(scaler.unscale(params)) << "finite fp16 gradients";
  params[0].grad().view(-1)[0].fill_(std::numeric_limits<float>::infinity());  // injected
  EXPECT_TRUE(scaler.unscale(params));
  EXPECT_FALSE(scaler.update(true)) << "the step is skipped";
  EXPECT_EQ(scaler.current_scale(), scale * 0.5);
  EXPECT_EQ(scaler.state().skipped_steps, 1);
}

TEST(Cuda, Fp16StepsFollowTheFp32Losses) {
  LLT_REQUIRE_CUDA_DEVICES(1);
  const auto dir = fresh_dir("fp16");
  // 4 samples, 2 windows an epoch, 10 epochs: step 19 repeats step 1's window, so the loss
  // falling between them is learning, not an easier batch.
  const auto data = tokenized(dir, 4);
  const std::string common = " --epochs 10 --lr 1e-3 --lora-rank 8 --grad-accum 2";
  const auto fp32 = run_tool(finetune(data, dir / "fp32") + common + " --precision fp32");
  ASSERT_EQ(fp32.code, 0) << fp32.output;
  const auto fp16 = run_tool(finetune(data, dir / "fp16") + common + " --precision fp16");
  ASSERT_EQ(fp16.code, 0) << fp16.output;
  const auto a = jsonl(dir / "fp32/metrics.jsonl"), b = jsonl(dir / "fp16/metrics.jsonl");
  ASSERT_EQ(a.size(), 20u);
  ASSERT_EQ(b.size(), 20u);
  // fp16 autocast rounds activations to 11 significant bits: the bound is 1% of the loss per
  // step, over 20 steps of a learning rate that moves the loss (stated, not tuned to a run).
  for (size_t i = 0; i < a.size(); ++i) {
    const double la = a[i]["loss"], lb = b[i]["loss"];
    EXPECT_NEAR(lb, la, 0.01 * la) << "step " << i + 1;
  }
  EXPECT_LT(a[18]["loss"].get<double>(), a[0]["loss"].get<double>()) << "it learns";
}

TEST(Cuda, Bf16IsRefusedBelowComputeCapabilityEight) {
  LLT_REQUIRE_CUDA_DEVICES(1);
  const auto dir = fresh_dir("bf16");
  const auto data = tokenized(dir, 4);
  setenv("LLT_CUDA_CAPABILITY", "6.0", 1);  // what a P100 reports
  for (const std::string flag : {"--precision bf16", "--base-dtype bf16 --lora-rank 8"}) {
    const auto r = run_tool(finetune(data, dir / "run") + flag + " --max-steps 1");
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_NE(r.output.find("compute capability 6.0"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("no bf16"), std::string::npos) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_FALSE(fs::exists(dir / "run"));
  }
  unsetenv("LLT_CUDA_CAPABILITY");
  // The same flags on the real capability of this GPU (sm_80 and up) run.
  const auto ok = run_tool(finetune(data, dir / "ok") + "--precision bf16 --max-steps 1");
  EXPECT_EQ(ok.code, 0) << ok.output;
}

TEST(Cuda, MemoryJsonlHoldsTheCachingAllocatorsStatistics) {
  LLT_REQUIRE_CUDA_DEVICES(1);
  const auto dir = fresh_dir("memory");
  const auto data = tokenized(dir, 8);
  const auto r = run_tool(finetune(data, dir / "run") + "--max-steps 2");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto rows = jsonl(dir / "run/memory.jsonl");
  ASSERT_GE(rows.size(), 3u);
  for (const auto& row : rows) {
    EXPECT_GT(row["allocated"].get<int64_t>(), 0) << row;
    EXPECT_GE(row["reserved"].get<int64_t>(), row["allocated"].get<int64_t>()) << row;
    EXPECT_GE(row["peak_allocated"].get<int64_t>(), row["allocated"].get<int64_t>()) << row;
  }
  const auto summary = nlohmann::json::parse(read_file(dir / "run/summary.json"));
  EXPECT_EQ(summary["device"], "cuda");
  EXPECT_GT(summary["peak_allocated"].get<int64_t>(), 0);
}

TEST(Cuda, MemoryCapCapsTheCachingAllocator) {
  LLT_REQUIRE_CUDA_DEVICES(1);
  const auto dir = fresh_dir("cap");
  const auto data = tokenized(dir, 8);
  // 1 MiB: less than the model's weights and a step's activations.
  const auto r = run_tool(finetune(data, dir / "run") + "--max-steps 2 --memory-cap-gib 0.001");
  EXPECT_EQ(r.code, 3) << r.output;
  const auto summary = nlohmann::json::parse(read_file(dir / "run/summary.json"));
  EXPECT_EQ(summary["status"], "oom");
  EXPECT_NE(summary["error"].get<std::string>().find("out of memory"), std::string::npos)
      << summary["error"];
  EXPECT_DOUBLE_EQ(summary["memory_cap_gib"].get<double>(), 0.001);
  // A cap over the device's memory is bad input, refused before anything is written.
  const auto over = run_tool(finetune(data, dir / "over") + "--memory-cap-gib 100000");
  EXPECT_EQ(over.code, 1) << over.output;
  EXPECT_NE(over.output.find("more than the"), std::string::npos) << over.output;
  EXPECT_FALSE(fs::exists(dir / "over"));
}

TEST(Cuda, NcclTwoRanksEqualOneRankWithTwiceTheAccumulation) {
  LLT_REQUIRE_CUDA_DEVICES(2);
  const auto dir = fresh_dir("nccl");
  const auto data = tokenized(dir, 16);
  const std::string common = "--max-steps 3 --lora-rank 8 --batch-size 1 ";
  const auto one = run_tool(finetune(data, dir / "one") + common + "--grad-accum 4");
  ASSERT_EQ(one.code, 0) << one.output;
  const std::string store = "file://" + (dir / "store").string();
  std::string both;  // a shell line: both ranks in the background, then wait for each
  for (int r = 0; r < 2; ++r) {
    both += "LOCAL_RANK=" + std::to_string(r) + " " + std::string(LLT_BINARY_DIR) + "/bin/" +
            finetune(data, dir / "two") + common + "--grad-accum 2 --world-size 2 --rank " +
            std::to_string(r) + " --dist-init " + store + " > " + (dir / "rank").string() +
            std::to_string(r) + ".log 2>&1 & p" + std::to_string(r) + "=$!; ";
  }
  ASSERT_EQ(std::system(("bash -c '" + both + "wait $p0 && wait $p1'").c_str()), 0)
      << read_file(dir / "rank0.log") << read_file(dir / "rank1.log");
  const auto a = jsonl(dir / "one/metrics.jsonl"), b = jsonl(dir / "two/metrics.jsonl");
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(a[i]["label_tokens"], b[i]["label_tokens"]) << "step " << i + 1;
    const double la = a[i]["loss"], lb = b[i]["loss"];
    // The same windows summed in another order (NCCL's ring): fp32 rounding only.
    EXPECT_NEAR(lb, la, 1e-5 * std::abs(la)) << "step " << i + 1;
  }
}

}  // namespace
}  // namespace llt
