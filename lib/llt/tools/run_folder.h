// A fine-tuning run folder (DESIGN.md's flow): config.toml (the flags it ran with),
// metrics.jsonl (one record per step), memory.jsonl (memory.rank<N>.jsonl on the other ranks of a
// data-parallel run), checkpoints/step-N/ (llt/train_state), adapter/ and summary.json. Here:
// the writers of these logs, the memory monitor whose samples they hold, the console's progress
// line, and RunSummary, the one type of summary.json that llt-finetune writes and llt-report reads.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include "llt/memory.h"
#include "llt/memory_estimate.h"

namespace llt::tools {

// Bytes per kind as summary.json's memory_breakdown measured them (the seed's Table 1, measured).
struct MemoryBytes {
  int64_t parameters = 0;
  int64_t gradients = 0;
  int64_t optimizer_state = 0;
  // The most a micro-batch's forward held at its end (loss computed, before backward) above
  // what was allocated when it began, over every micro-batch of the run (resumes included).
  int64_t activations = 0;
  // The training peak above parameters + gradients + optimizer state: the activations, the
  // backward's buffers or the optimizer step's temporaries, whichever is larger.
  int64_t step_transient = 0;
};

// summary.json: how a run ended, what it trained on and in what configuration (the techniques
// of the seed's Table 2 grid, so llt-report needs no other file), and what it measured.
struct RunSummary {
  std::string status;  // ok | oom | nan | preempted | error
  std::string error;   // why, unless ok
  int64_t steps = 0;
  int64_t samples = 0;  // all ranks'; an epoch's wrap-around repeats are not counted
  int64_t tokens = 0;
  int64_t label_tokens = 0;
  // runtime_s: the training steps' wall time (what Table 2 compares); writing training states
  // and adapters (gigabytes for full fine-tuning) is saving_s; wall_s is both.
  double runtime_s = 0;
  double saving_s = 0;
  double wall_s = 0;
  int64_t trainable_parameters = 0;
  int64_t total_parameters = 0;
  std::string device;  // cpu | cuda:N
  int64_t world_size = 1;  // data-parallel processes
  std::string precision;   // fp32 | bf16 | fp16
  int64_t grad_accum = 1;
  int64_t batch_size = 1;
  int64_t lora_rank = 0;        // 0 = full fine-tuning
  std::string grad_checkpoint;  // the recompute policy: none | block | every-k | ffn
  std::string attention;        // the attention kernel
  std::string base_dtype;
  int64_t dim = 0;
  int64_t n_layers = 0;
  int64_t peak_allocated = 0;           // bytes: llt's CPU allocator counter, or CUDA's peak
  int64_t peak_reserved = 0;
  int64_t peak_allocated_training = 0;  // the steps' peak, without loading's
  int64_t peak_rss = 0;
  double memory_cap_gib = 0;  // 0: none
  int64_t skipped_steps = 0;  // fp16: steps whose gradients overflowed
  MemoryBytes breakdown;      // measured
  MemoryBreakdown estimate;   // the analytic estimate of the same configuration (llt/memory_estimate)
  std::string model;
  std::string data;
  std::string command_line;
  std::string git_sha;
  std::string llt_version;
};

// summary.json's keys and values (samples_per_s and tokens_per_s derived from runtime_s).
nlohmann::json to_json(const RunSummary& s);

// The fields llt-report's tables use, read back from summary.json's `j` (`where`: the file, in
// errors); the others keep their defaults. Throws InputError naming the file and the field when
// one is missing or of another type, or the status is not one of the five.
RunSummary run_summary_from_json(const nlohmann::json& j, const std::string& where);

// What a run's config.toml (the resolved flags, written by llt-finetune) says of its model.
struct RunConfig {
  std::string model;      // --model as given (a path relative to where the run was started)
  int64_t n_layers = 0;   // --n-layers (0: all)
  int64_t lora_rank = 0;  // --lora-rank (0: full fine-tuning)
};

// Reads `path` (a run's config.toml: flat key=value lines as llt-finetune writes them). Throws
// InputError naming the file and the key when it is missing, malformed or of another type.
RunConfig read_run_config(const std::filesystem::path& path);

// Appends one JSON record per line and flushes, so a killed job keeps what it logged.
class JsonlWriter {
 public:
  JsonlWriter(const std::filesystem::path& path, bool append);
  void write(const nlohmann::json& record);

 private:
  std::ofstream out_;
};

// Keeps the records of steps <= `step` in a metrics.jsonl (a resumed run rewrites what came
// after), one training record (with "loss") per step, and drops lines that are not whole
// records; nothing when the file does not exist.
void truncate_metrics(const std::filesystem::path& path, int64_t step);

// Memory samples with the run's peaks kept across the per-step resets.
class MemoryMonitor {
 public:
  explicit MemoryMonitor(const c10::Device& device) : device_(device) {}
  MemorySample sample();
  // Starts the training phase: from now on the step peaks are also kept apart from loading's.
  void start_training();
  // Folds the interval's peak into the run's, then starts a new interval.
  void reset_peak();
  void set_cap(int64_t bytes) { set_memory_cap(device_, bytes); }
  int64_t peak_allocated() const { return peak_allocated_; }
  int64_t peak_reserved() const { return peak_reserved_; }
  int64_t training_peak_allocated() const { return training_peak_; }
  const c10::Device& device() const { return device_; }

 private:
  c10::Device device_;
  bool training_ = false;
  int64_t training_peak_ = 0;
  int64_t peak_allocated_ = 0;
  int64_t peak_reserved_ = 0;
};

// One memory.jsonl record: a sample now, at `step` and `phase`, `t` seconds into training.
nlohmann::json memory_record(MemoryMonitor& monitor, int64_t step, const std::string& phase,
                             double t);

// A live progress bar on stdout when it is a terminal (after every step, redrawn in place and
// erased before each log line); nothing at all when stdout is a file, so batch logs stay clean.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled);
  void draw(int64_t step, int64_t last, const std::string& eta);
  void erase();

 private:
  bool enabled_;
  bool drawn_ = false;
};

std::string format_mib(int64_t bytes);     // "12.3 MiB"
std::string format_duration(double seconds);  // "h:mm:ss"

}  // namespace llt::tools
