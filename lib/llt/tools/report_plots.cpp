#include "llt/tools/report_plots.h"

#include <algorithm>
#include <array>
#include <sstream>

#include "llt/tools/report_format.h"

namespace llt::tools {
using report_format::allocator_kind, report_format::checkpoint_groups, report_format::fixed,
    report_format::grid_column, report_format::grid_label, report_format::mib,
    report_format::number_or_nan, report_format::Runs, report_format::trained_runs;

namespace {

bool is_control(char c) {
  return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
}

// A run's name or any other text in a gnuplot script, as a single-quoted string: gnuplot does
// no backquote (shell) or macro substitution inside single quotes, and '' is the one escape.
// Control characters (a newline would end the command) show as '?'.
std::string gnuplot_string(const std::string& text) {
  std::string out = "'";
  for (const char c : text) {
    if (c == '\'') {
      out += "''";
    } else {
      out += is_control(c) ? '?' : c;
    }
  }
  return out + "'";
}

// Text in a data file's comment line: one line.
std::string data_comment(std::string text) {
  std::replace_if(text.begin(), text.end(), is_control, '?');
  return text;
}

// Text in a data file's column: one word, no quotes ("-" when empty).
std::string data_word(std::string text) {
  std::replace_if(
      text.begin(), text.end(),
      [](char c) { return is_control(c) || c == ' ' || c == '"' || c == '\'' || c == '#'; }, '_');
  return text.empty() ? "-" : text;
}

// Line i's colour (matplotlib's ten), point and dash: distinct for the first 10 x 8 lines.
// `dashed`: the same colour and point, the next dash (a run's evaluations beside its loss).
std::string line_style(size_t i, bool dashed = false) {
  static const std::array<const char*, 10> kColours = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
                                                       "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                                                       "#bcbd22", "#17becf"};
  return std::string(" linecolor rgb \"") + kColours[i % kColours.size()] + "\" pointtype " +
         std::to_string(1 + i % 8) + " dashtype " +
         std::to_string(1 + i / kColours.size() + (dashed ? 1 : 0));
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

// One block per run (gnuplot's `index`); blocks are separated by two blank lines. Training loss
// in loss.dat, the evaluations of runs with --eval-data in eval.dat: the same colour per run,
// dashed with larger points.
void loss_plot(const std::vector<RunRecord>& runs, std::map<std::string, std::string>& files) {
  std::ostringstream dat, eval_dat;
  std::vector<std::string> plots;
  size_t blocks = 0, eval_blocks = 0;
  dat << "# loss per optimizer step from each run's metrics.jsonl; one block per run\n";
  eval_dat << "# eval loss (--eval-data) from each run's metrics.jsonl; one block per run\n";
  for (size_t i = 0; i < runs.size(); ++i) {
    const RunRecord& r = runs[i];
    if (!r.metrics.empty()) {
      if (blocks > 0) dat << "\n\n";
      dat << "# run " << data_comment(r.name) << "\n# step loss\n";
      for (const auto& m : r.metrics) dat << m.step << " " << number_or_nan(m.loss, 6) << "\n";
      plots.push_back("\"loss.dat\" index " + std::to_string(blocks++) +
                      " using 1:2 with linespoints pointsize 0.6" + line_style(i) + " title " +
                      gnuplot_string(r.name));
    }
    if (!r.eval.empty()) {
      if (eval_blocks > 0) eval_dat << "\n\n";
      eval_dat << "# run " << data_comment(r.name) << "\n# step eval_loss\n";
      for (const auto& m : r.eval) eval_dat << m.step << " " << number_or_nan(m.loss, 6) << "\n";
      plots.push_back("\"eval.dat\" index " + std::to_string(eval_blocks++) +
                      " using 1:2 with linespoints pointsize 1.2" + line_style(i, true) +
                      " title " + gnuplot_string(r.name + " (eval)"));
    }
  }
  if (plots.empty()) return;
  std::string gp = script_head("loss per optimizer step, one line per run", "loss.png", 1000, 600);
  gp += std::string("set title \"") +
        (eval_blocks > 0 ? "Training and eval loss" : "Training loss") +
        " (metrics.jsonl)\"\nset xlabel \"optimizer step\"\n"
        "set ylabel \"loss (mean over label tokens)\"\nset key outside right top\n";
  gp += "plot ";
  for (size_t i = 0; i < plots.size(); ++i) gp += (i == 0 ? "" : ", \\\n     ") + plots[i];
  files["loss.dat"] = dat.str();
  if (eval_blocks > 0) files["eval.dat"] = eval_dat.str();
  files["loss.gp"] = gp + "\n";
}

void memory_plot(const std::vector<RunRecord>& runs, std::map<std::string, std::string>& files) {
  std::ostringstream dat;
  std::vector<std::string> names;
  dat << "# memory samples from each run's memory.jsonl (1 MiB = 2^20 bytes); one block per run\n";
  for (const auto& r : runs) {
    if (r.memory.empty()) continue;
    if (!names.empty()) dat << "\n\n";
    dat << "# run " << data_comment(r.name) << "\n# t_s step allocated_mib rss_mib phase\n";
    for (const auto& m : r.memory) {
      dat << fixed(m.t, 6) << " " << m.step << " " << mib(m.allocated, 3) << " " << mib(m.rss, 3)
          << " " << data_word(m.phase) << "\n";
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
      "set ylabel \"allocated (MiB)\"\n";
  gp += plot(3);
  gp += "set ylabel \"resident set size (MiB)\"\n";
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
         "# peak_allocated_training in MiB (2^20 bytes), runtime_s; one block per setting\n";
  for (size_t g = 0; g < groups.size(); ++g) {
    if (g > 0) dat << "\n\n";
    dat << "# grad_checkpoint " << groups[g] << "\n# x peak_mib runtime_s status run\n";
    const double shift = (static_cast<double>(g) - (groups.size() - 1) / 2.0) * width;
    for (const auto* r : runs) {
      const RunSummary& s = *r->summary;
      if (s.grad_checkpoint != groups[g]) continue;
      dat << fixed(grid_column(s) + shift, 4) << " " << mib(s.peak_allocated_training, 3) << " "
          << fixed(s.runtime_s, 3) << " " << data_word(s.status) << " " << data_word(r->name)
          << "\n";
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
  gp += "set ylabel \"Peak Mem (MiB" + (kind.empty() ? "" : ", " + kind) + ")\"\n" + plot(2);
  gp += "set ylabel \"Runtime (s)\"\n" + plot(3);
  gp += "unset multiplot\n";
  files["table2.dat"] = dat.str();
  files["table2.gp"] = gp;
}

}  // namespace

std::map<std::string, std::string> plot_files(const std::vector<RunRecord>& runs) {
  std::map<std::string, std::string> files;
  loss_plot(runs, files);
  memory_plot(runs, files);
  table2_plot(runs, files);
  return files;
}

}  // namespace llt::tools
