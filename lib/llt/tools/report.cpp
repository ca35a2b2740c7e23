#include "llt/tools/report.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/json_fields.h"
#include "llt/tools/options.h"  // ReportToolOptions: std only
#include "llt/tools/report_plots.h"
#include "llt/tools/report_tables.h"

namespace llt::tools {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---------------------------------------------------------------------------------------------
// Reading: every error names the file (and line and field).

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

// Calls `each(record, "FILE:LINE")` for every non-blank line of a JSONL file.
void for_each_jsonl(const fs::path& path, const std::function<void(const JsonFields&)>& each) {
  std::istringstream in(read_file(path));
  int64_t line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path.string() + ":" + std::to_string(line_number);
    const json j = parse_json(line, where);
    each(JsonFields(j, where));
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
  RunSummary s = run_summary_from_json(j, path.string());
  flatten(j, "", fields);
  return s;
}

PerplexityFigures read_perplexity(const fs::path& path) {
  const json j = parse_json(read_file(path), path.string());
  const JsonFields f(j, path.string());
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
// Running gnuplot.

// The program's absolute path, or "" if it is not found (`program` may be a name on PATH or a
// path; a relative path is taken from the current folder, before gnuplot runs elsewhere).
std::string find_program(const std::string& program) {
  if (program.find('/') != std::string::npos) {
    return access(program.c_str(), X_OK) == 0 ? fs::absolute(program).string() : "";
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

std::string seconds_text(double s) {
  std::ostringstream out;
  out << s;
  return out.str();
}

// Waits for `pid` at most `timeout_s` seconds (0: no limit); kills it at the limit. Returns
// whether it ended by itself, its wait status in `status`.
bool wait_for(pid_t pid, double timeout_s, int& status) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (true) {
    const pid_t done = waitpid(pid, &status, timeout_s > 0 ? WNOHANG : 0);
    if (done == pid) return true;
    if (done < 0 && errno != EINTR) return true;  // not our child any more: nothing to wait for
    if (timeout_s > 0 && std::chrono::steady_clock::now() >= deadline) {
      kill(-pid, SIGKILL);  // its process group: gnuplot and anything it started
      kill(pid, SIGKILL);
      while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      return false;
    }
    if (timeout_s > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// Runs `program script` inside `dir` for at most `timeout_s` seconds; its output goes to a log
// that is read back on failure.
void run_gnuplot(const std::string& program, const fs::path& dir, const std::string& script,
                 double timeout_s) {
  const fs::path log = dir / (script + ".log");
  const pid_t pid = fork();
  if (pid < 0) throw RuntimeError("cannot start " + program + ": fork failed");
  if (pid > 0) setpgid(pid, pid);  // as the child does: no race with a kill at the limit
  if (pid == 0) {
    setpgid(0, 0);
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || chdir(dir.c_str()) != 0) _exit(127);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execl(program.c_str(), program.c_str(), script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  const bool ended = wait_for(pid, timeout_s, status);
  std::string output;
  try {
    output = read_file(log);
  } catch (const InputError&) {
  }
  std::error_code ignored;
  fs::remove(log, ignored);
  if (!ended) {
    throw RuntimeError(program + " did not finish " + (dir / script).string() + " within " +
                       seconds_text(timeout_s) + " s (--gnuplot-timeout); it was stopped");
  }
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
    for_each_jsonl(dir / "metrics.jsonl", [&](const JsonFields& f) {
      if (f.has("eval_loss")) {
        r.eval.push_back({f.integer("step"), f.number("eval_loss", /*null_is_nan=*/true)});
      } else {
        r.metrics.push_back({f.integer("step"), f.number("loss", /*null_is_nan=*/true)});
      }
    });
  }
  if (fs::exists(dir / "memory.jsonl")) {
    for_each_jsonl(dir / "memory.jsonl", [&](const JsonFields& f) {
      r.memory.push_back({f.integer("step"), f.has("phase") ? f.string("phase") : "", f.number("t"),
                          f.integer("allocated"), f.integer("rss")});
    });
  }
  const bool has_generations = fs::exists(dir / "generations.jsonl");
  if (has_generations) {
    for_each_jsonl(dir / "generations.jsonl", [&](const JsonFields& f) {
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
    fs::path canonical = fs::weakly_canonical(dir, ec);
    if (ec) canonical = fs::absolute(dir).lexically_normal();
    if (!seen.insert(canonical.string()).second) throw InputError(dir + ": run folder given twice");
  }
  // Folders with the same name (a/run, b/run) are named by their path as given instead.
  std::map<std::string, int> count;
  for (const auto& r : runs) ++count[r.name];
  for (size_t i = 0; i < runs.size(); ++i) {
    if (count[runs[i].name] > 1) runs[i].name = fs::path(dirs[i]).lexically_normal().string();
  }
  return runs;
}

int run_report(const ReportToolOptions& options) {
  if (options.runs.empty()) throw InputError("llt-report: give at least one RUN_DIR");
  if (options.output.empty()) throw InputError("llt-report: give --output DIR");
  if (!(options.gnuplot_timeout_s >= 0) || std::isinf(options.gnuplot_timeout_s)) {
    throw InputError("--gnuplot-timeout must be a number of seconds >= 0 (0: no limit), got " +
                     seconds_text(options.gnuplot_timeout_s));
  }
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
        run_gnuplot(gnuplot, staging, png.substr(0, png.size() - 4) + ".gp",
                    options.gnuplot_timeout_s);
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
