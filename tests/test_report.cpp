// llt-report: tables, before/after sheet and plots from the hand-made run folders in
// tests/assets/report/runs/ (data_prep/make_report_fixtures.py; numbers in its README). The
// expected tables below were written by hand from those numbers, not from llt's output.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/tools/options.h"
#include "llt/tools/report.h"
#include "llt/tools/report_plots.h"
#include "llt/tools/report_tables.h"

#include "test_support.h"

using namespace llt::tools;  // the tool layer under test

namespace llt {
namespace {

namespace fs = std::filesystem;
using testing::expect_input_error;
using testing::fresh_dir;
using testing::run_tool;

const std::string kRuns = std::string(LLT_TEST_ASSETS) + "/report/runs";

// Every fixture folder, sorted as a shell glob would give them.
std::vector<std::string> fixture_dirs() {
  std::vector<std::string> dirs;
  for (const auto& entry : fs::directory_iterator(kRuns)) dirs.push_back(entry.path().string());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::string line;
  for (const char c : text) {
    if (c == '\n') {
      out.push_back(line);
      line.clear();
    } else {
      line += c;
    }
  }
  if (!line.empty()) out.push_back(line);
  return out;
}

bool gnuplot_installed() {
  return std::system("gnuplot --version > /dev/null 2>&1") == 0;
}

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// A copy of one fixture folder under `dir`, to be broken by the test.
fs::path copy_run(const std::string& name, const fs::path& dir) {
  const fs::path to = dir / name;
  fs::create_directories(dir);
  fs::copy(kRuns + "/" + name, to, fs::copy_options::recursive);
  return to;
}

const char* kTable2 = R"md(# Table 2: System performance measurement

Peak memory and runtime of each training run by gradient accumulation (GA: off = grad_accum 1, on = more), mixed precision (MP: off = fp32, on = bf16 or fp16) and LoRA (off = lora_rank 0, on = more), one row group per activation-checkpointing setting (grad_checkpoint). Peak Mem is `peak_allocated_training` from summary.json, the most bytes allocated during training steps (llt's counting CPU allocator), 1 MiB = 2^20 bytes; Runtime is `runtime_s`, the training steps' wall time (checkpoint writing excluded). × = out of memory (status oom), – = no run; another status is shown by name.

| Grad. Checkpoint | Grad. Accumulation | off | off | off | off | on | on | on | on |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
| | Mixed Precision | off | off | on | on | off | off | on | on |
| | LoRA | off | on | off | on | off | on | off | on |
| none | Peak Mem (MiB, CPU allocator) | × | 300.0 | 500.0 | 250.0 | 700.0 | 280.0 | 480.0 | 230.4 |
| none | Runtime (s) | × | 50.0 | 80.0 | 40.0 | 90.0 | 48.0 | 75.0 | 38.3 |
| block | Peak Mem (MiB, CPU allocator) | 600.0 | – | – | – | – | 200.0 | – | – |
| block | Runtime (s) | 120.0 | – | – | – | – | 64.0 | – | – |

From 10 runs:

- **Device**: cpu
- **Model**: `assets/models/stories260K/stories260K.bin` (dim 64, n_layers 5)
- **Samples (runs with status ok)**: 16
- **Batch size**: 1
- **Git commit differs between runs**: `fedcba987654` (`block-ga0-mp0-lora0` and `block-ga1-mp0-lora1`); `abc123def456` (`none-ga0-mp0-lora0`, `none-ga0-mp0-lora1`, `none-ga0-mp1-lora0`, `none-ga0-mp1-lora1`, `none-ga1-mp0-lora0`, `none-ga1-mp0-lora1`, `none-ga1-mp1-lora0` and `none-ga1-mp1-lora1`)
- **Grad. Accumulation on**: grad_accum 8
- **Mixed Precision on**: precision bf16
- **LoRA on**: lora_rank 16
)md";

// Representative pairs: the fewest other techniques on, then input order (the oom run pairs with
// nothing). Changes: GA only time (50 -> 48 s); block checkpointing activations 80 -> 20 MiB and
// time 48 -> 64 s; bf16 activations 80 -> 40 MiB, time 50 -> 40 s; LoRA parameters +0.2 MiB
// (209715 B of 4 MiB), gradients 4 MiB -> 209715 B, optimizer 8 MiB -> 419430 B, activations
// 50 -> 40 MiB, time 80 -> 40 s.
const char* kTable1 = R"md(# Table 1: System performance analysis (measured)

What turning each technique on changes, measured between two runs that differ only in that technique (same device, model, samples, batch size, base dtype and other settings; both status ok). Memory is `memory_breakdown` from summary.json (1 MiB = 2^20 bytes), time is `runtime_s`. ↑ more, ↓ less, − within 1% of the run without the technique; then the change (on − off) and its percentage.

| | Grad. Accumulation | Grad. Checkpoint | Mixed Precision | LoRA |
|---|---|---|---|---|
| Memory: parameters | − 0.00 MiB (0.0%) | − 0.00 MiB (0.0%) | − 0.00 MiB (0.0%) | ↑ +0.20 MiB (+5.0%) |
| Memory: activations | − 0.00 MiB (0.0%) | ↓ -60.00 MiB (-75.0%) | ↓ -40.00 MiB (-50.0%) | ↓ -10.00 MiB (-20.0%) |
| Memory: gradients | − 0.00 MiB (0.0%) | − 0.00 MiB (0.0%) | − 0.00 MiB (0.0%) | ↓ -3.80 MiB (-95.0%) |
| Memory: optimizer state | − 0.00 MiB (0.0%) | − 0.00 MiB (0.0%) | − 0.00 MiB (0.0%) | ↓ -7.60 MiB (-95.0%) |
| Computation: time | ↓ -2.00 s (-4.0%) | ↑ +16.00 s (+33.3%) | ↓ -10.00 s (-20.0%) | ↓ -40.00 s (-50.0%) |

Run pairs (off → on):

- Grad. Accumulation: `none-ga0-mp0-lora1` (grad_accum 1) → `none-ga1-mp0-lora1` (grad_accum 8); also measured (in table1.csv): `none-ga0-mp1-lora0` (grad_accum 1) → `none-ga1-mp1-lora0` (grad_accum 8), `none-ga0-mp1-lora1` (grad_accum 1) → `none-ga1-mp1-lora1` (grad_accum 8)
- Grad. Checkpoint: `none-ga1-mp0-lora1` (grad_checkpoint none) → `block-ga1-mp0-lora1` (grad_checkpoint block)
- Mixed Precision: `none-ga0-mp0-lora1` (precision fp32) → `none-ga0-mp1-lora1` (precision bf16); also measured (in table1.csv): `none-ga1-mp0-lora0` (precision fp32) → `none-ga1-mp1-lora0` (precision bf16), `none-ga1-mp0-lora1` (precision fp32) → `none-ga1-mp1-lora1` (precision bf16)
- LoRA: `none-ga0-mp1-lora0` (lora_rank 0) → `none-ga0-mp1-lora1` (lora_rank 16); also measured (in table1.csv): `none-ga1-mp0-lora0` (lora_rank 0) → `none-ga1-mp0-lora1` (lora_rank 16), `none-ga1-mp1-lora0` (lora_rank 0) → `none-ga1-mp1-lora1` (lora_rank 16)
)md";

// perplexity = exp(mean_nll): e^2.5 = 12.1825, e^2 = 7.3891. The fine-tuned folder's second
// completion of a prompt is not shown; "Only in base" is in one folder only.
const char* kBeforeAfter = R"md(# Before / after

## Perplexity

| Run | Perplexity | Mean NLL | Tokens | Samples | Over |
|---|---:|---:|---:|---:|---|
| `base` | 12.182 | 2.5000 | 1000 | 10 | labels |
| `none-ga1-mp1-lora1` | 7.389 | 2.0000 | 1000 | 10 | labels |

## Completions

Each prompt found in the generations.jsonl of two or more folders, with each folder's completion (its first, if it has the prompt more than once).

### Prompt 1

```text
I believe the meaning of life is
```

| `base` | `none-ga1-mp1-lora1` |
|---|---|
|  to be happy.<br>The end. |  to learn. |

### Prompt 2

```text
Tell me | about <cats> & dogs
```

| `base` | `none-ga1-mp1-lora1` |
|---|---|
|  Cats \| dogs |  They purr. |
)md";

TEST(Report, Table2Markdown) {
  const auto runs = read_runs(fixture_dirs());
  EXPECT_EQ(table2_markdown(runs), kTable2);
}

TEST(Report, Table2CsvHasEveryFieldAndTheOomRun) {
  const auto csv = lines(table2_csv(read_runs(fixture_dirs())));
  ASSERT_EQ(csv.size(), 11u);  // header + 10 runs with a summary.json ("base" has none)
  EXPECT_EQ(csv[0],
            "run,folder,grad_accumulation,mixed_precision,lora,peak_mem_mib,peak_mem_mb,"
            "grad_checkpoint,status,"
            "runtime_s,peak_allocated_training,base_dtype,batch_size,command_line,data,device,dim,"
            "error,git_sha,grad_accum,label_tokens,llt_version,lora_rank,"
            "memory_breakdown.activations,memory_breakdown.gradients,"
            "memory_breakdown.optimizer_state,memory_breakdown.parameters,"
            "memory_estimate.activations,memory_estimate.gradients,"
            "memory_estimate.optimizer_state,memory_estimate.parameters,memory_estimate.total,"
            "model,n_layers,peak_allocated,peak_reserved,peak_rss,precision,samples,samples_per_s,"
            "skipped_steps,steps,tokens,tokens_per_s,total_parameters,trainable_parameters");
  // 1000 MiB peak; 100 + 4 + 8 + 4 MiB estimate; peaks 1001 MiB and 1300 MiB RSS.
  EXPECT_EQ(
      csv[3],
      "none-ga0-mp0-lora0," + kRuns +
          "/none-ga0-mp0-lora0,off,off,off,1000.000,1000.000,none,oom,"
          "3.2,1048576000,fp32,1,\"llt-finetune --lora-targets wq,wv --grad-checkpoint none\","
          "/tmp/data,cpu,64,host memory cap: allocating 3235968 bytes would exceed the cap,"
          "abc123def456,1,0,0.1.0,0,104857600,4194304,8388608,4194304,104857600,4194304,"
          "8388608,4194304,121634816,assets/models/stories260K/stories260K.bin,5,1049624576,"
          "1049624576,1363148800,fp32,0,0.0,0,0,0,0.0,1048576,1048576");
}

TEST(Report, Table1Markdown) {
  EXPECT_EQ(table1_markdown(read_runs(fixture_dirs())), kTable1);
}

TEST(Report, Table1CsvListsEveryPair) {
  const auto csv = lines(table1_csv(read_runs(fixture_dirs())));
  ASSERT_EQ(csv.size(), 1u + (3 + 1 + 3 + 3) * 5);  // header + 5 quantities per pair
  EXPECT_EQ(csv[0],
            "technique,off_run,on_run,field,off_setting,on_setting,quantity,unit,off,on,change,"
            "change_pct,direction,shown");
  const std::vector<std::string> lora = {
      "LoRA,none-ga0-mp1-lora0,none-ga0-mp1-lora1,lora_rank,0,16,parameters,bytes,4194304,"
      "4404019,209715,5.00,↑,yes",
      "LoRA,none-ga0-mp1-lora0,none-ga0-mp1-lora1,lora_rank,0,16,activations,bytes,52428800,"
      "41943040,-10485760,-20.00,↓,yes",
      "LoRA,none-ga0-mp1-lora0,none-ga0-mp1-lora1,lora_rank,0,16,gradients,bytes,4194304,"
      "209715,-3984589,-95.00,↓,yes",
      "LoRA,none-ga0-mp1-lora0,none-ga0-mp1-lora1,lora_rank,0,16,optimizer_state,bytes,8388608,"
      "419430,-7969178,-95.00,↓,yes",
      "LoRA,none-ga0-mp1-lora0,none-ga0-mp1-lora1,lora_rank,0,16,runtime_s,s,80.000,40.000,"
      "-40.000,-50.00,↓,yes",
  };
  const auto first = std::find(csv.begin(), csv.end(), lora[0]);
  ASSERT_NE(first, csv.end());
  EXPECT_EQ(std::vector<std::string>(first, first + 5), lora);
  EXPECT_EQ(std::count_if(csv.begin(), csv.end(),
                          [](const std::string& l) {
                            return l.size() > 4 && l.substr(l.size() - 4) == ",yes";
                          }),
            4 * 5);  // one shown pair per technique
}

TEST(Report, BeforeAfterSheet) {
  EXPECT_EQ(before_after_markdown(read_runs(fixture_dirs())), kBeforeAfter);
}

TEST(Report, WritesEveryFileAndRefusesToOverwrite) {
  const auto out = fresh_dir("refuse") / "report";
  ReportToolOptions o;
  o.runs = fixture_dirs();
  o.output = out.string();
  o.no_plots = true;
  ASSERT_EQ(run_report(o), 0);
  EXPECT_EQ(read_file(out / "table2.md"), kTable2);
  EXPECT_EQ(read_file(out / "table1.md"), kTable1);
  EXPECT_EQ(read_file(out / "before_after.md"), kBeforeAfter);
  EXPECT_FALSE(fs::exists(out / "table2.csv.tmp"));

  // A second report over the same folder is refused, and nothing is touched.
  write_text(out / "table1.md", "mine");
  expect_input_error([&] { run_report(o); }, {"already exists", "--overwrite"});
  EXPECT_EQ(read_file(out / "table1.md"), "mine");
  o.overwrite = true;
  EXPECT_EQ(run_report(o), 0);
  EXPECT_EQ(read_file(out / "table1.md"), kTable1);
}

TEST(Report, PlotsArePngsWithTheirDataAndScripts) {
  if (!gnuplot_installed()) GTEST_SKIP() << "gnuplot is not installed (scripts/install-deps.sh)";
  const auto out = fresh_dir("plots") / "report";
  ReportToolOptions o;
  o.runs = fixture_dirs();
  o.output = out.string();
  ASSERT_EQ(run_report(o), 0);
  for (const std::string name : {"loss", "memory", "table2"}) {
    const std::string png = read_file(out / "plots" / (name + ".png"));
    EXPECT_GT(png.size(), 1000u) << name;
    EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << name;
    EXPECT_FALSE(read_file(out / "plots" / (name + ".gp")).empty()) << name;
    EXPECT_FALSE(read_file(out / "plots" / (name + ".dat")).empty()) << name;
  }
  // One block per run with metrics (the oom run has none): 9 loss lines.
  const std::string loss = read_file(out / "plots" / "loss.dat");
  size_t blocks = 0;
  for (size_t at = loss.find("# run "); at != std::string::npos; at = loss.find("# run ", at + 1))
    ++blocks;
  EXPECT_EQ(blocks, 9u);
  // No staging folder is left behind.
  for (const auto& entry : fs::directory_iterator(out)) {
    EXPECT_EQ(entry.path().filename().string().rfind(".llt-report", 0), std::string::npos);
  }
}

TEST(Report, EvaluationRecordsArePlottedBesideTheTrainingLoss) {
  // llt-finetune --eval-data adds records without "loss" to metrics.jsonl.
  const auto run = fresh_dir("eval") / "run";
  for (const auto& dir : fixture_dirs()) {
    if (fs::exists(fs::path(dir) / "metrics.jsonl")) {
      fs::copy(dir, run, fs::copy_options::recursive);
      break;
    }
  }
  const size_t training = read_run(run).metrics.size();
  ASSERT_GT(training, 0u);
  write_text(run / "metrics.jsonl",
             "{\"step\": 0, \"eval_loss\": 4.25, \"eval_perplexity\": 70.1, \"eval_tokens\": 9, "
             "\"eval_s\": 0.5}\n" +
                 read_file(run / "metrics.jsonl") +
                 "{\"step\": 2, \"eval_loss\": 3.5, \"eval_perplexity\": 33.1, \"eval_tokens\": 9, "
                 "\"eval_s\": 0.5}\n");
  const RunRecord r = read_run(run);
  EXPECT_EQ(r.metrics.size(), training) << "training records only";
  ASSERT_EQ(r.eval.size(), 2u);
  EXPECT_EQ(r.eval[1].step, 2);
  EXPECT_EQ(r.eval[1].loss, 3.5);
  const auto files = plot_files({r});
  ASSERT_TRUE(files.count("eval.dat"));
  EXPECT_NE(files.at("eval.dat").find("\n0 4.25"), std::string::npos) << files.at("eval.dat");
  EXPECT_NE(files.at("eval.dat").find("\n2 3.5"), std::string::npos) << files.at("eval.dat");
  const std::string& gp = files.at("loss.gp");
  EXPECT_NE(gp.find("\"eval.dat\" index 0"), std::string::npos) << gp;
  EXPECT_NE(gp.find("run (eval)"), std::string::npos) << gp;
  EXPECT_EQ(plot_files(read_runs(fixture_dirs())).count("eval.dat"), 0u) << "none without eval";
}

TEST(Report, MissingGnuplotIsAnErrorUnlessNoPlots) {
  const auto out = fresh_dir("no-gnuplot") / "report";
  ReportToolOptions o;
  o.runs = fixture_dirs();
  o.output = out.string();
  o.gnuplot = "/nonexistent/gnuplot";
  expect_input_error([&] { run_report(o); }, {"/nonexistent/gnuplot", "not found", "--no-plots"});
  EXPECT_FALSE(fs::exists(out));
  o.no_plots = true;
  EXPECT_EQ(run_report(o), 0);
  EXPECT_FALSE(fs::exists(out / "plots"));
}

TEST(Report, FailedPlotLeavesNoOutput) {
  // A "gnuplot" that fails: nothing of the report is left, in a new or an existing folder.
  const auto dir = fresh_dir("failed-plot");
  ReportToolOptions o;
  o.runs = fixture_dirs();
  o.output = (dir / "new").string();
  o.gnuplot = "false";
  EXPECT_THROW(run_report(o), RuntimeError);
  EXPECT_FALSE(fs::exists(dir / "new"));
  write_text(dir / "existing" / "notes.txt", "mine");
  o.output = (dir / "existing").string();
  EXPECT_THROW(run_report(o), RuntimeError);
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir / "existing")) {
    left.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(left, std::vector<std::string>{"notes.txt"});
}

// Run-folder names reach gnuplot as titles: a name holding shell and gnuplot syntax is shown,
// never run, by llt-report's gnuplot nor by the saved scripts run again.
TEST(Report, RunNamesAreNeverEvaluatedByGnuplot) {
  if (!gnuplot_installed()) GTEST_SKIP() << "gnuplot is not installed (scripts/install-deps.sh)";
  const auto dir = fresh_dir("hostile-names");
  // gnuplot runs inside out/.llt-report-staging-PID/, then out/plots/: "cd .." lands in out/.
  const std::string hostile = "x`cd .. && touch PWNED`$(touch PWNED2) $HOME \"q' \\b\nc @x";
  fs::create_directories(dir / "runs");
  fs::copy(kRuns + "/none-ga1-mp1-lora1", dir / "runs" / hostile, fs::copy_options::recursive);
  fs::copy(kRuns + "/none-ga0-mp1-lora1", dir / "runs" / "plain", fs::copy_options::recursive);
  const auto out = dir / "out";
  ReportToolOptions o;
  o.runs = {(dir / "runs" / hostile).string(), (dir / "runs" / "plain").string()};
  o.output = out.string();
  ASSERT_EQ(run_report(o), 0);
  for (const std::string name : {"loss", "memory", "table2"}) {
    EXPECT_EQ(read_file(out / "plots" / (name + ".png")).substr(0, 4), "\x89PNG") << name;
    const std::string cmd =
        "cd '" + (out / "plots").string() + "' && gnuplot " + name + ".gp > /dev/null 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << name;
  }
  for (const auto& root : {out, out / "plots", dir, dir / "runs"}) {
    EXPECT_FALSE(fs::exists(root / "PWNED")) << root;
    EXPECT_FALSE(fs::exists(root / "PWNED2")) << root;
  }
  // The title is the name, quotes doubled, the newline shown as '?'.
  EXPECT_NE(read_file(out / "plots" / "loss.gp")
                .find("title 'x`cd .. && touch PWNED`$(touch PWNED2) $HOME \"q'' \\b?c @x'"),
            std::string::npos)
      << read_file(out / "plots" / "loss.gp");
  // Every data line still has its columns (the newline did not split a record).
  for (const std::string name : {"loss", "memory", "table2"}) {
    const std::string dat = read_file(out / "plots" / (name + ".dat"));
    for (const auto& line : lines(dat)) {
      if (line.empty() || line[0] == '#') continue;
      EXPECT_GE(std::count(line.begin(), line.end(), ' '), 1) << name << ": " << line;
      EXPECT_EQ(line.find('"'), std::string::npos) << name << ": " << line;
    }
  }
}

// A name with backquotes and pipes is one code span in one Markdown cell.
TEST(Report, RunNamesAreEscapedInMarkdown) {
  const auto dir = fresh_dir("markdown-names");
  const fs::path run = dir / "a`b|c";
  fs::copy(kRuns + "/base", run, fs::copy_options::recursive);
  const std::string md = before_after_markdown({read_run(run)});
  EXPECT_NE(md.find("| ``a`b\\|c`` | 12.182 |"), std::string::npos) << md;
}

// A gnuplot that never ends is stopped at --gnuplot-timeout; nothing of the report is left.
TEST(Report, HungGnuplotIsStopped) {
  const auto dir = fresh_dir("hung-gnuplot");
  write_text(dir / "gnuplot", "#!/bin/sh\nsleep 600\n");
  fs::permissions(dir / "gnuplot", fs::perms::owner_all);
  ReportToolOptions o;
  o.runs = fixture_dirs();
  o.output = (dir / "out").string();
  o.gnuplot = (dir / "gnuplot").string();
  o.gnuplot_timeout_s = 1;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    run_report(o);
    ADD_FAILURE() << "no error";
  } catch (const RuntimeError& e) {
    EXPECT_NE(std::string(e.what()).find("did not finish"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("within 1 s (--gnuplot-timeout)"), std::string::npos)
        << e.what();
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30);
  EXPECT_FALSE(fs::exists(dir / "out"));
  o.gnuplot_timeout_s = -1;
  expect_input_error([&] { run_report(o); }, {"--gnuplot-timeout", ">= 0"});
}

// A relative --gnuplot is the one in the folder llt-report was started from.
TEST(Report, RelativeGnuplotPathIsFromTheStartFolder) {
  if (!gnuplot_installed()) GTEST_SKIP() << "gnuplot is not installed (scripts/install-deps.sh)";
  const auto dir = fresh_dir("relative-gnuplot");
  write_text(dir / "bin" / "gp", "#!/bin/sh\nexec gnuplot \"$@\"\n");
  fs::permissions(dir / "bin" / "gp", fs::perms::owner_all);
  const std::string cmd = "cd '" + dir.string() + "' && " + LLT_BINARY_DIR + "/bin/llt-report '" +
                          kRuns + "/none-ga1-mp1-lora1' --output out " +
                          "--gnuplot bin/gp > log.txt 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << read_file(dir / "log.txt");
  EXPECT_TRUE(fs::exists(dir / "out" / "plots" / "loss.png")) << read_file(dir / "log.txt");
}

TEST(Report, BadFoldersAndFilesAreOneLineErrors) {
  const auto dir = fresh_dir("bad");
  expect_input_error([&] { read_run(dir / "absent"); }, {"absent", "no such run folder"});
  fs::create_directories(dir / "empty");
  expect_input_error([&] { read_run(dir / "empty"); },
                     {"empty", "not a run folder", "summary.json"});

  const auto broken = copy_run("none-ga0-mp0-lora1", dir / "broken");
  write_text(broken / "summary.json", "{\"status\": \"ok\",");
  expect_input_error([&] { read_run(broken); },
                     {(broken / "summary.json").string(), "not valid JSON"});
  // A number beyond double's range, which nlohmann throws as out_of_range, not parse_error.
  write_text(broken / "summary.json", "{\"status\": \"ok\", \"runtime_s\": 1e400}");
  expect_input_error([&] { read_run(broken); },
                     {(broken / "summary.json").string(), "not valid JSON", "number overflow"});

  const auto typed = copy_run("none-ga0-mp0-lora1", dir / "typed");
  std::string text = read_file(typed / "summary.json");
  text.replace(text.find("\"runtime_s\": 50.0"), 17, "\"runtime_s\": \"fast\"");
  write_text(typed / "summary.json", text);
  expect_input_error([&] { read_run(typed); },
                     {(typed / "summary.json").string(), "'runtime_s'", "a number", "\"fast\""});

  const auto nested = copy_run("none-ga0-mp0-lora1", dir / "nested");
  text = read_file(nested / "summary.json");
  text.replace(text.find("\"activations\""), 13, "\"activation\"");
  write_text(nested / "summary.json", text);
  expect_input_error([&] { read_run(nested); }, {"missing field 'memory_breakdown.activations'"});

  const auto jsonl = copy_run("none-ga0-mp0-lora1", dir / "jsonl");
  write_text(jsonl / "metrics.jsonl", read_file(jsonl / "metrics.jsonl") + "{\"step\": 17, \n");
  expect_input_error([&] { read_run(jsonl); }, {(jsonl / "metrics.jsonl").string() + ":17"});

  // Through the report: no output at all.
  ReportToolOptions o;
  o.runs = {kRuns + "/base", broken.string()};
  o.output = (dir / "report").string();
  o.no_plots = true;
  expect_input_error([&] { run_report(o); }, {"summary.json"});
  EXPECT_FALSE(fs::exists(dir / "report"));
  o.runs = {kRuns + "/base", kRuns + "/base/"};
  expect_input_error([&] { run_report(o); }, {"given twice"});
}

TEST(Report, OneCellWithTwoRunsShowsBoth) {
  // The same run in two places: named by path, both values in one cell, and said so.
  const auto dir = fresh_dir("crowded");
  const auto a = copy_run("none-ga0-mp0-lora1", dir / "a");
  const auto b = copy_run("none-ga0-mp0-lora1", dir / "b");
  const auto md = table2_markdown(read_runs({a.string(), b.string()}));
  EXPECT_NE(md.find("| none | Peak Mem (MiB, CPU allocator) | – | 300.0 / 300.0 | – |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("- **More than one run in a cell** (in this order): none, GA off, MP off, "
                    "LoRA on: `" +
                    a.string() + "` and `" + b.string() + "`"),
            std::string::npos)
      << md;
}

TEST(Report, EvaluationFoldersOnly) {
  const auto runs = read_runs({kRuns + "/base"});
  EXPECT_EQ(table2_markdown(runs),
            "# Table 2: System performance measurement\n\nNo folder holds a "
            "summary.json (llt-finetune's): no training run to show.\n");
  const auto table1 = table1_markdown(runs);
  EXPECT_NE(table1.find("| Computation: time | no pair | no pair | no pair | no pair |"),
            std::string::npos)
      << table1;
  EXPECT_NE(table1.find("- LoRA: no pair: no two ok runs differ only in lora_rank."),
            std::string::npos);
  EXPECT_NE(before_after_markdown(runs).find("No prompt appears in the generations.jsonl of two or "
                                             "more folders."),
            std::string::npos);
}

TEST(Report, FolderOfAKilledJobIsLeftOutWithAWarning) {
  // A job killed before llt wrote anything (cgroup OOM, time limit) leaves only slurm/lib.sh's
  // records; one killed mid-training also its metrics.jsonl. Reported, not fatal.
  const auto dir = fresh_dir("killed");
  const auto killed = dir / "7_3-ablation-ga-off_mp-off_lora-off_ckpt-off";
  write_text(killed / "job.txt", "## start\nJobId=7 JobName=ablation\n");
  write_text(killed / "command.txt", "llt-finetune --output x\n");
  write_text(killed / "rss.csv", "time_s,rss_bytes\n");
  const auto midway = dir / "midway";
  write_text(midway / "sbatch-config.toml", "[job]\n");
  write_text(midway / "metrics.jsonl", "{\"step\": 1, \"loss\": 5.5}\n");
  const RunRecord r = read_run(killed);
  EXPECT_FALSE(r.summary);
  EXPECT_EQ(r.partial_files, (std::vector<std::string>{"job.txt", "command.txt", "rss.csv"}));
  EXPECT_EQ(read_run(midway).metrics.size(), 1u);

  auto dirs = fixture_dirs();
  dirs.push_back(killed.string());
  dirs.push_back(midway.string());
  const std::string md = table2_markdown(read_runs(dirs));
  // The table itself is the fixtures' alone; the folders are named below it.
  EXPECT_EQ(md.substr(0, std::string(kTable2).size()), kTable2);
  EXPECT_EQ(md.substr(std::string(kTable2).size()),
            "- **Left out, no results** (job records but no summary.json, generations.jsonl or "
            "perplexity.json: the job ended before llt wrote them, e.g. killed for memory or "
            "time): `7_3-ablation-ga-off_mp-off_lora-off_ckpt-off` and `midway`\n");
  EXPECT_EQ(table2_csv(read_runs(dirs)), table2_csv(read_runs(fixture_dirs())));
  EXPECT_NE(table2_markdown(read_runs({killed.string()})).find("killed for memory or time): `7_3"),
            std::string::npos);

  auto t = run_tool("llt-report " + kRuns + "/base " + killed.string() + " --no-plots --output " +
                    (dir / "out").string());
  EXPECT_EQ(t.code, 0) << t.output;
  EXPECT_NE(t.output.find("llt-report: warning: " + killed.string() +
                          ": no summary.json, generations.jsonl or perplexity.json (only "
                          "job.txt, command.txt, rss.csv): the job ended before llt wrote its "
                          "results"),
            std::string::npos)
      << t.output;
  EXPECT_TRUE(fs::exists(dir / "out" / "table2.md"));

  // Still errors: a folder of other files, and malformed partial outputs.
  write_text(dir / "other" / "notes.txt", "mine");
  expect_input_error([&] { read_run(dir / "other"); }, {"other", "not a run folder", "job.txt"});
  write_text(midway / "metrics.jsonl", "{\"step\": 1, \"lo");
  expect_input_error([&] { read_run(midway); }, {(midway / "metrics.jsonl").string() + ":1"});
}

TEST(Report, NullPerplexityIsNan) {
  // llt-perplexity writes null for a NaN (JSON has none): an untrained model's overflow.
  const auto dir = fresh_dir("nan-perplexity");
  const auto nan_run = copy_run("base", dir);
  write_text(nan_run / "perplexity.json",
             "{\"mean_nll\": null, \"perplexity\": null, \"tokens\": 1000, \"samples\": 10, "
             "\"over\": \"labels\"}");
  const RunRecord r = read_run(nan_run);
  ASSERT_TRUE(r.perplexity);
  EXPECT_TRUE(std::isnan(r.perplexity->mean_nll));
  EXPECT_TRUE(std::isnan(r.perplexity->perplexity));
  EXPECT_NE(before_after_markdown({r}).find("| `base` | NaN | NaN | 1000 | 10 | labels |"),
            std::string::npos)
      << before_after_markdown({r});
  write_text(nan_run / "perplexity.json",
             "{\"mean_nll\": \"nan\", \"perplexity\": 1, "
             "\"tokens\": 1}");
  expect_input_error([&] { read_run(nan_run); }, {"'mean_nll'", "a number"});
}

TEST(Report, ToolExitCodes) {
  const auto dir = fresh_dir("tool");
  auto r = run_tool("llt-report --help");
  EXPECT_EQ(r.code, 0) << r.output;
  r = run_tool("llt-report " + (dir / "absent").string() + " --output " + (dir / "out").string());
  EXPECT_EQ(r.code, 1) << r.output;
  const auto broken = copy_run("base", dir / "broken");
  write_text(broken / "perplexity.json", "{\"mean_nll\": 2.0, \"perplexity\": 7.4}");
  r = run_tool("llt-report " + broken.string() + " --no-plots --output " + (dir / "out").string());
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_EQ(r.output, "llt-report: error: " + (broken / "perplexity.json").string() +
                          ": missing field 'tokens'\n");
  EXPECT_FALSE(fs::exists(dir / "out"));
  r = run_tool("llt-report " + kRuns + "/base --no-plots --output " + (dir / "out").string());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find((dir / "out" / "table2.md").string()), std::string::npos) << r.output;
  // --config takes the flags' names as flat TOML keys; unknown keys are errors.
  write_text(dir / "report.toml", "output = \"" + (dir / "cfg").string() + "\"\nno-plots = true\n");
  r = run_tool("llt-report --config " + (dir / "report.toml").string() + " " + kRuns + "/base");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir / "cfg" / "before_after.md"));
  EXPECT_FALSE(fs::exists(dir / "cfg" / "plots"));
  write_text(dir / "bad.toml", "outptu = \"x\"\n");
  r = run_tool("llt-report --config " + (dir / "bad.toml").string() + " " + kRuns + "/base");
  EXPECT_EQ(r.code, 1) << r.output;
}

}  // namespace
}  // namespace llt
