#include "llt/tools/report.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <set>
#include <sstream>
#include <system_error>

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/tools/options.h"  // ReportToolOptions: std only

namespace llt::tools {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kBytesPerMb = 1024.0 * 1024.0;  // the seed's "MB", as torch.cuda reports are read
constexpr double kNoChange = 0.01;               // Table 1: a change within 1% shows as "−"

// ---------------------------------------------------------------------------------------------
// Reading: every error names the file (and line and field).

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

// A JSON value as a short quote for error messages.
std::string quote(const json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 40) + "..." : s;
}

json parse_json(const std::string& text, const std::string& where) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    std::string what = e.what();  // "[json.exception.parse_error.101] parse error at line ..."
    const auto bracket = what.find("] ");
    if (bracket != std::string::npos) what = what.substr(bracket + 2);
    throw InputError(where + ": not valid JSON (" + one_line(what) + ")");
  }
}

// Typed access to one JSON object's fields; `prefix` names nested objects in messages.
class Fields {
 public:
  Fields(const json& j, std::string where, std::string prefix = "")
      : j_(j), where_(std::move(where)), prefix_(std::move(prefix)) {
    if (!j_.is_object()) {
      throw InputError(where_ + (prefix_.empty() ? "" : ": field '" + prefix_ + "'") +
                       ": expected a JSON object, found " + quote(j_));
    }
  }
  bool has(const std::string& key) const { return j_.contains(key); }
  int64_t integer(const std::string& key) const {
    const json& v = get(key);
    if (!v.is_number_integer()) fail(key, "an integer", v);
    return v.get<int64_t>();
  }
  double number(const std::string& key, bool null_is_nan = false) const {
    const json& v = get(key);
    if (null_is_nan && v.is_null()) return std::nan("");  // JSON has no NaN; nlohmann writes null
    if (!v.is_number()) fail(key, "a number", v);
    return v.get<double>();
  }
  std::string string(const std::string& key) const {
    const json& v = get(key);
    if (!v.is_string()) fail(key, "a string", v);
    return v.get<std::string>();
  }
  Fields object(const std::string& key) const { return Fields(get(key), where_, name(key)); }

 private:
  std::string name(const std::string& key) const {
    return prefix_.empty() ? key : prefix_ + "." + key;
  }
  const json& get(const std::string& key) const {
    const auto it = j_.find(key);
    if (it == j_.end()) throw InputError(where_ + ": missing field '" + name(key) + "'");
    return *it;
  }
  [[noreturn]] void fail(const std::string& key, const char* expected, const json& v) const {
    throw InputError(where_ + ": field '" + name(key) + "': expected " + expected + ", found " +
                     quote(v));
  }
  const json& j_;
  std::string where_;
  std::string prefix_;
};

// Calls `each(record, "FILE:LINE")` for every non-blank line of a JSONL file.
void for_each_jsonl(const fs::path& path, const std::function<void(const Fields&)>& each) {
  std::istringstream in(read_file(path));
  int64_t line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path.string() + ":" + std::to_string(line_number);
    const json j = parse_json(line, where);
    each(Fields(j, where));
  }
}

// Every scalar of a JSON object as text, nested keys joined with '.' (for the CSV).
void flatten(const json& j, const std::string& prefix, std::map<std::string, std::string>& out) {
  for (const auto& [key, v] : j.items()) {
    const std::string name = prefix.empty() ? key : prefix + "." + key;
    if (v.is_object()) {
      flatten(v, name, out);
    } else {
      out[name] = v.is_string() ? v.get<std::string>() : v.dump();
    }
  }
}

RunSummary read_summary(const fs::path& path, std::map<std::string, std::string>& fields) {
  const json j = parse_json(read_file(path), path.string());
  const Fields f(j, path.string());
  RunSummary s;
  s.status = f.string("status");
  static const std::set<std::string> kStatuses = {"ok", "oom", "nan", "preempted", "error"};
  if (kStatuses.count(s.status) == 0) {
    throw InputError(path.string() +
                     ": field 'status': expected ok | oom | nan | preempted | "
                     "error, found \"" +
                     s.status + "\"");
  }
  s.steps = f.integer("steps");
  s.samples = f.integer("samples");
  s.runtime_s = f.number("runtime_s");
  s.peak_allocated_training = f.integer("peak_allocated_training");
  s.device = f.string("device");
  s.precision = f.string("precision");
  s.grad_accum = f.integer("grad_accum");
  s.batch_size = f.integer("batch_size");
  s.lora_rank = f.integer("lora_rank");
  s.grad_checkpoint = f.string("grad_checkpoint");
  s.base_dtype = f.string("base_dtype");
  s.dim = f.integer("dim");
  s.n_layers = f.integer("n_layers");
  s.model = f.string("model");
  s.git_sha = f.string("git_sha");
  const Fields b = f.object("memory_breakdown");
  s.breakdown = {b.integer("parameters"), b.integer("gradients"), b.integer("optimizer_state"),
                 b.integer("activations")};
  flatten(j, "", fields);
  return s;
}

PerplexityFigures read_perplexity(const fs::path& path) {
  const json j = parse_json(read_file(path), path.string());
  const Fields f(j, path.string());
  PerplexityFigures p;
  p.mean_nll = f.number("mean_nll", /*null_is_nan=*/true);
  p.perplexity = f.number("perplexity", /*null_is_nan=*/true);
  p.tokens = f.integer("tokens");
  if (f.has("samples")) p.samples = f.integer("samples");
  if (f.has("over")) p.over = f.string("over");
  return p;
}

std::string folder_name(const fs::path& dir) {
  std::error_code ec;
  fs::path full = fs::weakly_canonical(dir, ec);
  if (ec) full = fs::absolute(dir).lexically_normal();
  return full.filename().string();
}

// ---------------------------------------------------------------------------------------------
// Formatting.

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

std::string mb(int64_t bytes, int decimals) {
  return fixed(bytes / kBytesPerMb, decimals);
}

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

std::string md_code(const std::string& name) {
  return "`" + name + "`";
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
// The techniques of the seed's tables.

enum class Technique { kGradAccum, kGradCheckpoint, kMixedPrecision, kLora };
constexpr std::array<Technique, 4> kTechniques = {Technique::kGradAccum, Technique::kGradCheckpoint,
                                                  Technique::kMixedPrecision, Technique::kLora};

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

// The summary's setting of `t`, as the value summary.json holds.
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

using Runs = std::vector<const RunRecord*>;

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

Runs trained_runs(const std::vector<RunRecord>& runs) {
  Runs out;
  for (const auto& r : runs) {
    if (r.summary) out.push_back(&r);
  }
  return out;
}

// Table 2's column of a run: GA, MP, LoRA as bits, GA the slowest.
int grid_column(const RunSummary& s) {
  return (is_on(Technique::kGradAccum, s) ? 4 : 0) +
         (is_on(Technique::kMixedPrecision, s) ? 2 : 0) + (is_on(Technique::kLora, s) ? 1 : 0);
}

// Checkpointing settings present, "none" first.
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

// Which allocator peak_allocated_training came from.
std::string allocator_kind(const Runs& runs) {
  bool cpu = false;
  bool cuda = false;
  for (const auto* r : runs) (r->summary->device.rfind("cuda", 0) == 0 ? cuda : cpu) = true;
  if (cpu && cuda) return "";
  return cuda ? "CUDA allocator" : "CPU allocator";
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
  const double scale = q.bytes ? kBytesPerMb : 1.0;
  const std::string unit = q.bytes ? " MB" : " s";
  const double change = (on - off) / scale;
  const int decimals = q.bytes || std::abs(change) >= 1 ? 2 : 3;  // sub-second runs: ms
  const std::string amount = off == on ? fixed(0, 2) : signed_fixed(change, decimals);
  return direction(off, on) + " " + amount + unit + " (" + percent(off, on) + ")";
}

std::string pair_text(Technique t, const Pair& p) {
  return md_code(p.off->name) + " (" + field_name(t) + " " + setting(t, *p.off->summary) + ") → " +
         md_code(p.on->name) + " (" + field_name(t) + " " + setting(t, *p.on->summary) + ")";
}

// ---------------------------------------------------------------------------------------------
// Plots (gnuplot scripts and their data).

std::string gnuplot_string(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c == '\n' ? ' ' : c;
  }
  return out + "\"";
}

// Line i's colour (matplotlib's ten), point and dash: distinct for the first 10 x 8 lines.
std::string line_style(size_t i) {
  static const std::array<const char*, 10> kColours = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                                       "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                                                       "#bcbd22", "#17becf"};
  return std::string(" linecolor rgb \"") + kColours[i % kColours.size()] + "\" pointtype " +
         std::to_string(1 + i % 8) + " dashtype " + std::to_string(1 + i / kColours.size());
}

std::string number_or_nan(double v, int decimals) {
  return std::isfinite(v) ? fixed(v, decimals) : "NaN";
}

std::string script_head(const std::string& what, const std::string& png, int width, int height) {
  std::ostringstream gp;
  gp << "# llt-report: " << what << ". Reproduce inside this folder: gnuplot "
     << png.substr(0, png.size() - 4) << ".gp\n"
     << "set encoding utf8\n"
     << "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) {\n"
     << "  set terminal pngcairo size " << width << "," << height << " noenhanced font \",10\"\n"
     << "} else {\n"
     << "  set terminal png size " << width << "," << height << " noenhanced\n"
     << "}\n"
     << "set output \"" << png << "\"\n"
     << "set grid\n";
  return gp.str();
}

// One block per run (gnuplot's `index`); blocks are separated by two blank lines.
void loss_plot(const std::vector<RunRecord>& runs, std::map<std::string, std::string>& files) {
  std::ostringstream dat;
  std::vector<std::string> plots;
  dat << "# loss per optimizer step from each run's metrics.jsonl; one block per run\n";
  for (const auto& r : runs) {
    if (r.metrics.empty()) continue;
    if (!plots.empty()) dat << "\n\n";
    dat << "# run " << r.name << "\n# step loss\n";
    for (const auto& m : r.metrics) dat << m.step << " " << number_or_nan(m.loss, 6) << "\n";
    plots.push_back("\"loss.dat\" index " + std::to_string(plots.size()) +
                    " using 1:2 with linespoints pointsize 0.6" + line_style(plots.size()) +
                    " title " + gnuplot_string(r.name));
  }
  if (plots.empty()) return;
  std::string gp = script_head("loss per optimizer step, one line per run", "loss.png", 1000, 600);
  gp +=
      "set title \"Training loss (metrics.jsonl)\"\nset xlabel \"optimizer step\"\n"
      "set ylabel \"loss (mean over label tokens)\"\nset key outside right top\n";
  gp += "plot ";
  for (size_t i = 0; i < plots.size(); ++i) gp += (i == 0 ? "" : ", \\\n     ") + plots[i];
  files["loss.dat"] = dat.str();
  files["loss.gp"] = gp + "\n";
}

void memory_plot(const std::vector<RunRecord>& runs, std::map<std::string, std::string>& files) {
  std::ostringstream dat;
  std::vector<std::string> names;
  dat << "# memory samples from each run's memory.jsonl (1 MB = 2^20 bytes); one block per run\n";
  for (const auto& r : runs) {
    if (r.memory.empty()) continue;
    if (!names.empty()) dat << "\n\n";
    dat << "# run " << r.name << "\n# t_s step allocated_mb rss_mb phase\n";
    for (const auto& m : r.memory) {
      dat << fixed(m.t, 6) << " " << m.step << " " << mb(m.allocated, 3) << " " << mb(m.rss, 3)
          << " " << (m.phase.empty() ? "-" : m.phase) << "\n";
    }
    names.push_back(r.name);
  }
  if (names.empty()) return;
  auto plot = [&](int column) {
    std::string line = "plot ";
    for (size_t i = 0; i < names.size(); ++i) {
      line += (i == 0 ? "" : ", \\\n     ") + std::string("\"memory.dat\" index ") +
              std::to_string(i) + " using 1:" + std::to_string(column) +
              " with linespoints pointsize 0.5" + line_style(i) + " title " +
              gnuplot_string(names[i]);
    }
    return line + "\n";
  };
  std::string gp = script_head("memory over training, one line per run", "memory.png", 1000, 800);
  gp +=
      "set multiplot layout 2,1 title \"Memory during training (memory.jsonl)\"\n"
      "set key outside right top\nset xlabel \"time since training started (s)\"\n"
      "set ylabel \"allocated (MB)\"\n";
  gp += plot(3);
  gp += "set ylabel \"resident set size (MB)\"\n";
  gp += plot(4);
  gp += "unset multiplot\n";
  files["memory.dat"] = dat.str();
  files["memory.gp"] = gp;
}

void table2_plot(const std::vector<RunRecord>& all, std::map<std::string, std::string>& files) {
  const Runs runs = trained_runs(all);
  if (runs.empty()) return;
  const auto groups = checkpoint_groups(runs);
  const double width = 0.8 / static_cast<double>(groups.size());
  std::ostringstream dat;
  dat << "# Table 2 as bars: x = column (GA, MP, LoRA) shifted per checkpointing setting;\n"
         "# peak_allocated_training in MB (2^20 bytes), runtime_s; one block per setting\n";
  for (size_t g = 0; g < groups.size(); ++g) {
    if (g > 0) dat << "\n\n";
    dat << "# grad_checkpoint " << groups[g] << "\n# x peak_mb runtime_s status run\n";
    const double shift = (static_cast<double>(g) - (groups.size() - 1) / 2.0) * width;
    for (const auto* r : runs) {
      const RunSummary& s = *r->summary;
      if (s.grad_checkpoint != groups[g]) continue;
      std::string name = r->name;
      std::replace(name.begin(), name.end(), '"', '\'');
      dat << fixed(grid_column(s) + shift, 4) << " " << mb(s.peak_allocated_training, 3) << " "
          << fixed(s.runtime_s, 3) << " " << s.status << " \"" << name << "\"\n";
    }
  }
  std::string xtics = "set xtics (";
  for (int c = 0; c < 8; ++c) {
    xtics +=
        (c == 0 ? "" : ", ") + std::string("\"") + grid_label(c, "\\n") + "\" " + std::to_string(c);
  }
  xtics += ")\n";
  auto plot = [&](int column) {
    std::string line = "plot ";
    for (size_t g = 0; g < groups.size(); ++g) {
      const std::string block = "\"table2.dat\" index " + std::to_string(g);
      line += (g == 0 ? "" : ", \\\n     ") + block + " using 1:(strcol(4) eq \"ok\" ? $" +
              std::to_string(column) + " : 1/0) with boxes" + line_style(g) + " title " +
              gnuplot_string("grad_checkpoint " + groups[g]) + ", \\\n     " + block +
              " using 1:(0):(strcol(4) eq \"ok\" ? \"\" : strcol(4) eq \"oom\" ? \"×\" : "
              "strcol(4)) with labels font \",16\" offset 0,0.8 textcolor rgb \"#d62728\"" +
              " notitle";
    }
    return line + "\n";
  };
  const std::string kind = allocator_kind(runs);
  std::string gp =
      script_head("Table 2 as grouped bars (× = out of memory)", "table2.png", 1100, 900);
  gp +=
      "set multiplot layout 2,1 title \"Table 2: System performance measurement (× = out of "
      "memory)\"\n";
  gp += "set style fill solid 0.8 border -1\nset boxwidth " + fixed(width, 4) + " absolute\n";
  gp +=
      "set xrange [-0.6:7.6]\nset yrange [0:*]\nset offsets 0,0,graph 0.08,0\nset bmargin 5\nset "
      "key outside right top\n";
  gp += xtics;
  gp += "set ylabel \"Peak Mem (MB" + (kind.empty() ? "" : ", " + kind) + ")\"\n" + plot(2);
  gp += "set ylabel \"Runtime (s)\"\n" + plot(3);
  gp += "unset multiplot\n";
  files["table2.dat"] = dat.str();
  files["table2.gp"] = gp;
}

// ---------------------------------------------------------------------------------------------
// Running gnuplot.

// The program's path, or "" if it is not found (`program` may be a name on PATH or a path).
std::string find_program(const std::string& program) {
  if (program.find('/') != std::string::npos) {
    return access(program.c_str(), X_OK) == 0 ? program : "";
  }
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / program;
    if (access(candidate.c_str(), X_OK) == 0 && !fs::is_directory(candidate)) {
      return candidate.string();
    }
  }
  return "";
}

// Runs `program script` inside `dir`; its output goes to a log that is read back on failure.
void run_gnuplot(const std::string& program, const fs::path& dir, const std::string& script) {
  const fs::path log = dir / (script + ".log");
  const pid_t pid = fork();
  if (pid < 0) throw RuntimeError("cannot start " + program + ": fork failed");
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || chdir(dir.c_str()) != 0) _exit(127);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execl(program.c_str(), program.c_str(), script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::string output;
  try {
    output = read_file(log);
  } catch (const InputError&) {
  }
  std::error_code ignored;
  fs::remove(log, ignored);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const auto end = output.find_last_not_of("\n ");
    output = one_line(output.substr(0, end == std::string::npos ? 0 : end + 1));
    if (output.size() > 300) output = "..." + output.substr(output.size() - 300);
    throw RuntimeError(program + " failed on " + (dir / script).string() + " (exit status " +
                       std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
                       "): " + output);
  }
}

bool is_png(const fs::path& path) {
  static const std::string kMagic = "\x89PNG\r\n\x1a\n";
  try {
    return read_file(path).compare(0, kMagic.size(), kMagic) == 0;
  } catch (const InputError&) {
    return false;
  }
}

// Moves `from` onto `to` (same file system: a rename, atomic).
void move_into_place(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec)
    throw RuntimeError(to.string() + ": cannot move the finished file into place: " + ec.message());
}

}  // namespace

// ---------------------------------------------------------------------------------------------

const std::vector<std::string> kPartialRunFiles = {
    "job.txt",  "command.txt", "sbatch-config.toml", "tool-config.toml", "rss.csv",
    "gpu-memory.csv", "sched-memory.txt", "slurm.out", "config.toml", "metrics.jsonl",
    "memory.jsonl", "checkpoints"};

RunRecord read_run(const fs::path& dir) {
  if (!fs::exists(dir)) throw InputError(dir.string() + ": no such run folder");
  if (!fs::is_directory(dir))
    throw InputError(dir.string() + ": not a folder (expected a run folder)");
  RunRecord r;
  r.dir = dir;
  r.name = folder_name(dir);
  if (fs::exists(dir / "summary.json")) r.summary = read_summary(dir / "summary.json", r.fields);
  if (fs::exists(dir / "metrics.jsonl")) {
    for_each_jsonl(dir / "metrics.jsonl", [&](const Fields& f) {
      r.metrics.push_back({f.integer("step"), f.number("loss", /*null_is_nan=*/true)});
    });
  }
  if (fs::exists(dir / "memory.jsonl")) {
    for_each_jsonl(dir / "memory.jsonl", [&](const Fields& f) {
      r.memory.push_back({f.integer("step"), f.has("phase") ? f.string("phase") : "", f.number("t"),
                          f.integer("allocated"), f.integer("rss")});
    });
  }
  const bool has_generations = fs::exists(dir / "generations.jsonl");
  if (has_generations) {
    for_each_jsonl(dir / "generations.jsonl", [&](const Fields& f) {
      r.generations.push_back({f.string("prompt"), f.string("completion")});
    });
  }
  if (fs::exists(dir / "perplexity.json")) r.perplexity = read_perplexity(dir / "perplexity.json");
  if (!r.summary && !has_generations && !r.perplexity) {
    // A job killed before llt wrote its results (cgroup OOM, time limit) leaves its records.
    for (const auto& name : kPartialRunFiles) {
      if (fs::exists(fs::symlink_status(dir / name))) r.partial_files.push_back(name);
    }
    if (r.partial_files.empty()) {
      throw InputError(dir.string() +
                       ": not a run folder: no summary.json (llt-finetune), "
                       "generations.jsonl (llt-generate) or perplexity.json (llt-perplexity), "
                       "nor job records (job.txt, command.txt)");
    }
  }
  return r;
}

std::vector<RunRecord> read_runs(const std::vector<std::string>& dirs) {
  std::vector<RunRecord> runs;
  std::set<std::string> seen;
  for (const auto& dir : dirs) {
    runs.push_back(read_run(dir));
    std::error_code ec;
    const std::string canonical = fs::weakly_canonical(dir, ec).string();
    if (!seen.insert(canonical).second) throw InputError(dir + ": run folder given twice");
  }
  // Folders with the same name (a/run, b/run) are named by their path as given instead.
  std::map<std::string, int> count;
  for (const auto& r : runs) ++count[r.name];
  for (size_t i = 0; i < runs.size(); ++i) {
    if (count[runs[i].name] > 1) runs[i].name = fs::path(dirs[i]).lexically_normal().string();
  }
  return runs;
}

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
  md << "), 1 MB = 2^20 bytes; Runtime is `runtime_s`, the training steps' wall time (checkpoint writing excluded). "
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
  const std::string peak_label = "Peak Mem (MB" + (kind.empty() ? "" : ", " + kind) + ")";
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
    row(peak_label, [](const RunSummary& s) { return mb(s.peak_allocated_training, 1); });
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
  std::vector<std::string> header = {"run",  "folder",     "grad_accumulation", "mixed_precision",
                                     "lora", "peak_mem_mb"};
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
                                    mb(s.peak_allocated_training, 3)};
    for (size_t i = 6; i < header.size(); ++i) {
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
        "settings; both status ok). Memory is `memory_breakdown` from summary.json (1 MB = 2^20 "
        "bytes), time is `runtime_s`. ↑ more, ↓ less, − within 1% of the run without the "
        "technique; then the change (on − off) and its percentage.\n\n";
  std::vector<std::vector<Pair>> pairs;
  md << "| |";
  for (const Technique t : kTechniques) {
    pairs.push_back(find_pairs(t, runs));
    md << " " << title(t) << " |";
  }
  md << "\n|---|---|---|---|---|\n";
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

std::map<std::string, std::string> plot_files(const std::vector<RunRecord>& runs) {
  std::map<std::string, std::string> files;
  loss_plot(runs, files);
  memory_plot(runs, files);
  table2_plot(runs, files);
  return files;
}

int run_report(const ReportToolOptions& options) {
  if (options.runs.empty()) throw InputError("llt-report: give at least one RUN_DIR");
  if (options.output.empty()) throw InputError("llt-report: give --output DIR");
  const std::vector<RunRecord> runs = read_runs(options.runs);
  for (const auto& r : runs) {
    if (r.partial_files.empty()) continue;
    std::string held;
    for (const auto& name : r.partial_files) held += (held.empty() ? "" : ", ") + name;
    std::cerr << "llt-report: warning: " << r.dir.string()
              << ": no summary.json, generations.jsonl or perplexity.json (only " << held
              << "): the job ended before llt wrote its results (killed for memory or time?); "
                 "left out of the tables\n";
  }
  std::string gnuplot;
  if (!options.no_plots) {
    gnuplot = find_program(options.gnuplot);
    if (gnuplot.empty()) {
      throw InputError(options.gnuplot +
                       ": program not found (install gnuplot-nox, as "
                       "scripts/install-deps.sh does, or pass --no-plots)");
    }
  }
  const fs::path out = options.output;
  const std::map<std::string, std::string> texts = {
      {"table2.md", table2_markdown(runs)},
      {"table2.csv", table2_csv(runs)},
      {"table1.md", table1_markdown(runs)},
      {"table1.csv", table1_csv(runs)},
      {"before_after.md", before_after_markdown(runs)},
  };
  std::map<std::string, std::string> plots;
  std::vector<std::string> pngs;
  if (!options.no_plots) {
    plots = plot_files(runs);
    for (const auto& [name, content] : plots) {
      if (name.size() > 3 && name.compare(name.size() - 3, 3, ".gp") == 0) {
        pngs.push_back(name.substr(0, name.size() - 3) + ".png");
      }
    }
  }
  // Refuse before writing anything.
  for (const auto& [name, content] : texts)
    refuse_existing(out / name, options.overwrite, "--output");
  for (const auto& [name, content] : plots)
    refuse_existing(out / "plots" / name, options.overwrite, "--output");
  for (const auto& name : pngs)
    refuse_existing(out / "plots" / name, options.overwrite, "--output");

  // Plots are made in a staging folder beside the output and moved in only once all succeeded.
  const bool created = !fs::exists(out);
  fs::create_directories(out);
  const fs::path staging = out / (".llt-report-staging-" + std::to_string(getpid()));
  try {
    if (!plots.empty()) {
      fs::create_directories(staging);
      for (const auto& [name, content] : plots) write_file_atomic(staging / name, content, true);
      for (const auto& png : pngs) {
        run_gnuplot(gnuplot, staging, png.substr(0, png.size() - 4) + ".gp");
        if (!is_png(staging / png)) {
          throw RuntimeError(gnuplot + " did not write a PNG: " + (staging / png).string());
        }
      }
      fs::create_directories(out / "plots");
      for (const auto& [name, content] : plots)
        move_into_place(staging / name, out / "plots" / name);
      for (const auto& png : pngs) move_into_place(staging / png, out / "plots" / png);
      fs::remove_all(staging);
    }
    for (const auto& [name, content] : texts) write_file_atomic(out / name, content, true);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    if (created) fs::remove_all(out, ignored);
    throw;
  }

  std::cout << "llt-report: " << runs.size() << " folder" << (runs.size() == 1 ? "" : "s") << " -> "
            << out.string() << "\n"
            << "  Table 2: " << (out / "table2.md").string() << ", "
            << (out / "table2.csv").string() << "\n"
            << "  Table 1: " << (out / "table1.md").string() << ", "
            << (out / "table1.csv").string() << "\n"
            << "  before/after: " << (out / "before_after.md").string() << "\n";
  if (options.no_plots) {
    std::cout << "  plots: none (--no-plots)\n";
  } else {
    std::cout << "  plots:";
    for (const auto& png : pngs) std::cout << " " << (out / "plots" / png).string();
    if (pngs.empty()) std::cout << " none (no data to plot)";
    std::cout << "\n  (each plot's data and gnuplot script are beside it)\n";
  }
  return 0;
}

}  // namespace llt::tools
