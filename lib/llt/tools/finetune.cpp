#include "llt/tools/finetune.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>

#include "llt/amp.h"
#include "llt/attention.h"
#include "llt/weights.h"
#include "llt/dataset.h"
#include "llt/distributed.h"
#include "llt/errors.h"
#include "llt/io.h"
#include "llt/lora.h"
#include "llt/loss.h"
#include "llt/recompute.h"
#include "llt/runtime.h"
#include "llt/safetensors.h"
#include "llt/version.h"
#include "llt/optim.h"
#include "llt/memory.h"
#include "llt/memory_estimate.h"

namespace llt::tools {
namespace fs = std::filesystem;

namespace {

// Set by SIGUSR1/SIGTERM (SLURM's pre-emption warning) or request_stop(): the loop checkpoints
// and exits 75; run_finetune clears it when it returns (the request was served).
std::atomic<bool> g_stop_requested{false};
extern "C" void on_stop_signal(int) { g_stop_requested = true; }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Appends one JSON record per line and flushes, so a killed job keeps what it logged.
class JsonlWriter {
 public:
  JsonlWriter(const fs::path& path, bool append)
      : out_(path, append ? std::ios::app : std::ios::trunc), path_(path) {
    if (!out_) throw RuntimeError(path.string() + ": cannot open for writing");
  }
  void write(const nlohmann::json& record) {
    out_ << record.dump() << '\n';
    out_.flush();
  }

 private:
  std::ofstream out_;
  fs::path path_;
};

// The parameters that train (requires_grad), with names, and those that do not.
struct ParameterSplit {
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  int64_t trainable_count = 0;
  int64_t total_count = 0;
  int64_t parameter_bytes = 0;  // every parameter's storage
};

ParameterSplit split_parameters(TransformerImpl& model) {
  ParameterSplit s;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    const auto& p = item.value();
    s.total_count += p.numel();
    s.parameter_bytes += p.numel() * static_cast<int64_t>(p.element_size());
    if (p.requires_grad()) {
      s.trainable.emplace_back(item.key(), p);
      s.trainable_count += p.numel();
    }
  }
  return s;
}


// ---------------------------------------------------------------------------------------------
// Checkpoints: checkpoints/step-N/{trainable.safetensors, optimizer.safetensors, state.json},
// written as step-N.tmp/ and renamed; older checkpoints are removed only after that.

struct TrainState {
  int64_t step = 0;       // optimizer steps done
  DataPosition data;      // the sampler's position after `step`
  LossScalerState scaler;
  double elapsed_s = 0;   // training wall time so far
  double saving_s = 0;    // of elapsed_s: writing checkpoints and adapters
  int64_t tokens = 0;
  int64_t label_tokens = 0;
  int64_t samples = 0;      // real samples: wrap-around repeats are not counted (run_finetune)
  int64_t activations = 0;  // the most bytes a micro-batch's forward held (accumulate_gradients)
};

std::string to_hex(const at::Tensor& bytes) {
  static const char* digits = "0123456789abcdef";
  const auto* p = bytes.contiguous().data_ptr<uint8_t>();
  std::string hex;
  for (int64_t i = 0; i < bytes.numel(); ++i) {
    hex += digits[p[i] >> 4];
    hex += digits[p[i] & 15];
  }
  return hex;
}

at::Tensor from_hex(const std::string& hex, const std::string& where) {
  if (hex.size() % 2 != 0) throw InputError(where + ": rng_state is not hex");
  auto t = at::empty({static_cast<int64_t>(hex.size() / 2)}, at::kByte);
  auto* p = t.data_ptr<uint8_t>();
  auto nibble = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    throw InputError(where + ": rng_state is not hex");
  };
  for (size_t i = 0; i < hex.size(); i += 2) p[i / 2] = nibble(hex[i]) << 4 | nibble(hex[i + 1]);
  return t;
}

fs::path latest_checkpoint(const fs::path& checkpoints) {
  fs::path best;
  int64_t best_step = -1;
  if (!fs::is_directory(checkpoints)) return best;
  for (const auto& entry : fs::directory_iterator(checkpoints)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || name.rfind("step-", 0) != 0 || name.find('.') != std::string::npos)
      continue;
    const int64_t step = std::stoll(name.substr(5));
    if (step > best_step) best_step = step, best = entry.path();
  }
  return best;
}

// `rank_rng_states`: in a data-parallel run, every rank's CPU generator state (hex, in rank
// order); empty for one process. Only the CPU generator is saved: on CPU each rank resumes its
// own dropout stream exactly, but CUDA generators (dropout on a GPU) are not restored, so a
// resumed GPU run with dropout is not bitwise the uninterrupted one.
void save_checkpoint(const fs::path& checkpoints, const TrainState& state,
                     const ParameterSplit& params, const AdamW& optimizer, int world_size,
                     const std::vector<std::string>& rank_rng_states) {
  const fs::path final_dir = checkpoints / ("step-" + std::to_string(state.step));
  const fs::path tmp = final_dir.string() + ".tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [name, p] : params.trainable) tensors.emplace_back(name, p.detach().cpu());
  write_safetensors(tmp / "trainable.safetensors", tensors, {});
  optimizer.save(tmp / "optimizer.safetensors");
  nlohmann::json j = {
      {"format", "llt-train-state-v1"},
      {"world_size", world_size},  // the cursor counts this many ranks' batches
      {"step", state.step},
      {"epoch", state.data.epoch},
      {"cursor", state.data.cursor},
      {"scale", state.scaler.scale},
      {"good_steps", state.scaler.good_steps},
      {"skipped_steps", state.scaler.skipped_steps},
      {"elapsed_s", state.elapsed_s},
      {"saving_s", state.saving_s},
      {"tokens", state.tokens},
      {"label_tokens", state.label_tokens},
      {"samples", state.samples},
      {"activations", state.activations},
      {"rng_state", to_hex(at::detail::getDefaultCPUGenerator().get_state())},
  };
  if (!rank_rng_states.empty()) j["rank_rng_states"] = rank_rng_states;
  write_file_atomic(tmp / "state.json", j.dump(1), /*overwrite=*/true);
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  for (const auto& entry : fs::directory_iterator(checkpoints)) {  // keep only the newest
    if (entry.path() != final_dir) fs::remove_all(entry.path());
  }
}

// Every rank of a data-parallel run loads the checkpoint rank 0 wrote.
TrainState load_checkpoint(const fs::path& dir, const ParameterSplit& params, AdamW& optimizer,
                           const DistributedConfig& dist) {
  const fs::path state_file = dir / "state.json";
  const auto j = nlohmann::json::parse(read_file(state_file), nullptr, false);
  if (!j.is_object() || j.value("format", "") != "llt-train-state-v1") {
    throw InputError(state_file.string() + ": not an llt training state (format)");
  }
  const int saved_world = j.value("world_size", 1);
  if (saved_world != dist.world_size) {
    throw InputError(state_file.string() + ": world_size " + std::to_string(saved_world) +
                     ", this run has " + std::to_string(dist.world_size) +
                     " processes; resume with the same number (the data position counts "
                     "per-rank batches)");
  }
  SafetensorsFile reader(dir / "trainable.safetensors");
  torch::NoGradGuard no_grad;
  for (const auto& [name, p] : params.trainable) {
    const auto saved = reader.read(name);  // InputError naming the key if missing
    if (saved.sizes() != p.sizes()) {
      throw InputError((dir / "trainable.safetensors").string() + ": " + name + " has shape " +
                       c10::str(saved.sizes()) + ", the model expects " + c10::str(p.sizes()));
    }
    p.copy_(saved);
  }
  optimizer.load(dir / "optimizer.safetensors");
  TrainState state;
  try {
    state.step = j.at("step");
    state.data = {j.at("epoch"), j.at("cursor")};
    state.scaler = {j.at("scale"), j.at("good_steps"), j.at("skipped_steps")};
    state.elapsed_s = j.at("elapsed_s");
    state.saving_s = j.value("saving_s", 0.0);
    state.tokens = j.at("tokens");
    state.label_tokens = j.at("label_tokens");
    state.samples = j.at("samples");
    state.activations = j.value("activations", int64_t{0});  // older checkpoints: measured anew
    const std::string rng = dist.world_size > 1
                                ? j.at("rank_rng_states").at(dist.rank).get<std::string>()
                                : j.at("rng_state").get<std::string>();
    auto generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(from_hex(rng, state_file.string()));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(state_file.string() + ": " + e.what());
  }
  return state;
}

// Keeps the metrics of steps <= `step` (a resumed run rewrites what came after).
void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::istringstream in(read_file(path));
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("step", int64_t{0}) <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept, /*overwrite=*/true);
}

// Everything the loop needs, resolved and loaded.
struct Run {
  fs::path dir;
  c10::Device device{c10::kCPU};
  c10::ScalarType param_dtype = c10::kFloat;
  c10::ScalarType base_dtype = c10::kFloat;
  Dtype precision = Dtype::kFp32;
  std::optional<Dataset> data;
  LoadedModel loaded;
  ParameterSplit params;
  int64_t pad_id = 0;
  DistributedConfig dist;  // world size 1 unless data-parallel
};

// Where a run starts: the checkpoint to resume from, or none. Refuses an existing run folder
// unless --resume says otherwise (nothing a user has is overwritten silently).
fs::path resolve_resume(const FinetuneToolOptions& o) {
  const fs::path dir(o.output);
  if (o.train.resume == ResumeMode::kNever) {
    if (fs::exists(dir)) {
      throw InputError(o.output + ": the run folder exists (--output); pass --resume auto to "
                       "continue it, or choose another folder");
    }
    return {};
  }
  if (o.train.resume == ResumeMode::kAuto) return latest_checkpoint(dir / "checkpoints");
  const std::string& resume = o.train.resume_path;
  if (!fs::exists(fs::path(resume) / "state.json")) {
    throw InputError(resume + ": not a checkpoint folder (--resume; expected state.json)");
  }
  return resume;
}

void check_precision(const Run& r, const FinetuneToolOptions& o) {
  if (r.precision == Dtype::kBf16 && !device_without_bf16(r.device).empty()) {
    throw InputError("--precision bf16: " + device_without_bf16(r.device) +
                     " has no bf16 arithmetic; use --precision fp16 (and --base-dtype fp16)");
  }
  if (r.precision == Dtype::kFp16 && r.device.is_cpu()) {
    throw InputError("--precision fp16: not supported on CPU (LibTorch 1.13 has no CPU fp16 "
                     "autocast); use bf16 or fp32");
  }
  if (r.base_dtype != c10::kFloat && r.precision == Dtype::kFp32) {
    throw InputError("--base-dtype " + dtype_name(r.base_dtype) +
                     ": half-precision base weights need --precision bf16 or fp16 (autocast)");
  }
  if (o.lora.rank == 0 && r.base_dtype != r.param_dtype) {
    throw InputError("--base-dtype: full fine-tuning (--lora-rank 0) trains the base weights; "
                     "set their dtype with --dtype");
  }
}

// --memory-cap-gib in bytes (0: none).
int64_t memory_cap_bytes(const TrainOptions& t) {
  return static_cast<int64_t>(t.memory_cap_gib * double(int64_t{1} << 30));
}

Run prepare_run(const FinetuneToolOptions& o, const DistributedConfig& dist) {
  Run r;
  r.dir = o.output;
  r.dist = dist;
  configure_threads(o.model.threads);
  r.device = device_for_rank(resolve_device(o.model.device), dist);
  r.param_dtype = resolve_dtype(o.model.dtype, r.device);
  r.base_dtype = o.train.base_dtype ? resolve_dtype(*o.train.base_dtype, r.device, "--base-dtype")
                                    : r.param_dtype;
  r.precision = o.train.precision;
  check_precision(r, o);
  check_memory_cap(r.device, memory_cap_bytes(o.train));
  validate_optim_options(o.optim);
  validate_recompute_options(o.recompute);
  if (o.lora.rank > 0) validate_lora_options(o.lora, "--lora-*");

  const ModelArgs args = read_model_args(o.model.model);
  DatasetRequirements needs;
  needs.model_vocab_size = args.vocab_size;
  r.data = Dataset::open(o.data, needs);
  r.pad_id = r.data->manifest().attributes.eos_id;  // LLaMA has no pad token; pads are masked

  LoadOptions load;
  load.device = r.device;
  load.dtype = o.lora.rank > 0 ? r.base_dtype : r.param_dtype;
  load.n_layers = o.model.n_layers;
  r.loaded = load_model(o.model.model, load);
  auto& model = *r.loaded.model;
  at::manual_seed(o.train.seed);  // LoRA init and dropout masks
  if (o.lora.rank > 0) {
    apply_lora(model, o.lora);
  } else {
    for (auto& p : model.parameters()) p.set_requires_grad(true);
  }
  // Data parallel: the same LoRA init everywhere (above), then a dropout stream per rank.
  if (dist.rank > 0) at::manual_seed(o.train.seed + static_cast<uint64_t>(dist.rank));
  model.train();
  r.params = split_parameters(model);
  return r;
}

struct Window {
  std::vector<Batch> batches;
  int64_t tokens = 0;
  int64_t label_tokens = 0;
  int64_t samples = 0;
};

// What one optimizer step consumed: one window, or the sum of every rank's window.
struct StepTotals {
  int64_t tokens = 0;
  int64_t label_tokens = 0;  // the loss's denominator (--loss-normalization tokens)
  int64_t samples = 0;
  int64_t batches = 0;
};

StepTotals window_totals(const Window& w) {
  return {w.tokens, w.label_tokens, w.samples, static_cast<int64_t>(w.batches.size())};
}

// The next optimizer step's micro-batches: up to grad_accum, never across an epoch's end.
Window next_window(BatchSampler& sampler, const Run& r, int64_t grad_accum) {
  Window w;
  const int64_t left = sampler.batches_per_epoch() - sampler.position().cursor;
  const int64_t n = std::min(grad_accum, left > 0 ? left : grad_accum);
  for (int64_t i = 0; i < n; ++i) {
    const auto indices = sampler.next();
    w.batches.push_back(collate(*r.data, indices, r.pad_id));
    w.tokens += w.batches.back().tokens;
    w.label_tokens += w.batches.back().label_tokens;
    w.samples += static_cast<int64_t>(indices.size());
  }
  return w;
}

// Bytes in tensors on `device` now, as memory.jsonl's `allocated` counts them (the host counter
// on the CPU, the caching allocator on CUDA), without sample_memory()'s read of /proc.
int64_t allocated_now(const c10::Device& device) {
  if (device.is_cuda()) return cuda_memory_stats(device.has_index() ? device.index() : 0).allocated;
  return host_memory_stats().current;
}

// Forward and backward of one window; returns the summed label-token loss (fp32, unscaled).
// The loss is normalised by `totals` (the window's own, or all ranks' in a data-parallel run).
// `mark(phase)` is called after the first micro-batch's forward and backward (memory.jsonl's
// phase marks); pass an empty function after the first step. `activations` becomes at least
// what each micro-batch's forward held at its end (loss computed, before backward) above what
// was allocated when it started: what the estimate's `activations` counts (DESIGN.md Table 1).
double accumulate_gradients(Run& r, const FinetuneToolOptions& o, const Window& w,
                            const StepTotals& totals, const LossScaler& scaler,
                            const std::function<void(const std::string&)>& mark,
                            int64_t& activations) {
  auto& model = *r.loaded.model;
  double loss_sum = 0;
  for (const auto& batch : w.batches) {
    const int64_t forward_start = allocated_now(r.device);
    std::optional<c10::ScalarType> autocast;
    if (r.precision != Dtype::kFp32) autocast = scalar_type(r.precision);
    const auto sum = model_label_loss_sum(model, batch.input_ids.to(r.device),
                                          batch.labels.to(r.device), o.recompute, autocast);
    activations = std::max(activations, allocated_now(r.device) - forward_start);
    if (mark && &batch == &w.batches.front()) mark("after_first_forward");
    // tokens: every label token of the window weighs the same, so N micro-batches of 1 give the
    // gradient of one batch of N (and W ranks with N each, that of one rank with W * N).
    // micro-batch: the seed's mean per micro-batch, averaged.
    const double denom = o.train.loss_normalization == LossNormalization::kTokens
                             ? static_cast<double>(totals.label_tokens)
                             : static_cast<double>(batch.label_tokens * totals.batches);
    scaler.scale(sum / denom).backward();
    if (mark && &batch == &w.batches.front()) mark("after_first_backward");
    loss_sum += sum.item<double>();
  }
  return loss_sum;
}

bool is_out_of_memory(const std::string& what) {
  return what.find("out of memory") != std::string::npos ||
         what.find("can't allocate memory") != std::string::npos;
}

// Runs `body`; returns "" or the message of the out-of-memory error it threw (other errors
// propagate).
template <typename Fn>
std::string out_of_memory_in(Fn&& body) {
  try {
    body();
  } catch (const OutOfMemoryError& e) {
    return e.what();
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    if (!is_out_of_memory(what)) throw;
    return what.substr(0, what.find('\n'));
  }
  return "";
}

// One optimizer step's forward and backward on every rank of a data-parallel run.
struct ParallelStep {
  StepTotals totals;     // every rank's windows together
  double loss_sum = 0;   // every rank's summed label-token loss
  std::string oom;       // this rank's out-of-memory message, if it ran out
  int64_t oom_ranks = 0;  // ranks that ran out of memory: all stop when any did
  bool stop = false;     // some rank was asked to stop (SIGUSR1/SIGTERM): all stop after this step
};

// The ranks agree, in two small all-reduces, first on the global window's totals (the loss is
// normalised by all ranks' label tokens), then on the loss and on whether any rank ran out of
// memory or was asked to stop; then, unless one ran out, they sum the gradients. Every rank makes
// the same collectives in the same order whatever happened locally, so none waits forever.
// The gradients' buffer is allocated (prepare_gradients) before the agreement, so the
// all-reduce itself allocates nothing.
ParallelStep data_parallel_step(ProcessGroup& group, BatchSampler& sampler, Run& r,
                                const FinetuneToolOptions& o, const LossScaler& scaler,
                                const std::vector<at::Tensor>& trainable,
                                const std::function<void(const std::string&)>& mark,
                                int64_t& activations) {
  const auto bucket_bytes = static_cast<int64_t>(o.dist.bucket_mib * 1024 * 1024);
  ParallelStep s;
  Window w;
  s.oom = out_of_memory_in([&] { w = next_window(sampler, r, o.train.grad_accum); });
  const StepTotals mine = window_totals(w);
  const auto totals = group.sum({static_cast<double>(mine.tokens),
                                 static_cast<double>(mine.label_tokens),
                                 static_cast<double>(mine.samples),
                                 static_cast<double>(mine.batches), s.oom.empty() ? 0.0 : 1.0});
  s.totals = {static_cast<int64_t>(totals[0]), static_cast<int64_t>(totals[1]),
              static_cast<int64_t>(totals[2]), static_cast<int64_t>(totals[3])};
  double loss_sum = 0;
  if (totals[4] == 0) {
    s.oom = out_of_memory_in([&] {
      loss_sum = accumulate_gradients(r, o, w, s.totals, scaler, mark, activations);
      group.prepare_gradients(trainable, bucket_bytes);
    });
  }
  const auto agreed = group.sum(
      {loss_sum, s.oom.empty() ? 0.0 : 1.0, g_stop_requested.load() ? 1.0 : 0.0});
  s.loss_sum = agreed[0];
  s.oom_ranks = static_cast<int64_t>(std::max(totals[4], agreed[1]));
  s.stop = agreed[2] > 0;
  if (s.oom_ranks == 0) {
    group.all_reduce_gradients(trainable, bucket_bytes);
  } else {
    group.release_gradient_buffer();
  }
  return s;
}

}  // namespace
}  // namespace llt::tools

namespace llt::tools {
namespace {

// memory.jsonl samples with the run's peaks kept across the per-step resets.
class MemoryMonitor {
 public:
  explicit MemoryMonitor(const c10::Device& device) : device_(device) {}
  MemorySample sample() {
    const MemorySample m = sample_memory(device_);
    peak_allocated_ = std::max(peak_allocated_, m.peak_allocated);
    peak_reserved_ = std::max(peak_reserved_, m.peak_reserved);
    if (training_) training_peak_ = std::max(training_peak_, m.peak_allocated);
    return m;
  }
  // Starts the training phase: from now on the step peaks are also kept apart from loading's.
  void start_training() {
    reset_peak();
    training_ = true;
  }
  void reset_peak() {
    sample();  // fold the interval's peak into the run's before it is forgotten
    if (device_.is_cuda()) {
      reset_cuda_peak(device_.has_index() ? device_.index() : 0);
    } else {
      reset_host_peak();
    }
  }
  void set_cap(int64_t bytes) { set_memory_cap(device_, bytes); }
  int64_t peak_allocated() const { return peak_allocated_; }
  int64_t peak_reserved() const { return peak_reserved_; }
  int64_t training_peak_allocated() const { return training_peak_; }
  const c10::Device& device() const { return device_; }

 private:
  bool training_ = false;
  int64_t training_peak_ = 0;
  c10::Device device_;
  int64_t peak_allocated_ = 0;
  int64_t peak_reserved_ = 0;
};

// The run's log files and the state they summarise.
struct Logs {
  std::optional<JsonlWriter> metrics;  // rank 0 only
  JsonlWriter memory;                  // every rank: memory.jsonl, memory.rank<N>.jsonl
  MemoryMonitor monitor;
};

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

std::string format_bytes(int64_t bytes) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << bytes / (1024.0 * 1024.0) << " MB";
  return s.str();
}

// A live progress bar on stdout when it is a terminal (after every step, redrawn in place and
// erased before each log line); nothing at all when stdout is a file, so batch logs stay clean.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled && isatty(STDOUT_FILENO) == 1) {}
  void draw(int64_t step, int64_t last, const std::string& eta) {
    if (!enabled_) return;
    constexpr int kWidth = 30;
    const auto filled = static_cast<int>(kWidth * step / std::max<int64_t>(1, last));
    std::cout << "\r[" << std::string(filled, '#') << std::string(kWidth - filled, '.') << "] "
              << step << "/" << last << "  eta " << eta << std::flush;
    drawn_ = true;
  }
  void erase() {
    if (!enabled_ || !drawn_) return;
    std::cout << "\r\033[K" << std::flush;
    drawn_ = false;
  }

 private:
  bool enabled_;
  bool drawn_ = false;
};

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  std::ostringstream out;
  out << s / 3600 << ":" << std::setw(2) << std::setfill('0') << (s / 60) % 60 << ":"
      << std::setw(2) << std::setfill('0') << s % 60;
  return out.str();
}

// The analytic estimate for the run's longest micro-batch (every batch holds the longest sample,
// and the most label tokens of any sample).
MemoryBreakdown estimate_run_memory(const Run& r, const FinetuneToolOptions& o) {
  MemoryEstimateOptions e;
  e.lora = o.lora;
  e.precision = o.train.precision;
  e.base_dtype = o.lora.rank > 0 ? r.base_dtype : r.param_dtype;
  e.batch = o.train.batch_size;
  e.seq_len = std::max<int64_t>(1, r.data->manifest().length_histogram.max);
  int64_t most_labels = 1;  // the loss scores the label tokens only
  for (int64_t i = 0; i < r.data->size(); ++i) {
    const auto sample = r.data->sample(i);
    most_labels = std::max<int64_t>(most_labels, sample.length - sample.source_length);
  }
  e.loss_rows = e.batch * most_labels;
  e.recompute = o.recompute;
  e.attention_saves_scores = attention_saves_scores(r.device);
  return estimate_training_memory(r.loaded.args, e);
}

nlohmann::json breakdown_json(const MemoryBreakdown& b) {
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

void write_summary(const Run& r, const FinetuneToolOptions& o, const TrainState& state,
                   const std::string& status, const std::string& error, MemoryMonitor& monitor,
                   const AdamW* optimizer, int64_t grad_bytes) {
  const MemorySample m = monitor.sample();
  const int64_t optimizer_bytes = optimizer != nullptr ? optimizer->state_bytes() : 0;
  const int64_t static_bytes = r.params.parameter_bytes + grad_bytes + optimizer_bytes;
  const double runtime_s = std::max(0.0, state.elapsed_s - state.saving_s);
  nlohmann::json j = {
      {"status", status},
      {"error", error},
      {"steps", state.step},
      {"samples", state.samples},
      {"tokens", state.tokens},
      {"label_tokens", state.label_tokens},
      // runtime_s: the training steps' wall time (what Table 2 compares); writing checkpoints
      // and adapters (gigabytes for full fine-tuning) is saving_s; wall_s is both.
      {"runtime_s", runtime_s},
      {"saving_s", state.saving_s},
      {"wall_s", state.elapsed_s},
      {"samples_per_s", runtime_s > 0 ? state.samples / runtime_s : 0.0},
      {"tokens_per_s", runtime_s > 0 ? state.tokens / runtime_s : 0.0},
      {"trainable_parameters", r.params.trainable_count},
      {"total_parameters", r.params.total_count},
      {"device", r.device.str()},
      {"world_size", r.dist.world_size},  // data-parallel processes (tokens, samples: all ranks')
      {"precision", name_of(o.train.precision)},
      // The techniques of the seed's Table 2 grid, so llt-report needs no other file.
      {"grad_accum", o.train.grad_accum},
      {"batch_size", o.train.batch_size},
      {"lora_rank", o.lora.rank},
      {"grad_checkpoint", name_of(o.recompute.policy)},
      {"attention", attention_kernel_name(attention_kernel_for(r.device, false))},
      {"base_dtype", dtype_name(o.lora.rank > 0 ? r.base_dtype : r.param_dtype)},
      {"dim", r.loaded.args.dim},
      {"peak_allocated", monitor.peak_allocated()},
      {"peak_reserved", monitor.peak_reserved()},
      {"peak_allocated_training", monitor.training_peak_allocated()},  // steps only, no loading
      {"peak_rss", m.peak_rss},
      {"memory_cap_gib", o.train.memory_cap_gib},  // 0: none
      {"skipped_steps", state.scaler.skipped_steps},
      // Measured breakdown (the seed's Table 1, measured): bytes held by each kind. activations:
      // the most a micro-batch's forward held at its end (loss computed, before backward) above
      // what was allocated when it began, over every micro-batch of the run (resumes included),
      // as the estimate counts them: what checkpointing and mixed precision change.
      // step_transient: the training peak above parameters + gradients + optimizer state, that
      // is the activations, the backward's buffers or the optimizer step's temporaries,
      // whichever is larger (for full fine-tuning, usually the AdamW step).
      {"memory_breakdown",
       {{"parameters", r.params.parameter_bytes},
        {"gradients", grad_bytes},
        {"optimizer_state", optimizer_bytes},
        {"activations", state.activations},
        {"step_transient",
         std::max<int64_t>(0, monitor.training_peak_allocated() - static_bytes)}}},
      // Analytic estimate for the same configuration (lib/llt/memory_estimate), to compare.
      {"memory_estimate", breakdown_json(estimate_run_memory(r, o))},
      {"model", o.model.model},
      {"data", o.data},
      {"n_layers", r.loaded.args.n_layers},
      {"command_line", o.command_line},
      {"git_sha", git_sha()},
      {"llt_version", llt_version()},
  };
  write_file_atomic(r.dir / "summary.json", j.dump(1), /*overwrite=*/true);
}

int64_t gradient_bytes(const ParameterSplit& params) {
  int64_t bytes = 0;
  for (const auto& [name, p] : params.trainable) {
    if (p.grad().defined()) bytes += p.grad().numel() * static_cast<int64_t>(p.grad().element_size());
  }
  return bytes;
}

}  // namespace

void request_stop() {
  g_stop_requested = true;
}

int run_finetune(const FinetuneToolOptions& o) {
  // First of all, so a stop signal while the model loads is a clean exit 75, not a kill.
  std::signal(SIGUSR1, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  // Data parallel (lib/llt/distributed.h): every rank checks the flags and the run folder, then
  // all join; only then does rank 0 create the folder. Rank 0 writes what the run shares.
  const DistributedConfig dist = resolve_distributed_config(o.dist, process_environment());
  const bool lead = dist.rank == 0;
  const fs::path resume_from = resolve_resume(o);
  std::unique_ptr<ProcessGroup> group;
  if (dist.world_size > 1) {
    group = std::make_unique<ProcessGroup>(
        dist, device_for_rank(resolve_device(o.model.device), dist), o.dist.timeout);
  }
  const std::string who =
      lead ? "llt-finetune" : "llt-finetune (rank " + std::to_string(dist.rank) + ")";
  // The ranks leave together: rank 1..N wait here until rank 0 has written the checkpoint,
  // adapter and summary (a launcher may kill a step's other tasks when one exits). Only on the
  // exits the ranks agreed on; a failed peer is reported and does not change the exit code.
  auto leave_together = [&] {
    if (!group) return;
    try {
      group->sum({0.0});
    } catch (const RuntimeError& e) {
      std::cerr << who << ": warning: " << e.what() << "\n";
    }
  };
  install_host_memory_counter();  // before the model loads, so its bytes are counted
  set_host_cache_limit(host_cache_limit_from_env());
  Run r = prepare_run(o, dist);

  AdamW optimizer(r.params.trainable, o.optim);
  LossScalerOptions scaler_options;
  scaler_options.enabled = o.train.precision == Dtype::kFp16;
  LossScaler scaler(scaler_options);
  SamplerOptions sampling;
  sampling.batch_size = o.train.batch_size;
  sampling.shuffle = o.train.shuffle;
  sampling.seed = o.train.seed;  // the same permutation on every rank ...
  sampling.rank = dist.rank;     // ... of which rank r takes samples r, r + W, r + 2W ...
  sampling.world_size = dist.world_size;
  BatchSampler sampler(*r.data, sampling);
  // Per rank: so one step of W ranks with accumulation A consumes the window of one process
  // with accumulation W * A (every rank has the same number of batches per epoch).
  const int64_t steps_per_epoch =
      (sampler.batches_per_epoch() + o.train.grad_accum - 1) / o.train.grad_accum;
  const int64_t total_steps = o.train.epochs * steps_per_epoch;  // the schedule's length
  const int64_t last_step = o.train.max_steps > 0 ? o.train.max_steps : total_steps;
  // The samples each epoch repeats (wrap-around, so every rank has as many); not counted.
  const int64_t repeats_per_epoch = sampler.samples_per_epoch() * dist.world_size - r.data->size();

  TrainState state;
  if (!resume_from.empty()) {
    state = load_checkpoint(resume_from, r.params, optimizer, dist);  // reads only
    sampler.set_position(state.data);
    scaler.load_state(state.scaler);
  }

  // Asked to stop while loading (the ranks agree): leave now, writing nothing but the summary of
  // an existing run folder; the checkpoint resumed from stays the latest, untouched.
  const bool stop_before_training =
      group ? group->sum({g_stop_requested.load() ? 1.0 : 0.0})[0] > 0 : g_stop_requested.load();
  if (stop_before_training) {
    if (lead) {
      std::cerr << "llt-finetune: preempted before training started (SIGUSR1/SIGTERM); "
                << (resume_from.empty() ? "nothing written"
                                        : resume_from.string() + " is still the latest checkpoint")
                << "\n";
      if (fs::exists(r.dir)) {
        MemoryMonitor monitor(r.device);
        write_summary(r, o, state, "preempted", "stopped before training started", monitor,
                      &optimizer, /*grad_bytes=*/0);
      }
    }
    leave_together();
    g_stop_requested = false;
    return static_cast<int>(ExitCode::kPreempted);
  }

  fs::create_directories(r.dir / "checkpoints");
  if (lead) {
    write_file_atomic(r.dir / "config.toml",
                      std::string("# llt-finetune ") + llt_version() + ", git " + git_sha() +
                          "\n" + o.config_text,
                      /*overwrite=*/true);
    if (!resume_from.empty()) {
      std::cerr << "llt-finetune: resumed from " << resume_from.string() << " at step "
                << state.step << "\n";
    }
  }
  const int64_t first_step = state.step;
  if (lead) truncate_metrics(r.dir / "metrics.jsonl", state.step);
  Logs logs{lead ? std::optional<JsonlWriter>(std::in_place, r.dir / "metrics.jsonl",
                                              /*append=*/true)
                 : std::nullopt,
            JsonlWriter(r.dir / (lead ? std::string("memory.jsonl")
                                      : "memory.rank" + std::to_string(dist.rank) + ".jsonl"),
                        /*append=*/!resume_from.empty()),
            MemoryMonitor(r.device)};
  if (o.train.memory_cap_gib > 0) logs.monitor.set_cap(memory_cap_bytes(o.train));
  if (lead) {
    if (group) {
      std::cerr << "llt-finetune: data parallel over " << dist.world_size << " processes ("
                << dist.origin << "), rendezvous " << dist.init << ", "
                << sampler.batches_per_epoch() << " micro-batches per epoch each\n";
    }
    std::cerr << "llt-finetune: " << r.params.trainable_count << " trainable of "
              << r.params.total_count << " parameters (" << std::setprecision(3)
              << 100.0 * r.params.trainable_count / r.params.total_count << "%), "
              << sampler.batches_per_epoch() << " micro-batches per epoch, " << total_steps
              << " steps in the schedule, training to step " << last_step << "\n";
    const MemoryBreakdown estimate = estimate_run_memory(r, o);
    std::cerr << "llt-finetune: memory estimate for the longest batch: parameters "
              << format_bytes(estimate.parameters) << ", gradients "
              << format_bytes(estimate.gradients) << ", optimizer "
              << format_bytes(estimate.optimizer_state) << ", activations "
              << format_bytes(estimate.activations) << ", recomputed block "
              << format_bytes(estimate.recompute) << ", loss gradients "
              << format_bytes(estimate.loss_backward) << ", optimizer step temporaries "
              << format_bytes(estimate.optimizer_temporaries) << ", peak "
              << format_bytes(estimate.total()) << "\n";
  }

  // A collective in a data-parallel run: every rank's generator goes into rank 0's checkpoint.
  auto checkpoint = [&] {
    std::vector<std::string> rank_rng_states;
    if (group) {
      for (const auto& t : group->all_gather(at::detail::getDefaultCPUGenerator().get_state())) {
        rank_rng_states.push_back(to_hex(t));
      }
    }
    if (lead) {
      const auto t0 = std::chrono::steady_clock::now();
      save_checkpoint(r.dir / "checkpoints", state, r.params, optimizer, dist.world_size,
                      rank_rng_states);
      state.saving_s += seconds_since(t0);
    }
  };

  const auto started = std::chrono::steady_clock::now();
  const double elapsed_before = state.elapsed_s;
  auto now_s = [&] { return elapsed_before + seconds_since(started); };
  ProgressBar bar(lead);
  logs.memory.write(memory_record(logs.monitor, state.step, "after_load", now_s()));
  logs.monitor.start_training();
  std::string status = "ok";
  std::string error;
  int code = 0;
  bool agreed = true;  // every rank ends the same way (false: this rank's own error)
  int64_t held_grad_bytes = 0;  // gradients exist during a step only; the breakdown counts them
  // Some rank ran out of memory (`mine`: this rank's message, if it did); all ranks stop.
  auto ranks_out_of_memory = [&](const std::string& mine, int64_t ranks) {
    status = "oom", code = static_cast<int>(ExitCode::kOutOfMemory);
    error = (mine.empty() ? "out of memory on another rank" : mine) + " (" +
            std::to_string(ranks) + " of " + std::to_string(dist.world_size) +
            " ranks ran out of memory at step " + std::to_string(state.step + 1) + ")";
  };
  try {
    while (state.step < last_step) {
      const auto step_started = std::chrono::steady_clock::now();
      logs.monitor.reset_peak();
      const bool first = state.step == first_step;
      std::function<void(const std::string&)> mark;
      if (first) {
        mark = [&](const std::string& phase) {
          logs.memory.write(memory_record(logs.monitor, state.step + 1, phase, now_s()));
        };
      }
      const auto tensors = optimizer.tensors();
      StepTotals totals;
      double loss_sum = 0;
      bool stop_agreed = false;
      if (group) {
        const ParallelStep p = data_parallel_step(*group, sampler, r, o, scaler, tensors, mark,
                                                  state.activations);
        if (p.oom_ranks > 0) {
          ranks_out_of_memory(p.oom, p.oom_ranks);
          break;
        }
        totals = p.totals, loss_sum = p.loss_sum, stop_agreed = p.stop;
        // Every rank ends its epoch at the same step; the epoch's repeats were trained on (and
        // their tokens count) but are subtracted from the samples then.
        if (sampler.position().cursor == sampler.batches_per_epoch()) {
          totals.samples -= repeats_per_epoch;
        }
      } else {
        const Window w = next_window(sampler, r, o.train.grad_accum);
        totals = window_totals(w);
        loss_sum = accumulate_gradients(r, o, w, totals, scaler, mark, state.activations);
      }
      const double loss = loss_sum / static_cast<double>(totals.label_tokens);
      const double lr = scheduled_lr(o.optim, state.step + 1, total_steps);
      bool found_inf = false;
      bool non_finite = false;
      double grad_norm = 0;
      auto update = [&] {
        // fp16 loss scaling unscales and scans every gradient for inf/nan. Without it, a
        // non-finite gradient shows in the global norm computed anyway: the scan (an isfinite
        // copy of every gradient) cost ~1.1 s a step, 15%, in full fine-tuning of the 7B shape.
        found_inf = scaler.enabled() && scaler.unscale(tensors);
        grad_norm = clip_grad_norm(tensors, o.optim.grad_clip);
        if (!scaler.enabled()) found_inf = !std::isfinite(grad_norm);
        // Without fp16 loss scaling nothing can recover from non-finite values: stop before the
        // optimizer writes them into the weights. (Ranks agree: loss and gradients are summed.)
        non_finite = !scaler.enabled() && (!std::isfinite(loss) || found_inf);
        if (!non_finite && !found_inf) optimizer.step(lr);
      };
      if (group) {
        // Running out of memory after the backward (clipping, the optimizer's state and its
        // step's temporaries: where full fine-tuning usually does) is caught here and agreed on
        // in one more small all-reduce that every rank makes, so all stop with status oom.
        const std::string oom = out_of_memory_in(update);
        const auto oom_ranks =
            static_cast<int64_t>(group->sum({oom.empty() ? 0.0 : 1.0})[0]);
        if (oom_ranks > 0) {
          ranks_out_of_memory(oom, oom_ranks);
          break;
        }
      } else {
        update();
      }
      if (non_finite) {
        status = "nan";
        error = "non-finite " + std::string(std::isfinite(loss) ? "gradients" : "loss") +
                " at step " + std::to_string(state.step + 1) + " (loss " + std::to_string(loss) +
                "); lower --lr or use --grad-clip";
        code = static_cast<int>(ExitCode::kNonFinite);
        break;
      }
      if (first) mark("after_first_optimizer_step");
      scaler.update(found_inf);
      const int64_t grad_bytes = gradient_bytes(r.params);
      held_grad_bytes = std::max(held_grad_bytes, grad_bytes);
      optimizer.zero_grad();

      state.step += 1;
      state.data = sampler.position();
      state.scaler = scaler.state();
      state.tokens += totals.tokens;
      state.label_tokens += totals.label_tokens;
      state.samples += totals.samples;
      state.elapsed_s = now_s();
      const double step_s = seconds_since(step_started);
      if (logs.metrics) {
        logs.metrics->write({{"step", state.step}, {"loss", loss}, {"lr", lr},
                             {"grad_norm", grad_norm}, {"tokens", totals.tokens},
                             {"label_tokens", totals.label_tokens}, {"samples", totals.samples},
                             {"tokens_per_s", totals.tokens / step_s}, {"step_s", step_s},
                             {"elapsed_s", state.elapsed_s}, {"skipped", found_inf},
                             {"loss_scale", scaler.current_scale()}});
      }
      auto mem = memory_record(logs.monitor, state.step, "step", state.elapsed_s);
      mem["gradients"] = grad_bytes;
      mem["optimizer_state"] = optimizer.state_bytes();
      logs.memory.write(mem);
      const double eta = (last_step - state.step) * seconds_since(started) /
                         static_cast<double>(state.step - first_step);
      if (lead && o.train.log_every > 0 && state.step % o.train.log_every == 0) {
        bar.erase();
        std::cout << "step " << state.step << "/" << last_step << "  loss " << std::setprecision(5)
                  << loss << "  lr " << lr << "  grad_norm " << std::setprecision(4) << grad_norm
                  << "  " << static_cast<int64_t>(totals.tokens / step_s) << " tok/s  peak "
                  << format_bytes(mem["peak_allocated"].get<int64_t>()) << "  eta "
                  << format_duration(eta) << std::endl;
      }
      if (state.step < last_step) bar.draw(state.step, last_step, format_duration(eta));
      const bool stop = group ? stop_agreed : g_stop_requested.load();
      if ((o.train.save_every > 0 && state.step % o.train.save_every == 0) || stop) checkpoint();
      if (stop) {
        status = "preempted";
        error = "stop signal (SIGUSR1/SIGTERM): checkpoint written at step " +
                std::to_string(state.step) + "; --resume auto continues";
        code = static_cast<int>(ExitCode::kPreempted);
        break;
      }
    }
    if (status == "ok") {
      checkpoint();
      if (lead && o.lora.rank > 0) {
        const auto t0 = std::chrono::steady_clock::now();
        save_adapter(r.dir / "adapter", *r.loaded.model, o.lora);
        export_peft_adapter(r.dir / "adapter-peft", *r.loaded.model, o.lora, o.model.model);
        state.saving_s += seconds_since(t0);
      }
    }
  } catch (const OutOfMemoryError& e) {
    // This rank's alone (world size 1, or writing a checkpoint): the others are not told.
    status = "oom", error = e.what(), code = static_cast<int>(ExitCode::kOutOfMemory);
    agreed = false;
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    if (!is_out_of_memory(what)) throw;
    status = "oom", error = what.substr(0, what.find('\n'));
    code = static_cast<int>(ExitCode::kOutOfMemory);
    agreed = false;
  }
  bar.erase();
  logs.monitor.set_cap(0);
  state.elapsed_s = now_s();
  if (code != 0) std::cerr << who << ": " << status << ": " << error << "\n";
  if (lead) {
    write_summary(r, o, state, status, error, logs.monitor, &optimizer, held_grad_bytes);
    std::cerr << "llt-finetune: " << status << " after " << state.step << " steps in "
              << format_duration(state.elapsed_s) << "; run folder " << r.dir.string() << "\n";
  }
  if (agreed) leave_together();
  g_stop_requested = false;
  return code;
}

}  // namespace llt::tools
