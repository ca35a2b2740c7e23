// The tools as users run them: exit codes, one-line errors, outputs written or refused.
// Spawns the built binaries (tests depend on them in tests/CMakeLists.txt).
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_support.h"
#include "llt/io.h"
#include "llt/tools/cli.h"
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

TEST(LltGenerate, PthWithABadZipDirectoryIsOneLineAndExitOne) {
  const auto dir = fresh_dir("badzip");
  const fs::path meta = std::string(LLT_TEST_ASSETS) + "/checkpoints/meta_bf16";
  fs::create_directories(dir / "model");
  fs::copy_file(meta / "params.json", dir / "model" / "params.json");
  std::string bytes = llt::read_file(meta / "consolidated.00.pth");
  const size_t end = bytes.rfind(std::string("PK\x05\x06", 4));
  ASSERT_NE(end, std::string::npos);
  bytes[end + 19] = '\x7f';  // the central directory's offset, now far past the end of the file
  const fs::path shard = dir / "model" / "consolidated.00.pth";
  std::ofstream(shard, std::ios::binary) << bytes;
  const auto r = run("llt-generate --model " + (dir / "model").string() + " --tokenizer " +
                     kStories + "/tok512.model --prompt hi");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  EXPECT_NE(r.output.find(shard.string()), std::string::npos) << r.output;
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
  expect_one_name_per_value<ExportFormat>({ExportFormat::kHuggingFace, ExportFormat::kMeta});
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

// ---------------------------------------------------------------------------------------------
// Flag checks of the five tools: bounds said in words (not CLI11's 309-digit double range), nan
// and inf refused by the flag check itself, config-file errors naming file, key and type. The
// tools' own parse functions run in this process (a tool's start costs a second or two here).
namespace {

const std::vector<std::string> kTools = {"llt-generate", "llt-perplexity", "llt-tokenize",
                                         "llt-finetune", "llt-report", "llt-export"};

// The tool's command line with its required flags, valid. Should a check let a bad value
// through, parsing succeeds (code 0) and the test fails.
std::string tool_base(const std::string& tool, const fs::path& dir) {
  if (tool == "llt-generate") {
    return "llt-generate --model " + kStories + "/stories260K.bin --tokenizer " + kStories +
           "/tok512.model --prompt hi";
  }
  if (tool == "llt-perplexity") {
    return "llt-perplexity --model preset:tiny --text " + (dir / "one.jsonl").string() +
           " --output " + (dir / "ppl").string();
  }
  if (tool == "llt-tokenize") {
    return "llt-tokenize --tokenizer " + kStories + "/tok512.model --input " +
           (dir / "one.jsonl").string() + " --output " + (dir / "data").string();
  }
  if (tool == "llt-finetune") {
    return "llt-finetune --model preset:tiny --data " + dir.string() + " --output " +
           (dir / "run").string();
  }
  if (tool == "llt-export") {
    return "llt-export --model preset:tiny --output " + (dir / "export").string();
  }
  return "llt-report " + dir.string() + " --no-plots --output " + (dir / "report").string();
}

fs::path flags_dir() {
  const auto dir = fresh_dir("flags");
  std::ofstream(dir / "one.jsonl") << R"({"instruction": "x", "input": "", "output": "y"})"
                                   << "\n";
  return dir;
}

// Runs the parse function of the tool named by the first word of `args` (words split at
// spaces); `code` is Exit's code, 0 if parsing passed. Output: what it printed, or the message
// of another exception.
llt::testing::ToolRun parse(const std::string& args) {
  std::vector<std::string> words;
  std::istringstream in(args);
  for (std::string w; in >> w;) words.push_back(w);
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  const int argc = static_cast<int>(argv.size());
  llt::testing::ToolRun r;
  r.code = 0;
  ::testing::internal::CaptureStdout();
  ::testing::internal::CaptureStderr();
  try {
    if (words[0] == "llt-generate") llt::tools::parse_generate(argc, argv.data());
    if (words[0] == "llt-perplexity") llt::tools::parse_perplexity(argc, argv.data());
    if (words[0] == "llt-tokenize") llt::tools::parse_tokenize(argc, argv.data());
    if (words[0] == "llt-finetune") llt::tools::parse_finetune(argc, argv.data());
    if (words[0] == "llt-report") llt::tools::parse_report(argc, argv.data());
    if (words[0] == "llt-export") llt::tools::parse_export(argc, argv.data());
  } catch (const llt::tools::Exit& e) {
    r.code = e.code;
  } catch (const std::exception& e) {
    r.code = -1;
    r.output = e.what();
  }
  r.output += ::testing::internal::GetCapturedStderr();
  r.output += ::testing::internal::GetCapturedStdout();
  return r;
}

// Every number flag a tool's --help lists, with its type: "  --grad-accum INT:>= 1=1  ...".
std::vector<std::pair<std::string, std::string>> number_flags(const std::string& tool) {
  const auto help = parse(tool + " --help");
  EXPECT_EQ(help.code, 0) << help.output;
  std::vector<std::pair<std::string, std::string>> flags;
  const std::regex line(R"(^ +(--[a-z0-9-]+) (INT|UINT|FLOAT)\b)");
  std::istringstream in(help.output);
  for (std::string text; std::getline(in, text);) {
    std::smatch m;
    if (std::regex_search(text, m, line)) flags.emplace_back(m[1], m[2]);
  }
  return flags;
}

struct RangeCase {
  std::string tool, flag, value, message;  // message follows "error: <flag> "
};

// Every range-checked flag, with a value just outside its range.
const std::vector<RangeCase> kRangeCases = {
    {"llt-generate", "--threads", "-1", "must be >= 0, got -1"},
    {"llt-generate", "--n-layers", "-1", "must be >= 0, got -1"},
    {"llt-generate", "--max-new-tokens", "0", "must be >= 1, got 0"},
    {"llt-generate", "--temperature", "-0.5", "must be >= 0, got -0.5"},
    {"llt-generate", "--top-k", "-1", "must be >= 0, got -1"},
    {"llt-generate", "--top-p", "1.5", "must be in [0, 1], got 1.5"},
    {"llt-generate", "--batch-size", "0", "must be >= 1, got 0"},
    {"llt-perplexity", "--threads", "-1", "must be >= 0, got -1"},
    {"llt-perplexity", "--n-layers", "-1", "must be >= 0, got -1"},
    {"llt-perplexity", "--window", "0", "must be >= 1, got 0"},
    {"llt-perplexity", "--stride", "0", "must be >= 1, got 0"},
    {"llt-perplexity", "--batch-size", "0", "must be >= 1, got 0"},
    {"llt-tokenize", "--max-len", "1", "must be in [2, 1073741824], got 1"},
    {"llt-tokenize", "--skip", "-1", "must be >= 0, got -1"},
    {"llt-tokenize", "--first", "-1", "must be >= 0, got -1"},
    {"llt-tokenize", "--samples-per-shard", "0", "must be >= 1, got 0"},
    {"llt-tokenize", "--max-record-bytes", "0", "must be >= 1, got 0"},
    {"llt-tokenize", "--threads", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--threads", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--eval-every", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--n-layers", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--batch-size", "0", "must be >= 1, got 0"},
    {"llt-finetune", "--grad-accum", "0", "must be >= 1, got 0"},
    {"llt-finetune", "--epochs", "0", "must be >= 1, got 0"},
    {"llt-finetune", "--max-steps", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--save-every", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--log-every", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--memory-cap-gib", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--memory-cap-gb", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--lora-rank", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--lora-dropout", "1.5", "must be in [0, 1], got 1.5"},
    {"llt-finetune", "--warmup-steps", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--weight-decay", "-0.1", "must be >= 0, got -0.1"},
    {"llt-finetune", "--grad-clip", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--grad-checkpoint-every", "0", "must be >= 1, got 0"},
    {"llt-finetune", "--world-size", "-1", "must be >= 0, got -1"},
    {"llt-finetune", "--rank", "-2", "must be in [-1, 1048576], got -2"},
    {"llt-finetune", "--dist-port", "65536", "must be in [0, 65535], got 65536"},
    {"llt-finetune", "--dist-timeout", "0", "must be > 0, got 0"},
    {"llt-finetune", "--dist-bucket-mib", "0", "must be > 0, got 0"},
    {"llt-finetune", "--dist-bucket-mb", "0", "must be > 0, got 0"},
    {"llt-report", "--gnuplot-timeout", "-1", "must be >= 0, got -1"},
    {"llt-export", "--n-layers", "-1", "must be >= 0, got -1"},
    {"llt-export", "--threads", "-1", "must be >= 0, got -1"},
};

// Number flags without a range: any finite value.
const std::set<std::string> kUnbounded = {"--seed", "--lora-alpha", "--lr"};

void expect_flag_error(const llt::testing::ToolRun& r, const std::string& args,
                       const std::string& needle) {
  EXPECT_EQ(r.code, 1) << args << "\n" << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output;
  EXPECT_EQ(r.output.find("179769"), std::string::npos) << r.output;  // DBL_MAX's digits
}

class ToolFlags : public ::testing::TestWithParam<std::string> {};

// The table above is complete: every number flag of --help is in it or known to be unbounded.
TEST_P(ToolFlags, EveryRangeCheckedFlagSaysItsBoundInWords) {
  const std::string tool = GetParam();
  const auto dir = flags_dir();
  ASSERT_EQ(parse(tool_base(tool, dir)).code, 0) << tool_base(tool, dir);
  const auto flags = number_flags(tool);
  EXPECT_FALSE(flags.empty()) << tool;
  std::set<std::string> in_help;
  for (const auto& [flag, type] : flags) {
    in_help.insert(flag);
    const bool listed = std::any_of(kRangeCases.begin(), kRangeCases.end(), [&](const auto& c) {
      return c.tool == tool && c.flag == flag;
    });
    EXPECT_TRUE(listed || kUnbounded.count(flag)) << tool << " " << flag << " is not in the table";
  }
  for (const auto& c : kRangeCases) {
    if (c.tool != tool) continue;
    EXPECT_TRUE(in_help.count(c.flag)) << tool << " --help does not list " << c.flag;
    const std::string args = tool_base(tool, dir) + " " + c.flag + "=" + c.value;
    expect_flag_error(parse(args), args, tool + ": error: " + c.flag + " " + c.message);
  }
}

// nan and inf fail the flag check itself (exit 1 naming the flag), not a later step.
TEST_P(ToolFlags, NanAndInfFailTheFlagCheckOfEveryNumberFlag) {
  const std::string tool = GetParam();
  const auto dir = flags_dir();
  for (const auto& [flag, type] : number_flags(tool)) {
    for (const std::string value : {"nan", "inf", "-inf", "NaN"}) {
      const std::string args = tool_base(tool, dir) + " " + flag + "=" + value;
      const std::string needle = flag == "--seed" ? flag  // an integer: CLI11's conversion error
                                                  : flag + " must be a finite number, got " + value;
      expect_flag_error(parse(args), args, needle);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cli, ToolFlags, ::testing::ValuesIn(kTools),
                         [](const auto& info) { return info.param.substr(4); });  // no "llt-"

// The process itself exits 1 on --temperature nan (it used to run on and exit 2).
TEST(LltGenerate, TemperatureNanExitsOne) {
  const auto r = run(tool_base("llt-generate", "") + " --temperature nan");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("llt-generate: error: --temperature must be a finite number, got nan"),
            std::string::npos)
      << r.output;
}

// --config errors name the file (and line), the key and what was expected; never "INI".
TEST(Cli, ConfigErrorsNameTheFileTheKeyAndTheExpectedType) {
  const auto dir = fresh_dir("config_errors");
  struct Case {
    std::string tool, toml, needle;
  };
  const std::vector<Case> cases = {
      {"llt-generate", "max-new-tokens = \"three\"\n",
       ":1: key 'max-new-tokens': expected an integer, got 'three'"},
      {"llt-generate", "kv-cache = \"on\"\nmax-new-tokens = 2.5\n",
       ":2: key 'max-new-tokens': expected an integer, got '2.5'"},
      {"llt-generate", "temperature = nan\n",
       ":1: key 'temperature': expected a finite number, got 'nan'"},
      {"llt-generate", "temperature = \"warm\"\n",
       ":1: key 'temperature': expected a finite number, got 'warm'"},
      {"llt-generate", "top-p = 2\n", ":1: key 'top-p': must be in [0, 1], got 2"},
      {"llt-generate", "bos = \"maybe\"\n", ":1: key 'bos': expected true or false, got 'maybe'"},
      {"llt-generate", "max-new-tokenz = 3\n", ":1: unknown key 'max-new-tokenz'"},
      {"llt-generate", "\n[sampling]\ntemperature = 1\n", ":2: [sampling]: tables are not"},
      {"llt-finetune", "rank = 1\n", ":1: key 'rank' cannot be set in a config file"},
      {"llt-finetune", "grad-accum = 0\n", ":1: key 'grad-accum': must be >= 1, got 0"},
      {"llt-tokenize", "first = -2\n", ":1: key 'first': must be >= 0, got -2"},
      {"llt-report", "gnuplot-timeout = inf\n",
       ":1: key 'gnuplot-timeout': expected a finite number, got 'inf'"},
  };
  const auto flags = flags_dir();
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto config = dir / ("c" + std::to_string(i) + ".toml");
    std::ofstream(config) << cases[i].toml;
    const std::string args = tool_base(cases[i].tool, flags) + " --config " + config.string();
    const auto r = parse(args);
    expect_flag_error(r, args, "error: " + config.string() + cases[i].needle);
    EXPECT_EQ(r.output.find("INI"), std::string::npos) << r.output;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Non-finite weights and binary prompts files
namespace {

TEST(LltGenerate, NanWeightsExitFourNamingTheWeightsAndWriteNoOutput) {
  const auto dir = fresh_dir("nan");
  const auto model = dir / "nan.bin";
  llt::testing::write_nan_llama2c_copy(kStories + "/stories260K.bin", model);
  const auto out = dir / "gen.jsonl";
  for (const std::string kv : {"on", "off"}) {
    const std::string args = "llt-generate --model " + model.string() + " --tokenizer " +
                             kStories + "/tok512.model --threads 1 --prompt 'Once upon' " +
                             "--max-new-tokens 4 --kv-cache " + kv + " --output " + out.string();
    const auto r = run(args);
    EXPECT_EQ(r.code, 4) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("error: non-finite logits"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("weights"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("\xe2\x81\x87"), std::string::npos) << r.output;  // no "⁇" printed
    EXPECT_FALSE(fs::exists(out)) << r.output;
    EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
  }
}

TEST(LltGenerate, BinaryPromptsFileIsRefusedNamingTheFileAndLine) {
  const auto dir = fresh_dir("binary_prompts");
  const auto gz = dir / "prompts.txt.gz";
  std::ofstream(gz, std::ios::binary)
      << std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03", 10);
  const auto utf16 = dir / "prompts-utf16.txt";
  std::ofstream(utf16, std::ios::binary) << std::string("\xff\xfeh\0i\0\n\0", 8);
  const auto nul = dir / "prompts-nul.txt";
  std::ofstream(nul, std::ios::binary) << std::string("one\ntwo\0three\n", 14);
  const std::vector<std::pair<fs::path, std::string>> cases = {
      {gz, "prompts.txt.gz (--prompts-file): invalid UTF-8 at byte 1 (line 1, column 2)"},
      {utf16, "prompts-utf16.txt (--prompts-file): invalid UTF-8 at byte 0 (line 1, column 1)"},
      {nul, "prompts-nul.txt (--prompts-file): a NUL byte at byte 7 (line 2, column 4)"},
  };
  for (const auto& [path, needle] : cases) {
    const std::string args =
        kGenerate + "--prompts-file " + path.string() + " --output " + (dir / "out.jsonl").string();
    expect_flag_error(run(args), args, needle);
    EXPECT_FALSE(fs::exists(dir / "out.jsonl"));
  }
}

}  // namespace
