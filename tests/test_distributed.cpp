// Data parallelism (lib/llt/distributed): SLURM hostlists and the rank/rendezvous table, gradient
// buckets summed by Gloo in-process, and llt-finetune as 2 processes on the CPU against 1 process
// with twice the accumulation (the same per-step losses and final weights within 1e-5 relative:
// only the order of the float sums differs), stop signals, one rank out of memory, resume,
// wrap-around repeats and ranks leaving together.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "llt/distributed.h"
#include "llt/io.h"
#include "llt/tools/options.h"
#include "llt/safetensors.h"
#include "llt/tools/tokenize.h"

#include "test_support.h"

extern char** environ;

using namespace llt::tools;  // the tool layer under test

namespace llt {
namespace {

namespace fs = std::filesystem;
using testing::expect_input_error;
using testing::fresh_dir;

const fs::path kStories = fs::path(LLT_SOURCE_DIR) / "assets/models/stories260K";

// ---------------------------------------------------------------------------------------------
// Hostlists and where rank, world size and the rendezvous come from

// Several CPU processes need c10d's Gloo, which a build may lack (the CUDA LibTorch wheels
// ship no gloo headers: scripts/build-cuda.sh).
#define LLT_REQUIRE_GLOO() \
  if (!gloo_compiled()) GTEST_SKIP() << "this build has no Gloo (CPU data parallelism)"

TEST(Hostlist, ExpandsRangesListsPaddingAndProducts) {
  using V = std::vector<std::string>;
  EXPECT_EQ(expand_hostlist("node07"), V{"node07"});
  EXPECT_EQ(expand_hostlist("node[01-04,07]"),
            (V{"node01", "node02", "node03", "node04", "node07"}));
  EXPECT_EQ(expand_hostlist("n[8-10]"), (V{"n8", "n9", "n10"}));
  EXPECT_EQ(expand_hostlist("n[098-100]"), (V{"n098", "n099", "n100"}));
  EXPECT_EQ(expand_hostlist("gpu[1-2]-ib[3,5],login"),
            (V{"gpu1-ib3", "gpu1-ib5", "gpu2-ib3", "gpu2-ib5", "login"}));
  EXPECT_EQ(expand_hostlist("a,b[2],c"), (V{"a", "b2", "c"}));
}

TEST(Hostlist, MalformedListsAreInputErrorsNamingTheVariable) {
  for (const char* bad : {"node[01-", "node01]", "node[4-2]", "node[a-b]", "a,,b", "n[]"}) {
    expect_input_error([&] { expand_hostlist(bad, "SLURM_STEP_NODELIST"); },
                       {"SLURM_STEP_NODELIST", bad});
  }
}

TEST(DistributedConfig, WorldSizeOneByDefaultAndInABatchShell) {
  const auto c = resolve_distributed_config({}, {});
  EXPECT_EQ(c.world_size, 1);
  EXPECT_EQ(c.rank, 0);
  EXPECT_EQ(c.init, "");
  // sbatch's shell has SLURM_NTASKS but is one process; only srun's tasks have SLURM_STEP_*.
  const auto batch = resolve_distributed_config(
      {}, {{"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "0"}, {"SLURM_JOB_NODELIST", "n[1-2]"}});
  EXPECT_EQ(batch.world_size, 1);
}

TEST(DistributedConfig, SrunTaskUsesItsStepAndTheFirstHost) {
  const Environment env = {{"SLURM_STEP_NUM_TASKS", "4"},
                           {"SLURM_PROCID", "3"},
                           {"SLURM_LOCALID", "1"},
                           {"SLURM_JOB_ID", "123456"},
                           {"SLURM_STEP_NODELIST", "gpu[07-08]"},
                           {"SLURM_JOB_NODELIST", "gpu[01-08]"}};
  const auto c = resolve_distributed_config({}, env);
  EXPECT_EQ(c.world_size, 4);
  EXPECT_EQ(c.rank, 3);
  EXPECT_EQ(c.local_rank, 1);
  EXPECT_EQ(c.init, "tcp://gpu07:" + std::to_string(16384 + 123456 % 16384));  // 23104
  EXPECT_EQ(c.origin, "SLURM_STEP_NUM_TASKS");

  DistributedOptions port;
  port.port = 40000;  // --dist-port beats MASTER_PORT and the job id
  auto with_master_port = env;
  with_master_port["MASTER_PORT"] = "31000";
  EXPECT_EQ(resolve_distributed_config(port, with_master_port).init, "tcp://gpu07:40000");
  EXPECT_EQ(resolve_distributed_config({}, with_master_port).init, "tcp://gpu07:31000");
}

TEST(DistributedConfig, TorchrunVariablesAndFlagsWin) {
  const Environment env = {{"WORLD_SIZE", "2"},      {"RANK", "1"},
                           {"LOCAL_RANK", "0"},      {"MASTER_ADDR", "10.0.0.5"},
                           {"MASTER_PORT", "29400"}, {"SLURM_STEP_NUM_TASKS", "8"},
                           {"SLURM_PROCID", "5"}};
  const auto t = resolve_distributed_config({}, env);
  EXPECT_EQ(t.world_size, 2);
  EXPECT_EQ(t.rank, 1);
  EXPECT_EQ(t.local_rank, 0);
  EXPECT_EQ(t.init, "tcp://10.0.0.5:29400");

  DistributedOptions flags;
  flags.world_size = 3;
  flags.rank = 2;
  flags.init = "file:///shared/store";
  const auto f = resolve_distributed_config(flags, env);
  EXPECT_EQ(f.world_size, 3);
  EXPECT_EQ(f.rank, 2);
  EXPECT_EQ(f.init, "file:///shared/store");
  EXPECT_EQ(
      resolve_distributed_config({}, {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "::1"}})
          .init,
      "tcp://[::1]:29500");
  EXPECT_EQ(resolve_distributed_config(
                {}, {{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "[fe80::1]"}})
                .init,
            "tcp://[fe80::1]:29500")
      << "an address already in brackets keeps one pair";
}

TEST(DistributedConfig, BadValuesAreOneLineInputErrors) {
  DistributedOptions two;
  two.world_size = 2;
  two.rank = 0;
  expect_input_error([&] { resolve_distributed_config(two, {}); },
                     {"world size 2", "--dist-init", "MASTER_ADDR", "srun"});
  DistributedOptions no_rank = two;
  no_rank.rank = -1;
  no_rank.init = "file:///tmp/x";
  expect_input_error([&] { resolve_distributed_config(no_rank, {}); }, {"no rank", "--rank"});
  expect_input_error(
      [&] {
        resolve_distributed_config(no_rank, {{"RANK", "2"}});
      },
      {"RANK 2", "world size 2"});
  expect_input_error(
      [&] {
        resolve_distributed_config({}, {{"WORLD_SIZE", "two"}});
      },
      {"WORLD_SIZE", "'two'"});
  DistributedOptions bad_init = two;
  for (const char* init : {"file://relative", "tcp://host", "tcp://host:0", "udp://h:1", "h:1"}) {
    bad_init.init = init;
    expect_input_error([&] { resolve_distributed_config(bad_init, {}); }, {"--dist-init", init});
  }
  DistributedOptions rank_without_world;
  rank_without_world.rank = 1;
  expect_input_error([&] { resolve_distributed_config(rank_without_world, {}); },
                     {"--rank 1", "--world-size"});
}

// ---------------------------------------------------------------------------------------------
// Collectives in one process: two threads, each a rank of a Gloo group over a FileStore

// Runs fn(rank, group) on 2 ranks at once; rethrows the first failure.
template <typename Fn>
void on_two_ranks(const fs::path& store, Fn fn) {
  std::exception_ptr failures[2];
  auto rank_main = [&](int rank) {
    try {
      DistributedConfig c;
      c.world_size = 2, c.rank = rank, c.local_rank = rank, c.init = "file://" + store.string();
      ProcessGroup group(c, c10::Device(c10::kCPU), /*timeout_s=*/60);
      fn(rank, group);
    } catch (...) {
      failures[rank] = std::current_exception();
    }
  };
  std::thread other(rank_main, 1);
  rank_main(0);
  other.join();
  for (const auto& f : failures) {
    if (f) std::rethrow_exception(f);
  }
}

TEST(GradientBuckets, ConsecutiveTensorsUpToTheCap) {
  const std::vector<at::Tensor> t = {at::zeros({10}), at::zeros({5}), at::zeros({30}),
                                     at::zeros({2}), at::zeros({2})};
  using B = std::vector<std::vector<size_t>>;
  EXPECT_EQ(gradient_buckets(t, 60), (B{{0, 1}, {2}, {3, 4}}));  // fp32: 40 + 20 bytes fit 60
  EXPECT_EQ(gradient_buckets(t, 1), (B{{0}, {1}, {2}, {3}, {4}}));
  EXPECT_EQ(gradient_buckets(t, 1 << 20), (B{{0, 1, 2, 3, 4}}));
}

TEST(ProcessGroup, SumsGatherAndGradientsWhateverTheBucketBoundaries) {
  LLT_REQUIRE_GLOO();
  const auto dir = fresh_dir("collectives");
  // Per rank: gradients of an fp32 matrix, a vector, a bf16 matrix and one tensor that has a
  // gradient on rank 1 only (rank 0 must send zeros for it).
  const std::vector<std::vector<int64_t>> shapes = {{3, 5}, {7}, {4, 4}, {6}};
  std::vector<at::Tensor> grads[2];
  for (int r = 0; r < 2; ++r) {
    at::manual_seed(100 + r);
    for (const auto& shape : shapes) grads[r].push_back(at::randn(shape));
    grads[r][2] = grads[r][2].to(at::kBFloat16);
  }
  std::vector<at::Tensor> want = {
      grads[0][0] + grads[1][0], grads[0][1] + grads[1][1],
      (grads[0][2].to(at::kFloat) + grads[1][2].to(at::kFloat)).to(at::kBFloat16), grads[1][3]};
  int store_index = 0;
  for (const int64_t cap : {int64_t{1}, int64_t{64}, int64_t{200}, int64_t{1} << 30}) {
    std::vector<at::Tensor> got[2];
    on_two_ranks(dir / ("store" + std::to_string(store_index++)), [&](int rank, ProcessGroup& g) {
      std::vector<at::Tensor> params;
      for (size_t i = 0; i < shapes.size(); ++i) {
        auto p = at::zeros(shapes[i], grads[rank][i].scalar_type());
        if (!(rank == 0 && i == 3)) p.mutable_grad() = grads[rank][i].clone();
        params.push_back(p);
      }
      g.all_reduce_gradients(params, cap);
      for (const auto& p : params) got[rank].push_back(p.grad());
      if (cap == 1) {
        EXPECT_EQ(g.sum({1.0 + rank, 10.0 * rank}), (std::vector<double>{3.0, 10.0}));
        const auto all = g.all_gather(at::full({3}, rank, at::kByte));
        ASSERT_EQ(all.size(), 2u);
        EXPECT_TRUE(all[0].equal(at::zeros({3}, at::kByte)));
        EXPECT_TRUE(all[1].equal(at::ones({3}, at::kByte)));
      }
    });
    for (int r = 0; r < 2; ++r) {
      for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_TRUE(got[r][i].equal(want[i]))
            << "bucket cap " << cap << " rank " << r << " grad " << i;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// llt-finetune as separate processes

// 16 Alpaca samples tokenized for stories260K, made once per test binary.
fs::path dataset() {
  static const fs::path dir = [] {
    TokenizeToolOptions t;
    t.input =
        (fs::path(LLT_SOURCE_DIR) / "assets/data/alpaca/alpaca_data_first_5000.json").string();
    t.tokenizer = (kStories / "tok512.model").string();
    t.output = (fresh_dir("data") / "alpaca16").string();
    t.first = 16;
    t.max_len = 320;
    t.threads = 1;
    EXPECT_EQ(run_tokenize(t, "test_distributed"), 0);
    return fs::path(t.output);
  }();
  return dir;
}

// A started llt-finetune process; its stdout and stderr go to `log`.
struct Child {
  pid_t pid = -1;
  fs::path log;
};

// Starts llt-finetune with `args` in this environment minus the variables that would make it a
// rank of a launcher's run (tests may themselves run under srun or torchrun).
Child start_finetune(const std::vector<std::string>& args, const fs::path& log) {
  static const char* const kLauncherVariables[] = {
      "WORLD_SIZE=",   "RANK=",          "LOCAL_RANK=",
      "MASTER_ADDR=",  "MASTER_PORT=",   "SLURM_STEP_NUM_TASKS=",
      "SLURM_PROCID=", "SLURM_LOCALID=", "SLURM_STEP_NODELIST="};
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    bool launcher = false;
    for (const char* v : kLauncherVariables) launcher |= std::strncmp(*e, v, std::strlen(v)) == 0;
    if (!launcher) env.emplace_back(*e);
  }
  const std::string binary = std::string(LLT_BINARY_DIR) + "/bin/llt-finetune";
  std::vector<std::string> argv_strings = {binary};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  // Everything the child needs is built before fork: it only calls exec (async-signal-safe).
  std::vector<char*> argv, envp;
  for (auto& a : argv_strings) argv.push_back(a.data());
  for (auto& e : env) envp.push_back(e.data());
  argv.push_back(nullptr), envp.push_back(nullptr);
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fd, 1), dup2(fd, 2);
    execve(binary.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  close(fd);
  return {pid, log};
}

// The exit code of `child`, or -1 if it ran past `timeout_s` (then it is killed) or crashed.
int finish(const Child& child, double timeout_s = 60) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  int status = 0;
  while (waitpid(child.pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(child.pid, SIGKILL);
      waitpid(child.pid, &status, 0);
      ADD_FAILURE() << "llt-finetune (pid " << child.pid << ") still running after " << timeout_s
                    << " s; log:\n"
                    << read_file(child.log);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::vector<std::string> finetune_args(const fs::path& run, int64_t grad_accum,
                                       const std::string& lora_dropout = "0") {
  return {"--model",        (kStories / "stories260K.bin").string(),
          "--data",         dataset().string(),
          "--output",       run.string(),
          "--device",       "cpu",
          "--threads",      "1",
          "--lr",           "1e-3",
          "--lora-dropout", lora_dropout,
          "--batch-size",   "1",
          "--grad-accum",   std::to_string(grad_accum)};
}

// Runs llt-finetune as ranks 0..world-1 of one run (a FileStore beside the run folder) with
// `rank_args[r]` added for rank r; returns the exit codes.
std::vector<int> run_ranks(std::vector<std::string> args, const fs::path& run, int world,
                           const std::vector<std::vector<std::string>>& rank_args = {}) {
  std::vector<Child> children;
  const std::string store = "file://" + run.string() + ".store";
  for (int r = 0; r < world; ++r) {
    auto a = args;
    if (world > 1) {
      a.insert(a.end(), {"--world-size", std::to_string(world), "--rank", std::to_string(r),
                         "--dist-init", store});
    }
    if (r < static_cast<int>(rank_args.size()))
      a.insert(a.end(), rank_args[r].begin(), rank_args[r].end());
    children.push_back(start_finetune(a, run.string() + ".rank" + std::to_string(r) + ".log"));
  }
  std::vector<int> codes;
  for (const auto& c : children) codes.push_back(finish(c));
  return codes;
}

std::string rank_log(const fs::path& run, int rank) {
  return read_file(run.string() + ".rank" + std::to_string(rank) + ".log");
}

std::vector<nlohmann::json> jsonl(const fs::path& path) {
  std::istringstream in(read_file(path));
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

nlohmann::json json_file(const fs::path& path) {
  return nlohmann::json::parse(read_file(path));
}

// Max |a - b| over max |b| of every trainable tensor of two checkpoints.
double max_relative_difference(const fs::path& a, const fs::path& b) {
  SafetensorsFile fa(a / "trainable.safetensors"), fb(b / "trainable.safetensors");
  EXPECT_EQ(fa.tensors().size(), fb.tensors().size());
  double worst = 0;
  for (const auto& info : fb.tensors()) {
    const auto x = fa.read(info.name).to(at::kDouble), y = fb.read(info.name).to(at::kDouble);
    const double scale = std::max(y.abs().max().item<double>(), 1e-12);
    worst = std::max(worst, (x - y).abs().max().item<double>() / scale);
  }
  return worst;
}

// 2 ranks with accumulation 2 against 1 process with accumulation 4 over the same 4 samples per
// step: the same data per step (token counts exact), losses and gradient norms within 1e-5
// relative, final weights within 1e-4 of each tensor's largest value. The sums associate
// differently ((g1 + g2) + (g3 + g4) against g1 + g2 + g3 + g4); AdamW divides every gradient
// element by its own RMS, so the float noise of elements whose terms nearly cancel becomes a
// weight difference of about lr x that noise: 3.7e-5 of the largest LoRA A value after 3 steps at
// lr 1e-3, measured. Gradients that were not summed over ranks differ by ~1e-2.
void expect_two_ranks_equal_one(const std::string& name, const std::vector<std::string>& extra) {
  const auto dir = fresh_dir(name);
  auto one_args = finetune_args(dir / "one", 4), two_args = finetune_args(dir / "two", 2);
  for (auto* a : {&one_args, &two_args}) {
    a->insert(a->end(), extra.begin(), extra.end());
    a->insert(a->end(), {"--max-steps", "3"});
  }
  ASSERT_EQ(run_ranks(one_args, dir / "one", 1), (std::vector<int>{0})) << rank_log(dir / "one", 0);
  ASSERT_EQ(run_ranks(two_args, dir / "two", 2), (std::vector<int>{0, 0}))
      << rank_log(dir / "two", 0) << rank_log(dir / "two", 1);

  const auto a = jsonl(dir / "one/metrics.jsonl"), b = jsonl(dir / "two/metrics.jsonl");
  ASSERT_EQ(a.size(), 3u);
  ASSERT_EQ(b.size(), 3u) << "one metrics line per step: rank 1 must not write metrics.jsonl";
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(a[i]["label_tokens"], b[i]["label_tokens"]) << "step " << i + 1;
    EXPECT_EQ(a[i]["tokens"], b[i]["tokens"]) << "global tokens, step " << i + 1;
    EXPECT_EQ(a[i]["samples"], 4);
    EXPECT_EQ(b[i]["samples"], 4);
    const double la = a[i]["loss"], lb = b[i]["loss"];
    EXPECT_NEAR(la, lb, 1e-5 * std::abs(la)) << "step " << i + 1;
    const double ga = a[i]["grad_norm"], gb = b[i]["grad_norm"];
    EXPECT_NEAR(ga, gb, 1e-5 * ga) << "step " << i + 1;
  }
  EXPECT_LT(max_relative_difference(dir / "one/checkpoints/step-3", dir / "two/checkpoints/step-3"),
            1e-4);

  // Only rank 0 wrote the shared files; every rank wrote its memory log.
  const auto two = dir / "two";
  EXPECT_EQ(json_file(two / "summary.json")["world_size"], 2);
  EXPECT_EQ(json_file(dir / "one/summary.json")["world_size"], 1);
  const auto state = json_file(two / "checkpoints/step-3/state.json");
  EXPECT_EQ(state["world_size"], 2);
  ASSERT_EQ(state["rank_rng_states"].size(), 2u);
  EXPECT_EQ(state["rng_state"], state["rank_rng_states"][0]) << "rank 0 wrote state.json";
  EXPECT_NE(state["rank_rng_states"][0], state["rank_rng_states"][1]) << "dropout seed + rank";
  EXPECT_TRUE(fs::exists(two / "memory.jsonl"));
  EXPECT_FALSE(fs::exists(two / "memory.rank0.jsonl"));
  EXPECT_EQ(jsonl(two / "memory.rank1.jsonl").back()["step"], 3);
  EXPECT_NE(rank_log(two, 0).find("step 3/3"), std::string::npos);
  EXPECT_EQ(rank_log(two, 1).find("step "), std::string::npos) << "progress lines: rank 0 only";
  EXPECT_EQ(rank_log(two, 1).find("llt-finetune"), std::string::npos) << rank_log(two, 1);
}

TEST(DataParallel, LoraTwoRanksEqualOneProcessWithTwiceTheAccumulation) {
  LLT_REQUIRE_GLOO();
  expect_two_ranks_equal_one("lora", {});
}

TEST(DataParallel, FullFineTuningTwoRanksEqualOneProcessWithTwiceTheAccumulation) {
  LLT_REQUIRE_GLOO();
  expect_two_ranks_equal_one("full", {"--lora-rank", "0"});
}

// --eval-data on 2 ranks: each scores half of the samples, the sums are all-reduced. Before any
// update the ranks hold the same weights, so the figure is one process's up to the order of the
// fp64 sum; later it differs as the weights do (above).
TEST(DataParallel, ValidationOnTwoRanksEqualsOneProcess) {
  LLT_REQUIRE_GLOO();
  const auto dir = fresh_dir("validation");
  auto one_args = finetune_args(dir / "one", 4), two_args = finetune_args(dir / "two", 2);
  for (auto* a : {&one_args, &two_args}) {
    a->insert(a->end(), {"--max-steps", "3", "--eval-data", dataset().string(), "--eval-every",
                         "2"});
  }
  ASSERT_EQ(run_ranks(one_args, dir / "one", 1), (std::vector<int>{0})) << rank_log(dir / "one", 0);
  ASSERT_EQ(run_ranks(two_args, dir / "two", 2), (std::vector<int>{0, 0}))
      << rank_log(dir / "two", 0) << rank_log(dir / "two", 1);
  auto evals = [](const fs::path& metrics) {
    std::vector<nlohmann::json> out;
    for (const auto& r : jsonl(metrics)) {
      if (r.contains("eval_loss")) out.push_back(r);
    }
    return out;
  };
  const auto a = evals(dir / "one/metrics.jsonl"), b = evals(dir / "two/metrics.jsonl");
  ASSERT_EQ(a.size(), 3u) << "steps 0, 2 and 3";
  ASSERT_EQ(b.size(), 3u) << "rank 0 writes them, once";
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_EQ(a[i]["eval_tokens"], b[i]["eval_tokens"]) << "every sample scored once";
    const double la = a[i]["eval_loss"], lb = b[i]["eval_loss"];
    EXPECT_NEAR(la, lb, (i == 0 ? 1e-12 : 1e-5) * la) << "step " << a[i]["step"];
  }
  EXPECT_EQ(jsonl(dir / "two/metrics.jsonl").size(), 6u) << "3 training and 3 eval records";
}

TEST(DataParallel, WorldSizeTwoWithoutRendezvousIsAOneLineErrorBeforeAnythingIsWritten) {
  const auto dir = fresh_dir("no_rendezvous");
  auto args = finetune_args(dir / "run", 2);
  args.insert(args.end(), {"--world-size", "2", "--rank", "0"});
  const Child c = start_finetune(args, dir / "log");
  EXPECT_EQ(finish(c), 1);
  const std::string log = read_file(dir / "log");
  EXPECT_NE(log.find("no rendezvous"), std::string::npos) << log;
  EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
  EXPECT_FALSE(fs::exists(dir / "run"));
}

TEST(DataParallel, OneRankOutOfMemoryStopsBothWithStatusOom) {
  LLT_REQUIRE_GLOO();
  const auto dir = fresh_dir("oom");
  auto args = finetune_args(dir / "run", 2);
  args.insert(args.end(), {"--max-steps", "3"});
  // Rank 1 alone gets a 1 kB cap: its first allocation of step 1 fails; rank 0 has memory.
  const auto codes = run_ranks(args, dir / "run", 2, {{}, {"--memory-cap-gib", "1e-6"}});
  EXPECT_EQ(codes, (std::vector<int>{3, 3}))
      << rank_log(dir / "run", 0) << rank_log(dir / "run", 1);
  const auto summary = json_file(dir / "run/summary.json");
  EXPECT_EQ(summary["status"], "oom");
  EXPECT_EQ(summary["steps"], 0);
  EXPECT_NE(summary["error"].get<std::string>().find("1 of 2 ranks"), std::string::npos)
      << summary["error"];
  EXPECT_NE(rank_log(dir / "run", 1).find("host memory cap"), std::string::npos);
}

// 3 ranks over 16 samples: each epoch repeats 2 samples (wrap-around, so each rank has 6); they
// are trained on but not counted. And the ranks leave together: when rank 1 has exited, rank 0
// has written the summary already.
TEST(DataParallel, WrapAroundRepeatsAreNotCountedAndRanksLeaveTogether) {
  LLT_REQUIRE_GLOO();
  const auto dir = fresh_dir("repeats");
  auto args = finetune_args(dir / "run", 2);  // 6 batches a rank: 3 steps an epoch
  args.insert(args.end(), {"--epochs", "2"});
  std::vector<Child> ranks;
  for (int r = 0; r < 3; ++r) {
    auto a = args;
    a.insert(a.end(), {"--world-size", "3", "--rank", std::to_string(r), "--dist-init",
                       "file://" + (dir / "store").string()});
    ranks.push_back(start_finetune(a, dir / ("rank" + std::to_string(r) + ".log")));
  }
  int status = 0;
  ASSERT_EQ(waitpid(ranks[1].pid, &status, 0), ranks[1].pid);
  const bool summary_written = fs::exists(dir / "run/summary.json");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_file(ranks[1].log);
  EXPECT_TRUE(summary_written) << "rank 1 exited before rank 0 wrote summary.json";
  EXPECT_EQ(finish(ranks[0]), 0) << read_file(ranks[0].log);
  EXPECT_EQ(finish(ranks[2]), 0) << read_file(ranks[2].log);
  const auto rows = jsonl(dir / "run/metrics.jsonl");
  ASSERT_EQ(rows.size(), 6u);
  for (const size_t i : {0, 1, 3, 4}) EXPECT_EQ(rows[i]["samples"], 6) << "step " << i + 1;
  for (const size_t i : {2, 5}) EXPECT_EQ(rows[i]["samples"], 4) << "epoch end, step " << i + 1;
  EXPECT_EQ(json_file(dir / "run/summary.json")["samples"], 32);
}

// SIGUSR1 to rank 1 only: both stop after the same step, rank 0 checkpoints it, both exit 75;
// resuming both continues exactly as a run that was never stopped (with dropout on, so each
// rank's own generator must come back).
TEST(DataParallel, StopSignalToOneRankStopsBothAfterTheSameStepAndResumesExactly) {
  LLT_REQUIRE_GLOO();
  const auto dir = fresh_dir("stop");
  auto args = finetune_args(dir / "run", 1, /*lora_dropout=*/"0.1");
  args.insert(args.end(), {"--epochs", "2000", "--log-every", "0"});
  std::vector<Child> ranks;
  for (int r = 0; r < 2; ++r) {
    auto a = args;
    a.insert(a.end(), {"--world-size", "2", "--rank", std::to_string(r), "--dist-init",
                       "file://" + (dir / "store").string()});
    ranks.push_back(start_finetune(a, dir / ("rank" + std::to_string(r) + ".log")));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!(fs::exists(dir / "run/metrics.jsonl") && fs::file_size(dir / "run/metrics.jsonl") > 0) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(ranks[1].pid, SIGUSR1);
  EXPECT_EQ(finish(ranks[0]), 75) << read_file(ranks[0].log);
  EXPECT_EQ(finish(ranks[1]), 75) << read_file(ranks[1].log);

  const auto summary = json_file(dir / "run/summary.json");
  EXPECT_EQ(summary["status"], "preempted");
  const int64_t stopped = summary["steps"];
  ASSERT_GE(stopped, 1);
  ASSERT_LT(stopped, 100) << "the signal came late";
  EXPECT_TRUE(
      fs::exists(dir / "run/checkpoints" / ("step-" + std::to_string(stopped)) / "state.json"));
  EXPECT_EQ(jsonl(dir / "run/memory.rank1.jsonl").back()["step"], stopped) << "rank 1's last step";
  EXPECT_EQ(jsonl(dir / "run/metrics.jsonl").size(), static_cast<size_t>(stopped));

  const int64_t last = stopped + 2;
  auto resume = args;
  resume.insert(resume.end(), {"--resume", "auto", "--max-steps", std::to_string(last)});
  ASSERT_EQ(run_ranks(resume, dir / "run", 2), (std::vector<int>{0, 0}))
      << rank_log(dir / "run", 0) << rank_log(dir / "run", 1);
  auto straight = finetune_args(dir / "straight", 1, /*lora_dropout=*/"0.1");
  straight.insert(straight.end(),
                  {"--epochs", "2000", "--log-every", "0", "--max-steps", std::to_string(last)});
  ASSERT_EQ(run_ranks(straight, dir / "straight", 2), (std::vector<int>{0, 0}));
  const auto a = jsonl(dir / "run/metrics.jsonl"), b = jsonl(dir / "straight/metrics.jsonl");
  ASSERT_EQ(a.size(), static_cast<size_t>(last));
  ASSERT_EQ(b.size(), static_cast<size_t>(last));
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
  }
}

}  // namespace
}  // namespace llt
