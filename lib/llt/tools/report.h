// llt-report: reads run folders (llt-finetune's summary.json, metrics.jsonl, memory.jsonl;
// llt-perplexity's perplexity.json; llt-generate's generations.jsonl) and writes the seed's
// Table 1 and Table 2 (Markdown + CSV), gnuplot plots and a before/after sheet of completions.
// Here: the run folders' contents and the tool's order of work; the tables are in
// report_tables.h, the plots in report_plots.h. No torch here: this reads and writes text.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "llt/tools/run_folder.h"  // RunSummary

namespace llt::tools {

struct ReportToolOptions;  // llt/tools/options.h

struct MetricPoint {  // one record of metrics.jsonl: a training step's loss, or an evaluation's
  int64_t step = 0;
  double loss = 0;
};

struct MemoryPoint {  // one line of memory.jsonl
  int64_t step = 0;
  std::string phase;
  double t = 0;  // seconds since training started
  int64_t allocated = 0;
  int64_t rss = 0;
};

struct GenerationRecord {  // one line of generations.jsonl
  std::string prompt;
  std::string completion;
};

struct PerplexityFigures {  // perplexity.json
  double mean_nll = 0;    // NaN where the file has null (an untrained model's NaN loss)
  double perplexity = 0;  // NaN where the file has null
  int64_t tokens = 0;
  std::optional<int64_t> samples;
  std::string over;
};

// Everything llt-report reads from one run folder.
struct RunRecord {
  std::string name;  // the label in tables and plots: the folder's name (its path if not unique)
  std::filesystem::path dir;
  std::optional<RunSummary> summary;
  std::map<std::string, std::string>
      fields;  // summary.json flattened: "memory_breakdown.gradients"
  std::vector<MetricPoint> metrics;  // training records ("loss")
  std::vector<MetricPoint> eval;     // evaluation records ("eval_loss", --eval-data)
  std::vector<MemoryPoint> memory;
  std::vector<GenerationRecord> generations;
  std::optional<PerplexityFigures> perplexity;
  // Non-empty: a folder without llt's results (no summary.json, generations.jsonl or
  // perplexity.json) whose job ended before llt wrote them (killed for memory or time): the
  // job records and partial outputs it does hold (kPartialRunFiles). Left out of the tables.
  std::vector<std::string> partial_files;
};

// What a run folder can hold besides llt's results: slurm/lib.sh's job records and what
// llt-finetune writes before its summary.json.
extern const std::vector<std::string> kPartialRunFiles;

// Reads one run folder. A folder with none of summary.json, generations.jsonl, perplexity.json
// but some of kPartialRunFiles is returned with partial_files set. Throws InputError if it does
// not exist, holds none of these files, or a file is malformed (naming the file, line and field).
RunRecord read_run(const std::filesystem::path& dir);

// Reads every folder, in order, and gives each a unique name. Throws InputError as read_run, or
// if a folder is given twice.
std::vector<RunRecord> read_runs(const std::vector<std::string>& dirs);

// llt-report: reads options.runs, writes the tables, plots and sheet into options.output (all or
// nothing) and prints where they are, with a warning on stderr for each folder without results.
// Returns the exit code; throws InputError on bad input, an existing report file (without
// --overwrite) or a missing gnuplot (without --no-plots).
int run_report(const ReportToolOptions& options);

}  // namespace llt::tools
