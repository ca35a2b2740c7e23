// The tools as users run them: exit codes, one-line errors, outputs written or refused.
// Spawns the built binaries (tests depend on them in tests/CMakeLists.txt).
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_support.h"
#include "llt/io.h"
#include "llt/tools/options.h"

namespace {

using llt::testing::fresh_dir;

using llt::testing::run_tool;
llt::testing::ToolRun run(const std::string& args) { return run_tool(args); }

namespace fs = std::filesystem;


const std::string kStories = std::string(LLT_SOURCE_DIR) + "/assets/models/stories260K";
const std::string kGenerate = "llt-generate --model " + kStories + "/stories260K.bin --tokenizer " +
                              kStories + "/tok512.model --threads 1 ";


int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(LltGenerate, WritesJsonlMatchingTheGoldens) {
  const auto dir = fresh_dir("jsonl");
  const auto out = dir / "gen.jsonl";
  const auto r = run(kGenerate + "--prompt 'Once upon a time' --prompt 'Lily and Tom' " +
                     "--max-new-tokens 32 --output " + out.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const auto goldens = nlohmann::json::parse(
      llt::read_file(fs::path(LLT_TEST_ASSETS) / "stories260K/greedy_goldens.json"));
  std::ifstream in(out);
  std::string line;
  std::map<std::string, nlohmann::json> by_prompt;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    by_prompt[j["prompt"]] = j;
    for (const char* key : {"prompt", "completion", "prompt_ids", "ids", "tokens_per_s"}) {
      EXPECT_TRUE(j.contains(key)) << key;
    }
  }
  ASSERT_EQ(by_prompt.size(), 2u);
  for (const auto& c : goldens["cases"]) {
    if (!by_prompt.count(c["prompt"])) continue;
    const auto& j = by_prompt[c["prompt"]];
    auto golden = c["ids"].get<std::vector<int64_t>>();
    golden.resize(32);
    EXPECT_EQ(j["ids"].get<std::vector<int64_t>>(), golden);
    EXPECT_EQ(j["prompt_ids"], c["prompt_ids"]);
    EXPECT_EQ(j["completion"].get<std::string>().substr(0, 10),
              c["full_text"].get<std::string>().substr(c["prompt"].get<std::string>().size(), 10));
  }
}

TEST(LltGenerate, RefusesToOverwriteAnExistingOutput) {
  const auto dir = fresh_dir("overwrite");
  const auto out = dir / "gen.jsonl";
  std::ofstream(out) << "precious\n";
  const auto r = run(kGenerate + "--prompt hi --max-new-tokens 2 --output " + out.string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(llt::read_file(out), "precious\n");
  EXPECT_EQ(run(kGenerate + "--prompt hi --max-new-tokens 2 --overwrite --output " +
                out.string()).code, 0);
  EXPECT_NE(llt::read_file(out), "precious\n");
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
}

TEST(LltGenerate, BadInputIsOneLineAndExitOne) {
  const auto dir = fresh_dir("bad");
  std::ofstream(dir / "garbage.bin") << "this is not a checkpoint at all, not even close";
  const std::vector<std::string> cases = {
      "llt-generate --model /nonexistent/model.bin --prompt hi",
      "llt-generate --model " + (dir / "garbage.bin").string() + " --tokenizer " + kStories +
          "/tok512.model --prompt hi",
      kGenerate + "--prompt hi --dtype fp16 --device cpu",
      kGenerate + "--prompt hi --max-new-tokens 0",
      kGenerate + "--prompt hi --kv-cache maybe",
      kGenerate,  // no prompt
      "llt-generate --model " + kStories + "/stories260K.bin --tokenizer " +
          (dir / "garbage.bin").string() + " --prompt hi",
  };
  for (const auto& args : cases) {
    const auto r = run(args);
    EXPECT_EQ(r.code, 1) << args << "\n" << r.output;
    EXPECT_EQ(count_lines(r.output), 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
  }
}

TEST(LltGenerate, HelpExitsZero) {
  const auto r = run("llt-generate --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("--kv-cache"), std::string::npos);
}

TEST(LltGenerate, ConfigFileWithUnknownKeyIsAnError) {
  const auto dir = fresh_dir("config");
  std::ofstream(dir / "ok.toml") << "max-new-tokens = 3\nkv-cache = \"off\"\n";
  std::ofstream(dir / "bad.toml") << "max-new-tokenz = 3\n";
  const auto ok = run(kGenerate + "--prompt hi --output " + (dir / "o.jsonl").string() +
                      " --config " + (dir / "ok.toml").string());
  ASSERT_EQ(ok.code, 0) << ok.output;
  const auto j = nlohmann::json::parse(llt::read_file(dir / "o.jsonl"));
  EXPECT_LE(j["ids"].size(), 3u);
  EXPECT_EQ(j["kv_cache"], false);
  EXPECT_EQ(run(kGenerate + "--prompt hi --config " + (dir / "bad.toml").string()).code, 1);
}

TEST(LltGenerate, EveryRecordSaysWhereItCameFrom) {
  const auto dir = fresh_dir("provenance");
  const auto out = dir / "g.jsonl";
  const auto r = run(kGenerate + "--prompt hi --prompt there --temperature 0.7 --top-k 5 --seed 9 " +
                     "--max-new-tokens 4 --template alpaca --output " + out.string());
  ASSERT_EQ(r.code, 0) << r.output;
  std::istringstream in(llt::read_file(out));
  int records = 0;
  for (std::string line; std::getline(in, line); ++records) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["model"], kStories + "/stories260K.bin");
    EXPECT_TRUE(j["adapter"].is_null());
    EXPECT_EQ(j["tokenizer"], kStories + "/tok512.model");
    EXPECT_EQ(j["dtype"], "fp32");
    EXPECT_EQ(j["device"], "cpu");
    EXPECT_EQ(j["n_layers"], 5);
    EXPECT_EQ(j["sampling"]["temperature"], 0.7);
    EXPECT_EQ(j["sampling"]["top_k"], 5);
    EXPECT_EQ(j["sampling"]["top_p"], 1.0);
    EXPECT_EQ(j["sampling"]["seed"], 9);
    EXPECT_EQ(j["sampling"]["max_new_tokens"], 4);
    EXPECT_EQ(j["template"], "alpaca");
    EXPECT_FALSE(j["git_sha"].get<std::string>().empty());
    EXPECT_FALSE(j["llt_version"].get<std::string>().empty());
    EXPECT_NE(j["command_line"].get<std::string>().find("--seed 9"), std::string::npos);
  }
  EXPECT_EQ(records, 2);
}

}  // namespace

namespace {

TEST(LltFinetune, RunsFromTheCommandLineAndItsResolvedConfigReadsBack) {
  const auto dir = fresh_dir("finetune");
  const std::string data = (dir / "data").string();
  const auto tok = run("llt-tokenize --tokenizer " + kStories + "/tok512.model --output " + data +
                       " --first 16 --max-len 320 --threads 1");
  ASSERT_EQ(tok.code, 0) << tok.output;
  const std::string run_dir = (dir / "run").string();
  const std::string args = "llt-finetune --model " + kStories + "/stories260K.bin --data " + data +
                           " --output " + run_dir + " --threads 1 --max-steps 2 --grad-accum 2" +
                           " --lora-rank 8 --lora-targets wq,wk,wv --precision bf16";
  const auto r = run(args);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("step 2/2"), std::string::npos) << r.output;
  const std::string config = llt::read_file(run_dir + "/config.toml");
  EXPECT_NE(config.find("lora-rank=8"), std::string::npos) << config;
  EXPECT_NE(config.find("precision=\"bf16\""), std::string::npos) << config;

  // The resolved config is a valid --config: resuming with it alone continues the run.
  const auto again = run("llt-finetune --config " + run_dir + "/config.toml --resume auto " +
                         "--max-steps 3");
  EXPECT_EQ(again.code, 0) << again.output;
  EXPECT_NE(again.output.find("resumed from"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("step 3/3"), std::string::npos) << again.output;

  // The adapter loads into llt-generate.
  const auto gen = run(kGenerate + "--prompt hi --max-new-tokens 4 --adapter " + run_dir +
                       "/adapter");
  EXPECT_EQ(gen.code, 0) << gen.output;
  const auto bad_adapter = run(kGenerate + "--prompt hi --adapter " + data);
  EXPECT_EQ(bad_adapter.code, 1) << bad_adapter.output;

  const auto refused = run(args);  // the run folder exists now
  EXPECT_EQ(refused.code, 1) << refused.output;
  EXPECT_EQ(count_lines(refused.output), 1) << refused.output;
}

// Every enum's table: each value has exactly one name, each name one value, and what is not a
// name is not read as one.
template <typename E>
void expect_one_name_per_value(const std::vector<E>& values) {
  const auto names = llt::names_list<E>();
  EXPECT_EQ(names.size(), values.size());
  for (const E v : values) {
    const std::string& name = llt::name_of(v);
    EXPECT_EQ(std::count(names.begin(), names.end(), name), 1) << name;
    EXPECT_EQ(llt::value_of<E>(name), v) << name;
  }
  EXPECT_FALSE(llt::value_of<E>("").has_value());
  EXPECT_FALSE(llt::value_of<E>(names.front() + "x").has_value());
}

TEST(Names, EachEnumHasOneNamePerValue) {
  using namespace llt;
  expect_one_name_per_value<Dtype>({Dtype::kFp32, Dtype::kBf16, Dtype::kFp16});
  expect_one_name_per_value<LrSchedule>(
      {LrSchedule::kConstant, LrSchedule::kCosine, LrSchedule::kLinear});
  expect_one_name_per_value<RecomputePolicy>({RecomputePolicy::kNone, RecomputePolicy::kBlock,
                                              RecomputePolicy::kEveryK, RecomputePolicy::kFfn});
  expect_one_name_per_value<LossNormalization>(
      {LossNormalization::kTokens, LossNormalization::kMicroBatch});
  expect_one_name_per_value<ScoredTokens>({ScoredTokens::kLabels, ScoredTokens::kAll});
  expect_one_name_per_value<tools::PromptTemplate>(
      {tools::PromptTemplate::kNone, tools::PromptTemplate::kAlpaca});
  expect_one_name_per_value<tools::OnBadRecord>(
      {tools::OnBadRecord::kFail, tools::OnBadRecord::kSkip});
  expect_one_name_per_value<tools::ResumeMode>({tools::ResumeMode::kNever,
                                                tools::ResumeMode::kAuto});  // kPath: a path
  expect_one_name_per_value<bool>({true, false});
  EXPECT_EQ(llt::name_of(true), "on");
}

// Tokenizes 4 samples into `dir`/data; returns llt-finetune's command line for one step on them,
// up to its --output (empty if tokenizing failed).
std::string one_step_finetune(const fs::path& dir) {
  const std::string data = (dir / "data").string();
  if (run("llt-tokenize --tokenizer " + kStories + "/tok512.model --output " + data +
          " --first 4 --max-len 320 --threads 1").code != 0) {
    return "";
  }
  return "llt-finetune --model " + kStories + "/stories260K.bin --data " + data +
         " --threads 1 --max-steps 1 --output ";
}

// --memory-cap-gb (x 1e9 bytes) is a deprecated alias: it warns, converts to GiB, and the
// resolved config holds only --memory-cap-gib.
TEST(LltFinetune, DeprecatedMemoryCapGbConvertsToGib) {
  const auto dir = fresh_dir("cap_gb");
  const std::string base = one_step_finetune(dir);
  ASSERT_FALSE(base.empty());
  const std::string run_dir = (dir / "run").string();
  const auto r = run(base + run_dir + " --memory-cap-gb 1e-6");  // 1 kB: out of memory
  EXPECT_EQ(r.code, 3) << r.output;
  EXPECT_NE(r.output.find("--memory-cap-gb is deprecated"), std::string::npos) << r.output;
  const std::string config = llt::read_file(run_dir + "/config.toml");
  EXPECT_NE(config.find("memory-cap-gib=9.3132257461547852e-07"), std::string::npos) << config;
  EXPECT_EQ(config.find("memory-cap-gb="), std::string::npos) << config;
  const auto summary = nlohmann::json::parse(llt::read_file(run_dir + "/summary.json"));
  EXPECT_EQ(summary["status"], "oom");
  EXPECT_DOUBLE_EQ(summary["memory_cap_gib"].get<double>(), 1e-6 * 1e9 / (1 << 30));
  const auto both = run(base + (dir / "both").string() + " --memory-cap-gb 1 --memory-cap-gib 1");
  EXPECT_EQ(both.code, 1) << both.output;
  EXPECT_FALSE(fs::exists(dir / "both"));
}

// --dist-bucket-mb (it always meant 2^20 bytes) is a deprecated alias of --dist-bucket-mib: it
// warns, and the resolved config holds only the new name, with the same number.
TEST(LltFinetune, DeprecatedDistBucketMbIsMib) {
  const auto dir = fresh_dir("bucket_mb");
  const std::string base = one_step_finetune(dir);
  ASSERT_FALSE(base.empty());
  const std::string run_dir = (dir / "run").string();
  const auto r = run(base + run_dir + " --dist-bucket-mb 40");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--dist-bucket-mb is deprecated"), std::string::npos) << r.output;
  const std::string config = llt::read_file(run_dir + "/config.toml");
  EXPECT_NE(config.find("dist-bucket-mib=40"), std::string::npos) << config;
  EXPECT_EQ(config.find("dist-bucket-mb="), std::string::npos) << config;
  const auto both = run(base + (dir / "both").string() + " --dist-bucket-mb 1 --dist-bucket-mib 1");
  EXPECT_EQ(both.code, 1) << both.output;
  EXPECT_FALSE(fs::exists(dir / "both"));
}

TEST(LltFinetune, BadFlagsExitOne) {
  const auto r = run("llt-finetune --model " + kStories + "/stories260K.bin --data /nonexistent " +
                     "--output /tmp/x");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(run("llt-finetune --help").code, 0);
}

}  // namespace

namespace {

TEST(LltFinetune, SigusrOneCheckpointsExitsSeventyFiveAndResumes) {
  const auto dir = fresh_dir("preempt");
  const std::string data = (dir / "data").string();
  ASSERT_EQ(run("llt-tokenize --tokenizer " + kStories + "/tok512.model --output " + data +
                " --first 16 --max-len 320 --threads 1").code, 0);
  const std::string run_dir = (dir / "run").string();
  const std::string bin = std::string(LLT_BINARY_DIR) + "/bin/";
  const std::string args = "--model " + kStories + "/stories260K.bin --data " + data +
                           " --output " + run_dir + " --threads 1 --grad-accum 2 --epochs 400" +
                           " --log-every 0";
  // Start a long run, signal it once it is training, and report its exit code.
  const std::string script = "sh -c '" + bin + "llt-finetune " + args + " & pid=$!; " +
                             "while [ ! -s " + run_dir + "/metrics.jsonl ]; do sleep 0.1; done; " +
                             "kill -USR1 $pid; wait $pid; echo exit=$?'";
  FILE* pipe = popen((script + " 2>&1").c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) out.append(buf.data(), n);
  pclose(pipe);
  EXPECT_NE(out.find("exit=75"), std::string::npos) << out;
  const auto summary = nlohmann::json::parse(llt::read_file(run_dir + "/summary.json"));
  EXPECT_EQ(summary["status"], "preempted");
  const int64_t steps = summary["steps"];
  EXPECT_TRUE(fs::exists(run_dir + "/checkpoints/step-" + std::to_string(steps) + "/state.json"));

  const auto resumed = run("llt-finetune " + args + " --resume auto --max-steps " +
                           std::to_string(steps + 2));
  EXPECT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
}

}  // namespace
