#include "llt/tools/report_format.h"

#include <array>
#include <cmath>
#include <cstdio>
#include <set>

namespace llt::tools::report_format {

std::string fixed(double v, int decimals) {
  std::array<char, 64> buf{};
  std::snprintf(buf.data(), buf.size(), "%.*f", decimals, v);
  return buf.data();
}

std::string signed_fixed(double v, int decimals) {
  std::array<char, 64> buf{};
  std::snprintf(buf.data(), buf.size(), "%+.*f", decimals, v);
  return buf.data();
}

std::string mib(int64_t bytes, int decimals) {
  return fixed(bytes / kBytesPerMib, decimals);
}

std::string number_or_nan(double v, int decimals) {
  return std::isfinite(v) ? fixed(v, decimals) : "NaN";
}

const char* title(Technique t) {
  switch (t) {
    case Technique::kGradAccum:
      return "Grad. Accumulation";
    case Technique::kGradCheckpoint:
      return "Grad. Checkpoint";
    case Technique::kMixedPrecision:
      return "Mixed Precision";
    case Technique::kLora:
      return "LoRA";
  }
  return "";
}

const char* field_name(Technique t) {
  switch (t) {
    case Technique::kGradAccum:
      return "grad_accum";
    case Technique::kGradCheckpoint:
      return "grad_checkpoint";
    case Technique::kMixedPrecision:
      return "precision";
    case Technique::kLora:
      return "lora_rank";
  }
  return "";
}

std::string setting(Technique t, const RunSummary& s) {
  switch (t) {
    case Technique::kGradAccum:
      return std::to_string(s.grad_accum);
    case Technique::kGradCheckpoint:
      return s.grad_checkpoint;
    case Technique::kMixedPrecision:
      return s.precision;
    case Technique::kLora:
      return std::to_string(s.lora_rank);
  }
  return "";
}

bool is_on(Technique t, const RunSummary& s) {
  switch (t) {
    case Technique::kGradAccum:
      return s.grad_accum > 1;
    case Technique::kGradCheckpoint:
      return s.grad_checkpoint != "none";
    case Technique::kMixedPrecision:
      return s.precision != "fp32";
    case Technique::kLora:
      return s.lora_rank > 0;
  }
  return false;
}

std::string on_off(bool on) {
  return on ? "on" : "off";
}

Runs trained_runs(const std::vector<RunRecord>& runs) {
  Runs out;
  for (const auto& r : runs) {
    if (r.summary) out.push_back(&r);
  }
  return out;
}

int grid_column(const RunSummary& s) {
  return (is_on(Technique::kGradAccum, s) ? 4 : 0) +
         (is_on(Technique::kMixedPrecision, s) ? 2 : 0) + (is_on(Technique::kLora, s) ? 1 : 0);
}

std::vector<std::string> checkpoint_groups(const Runs& runs) {
  std::set<std::string> seen;
  for (const auto* r : runs) seen.insert(r->summary->grad_checkpoint);
  std::vector<std::string> groups;
  if (seen.erase("none") > 0) groups.push_back("none");
  groups.insert(groups.end(), seen.begin(), seen.end());
  return groups;
}

std::string grid_label(int column, const std::string& separator) {
  return "GA " + on_off(column & 4) + separator + "MP " + on_off(column & 2) + separator + "LoRA " +
         on_off(column & 1);
}

std::string allocator_kind(const Runs& runs) {
  bool cpu = false;
  bool cuda = false;
  for (const auto* r : runs) (r->summary->device.rfind("cuda", 0) == 0 ? cuda : cpu) = true;
  if (cpu && cuda) return "";
  return cuda ? "CUDA allocator" : "CPU allocator";
}

}  // namespace llt::tools::report_format
