// llt-report's shared helpers, used by the tables (report_tables.cpp) and the plots
// (report_plots.cpp): number formatting, the seed's four techniques, and Table 2's grid (which
// runs trained, their column and checkpointing group). Not part of the tool's interface.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "llt/tools/report.h"

namespace llt::tools::report_format {

// A MiB: 2^20 bytes, what the seed's tables (torch.cuda's reports) call a MB.
inline constexpr double kBytesPerMib = 1024.0 * 1024.0;

// `v` with `decimals` decimals ("%.*f"); signed_fixed always shows the sign ("%+.*f").
std::string fixed(double v, int decimals);
std::string signed_fixed(double v, int decimals);

// Bytes in MiB (2^20 bytes) with `decimals` decimals.
std::string mib(int64_t bytes, int decimals);

// fixed(v, decimals), or "NaN" where `v` is not finite.
std::string number_or_nan(double v, int decimals);

// The techniques of the seed's tables.
enum class Technique { kGradAccum, kGradCheckpoint, kMixedPrecision, kLora };
inline constexpr std::array<Technique, 4> kTechniques = {
    Technique::kGradAccum, Technique::kGradCheckpoint, Technique::kMixedPrecision,
    Technique::kLora};

// The technique's name in the seed's tables ("Grad. Accumulation").
const char* title(Technique t);

// The summary.json field that holds the technique's setting ("grad_accum").
const char* field_name(Technique t);

// The summary's setting of `t`, as the value summary.json holds.
std::string setting(Technique t, const RunSummary& s);

// Whether the summary has `t` on (grad_accum > 1, grad_checkpoint not none, precision not fp32,
// lora_rank > 0).
bool is_on(Technique t, const RunSummary& s);

// "on" | "off".
std::string on_off(bool on);

using Runs = std::vector<const RunRecord*>;

// The runs with a summary.json (training runs), in input order.
Runs trained_runs(const std::vector<RunRecord>& runs);

// Table 2's column of a run: GA, MP, LoRA as bits, GA the slowest.
int grid_column(const RunSummary& s);

// Checkpointing settings present, "none" first.
std::vector<std::string> checkpoint_groups(const Runs& runs);

// A column's heading, "GA on" SEPARATOR "MP off" SEPARATOR "LoRA on".
std::string grid_label(int column, const std::string& separator);

// Which allocator peak_allocated_training came from: "CPU allocator", "CUDA allocator", or ""
// where the runs mix both.
std::string allocator_kind(const Runs& runs);

}  // namespace llt::tools::report_format
