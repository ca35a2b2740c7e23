#include "llt/tools/report_tables.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "llt/tools/report_format.h"

namespace llt::tools {
using report_format::allocator_kind, report_format::checkpoint_groups, report_format::field_name,
    report_format::fixed, report_format::grid_column, report_format::grid_label,
    report_format::is_on, report_format::kBytesPerMib, report_format::kTechniques, report_format::mib,
    report_format::number_or_nan, report_format::on_off, report_format::Runs,
    report_format::setting, report_format::signed_fixed, report_format::Technique,
    report_format::title, report_format::trained_runs;

namespace {

constexpr double kNoChange = 0.01;  // Table 1: a change within 1% shows as "−"

// ---------------------------------------------------------------------------------------------
// Markdown and CSV text.

// Text inside a Markdown table cell: one line, pipes escaped, HTML-significant characters
// escaped so a completion shows as typed.
std::string md_cell(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '|':
        out += "\\|";
        break;
      case '\n':
        out += "<br>";
        break;
      case '\r':
        break;
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A name as inline code in a table cell: fenced by one more backquote than its longest run of
// them (padded with spaces when it starts or ends with one), pipes escaped, one line.
std::string md_code(const std::string& name) {
  size_t longest = 0;
  size_t run = 0;
  std::string text;
  for (const char c : name) {
    run = c == '`' ? run + 1 : 0;
    longest = std::max(longest, run);
    if (c == '|') {
      text += "\\|";
    } else {
      text += static_cast<unsigned char>(c) < 0x20 ? ' ' : c;
    }
  }
  const std::string fence(longest + 1, '`');
  const bool pad = !name.empty() && (name.front() == '`' || name.back() == '`');
  return fence + (pad ? " " : "") + text + (pad ? " " : "") + fence;
}

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\n\r") == std::string::npos) return text;
  std::string out = "\"";
  for (const char c : text) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string csv_row(const std::vector<std::string>& cells) {
  std::string line;
  for (size_t i = 0; i < cells.size(); ++i) line += (i == 0 ? "" : ",") + csv_field(cells[i]);
  return line + "\n";
}

// "a, b and c"
std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? " and " : ", ";
    out += md_code(names[i]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Table 2's cells and notes.

// The folders without results, for Table 2's notes.
std::string left_out_line(const std::vector<RunRecord>& runs) {
  std::vector<std::string> names;
  for (const auto& r : runs) {
    if (!r.partial_files.empty()) names.push_back(r.name);
  }
  if (names.empty()) return "";
  return "- **Left out, no results** (job records but no summary.json, generations.jsonl or "
         "perplexity.json: the job ended before llt wrote them, e.g. killed for memory or time): " +
         join_names(names) + "\n";
}

// "- **What**: value" when the runs agree, else the values with the runs that have each.
std::string agreement(const std::string& what, const Runs& runs,
                      const std::function<std::string(const RunSummary&)>& key) {
  if (runs.empty()) return "";
  std::vector<std::pair<std::string, std::vector<std::string>>> groups;
  for (const auto* r : runs) {
    const std::string value = key(*r->summary);
    auto it =
        std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == value; });
    if (it == groups.end()) it = groups.insert(groups.end(), {value, {}});
    it->second.push_back(r->name);
  }
  if (groups.size() == 1) return "- **" + what + "**: " + groups[0].first + "\n";
  std::string line = "- **" + what + " differs between runs**: ";
  for (size_t i = 0; i < groups.size(); ++i) {
    line += (i == 0 ? "" : "; ") + groups[i].first + " (" + join_names(groups[i].second) + ")";
  }
  return line + "\n";
}

// One Table 2 cell: the value of each run in it, × for out of memory, else the status.
std::string grid_cell(const Runs& cell,
                      const std::function<std::string(const RunSummary&)>& value) {
  if (cell.empty()) return "–";
  std::string text;
  for (size_t i = 0; i < cell.size(); ++i) {
    const RunSummary& s = *cell[i]->summary;
    text += (i == 0 ? "" : " / ") + (s.status == "ok"    ? value(s)
                                     : s.status == "oom" ? std::string("×")
                                                         : s.status);
  }
  return text;
}

// Runs of each (checkpointing setting, column), in input order.
std::map<std::pair<std::string, int>, Runs> grid_cells(const Runs& runs) {
  std::map<std::pair<std::string, int>, Runs> cells;
  for (const auto* r : runs)
    cells[{r->summary->grad_checkpoint, grid_column(*r->summary)}].push_back(r);
  return cells;
}

// ---------------------------------------------------------------------------------------------
// Table 1: pairs of runs that differ in one technique.

struct Pair {
  const RunRecord* off;
  const RunRecord* on;
};

// Everything that must match for two runs to differ "only" in `t`.
std::string context_key(Technique t, const RunSummary& s) {
  std::string key = s.device + "|" + s.model + "|" + std::to_string(s.dim) + "|" +
                    std::to_string(s.n_layers) + "|" + std::to_string(s.batch_size) + "|" +
                    std::to_string(s.samples) + "|" + s.base_dtype;
  for (const Technique other : kTechniques) {
    if (other != t) key += "|" + setting(other, s);
  }
  return key;
}

int techniques_on(const RunSummary& s) {
  int n = 0;
  for (const Technique t : kTechniques) n += is_on(t, s) ? 1 : 0;
  return n;
}

// Every (off, on) pair for `t` among ok runs; the first is the one Table 1 shows: the fewest
// other techniques on, then input order.
std::vector<Pair> find_pairs(Technique t, const Runs& runs) {
  std::vector<Pair> pairs;
  for (const auto* off : runs) {
    if (off->summary->status != "ok" || is_on(t, *off->summary)) continue;
    for (const auto* on : runs) {
      if (on->summary->status != "ok" || !is_on(t, *on->summary)) continue;
      if (context_key(t, *off->summary) == context_key(t, *on->summary)) pairs.push_back({off, on});
    }
  }
  std::stable_sort(pairs.begin(), pairs.end(), [](const Pair& a, const Pair& b) {
    return techniques_on(*a.off->summary) < techniques_on(*b.off->summary);
  });
  return pairs;
}

struct Quantity {
  const char* label;  // Table 1's row
  const char* name;   // table1.csv's quantity
  bool bytes;         // else seconds
  std::function<double(const RunSummary&)> get;
};

const std::vector<Quantity>& quantities() {
  // The seed's rows: memory (parameter, activation, gradient, optimizer state), computation.
  static const std::vector<Quantity> kQuantities = {
      {"Memory: parameters", "parameters", true,
       [](const RunSummary& s) { return static_cast<double>(s.breakdown.parameters); }},
      {"Memory: activations", "activations", true,
       [](const RunSummary& s) { return static_cast<double>(s.breakdown.activations); }},
      {"Memory: gradients", "gradients", true,
       [](const RunSummary& s) { return static_cast<double>(s.breakdown.gradients); }},
      {"Memory: optimizer state", "optimizer_state", true,
       [](const RunSummary& s) { return static_cast<double>(s.breakdown.optimizer_state); }},
      {"Computation: time", "runtime_s", false, [](const RunSummary& s) { return s.runtime_s; }},
  };
  return kQuantities;
}

std::string direction(double off, double on) {
  if (off == on) return "−";
  if (off != 0 && std::abs(on - off) <= kNoChange * std::abs(off)) return "−";
  return on > off ? "↑" : "↓";
}

std::string percent(double off, double on) {
  if (off == on) return "0.0%";
  if (off == 0) return "from 0";
  return signed_fixed(100.0 * (on - off) / off, 1) + "%";
}

std::string change_cell(const Quantity& q, double off, double on) {
  const double scale = q.bytes ? kBytesPerMib : 1.0;
  const std::string unit = q.bytes ? " MiB" : " s";
  const double change = (on - off) / scale;
  const int decimals = q.bytes || std::abs(change) >= 1 ? 2 : 3;  // sub-second runs: ms
  const std::string amount = off == on ? fixed(0, 2) : signed_fixed(change, decimals);
  return direction(off, on) + " " + amount + unit + " (" + percent(off, on) + ")";
}

std::string pair_text(Technique t, const Pair& p) {
  return md_code(p.off->name) + " (" + field_name(t) + " " + setting(t, *p.off->summary) + ") → " +
         md_code(p.on->name) + " (" + field_name(t) + " " + setting(t, *p.on->summary) + ")";
}

}  // namespace

std::string table2_markdown(const std::vector<RunRecord>& all) {
  const Runs runs = trained_runs(all);
  std::ostringstream md;
  md << "# Table 2: System performance measurement\n\n";
  if (runs.empty()) {
    md << "No folder holds a summary.json (llt-finetune's): no training run to show.\n";
    const std::string left_out = left_out_line(all);
    if (!left_out.empty()) md << "\n" << left_out;
    return md.str();
  }
  const std::string kind = allocator_kind(runs);
  md << "Peak memory and runtime of each training run by gradient accumulation (GA: off = "
        "grad_accum 1, on = more), mixed precision (MP: off = fp32, on = bf16 or fp16) and LoRA "
        "(off = lora_rank 0, on = more), one row group per activation-checkpointing setting "
        "(grad_checkpoint). Peak Mem is `peak_allocated_training` from summary.json, the most "
        "bytes allocated during training steps (";
  md << (kind == "CPU allocator"    ? "llt's counting CPU allocator"
         : kind == "CUDA allocator" ? "the CUDA caching allocator's peak"
                                    : "llt's counting allocator on CPU runs, the CUDA caching "
                                      "allocator's peak on CUDA runs");
  md << "), 1 MiB = 2^20 bytes; Runtime is `runtime_s`, the training steps' wall time (checkpoint "
        "writing excluded). "
        "× = out of memory (status oom), – = no run; another status is shown by name.\n\n";
  md << "| Grad. Checkpoint | " << title(Technique::kGradAccum) << " |";
  for (int c = 0; c < 8; ++c) md << " " << on_off(c & 4) << " |";
  md << "\n|---|---|";
  for (int c = 0; c < 8; ++c) md << "---:|";
  md << "\n";
  md << "| | " << title(Technique::kMixedPrecision) << " |";
  for (int c = 0; c < 8; ++c) md << " " << on_off(c & 2) << " |";
  md << "\n| | " << title(Technique::kLora) << " |";
  for (int c = 0; c < 8; ++c) md << " " << on_off(c & 1) << " |";
  md << "\n";
  const auto cells = grid_cells(runs);
  const std::string peak_label = "Peak Mem (MiB" + (kind.empty() ? "" : ", " + kind) + ")";
  std::vector<std::string> crowded;
  for (const auto& group : checkpoint_groups(runs)) {
    auto row = [&](const std::string& label,
                   const std::function<std::string(const RunSummary&)>& value) {
      md << "| " << group << " | " << label << " |";
      for (int c = 0; c < 8; ++c) {
        const auto it = cells.find({group, c});
        md << " " << grid_cell(it == cells.end() ? Runs{} : it->second, value) << " |";
      }
      md << "\n";
    };
    row(peak_label, [](const RunSummary& s) { return mib(s.peak_allocated_training, 1); });
    // Short runs (the tiny model on CPU) need the second decimal.
    row("Runtime (s)",
        [](const RunSummary& s) { return fixed(s.runtime_s, s.runtime_s < 10 ? 2 : 1); });
    for (int c = 0; c < 8; ++c) {
      const auto it = cells.find({group, c});
      if (it == cells.end() || it->second.size() < 2) continue;
      std::vector<std::string> names;
      for (const auto* r : it->second) names.push_back(r->name);
      crowded.push_back(group + ", " + grid_label(c, ", ") + ": " + join_names(names));
    }
  }
  Runs ok;
  for (const auto* r : runs) {
    if (r->summary->status == "ok") ok.push_back(r);
  }
  md << "\nFrom " << runs.size() << " run" << (runs.size() == 1 ? "" : "s") << ":\n\n";
  md << agreement("Device", runs, [](const RunSummary& s) { return s.device; });
  md << agreement("Model", runs, [](const RunSummary& s) {
    return md_code(s.model) + " (dim " + std::to_string(s.dim) + ", n_layers " +
           std::to_string(s.n_layers) + ")";
  });
  md << agreement("Samples (runs with status ok)", ok,
                  [](const RunSummary& s) { return std::to_string(s.samples); });
  md << agreement("Batch size", runs,
                  [](const RunSummary& s) { return std::to_string(s.batch_size); });
  md << agreement("Git commit", runs, [](const RunSummary& s) { return md_code(s.git_sha); });
  for (const Technique t : {Technique::kGradAccum, Technique::kMixedPrecision, Technique::kLora}) {
    Runs with;
    for (const auto* r : runs) {
      if (is_on(t, *r->summary)) with.push_back(r);
    }
    md << agreement(std::string(title(t)) + " on", with, [t](const RunSummary& s) {
      return std::string(field_name(t)) + " " + setting(t, s);
    });
  }
  for (const auto& line : crowded)
    md << "- **More than one run in a cell** (in this order): " << line << "\n";
  md << left_out_line(all);
  return md.str();
}

std::string table2_csv(const std::vector<RunRecord>& all) {
  const Runs runs = trained_runs(all);
  const std::vector<std::string> leading = {"grad_checkpoint", "status", "runtime_s",
                                            "peak_allocated_training"};
  std::set<std::string> rest;
  for (const auto* r : runs) {
    for (const auto& [key, value] : r->fields) rest.insert(key);
  }
  for (const auto& key : leading) rest.erase(key);
  // peak_mem_mb: the deprecated name of peak_mem_mib (the same number), kept for old scripts.
  std::vector<std::string> header = {"run",  "folder",       "grad_accumulation", "mixed_precision",
                                     "lora", "peak_mem_mib", "peak_mem_mb"};
  header.insert(header.end(), leading.begin(), leading.end());
  header.insert(header.end(), rest.begin(), rest.end());
  std::string csv = csv_row(header);
  for (const auto* r : runs) {
    const RunSummary& s = *r->summary;
    std::vector<std::string> row = {r->name,
                                    r->dir.string(),
                                    on_off(is_on(Technique::kGradAccum, s)),
                                    on_off(is_on(Technique::kMixedPrecision, s)),
                                    on_off(is_on(Technique::kLora, s)),
                                    mib(s.peak_allocated_training, 3),
                                    mib(s.peak_allocated_training, 3)};
    for (size_t i = row.size(); i < header.size(); ++i) {
      const auto it = r->fields.find(header[i]);
      row.push_back(it == r->fields.end() ? "" : it->second);
    }
    csv += csv_row(row);
  }
  return csv;
}

std::string table1_markdown(const std::vector<RunRecord>& all) {
  const Runs runs = trained_runs(all);
  std::ostringstream md;
  md << "# Table 1: System performance analysis (measured)\n\n"
        "What turning each technique on changes, measured between two runs that differ only in "
        "that technique (same device, model, samples, batch size, base dtype and other "
        "settings; both status ok). Memory is `memory_breakdown` from summary.json (1 MiB = 2^20 "
        "bytes), time is `runtime_s`. ↑ more, ↓ less, − within 1% of the run without the "
        "technique; then the change (on − off) and its percentage.\n\n";
  std::vector<std::vector<Pair>> pairs;
  md << "| |";
  for (const Technique t : kTechniques) {
    pairs.push_back(find_pairs(t, runs));
    md << " " << title(t) << " |";
  }
  md << "\n|---|";
  for (size_t i = 0; i < kTechniques.size(); ++i) md << "---|";
  md << "\n";
  for (const auto& q : quantities()) {
    md << "| " << q.label << " |";
    for (const auto& p : pairs) {
      md << " "
         << (p.empty() ? "no pair"
                       : change_cell(q, q.get(*p[0].off->summary), q.get(*p[0].on->summary)))
         << " |";
    }
    md << "\n";
  }
  md << "\nRun pairs (off → on):\n\n";
  for (size_t i = 0; i < kTechniques.size(); ++i) {
    const Technique t = kTechniques[i];
    md << "- " << title(t) << ": ";
    if (pairs[i].empty()) {
      md << "no pair: no two ok runs differ only in " << field_name(t) << ".\n";
      continue;
    }
    md << pair_text(t, pairs[i][0]);
    if (pairs[i].size() > 1) {
      md << "; also measured (in table1.csv): ";
      for (size_t k = 1; k < pairs[i].size(); ++k)
        md << (k == 1 ? "" : ", ") << pair_text(t, pairs[i][k]);
    }
    md << "\n";
  }
  return md.str();
}

std::string table1_csv(const std::vector<RunRecord>& all) {
  const Runs runs = trained_runs(all);
  std::string csv =
      csv_row({"technique", "off_run", "on_run", "field", "off_setting", "on_setting", "quantity",
               "unit", "off", "on", "change", "change_pct", "direction", "shown"});
  for (const Technique t : kTechniques) {
    const auto pairs = find_pairs(t, runs);
    for (size_t k = 0; k < pairs.size(); ++k) {
      const RunSummary& off = *pairs[k].off->summary;
      const RunSummary& on = *pairs[k].on->summary;
      for (const auto& q : quantities()) {
        const double a = q.get(off);
        const double b = q.get(on);
        const int decimals = q.bytes ? 0 : 3;
        csv += csv_row({title(t), pairs[k].off->name, pairs[k].on->name, field_name(t),
                        setting(t, off), setting(t, on), q.name, q.bytes ? "bytes" : "s",
                        fixed(a, decimals), fixed(b, decimals), fixed(b - a, decimals),
                        a == 0 ? "" : fixed(100.0 * (b - a) / a, 2), direction(a, b),
                        k == 0 ? "yes" : "no"});
      }
    }
  }
  return csv;
}

std::string before_after_markdown(const std::vector<RunRecord>& runs) {
  std::ostringstream md;
  md << "# Before / after\n\n## Perplexity\n\n";
  bool any = false;
  for (const auto& r : runs) {
    if (!r.perplexity) continue;
    if (!any) {
      md << "| Run | Perplexity | Mean NLL | Tokens | Samples | Over |\n"
            "|---|---:|---:|---:|---:|---|\n";
    }
    any = true;
    const auto& p = *r.perplexity;
    md << "| " << md_code(r.name) << " | " << number_or_nan(p.perplexity, 3) << " | "
       << number_or_nan(p.mean_nll, 4) << " | " << p.tokens << " | "
       << (p.samples ? std::to_string(*p.samples) : "–") << " | "
       << (p.over.empty() ? "–" : md_cell(p.over)) << " |\n";
  }
  if (!any) md << "No folder holds a perplexity.json.\n";

  md << "\n## Completions\n\n";
  // Prompts in first-seen order, with the folders that have each (first completion per folder).
  std::vector<std::string> prompts;
  std::map<std::string, std::vector<std::pair<const RunRecord*, const GenerationRecord*>>>
      by_prompt;
  for (const auto& r : runs) {
    for (const auto& g : r.generations) {
      auto& list = by_prompt[g.prompt];
      if (list.empty()) prompts.push_back(g.prompt);
      if (std::none_of(list.begin(), list.end(), [&](const auto& e) { return e.first == &r; })) {
        list.push_back({&r, &g});
      }
    }
  }
  prompts.erase(std::remove_if(prompts.begin(), prompts.end(),
                               [&](const std::string& p) { return by_prompt[p].size() < 2; }),
                prompts.end());
  if (prompts.empty()) {
    md << "No prompt appears in the generations.jsonl of two or more folders.\n";
    return md.str();
  }
  md << "Each prompt found in the generations.jsonl of two or more folders, with each folder's "
        "completion (its first, if it has the prompt more than once).\n";
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& list = by_prompt[prompts[i]];
    std::string fence = "```";
    while (prompts[i].find(fence) != std::string::npos) fence += "`";
    md << "\n### Prompt " << i + 1 << "\n\n"
       << fence << "text\n"
       << prompts[i] << "\n"
       << fence << "\n\n|";
    for (const auto& [r, g] : list) md << " " << md_code(r->name) << " |";
    md << "\n|";
    for (size_t k = 0; k < list.size(); ++k) md << "---|";
    md << "\n|";
    for (const auto& [r, g] : list) md << " " << md_cell(g->completion) << " |";
    md << "\n";
  }
  return md.str();
}

}  // namespace llt::tools
