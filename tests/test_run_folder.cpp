// The run folder as jobs meet it: the lock that keeps a job submitted twice from interleaving
// two trainings, metrics.jsonl after resumes, training states checked before they are trusted
// (checksums, dataset, schedule, stray folders), and a stop signal at any moment of start-up.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/sha256.h"
#include "llt/tools/run_folder.h"
#include "llt/tools/run_lock.h"

#include "test_support.h"

namespace llt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::expect_input_error;
using testing::fresh_dir;
using testing::run_tool;
using testing::TempDir;
using tools::RunLock;

const std::string kStories = std::string(LLT_SOURCE_DIR) + "/assets/models/stories260K";

double now_unix() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// A pid that was this host's and is gone now.
int64_t dead_pid() {
  const pid_t pid = fork();
  if (pid == 0) _exit(0);
  waitpid(pid, nullptr, 0);
  return pid;
}

int count_lines(const std::string& s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

// Runs `script` with sh and returns what it printed.
std::string shell(const std::string& script) {
  FILE* pipe = popen(("sh -c '" + script + "' 2>&1").c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  pclose(pipe);
  return out;
}

// ----- the lock

TEST(RunLock, SecondHolderIsRefusedNamingTheFirst) {
  TempDir t;
  const fs::path run = t.path / "run";
  {
    const RunLock lock(run, /*must_be_new=*/false);
    EXPECT_TRUE(fs::exists(run / "run.lock"));
    const json held = json::parse(read_file(run / "run.lock"));
    EXPECT_EQ(held["pid"], static_cast<int64_t>(getpid()));
    for (const char* key : {"pid_start", "host", "slurm_job_id", "started", "refreshed_unix"}) {
      EXPECT_TRUE(held.contains(key)) << key;
    }
    expect_input_error([&] { RunLock again(run, false); },
                       {(run / "run.lock").string(), "in use by pid " + std::to_string(getpid()),
                        "on host " + held["host"].get<std::string>()});
  }
  EXPECT_FALSE(fs::exists(run)) << "the folder it created, empty again, is removed";
  fs::create_directories(run);
  write_text(run / "notes.txt", "mine");
  { const RunLock lock(run, false); }
  EXPECT_EQ(read_file(run / "notes.txt"), "mine");
  EXPECT_FALSE(fs::exists(run / "run.lock"));
}

TEST(RunLock, NewRunRefusesAnExistingFolder) {
  TempDir t;
  const fs::path run = t.path / "run";
  fs::create_directories(run);
  write_text(run / "notes.txt", "mine");
  expect_input_error([&] { RunLock lock(run, /*must_be_new=*/true); },
                     {run.string(), "exists", "--resume auto"});
  EXPECT_EQ(read_file(run / "notes.txt"), "mine");
  EXPECT_FALSE(fs::exists(run / "run.lock"));
}

TEST(RunLock, StaleLocksAreTakenOverLiveOnesAreNot) {
  TempDir t;
  const fs::path run = t.path / "run";
  fs::create_directories(run);
  json holder = RunLock::this_process(now_unix() - 3600);
  const std::string here = holder["host"];
  auto take = [&](const json& h) {
    write_text(run / "run.lock", h.dump());
    const RunLock lock(run, false);
    EXPECT_EQ(json::parse(read_file(run / "run.lock"))["pid"], static_cast<int64_t>(getpid()));
  };
  // This host, its process gone: stale at once, however fresh its refresh.
  holder["pid"] = dead_pid();
  holder["refreshed_unix"] = now_unix();
  take(holder);
  // Another host, not refreshed for an hour (a job killed on another node): stale.
  holder["host"] = here + "-elsewhere";
  holder["refreshed_unix"] = now_unix() - 3600;
  take(holder);
  // Another host, refreshed a minute ago: held.
  holder["refreshed_unix"] = now_unix() - 60;
  write_text(run / "run.lock", holder.dump());
  expect_input_error([&] { RunLock lock(run, false); }, {"in use by", "refreshed 60 s ago"});
  // This host, its process alive (our parent), never refreshed since: held.
  holder["host"] = here;
  holder["pid"] = static_cast<int64_t>(getppid());
  holder["pid_start"] = -1;
  holder["refreshed_unix"] = now_unix() - 3600;
  write_text(run / "run.lock", holder.dump());
  expect_input_error([&] { RunLock lock(run, false); }, {"in use by pid"});
  // The same pid reused by a later process (another start time): stale.
  holder["pid"] = static_cast<int64_t>(getpid());
  holder["pid_start"] = 1;
  take(holder);
  EXPECT_FALSE(fs::exists(run / "run.lock"));
}

TEST(RunLock, StalenessRule) {
  std::string why;
  json h = RunLock::this_process(now_unix());
  EXPECT_FALSE(RunLock::is_stale(h, now_unix() + 10 * RunLock::kStaleSeconds, why))
      << "a live process here is never stale";
  h["host"] = "another-node";
  EXPECT_FALSE(RunLock::is_stale(h, now_unix() + RunLock::kStaleSeconds - 5, why));
  EXPECT_TRUE(RunLock::is_stale(h, now_unix() + RunLock::kStaleSeconds + 5, why));
  EXPECT_NE(why.find("not refreshed for"), std::string::npos) << why;
  EXPECT_GT(RunLock::kStaleSeconds, 5 * RunLock::kRefreshSeconds);
}

// ----- metrics.jsonl

TEST(RunFolder, ResumeKeepsOneTrainingRecordPerStep) {
  TempDir t;
  const fs::path path = t.path / "metrics.jsonl";
  write_text(path,
             "{\"step\": 1, \"loss\": 1.0}\n{\"step\": 2, \"loss\": 2.0}\n"
             "{\"step\": 2, \"eval_loss\": 5.0}\n{\"step\": 3, \"loss\": 3.0}\n"
             "{\"step\": 2, \"loss\": 2.5}\n{\"step\": 3, \"loss\": 3.5}\n{\"step\": 4, \"lo");
  tools::truncate_metrics(path, 3);
  EXPECT_EQ(read_file(path),
            "{\"step\": 1, \"loss\": 1.0}\n{\"step\": 2, \"loss\": 2.5}\n"
            "{\"step\": 2, \"eval_loss\": 5.0}\n{\"step\": 3, \"loss\": 3.5}\n");
  tools::truncate_metrics(path, 1);
  EXPECT_EQ(read_file(path), "{\"step\": 1, \"loss\": 1.0}\n");
}

// ----- llt-finetune on one run folder

class RunFolderTool : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fresh_dir("run_folder_tool");
    for (const auto& [name, first] : {std::pair<const char*, int>{"data", 16}, {"other", 20}}) {
      const auto r = run_tool("llt-tokenize --tokenizer " + kStories + "/tok512.model --output " +
                              (root_ / name).string() + " --first " +
                              std::to_string(first) + " --max-len 320 --threads 1");
      ASSERT_EQ(r.code, 0) << r.output;
    }
  }
  static std::string data(const char* name = "data") { return (root_ / name).string(); }
  std::string args(const fs::path& run, const std::string& extra,
                   const char* data_name = "data") const {
    return "--model " + kStories + "/stories260K.bin --data " + data(data_name) + " --output " +
           run.string() + " --threads 1 --grad-accum 2 --log-every 0 " + extra;
  }
  testing::ToolRun finetune(const fs::path& run, const std::string& extra,
                            const char* data_name = "data") const {
    return run_tool("llt-finetune " + args(run, extra, data_name));
  }
  static std::vector<int64_t> steps(const fs::path& run) {
    std::istringstream in(read_file(run / "metrics.jsonl"));
    std::vector<int64_t> out;
    for (std::string line; std::getline(in, line);) out.push_back(json::parse(line)["step"]);
    return out;
  }

  static fs::path root_;
  TempDir dir_;
};
fs::path RunFolderTool::root_;

TEST_F(RunFolderTool, SecondJobOnTheRunFolderExitsOneNamingTheFirst) {
  const fs::path run = dir_.path / "run";
  const std::string bin = std::string(LLT_BINARY_DIR) + "/bin/";
  // Job A trains; job B, the same command submitted again, is refused while A holds the folder;
  // A is stopped (as SLURM pre-empts) and resumed to the end.
  const std::string out = shell(
      bin + "llt-finetune " + args(run, "--epochs 400 --resume auto") + " > " +
      (dir_.path / "a.log").string() + " 2>&1 & pid=$!; while [ ! -s " + run.string() +
      "/metrics.jsonl ]; do sleep 0.05; done; " + bin + "llt-finetune " +
      args(run, "--epochs 400 --resume auto") + "; echo second=$?; kill -USR1 $pid; wait $pid; " +
      "echo first=$?");
  EXPECT_NE(out.find("second=1"), std::string::npos) << out;
  EXPECT_NE(out.find("first=75"), std::string::npos) << out << read_file(dir_.path / "a.log");
  EXPECT_NE(out.find("run.lock: the run folder is in use by pid"), std::string::npos) << out;
  EXPECT_EQ(count_lines(out), 3) << "one line of error, then the two exit codes: " << out;
  const json summary = json::parse(read_file(run / "summary.json"));
  const int64_t stopped = summary["steps"];
  EXPECT_EQ(summary["status"], "preempted");
  EXPECT_FALSE(fs::exists(run / "run.lock"));

  const auto resumed =
      finetune(run, "--epochs 400 --resume auto --max-steps " + std::to_string(stopped + 3));
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  std::vector<int64_t> expected;
  for (int64_t s = 1; s <= stopped + 3; ++s) expected.push_back(s);
  EXPECT_EQ(steps(run), expected);
}

TEST_F(RunFolderTool, CorruptCheckpointIsRefusedNamingTheFile) {
  const fs::path run = dir_.path / "run";
  ASSERT_EQ(finetune(run, "--max-steps 2").code, 0);
  const fs::path state = run / "checkpoints/step-2";
  const json recorded = json::parse(read_file(state / "state.json"))["files"];
  EXPECT_EQ(recorded["trainable.safetensors"], sha256_file(state / "trainable.safetensors"));
  for (const char* name : {"trainable.safetensors", "optimizer.safetensors"}) {
    const fs::path file = state / name;
    const std::string good = read_file(file);
    std::string bad = good;
    for (size_t i = bad.size() - 64; i < bad.size(); ++i) bad[i] = static_cast<char>(0x46);
    write_text(file, bad);
    const auto r = finetune(run, "--max-steps 4 --resume auto");
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_EQ(count_lines(r.output), 1) << r.output;
    EXPECT_NE(r.output.find(file.string() + ": sha256 "), std::string::npos) << r.output;
    write_text(file, good);
  }
  EXPECT_EQ(finetune(run, "--max-steps 4 --resume auto").code, 0);
}

TEST_F(RunFolderTool, StatesThatDoNotFitTheRunAreRefused) {
  const fs::path run = dir_.path / "run";
  ASSERT_EQ(finetune(run, "--max-steps 2").code, 0);
  const fs::path state_file = run / "checkpoints/step-2/state.json";
  const std::string good = read_file(state_file);
  auto expect_refused = [&](const std::string& extra, const std::vector<std::string>& needles,
                            const char* data_name = "data") {
    const auto r = finetune(run, extra, data_name);
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_EQ(count_lines(r.output), 1) << r.output;
    for (const auto& needle : needles) EXPECT_NE(r.output.find(needle), std::string::npos) << r.output;
  };
  // A stray folder is not a state: ignored, and the run resumes from step-2.
  fs::create_directories(run / "checkpoints/step-abc");
  fs::create_directories(run / "checkpoints/step-");
  // Another dataset than the run trained on.
  expect_refused("--max-steps 3 --resume auto",
                 {state_file.string(), "--data", data("other"), "same --data"}, "other");
  // A generator state cut short.
  json j = json::parse(good);
  j["rng_state"] = j["rng_state"].get<std::string>().substr(0, 64);
  write_text(state_file, j.dump());
  expect_refused("--max-steps 3 --resume auto", {state_file.string(), "'rng_state'"});
  // A step the schedule does not have (16 samples, 2 per step: 8 steps an epoch).
  j = json::parse(good);
  j["step"] = 999;
  write_text(state_file, j.dump());
  expect_refused("--resume auto", {state_file.string(), "step 999", "schedule of 8 steps"});
  write_text(state_file, good);
  const auto r = finetune(run, "--max-steps 3 --resume auto");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(steps(run), (std::vector<int64_t>{1, 2, 3}));
}

// The samples decide a run's data, not the manifest's bytes: the same records tokenized again
// elsewhere (another path as typed, command line, shard generation) resume the run.
TEST_F(RunFolderTool, SameSamplesTokenizedAgainResumeTheRun) {
  const fs::path run = dir_.path / "run";
  ASSERT_EQ(finetune(run, "--max-steps 2").code, 0);
  const fs::path again = dir_.path / "again";
  for (const char* extra : {"", " --overwrite"}) {
    const auto r = run_tool("llt-tokenize --tokenizer " + kStories + "/tok512.model --output " +
                            again.string() + " --first 16 --max-len 320 --threads 1" + extra);
    ASSERT_EQ(r.code, 0) << r.output;
  }
  ASSERT_NE(read_file(again / "manifest.json"), read_file(fs::path(data()) / "manifest.json"));
  const auto r = run_tool("llt-finetune --model " + kStories + "/stories260K.bin --data " +
                          again.string() + " --output " + run.string() +
                          " --threads 1 --grad-accum 2 --log-every 0 --max-steps 3 --resume auto");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(steps(run), (std::vector<int64_t>{1, 2, 3}));
}

// A stop signal from the first moments on exits 75 (SLURM requeues it), never by the signal.
TEST_F(RunFolderTool, StopSignalDuringStartUpExitsSeventyFive) {
  const std::string bin = std::string(LLT_BINARY_DIR) + "/bin/";
  for (const char* delay : {"0.01", "0.05", "0.15", "0.4"}) {
    const fs::path run = dir_.path / (std::string("run-") + delay);
    const std::string out = shell(bin + "llt-finetune " + args(run, "--max-steps 50") +
                                  " > /dev/null 2>&1 & pid=$!; sleep " + delay +
                                  "; kill -USR1 $pid; wait $pid; echo exit=$?");
    EXPECT_NE(out.find("exit=75"), std::string::npos) << "signal after " << delay << " s: " << out;
  }
}

}  // namespace
}  // namespace llt
