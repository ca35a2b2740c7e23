#include "llt/tools/run_folder.h"

#include <algorithm>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include <unistd.h>

#include "llt/errors.h"
#include "llt/io.h"
#include "llt/json_fields.h"

namespace llt::tools {
namespace fs = std::filesystem;

namespace {

nlohmann::json estimate_json(const MemoryBreakdown& b) {
  return {{"parameters", b.parameters},
          {"gradients", b.gradients},
          {"optimizer_state", b.optimizer_state},
          {"activations", b.activations},
          {"recompute", b.recompute},
          {"head_activations", b.head_activations},
          {"block_backward", b.block_backward},
          {"loss_backward", b.loss_backward},
          {"optimizer_temporaries", b.optimizer_temporaries},
          {"total", b.total()}};
}

}  // namespace

nlohmann::json to_json(const RunSummary& s) {
  const MemoryBytes& b = s.breakdown;
  return {
      {"status", s.status},
      {"error", s.error},
      {"steps", s.steps},
      {"samples", s.samples},
      {"tokens", s.tokens},
      {"label_tokens", s.label_tokens},
      {"runtime_s", s.runtime_s},
      {"saving_s", s.saving_s},
      {"wall_s", s.wall_s},
      {"samples_per_s", s.runtime_s > 0 ? s.samples / s.runtime_s : 0.0},
      {"tokens_per_s", s.runtime_s > 0 ? s.tokens / s.runtime_s : 0.0},
      {"trainable_parameters", s.trainable_parameters},
      {"total_parameters", s.total_parameters},
      {"device", s.device},
      {"world_size", s.world_size},
      {"precision", s.precision},
      {"grad_accum", s.grad_accum},
      {"batch_size", s.batch_size},
      {"lora_rank", s.lora_rank},
      {"grad_checkpoint", s.grad_checkpoint},
      {"attention", s.attention},
      {"base_dtype", s.base_dtype},
      {"dim", s.dim},
      {"peak_allocated", s.peak_allocated},
      {"peak_reserved", s.peak_reserved},
      {"peak_allocated_training", s.peak_allocated_training},
      {"peak_rss", s.peak_rss},
      {"memory_cap_gib", s.memory_cap_gib},
      {"skipped_steps", s.skipped_steps},
      {"memory_breakdown",
       {{"parameters", b.parameters},
        {"gradients", b.gradients},
        {"optimizer_state", b.optimizer_state},
        {"activations", b.activations},
        {"step_transient", b.step_transient}}},
      {"memory_estimate", estimate_json(s.estimate)},
      {"model", s.model},
      {"data", s.data},
      {"n_layers", s.n_layers},
      {"command_line", s.command_line},
      {"git_sha", s.git_sha},
      {"llt_version", s.llt_version},
  };
}

RunSummary run_summary_from_json(const nlohmann::json& j, const std::string& where) {
  const JsonFields f(j, where);
  RunSummary s;
  s.status = f.string("status");
  static const std::set<std::string> kStatuses = {"ok", "oom", "nan", "preempted", "error"};
  if (kStatuses.count(s.status) == 0) {
    throw InputError(where + ": field 'status': expected ok | oom | nan | preempted | error, found \"" +
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
  const JsonFields b = f.object("memory_breakdown");
  s.breakdown.parameters = b.integer("parameters");
  s.breakdown.gradients = b.integer("gradients");
  s.breakdown.optimizer_state = b.integer("optimizer_state");
  s.breakdown.activations = b.integer("activations");
  return s;
}

JsonlWriter::JsonlWriter(const fs::path& path, bool append)
    : out_(path, append ? std::ios::app : std::ios::trunc) {
  if (!out_) throw RuntimeError(path.string() + ": cannot open for writing");
}

void JsonlWriter::write(const nlohmann::json& record) {
  out_ << record.dump() << '\n';
  out_.flush();
}

void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::istringstream in(read_file(path));
  std::vector<std::string> kept;
  std::map<int64_t, size_t> training;  // step -> its training record's place in `kept`
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);  // a torn last line: dropped
    if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) continue;
    const int64_t at = j["step"].get<int64_t>();
    if (at > step) continue;
    if (!j.contains("loss")) {  // another kind of record (evaluation): kept as it is
      kept.push_back(line);
      continue;
    }
    const auto [it, first] = training.emplace(at, kept.size());
    if (first) {
      kept.push_back(line);
    } else {
      kept[it->second] = line;  // the step again (a resumed run logged it twice): the later one
    }
  }
  std::string text;
  for (const auto& line : kept) text += line + "\n";
  write_file_atomic(path, text, /*overwrite=*/true);
}

MemorySample MemoryMonitor::sample() {
  const MemorySample m = sample_memory(device_);
  peak_allocated_ = std::max(peak_allocated_, m.peak_allocated);
  peak_reserved_ = std::max(peak_reserved_, m.peak_reserved);
  if (training_) training_peak_ = std::max(training_peak_, m.peak_allocated);
  return m;
}

void MemoryMonitor::start_training() {
  reset_peak();
  training_ = true;
}

void MemoryMonitor::reset_peak() {
  sample();  // fold the interval's peak into the run's before it is forgotten
  if (device_.is_cuda()) {
    reset_cuda_peak(device_.has_index() ? device_.index() : 0);
  } else {
    reset_host_peak();
  }
}

nlohmann::json memory_record(MemoryMonitor& monitor, int64_t step, const std::string& phase,
                             double t) {
  const MemorySample m = monitor.sample();
  return {{"step", step},
          {"phase", phase},
          {"t", t},
          {"device", monitor.device().str()},
          {"allocated", m.allocated},
          {"reserved", m.reserved},
          {"peak_allocated", m.peak_allocated},
          {"peak_reserved", m.peak_reserved},
          {"rss", m.rss},
          {"peak_rss", m.peak_rss}};
}

ProgressBar::ProgressBar(bool enabled) : enabled_(enabled && isatty(STDOUT_FILENO) == 1) {}

void ProgressBar::draw(int64_t step, int64_t last, const std::string& eta) {
  if (!enabled_) return;
  constexpr int kWidth = 30;
  const auto filled = static_cast<int>(kWidth * step / std::max<int64_t>(1, last));
  std::cout << "\r[" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] "
            << step << "/" << last << "  eta " << eta << std::flush;
  drawn_ = true;
}

void ProgressBar::erase() {
  if (!enabled_ || !drawn_) return;
  std::cout << "\r\033[K" << std::flush;
  drawn_ = false;
}

std::string format_mib(int64_t bytes) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << bytes / (1024.0 * 1024.0) << " MiB";
  return s.str();
}

RunConfig read_run_config(const std::filesystem::path& path) {
  std::map<std::string, std::string> values;  // key -> the value's text, quotes removed
  std::istringstream in(read_file(path));
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string value = line.substr(eq + 1);
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    values[line.substr(0, eq)] = value;
  }
  auto text = [&](const std::string& key) {
    const auto it = values.find(key);
    if (it == values.end()) throw InputError(path.string() + ": missing key '" + key + "'");
    return it->second;
  };
  auto integer = [&](const std::string& key) {
    const std::string value = text(key);
    size_t used = 0;
    int64_t n = -1;
    try {
      n = std::stoll(value, &used);
    } catch (const std::exception&) {
    }
    if (used == 0 || used != value.size() || n < 0) {
      throw InputError(path.string() + ": key '" + key + "' must be a non-negative integer, got '" +
                       value + "'");
    }
    return n;
  };
  return RunConfig{text("model"), integer("n-layers"), integer("lora-rank")};
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  std::ostringstream out;
  out << s / 3600 << ":" << std::setw(2) << std::setfill('0') << (s / 60) % 60 << ":"
      << std::setw(2) << std::setfill('0') << s % 60;
  return out.str();
}

}  // namespace llt::tools
