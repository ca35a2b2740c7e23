// llt-report's tables from the run folders read by report.h: the seed's Table 2 and Table 1
// (Markdown + CSV) and the before/after sheet of perplexity and completions (Markdown).
// No torch here: this reads and writes text.
#pragma once

#include <string>
#include <vector>

#include "llt/tools/report.h"

namespace llt::tools {

// The seed's Table 2 (peak memory and runtime over GA x MP x LoRA, per checkpointing setting),
// from the runs with a summary.json: Markdown (naming the folders without results), and CSV
// with one row per run and every field.
std::string table2_markdown(const std::vector<RunRecord>& runs);
std::string table2_csv(const std::vector<RunRecord>& runs);

// The seed's Table 1, measured: per technique, the change in memory_breakdown and runtime between
// two ok runs that differ only in that technique. CSV: one row per (pair, quantity).
std::string table1_markdown(const std::vector<RunRecord>& runs);
std::string table1_csv(const std::vector<RunRecord>& runs);

// Perplexity per folder, then each prompt found in two or more folders' generations.jsonl with
// the completions side by side.
std::string before_after_markdown(const std::vector<RunRecord>& runs);

}  // namespace llt::tools
