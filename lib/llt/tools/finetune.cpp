#include "llt/tools/finetune.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <functional>
#include <iomanip>
#include <iostream>
#include <memory>
#include <optional>

#include <ATen/ATen.h>

#include "llt/attention.h"
#include "llt/dataset.h"
#include "llt/distributed.h"
#include "llt/errors.h"
#include "llt/io.h"
#include "llt/lora.h"
#include "llt/memory.h"
#include "llt/memory_estimate.h"
#include "llt/optim.h"
#include "llt/recompute.h"
#include "llt/runtime.h"
#include "llt/perplexity.h"
#include "llt/tools/cli.h"
#include "llt/tools/run_folder.h"
#include "llt/tools/run_lock.h"
#include "llt/tools/stop_signals.h"
#include "llt/trainer.h"
#include "llt/version.h"
#include "llt/weights.h"

namespace llt::tools {
namespace fs = std::filesystem;

namespace {

// Set by SIGUSR1/SIGTERM (SLURM's pre-emption warning) or request_stop(); the Trainer reads it
// after every step: the loop writes the training state and exits 75. run_finetune clears it when
// it returns (the request was served).
std::atomic<bool> g_stop_requested{false};
extern "C" void on_stop_signal(int) { g_stop_requested = true; }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Everything the run needs, resolved and loaded.
struct Run {
  fs::path dir;
  DistributedConfig dist;  // world size 1 unless data-parallel
  c10::Device device{c10::kCPU};
  c10::ScalarType param_dtype = c10::kFloat;  // --dtype: the trained weights
  c10::ScalarType base_dtype = c10::kFloat;   // --base-dtype: LoRA's frozen weights
  std::optional<Dataset> data;
  int64_t pad_id = 0;
  LoadedModel loaded;
  ProcessGroup* group = nullptr;            // data parallel, else none
  int64_t base_layers = 0;                  // the checkpoint's blocks (--n-layers may keep fewer)
  std::optional<Dataset> eval_data;         // --eval-data
  std::vector<ScoredSequence> eval_share;   // its samples this rank scores
};

// Where a run starts: the training state to resume from, or none. (--resume never: RunLock
// refused an existing run folder, so nothing a user has is overwritten.)
fs::path resolve_resume(const FinetuneToolOptions& o) {
  const fs::path dir(o.output);
  if (o.train.resume == ResumeMode::kNever) return {};
  if (o.train.resume == ResumeMode::kAuto) return latest_train_state(dir / "checkpoints");
  const std::string& resume = o.train.resume_path;
  if (!fs::exists(fs::path(resume) / "state.json")) {
    throw InputError(resume + ": not a checkpoint folder (--resume; expected state.json)");
  }
  return resume;
}

void check_precision(const Run& r, const FinetuneToolOptions& o) {
  const Dtype precision = o.train.precision;
  if (precision == Dtype::kBf16 && !device_without_bf16(r.device).empty()) {
    throw InputError("--precision bf16: " + device_without_bf16(r.device) +
                     " has no bf16 arithmetic; use --precision fp16 (and --base-dtype fp16)");
  }
  if (precision == Dtype::kFp16 && r.device.is_cpu()) {
    throw InputError("--precision fp16: not supported on CPU (LibTorch 1.13 has no CPU fp16 "
                     "autocast); use bf16 or fp32");
  }
  if (r.base_dtype != c10::kFloat && precision == Dtype::kFp32) {
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

// adapter-peft/'s base_model_name_or_path: --hf-base, else the _name_or_path of a Hugging Face
// --model folder's config.json when it is a Hub name (not a local path); else none (null), never
// --model itself (a local path, a llama2.c file or a preset).
std::string hf_base_name(const FinetuneToolOptions& o) {
  if (!o.hf_base.empty()) return o.hf_base;
  const fs::path config = fs::path(o.model.model) / "config.json";
  std::error_code ec;
  if (!fs::is_regular_file(config, ec)) return "";
  const auto j = nlohmann::json::parse(read_file(config), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("_name_or_path") || !j["_name_or_path"].is_string()) return "";
  const std::string name = j["_name_or_path"];
  const bool hub = !name.empty() && name[0] != '/' && name[0] != '.' && name[0] != '~' &&
                   std::count(name.begin(), name.end(), '/') <= 1 && !fs::exists(name, ec);
  return hub ? name : "";
}

// Checks the options, loads the dataset and the model, adds LoRA (or makes every weight
// trainable) and seeds LoRA's init and the dropout streams.
Run prepare_run(const FinetuneToolOptions& o, const DistributedConfig& dist) {
  Run r;
  r.dir = o.output;
  r.dist = dist;
  configure_threads(o.model.threads);
  r.device = device_for_rank(resolve_device(o.model.device), dist);
  r.param_dtype = resolve_dtype(o.model.dtype, r.device);
  r.base_dtype = o.train.base_dtype ? resolve_dtype(*o.train.base_dtype, r.device, "--base-dtype")
                                    : r.param_dtype;
  check_precision(r, o);
  check_memory_cap(r.device, memory_cap_bytes(o.train));
  validate_optim_options(o.optim);
  validate_recompute_options(o.recompute);
  if (o.lora.rank > 0) validate_lora_options(o.lora, "--lora-*");

  const ModelArgs args = read_model_args(o.model.model);
  r.base_layers = args.n_layers;
  DatasetRequirements needs;
  needs.model_vocab_size = args.vocab_size;
  r.data = Dataset::open(o.data, needs);
  r.pad_id = r.data->manifest().attributes.eos_id;  // LLaMA has no pad token; pads are masked
  if (!o.eval_data.empty()) {  // made with the training split's tokenizer
    const ShardAttributes& a = r.data->manifest().attributes;
    DatasetRequirements same = needs;
    same.vocab_size = a.vocab_size, same.bos_id = a.bos_id, same.eos_id = a.eos_id;
    same.tokenizer_sha256 = a.tokenizer_sha256;
    r.eval_data = Dataset::open(o.eval_data, same);
    std::vector<ScoredSequence> all = dataset_sequences(*r.eval_data, ScoredTokens::kLabels);
    for (size_t i = static_cast<size_t>(dist.rank); i < all.size();
         i += static_cast<size_t>(dist.world_size)) {
      r.eval_share.push_back(std::move(all[i]));
    }
  }

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
  return r;
}

TrainConfig train_config(const FinetuneToolOptions& o) {
  TrainConfig c;
  c.batch_size = o.train.batch_size;
  c.grad_accum = o.train.grad_accum;
  c.epochs = o.train.epochs;
  c.max_steps = o.train.max_steps;
  c.shuffle = o.train.shuffle;
  c.seed = o.train.seed;
  c.precision = o.train.precision;
  c.loss_normalization = o.train.loss_normalization;
  c.recompute = o.recompute;
  c.optim = o.optim;
  c.bucket_mib = o.dist.bucket_mib;
  return c;
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

// How the training loop ended.
struct Outcome {
  std::string status = "ok";  // summary.json's status
  std::string error;
  int code = 0;                 // the exit code
  bool agreed = true;           // every rank ends the same way (false: this rank's own error)
  int64_t gradient_bytes = 0;   // the most the gradients held (they exist during a step only)
};

void write_summary(const Run& r, const FinetuneToolOptions& o, const Trainer& t,
                   const Outcome& out, MemoryMonitor& monitor) {
  const TrainState& state = t.state();
  const ParameterSplit& params = t.parameters();
  const MemorySample m = monitor.sample();
  RunSummary s;
  s.status = out.status;
  s.error = out.error;
  s.steps = state.step;
  s.samples = state.samples;
  s.tokens = state.tokens;
  s.label_tokens = state.label_tokens;
  s.runtime_s = std::max(0.0, state.elapsed_s - state.saving_s);
  s.saving_s = state.saving_s;
  s.wall_s = state.elapsed_s;
  s.trainable_parameters = params.trainable_count;
  s.total_parameters = params.total_count;
  s.device = r.device.str();
  s.world_size = r.dist.world_size;
  s.precision = name_of(o.train.precision);
  s.grad_accum = o.train.grad_accum;
  s.batch_size = o.train.batch_size;
  s.lora_rank = o.lora.rank;
  s.grad_checkpoint = name_of(o.recompute.policy);
  s.attention = attention_kernel_name(attention_kernel_for(r.device, false));
  s.base_dtype = dtype_name(o.lora.rank > 0 ? r.base_dtype : r.param_dtype);
  s.dim = r.loaded.args.dim;
  s.n_layers = r.loaded.args.n_layers;
  s.peak_allocated = monitor.peak_allocated();
  s.peak_reserved = monitor.peak_reserved();
  s.peak_allocated_training = monitor.training_peak_allocated();
  s.peak_rss = m.peak_rss;
  s.memory_cap_gib = o.train.memory_cap_gib;
  s.skipped_steps = state.scaler.skipped_steps;
  const int64_t optimizer_bytes = t.optimizer().state_bytes();
  const int64_t static_bytes = params.parameter_bytes + out.gradient_bytes + optimizer_bytes;
  s.breakdown = {params.parameter_bytes, out.gradient_bytes, optimizer_bytes, state.activations,
                 std::max<int64_t>(0, monitor.training_peak_allocated() - static_bytes)};
  s.estimate = estimate_run_memory(r, o);
  s.model = o.model.model;
  s.data = o.data;
  s.command_line = o.command_line;
  s.git_sha = git_sha();
  s.llt_version = llt_version();
  write_file_atomic(r.dir / "summary.json", to_json(s).dump(1), /*overwrite=*/true);
}

// Creates the run folder and config.toml, and drops the metrics of steps after the one resumed
// from (rank 0).
void start_run_folder(const Run& r, const FinetuneToolOptions& o, const fs::path& resume_from,
                      int64_t step) {
  fs::create_directories(r.dir / "checkpoints");
  if (r.dist.rank != 0) return;
  write_file_atomic(r.dir / "config.toml",
                    std::string("# llt-finetune ") + llt_version() + ", git " + git_sha() + "\n" +
                        o.config_text,
                    /*overwrite=*/true);
  if (!resume_from.empty()) {
    std::cerr << "llt-finetune: resumed from " << resume_from.string() << " at step " << step
              << "\n";
  }
  truncate_metrics(r.dir / "metrics.jsonl", step);
}

void log_plan(const Run& r, const FinetuneToolOptions& o, const Trainer& t) {
  const ParameterSplit& p = t.parameters();
  if (r.dist.world_size > 1) {
    std::cerr << "llt-finetune: data parallel over " << r.dist.world_size << " processes ("
              << r.dist.origin << "), rendezvous " << r.dist.init << ", "
              << t.batches_per_epoch() << " micro-batches per epoch each\n";
  }
  std::cerr << "llt-finetune: " << p.trainable_count << " trainable of " << p.total_count
            << " parameters (" << std::setprecision(3)
            << 100.0 * p.trainable_count / p.total_count << "%), " << t.batches_per_epoch()
            << " micro-batches per epoch, " << t.total_steps()
            << " steps in the schedule, training to step " << t.last_step() << "\n";
  const MemoryBreakdown e = estimate_run_memory(r, o);
  std::cerr << "llt-finetune: memory estimate for the longest batch: parameters "
            << format_mib(e.parameters) << ", gradients " << format_mib(e.gradients)
            << ", optimizer " << format_mib(e.optimizer_state) << ", activations "
            << format_mib(e.activations) << ", recomputed block " << format_mib(e.recompute)
            << ", loss gradients " << format_mib(e.loss_backward)
            << ", optimizer step temporaries " << format_mib(e.optimizer_temporaries)
            << ", peak " << format_mib(e.total()) << "\n";
}

// The run's log files (DESIGN.md's run folder) and the monitor whose samples they hold.
struct Logs {
  std::optional<JsonlWriter> metrics;  // rank 0 only
  JsonlWriter memory;                  // every rank: memory.jsonl, memory.rank<N>.jsonl
  MemoryMonitor monitor;
  ProgressBar bar;
};

Logs open_logs(const Run& r, bool resumed) {
  const bool lead = r.dist.rank == 0;
  const std::string memory =
      lead ? std::string("memory.jsonl") : "memory.rank" + std::to_string(r.dist.rank) + ".jsonl";
  return Logs{lead ? std::optional<JsonlWriter>(std::in_place, r.dir / "metrics.jsonl",
                                                /*append=*/true)
                   : std::nullopt,
              JsonlWriter(r.dir / memory, /*append=*/resumed), MemoryMonitor(r.device),
              ProgressBar(lead)};
}

// Logs one finished step: metrics.jsonl, memory.jsonl, the console's line and progress bar.
void log_step(const FinetuneToolOptions& o, const Trainer& t, const StepResult& s, double step_s,
              double eta, Logs& logs) {
  const TrainState& state = t.state();
  if (logs.metrics) {
    logs.metrics->write({{"step", state.step}, {"loss", s.loss}, {"lr", s.lr},
                         {"grad_norm", s.grad_norm}, {"tokens", s.totals.tokens},
                         {"label_tokens", s.totals.label_tokens}, {"samples", s.totals.samples},
                         {"tokens_per_s", s.totals.tokens / step_s}, {"step_s", step_s},
                         {"elapsed_s", state.elapsed_s}, {"skipped", s.skipped},
                         {"loss_scale", state.scaler.scale}});
  }
  auto mem = memory_record(logs.monitor, state.step, "step", state.elapsed_s);
  mem["gradients"] = s.gradient_bytes;
  mem["optimizer_state"] = t.optimizer().state_bytes();
  logs.memory.write(mem);
  if (logs.metrics && o.train.log_every > 0 && state.step % o.train.log_every == 0) {
    logs.bar.erase();
    std::cout << "step " << state.step << "/" << t.last_step() << "  loss "
              << std::setprecision(5) << s.loss << "  lr " << s.lr << "  grad_norm "
              << std::setprecision(4) << s.grad_norm << "  "
              << static_cast<int64_t>(s.totals.tokens / step_s) << " tok/s  peak "
              << format_mib(mem["peak_allocated"].get<int64_t>()) << "  eta "
              << format_duration(eta) << std::endl;
  }
  if (!t.done()) logs.bar.draw(state.step, t.last_step(), format_duration(eta));
}

// Validation (--eval-data): the mean NLL over the eval split's response tokens, scored exactly as
// llt-perplexity scores the run's adapter: the weights' own dtypes, no autocast, no dropout. Each
// rank scores its share and the sums are all-reduced, so every rank must call this at the same
// steps. Logged as its own record in metrics.jsonl (no "loss" key), in memory.jsonl and on the
// console.
void evaluate(Run& r, const FinetuneToolOptions& o, int64_t step, Logs& logs,
              const std::function<double()>& now_s) {
  const auto started = std::chrono::steady_clock::now();
  auto& model = *r.loaded.model;
  std::vector<double> sums{0.0, 0.0};  // NLL, tokens
  if (!r.eval_share.empty()) {
    model.eval();
    const PerplexityResult p = score_sequences(model, r.eval_share, o.train.batch_size, r.pad_id);
    model.train();
    sums = {p.nll_sum, static_cast<double>(p.tokens)};
  }
  if (r.group != nullptr) sums = r.group->sum(sums);
  const auto tokens = static_cast<int64_t>(sums[1]);
  const double loss = tokens > 0 ? sums[0] / static_cast<double>(tokens) : 0.0;
  const double seconds = seconds_since(started);
  logs.memory.write(memory_record(logs.monitor, step, "eval", now_s()));
  if (!logs.metrics) return;
  logs.metrics->write({{"step", step}, {"eval_loss", loss}, {"eval_perplexity", std::exp(loss)},
                       {"eval_tokens", tokens}, {"eval_s", seconds}});
  logs.bar.erase();
  std::cout << "eval at step " << step << "  loss " << std::setprecision(5) << loss
            << "  perplexity " << std::exp(loss) << "  (" << tokens << " tokens, "
            << format_duration(seconds) << ")" << std::endl;
}

void set_out_of_memory(Outcome& out, const std::string& error, bool agreed) {
  out.status = "oom", out.error = error, out.agreed = agreed;
  out.code = static_cast<int>(ExitCode::kOutOfMemory);
}

// Trains to the last step, a stop request, running out of memory or a non-finite loss; on
// success writes the last training state and the adapter. `now_s`: training seconds so far.
void train(Trainer& t, Run& r, const FinetuneToolOptions& o, Logs& logs,
           const std::function<double()>& now_s, Outcome& out) {
  const bool lead = r.dist.rank == 0;
  const int64_t first_step = t.state().step;
  const auto started = std::chrono::steady_clock::now();
  const fs::path checkpoints = r.dir / "checkpoints";
  const bool validate = r.eval_data.has_value();
  if (validate && first_step == 0) evaluate(r, o, 0, logs, now_s);  // before any update
  while (!t.done()) {
    const auto step_started = std::chrono::steady_clock::now();
    logs.monitor.reset_peak();
    const int64_t step = t.state().step + 1;
    std::function<void(const std::string&)> mark;
    if (step == first_step + 1) {
      mark = [&](const std::string& phase) {
        logs.memory.write(memory_record(logs.monitor, step, phase, now_s()));
      };
    }
    const StepResult s = t.step(mark);
    if (s.oom_ranks > 0) {  // some rank ran out of memory (s.oom: this rank's message); all stop
      set_out_of_memory(out,
                        (s.oom.empty() ? "out of memory on another rank" : s.oom) + " (" +
                            std::to_string(s.oom_ranks) + " of " +
                            std::to_string(r.dist.world_size) +
                            " ranks ran out of memory at step " + std::to_string(step) + ")",
                        /*agreed=*/true);
      return;
    }
    if (s.non_finite) {
      const std::string what = std::isfinite(s.loss) ? "gradients" : "loss";
      out.status = "nan";
      out.error = "non-finite " + what + " at step " + std::to_string(step) + " (loss " +
                  std::to_string(s.loss) + "); " +
                  (step == 1 ? "no update had been made, so the learning rate is not the cause: "
                               "check --model for NaN/inf weights, or use a wider --precision"
                             : "lower --lr or use --grad-clip");
      out.code = static_cast<int>(ExitCode::kNonFinite);
      return;
    }
    out.gradient_bytes = std::max(out.gradient_bytes, s.gradient_bytes);
    t.state().elapsed_s = now_s();
    const double eta = (t.last_step() - t.state().step) * seconds_since(started) /
                       static_cast<double>(t.state().step - first_step);
    log_step(o, t, s, seconds_since(step_started), eta, logs);
    // Not when stopping (SLURM's grace time is for the checkpoint); the end's is below.
    if (validate && o.eval_every > 0 && t.state().step % o.eval_every == 0 && !s.stop &&
        !t.done()) {
      evaluate(r, o, t.state().step, logs, now_s);
    }
    if ((o.train.save_every > 0 && t.state().step % o.train.save_every == 0) || s.stop) {
      t.save(checkpoints, lead);
    }
    if (s.stop) {
      out.status = "preempted";
      out.error = "stop signal (SIGUSR1/SIGTERM): checkpoint written at step " +
                  std::to_string(t.state().step) + "; --resume auto continues";
      out.code = static_cast<int>(ExitCode::kPreempted);
      return;
    }
  }
  // At the end, unless resumed from the last step (its evaluation is on record).
  if (validate && t.state().step > first_step) evaluate(r, o, t.state().step, logs, now_s);
  t.save(checkpoints, lead);
  if (lead && o.lora.rank > 0) {
    const auto t0 = std::chrono::steady_clock::now();
    save_adapter(r.dir / "adapter", *r.loaded.model, o.lora);
    export_peft_adapter(r.dir / "adapter-peft", *r.loaded.model, o.lora, hf_base_name(o),
                        r.base_layers);
    t.state().saving_s += seconds_since(t0);
  }
}

// train(), with running out of memory outside the agreed paths (one process, or writing a
// training state) turned into this rank's oom outcome; the other ranks are not told.
Outcome train_catching_oom(Trainer& t, Run& r, const FinetuneToolOptions& o, Logs& logs,
                           const std::function<double()>& now_s) {
  Outcome out;
  try {
    train(t, r, o, logs, now_s, out);
  } catch (const OutOfMemoryError& e) {
    set_out_of_memory(out, e.what(), /*agreed=*/false);
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    if (!is_out_of_memory(what)) throw;
    set_out_of_memory(out, what.substr(0, what.find('\n')), /*agreed=*/false);
  }
  return out;
}

}  // namespace

void request_stop() {
  g_stop_requested = true;
}

int run_finetune(const FinetuneToolOptions& o) {
  // First of all, so a stop signal while the model loads is a clean exit 75, not a kill.
  catch_stop_signals(on_stop_signal);
  // Data parallel (lib/llt/distributed.h): every rank checks the flags and the run folder, then
  // all join; only then does rank 0 create the folder. Rank 0 writes what the run shares.
  const DistributedConfig dist = resolve_distributed_config(o.dist, process_environment());
  const bool lead = dist.rank == 0;
  // Rank 0 locks the run folder (creating it) before it reads the latest training state; the
  // other ranks look for that state once all have joined, so after rank 0 holds the lock.
  std::optional<RunLock> lock;
  if (lead) lock.emplace(o.output, o.train.resume == ResumeMode::kNever);
  fs::path resume_from = lead ? resolve_resume(o) : fs::path();
  std::unique_ptr<ProcessGroup> group;
  if (dist.world_size > 1) {
    group = std::make_unique<ProcessGroup>(
        dist, device_for_rank(resolve_device(o.model.device), dist), o.dist.timeout);
  }
  if (!lead) resume_from = resolve_resume(o);
  const std::string who =
      lead ? "llt-finetune" : "llt-finetune (rank " + std::to_string(dist.rank) + ")";
  // The ranks leave together: rank 1..N wait here until rank 0 has written the training state,
  // adapter and summary (a launcher may kill a step's other tasks when one exits). Only on the
  // exits the ranks agreed on; a failed peer is reported and does not change the exit code.
  auto leave = [&](int code, bool together) {
    if (group && together) {
      try {
        group->sum({0.0});
      } catch (const RuntimeError& e) {
        std::cerr << who << ": warning: " << e.what() << "\n";
      }
    }
    g_stop_requested = false;
    return code;
  };
  install_host_memory_counter();  // before the model loads, so its bytes are counted
  set_host_cache_limit(host_cache_limit_from_env());
  Run r = prepare_run(o, dist);
  r.group = group.get();
  Trainer trainer(*r.loaded.model, *r.data, r.pad_id, r.device, train_config(o), group.get(),
                  g_stop_requested);
  if (!resume_from.empty()) trainer.resume(resume_from);  // reads only

  // Asked to stop while loading (the ranks agree): leave now, writing nothing but the summary of
  // an existing run folder; the state resumed from stays the latest, untouched.
  if (trainer.stop_agreed()) {
    if (lead) {
      std::cerr << "llt-finetune: preempted before training started (SIGUSR1/SIGTERM); "
                << (resume_from.empty() ? "nothing written"
                                        : resume_from.string() + " is still the latest checkpoint")
                << "\n";
      if (!lock->created()) {  // a new folder is removed with the lock: nothing was written
        MemoryMonitor monitor(r.device);
        write_summary(r, o, trainer,
                      {"preempted", "stopped before training started", 0, true, 0}, monitor);
      }
    }
    return leave(static_cast<int>(ExitCode::kPreempted), true);
  }

  start_run_folder(r, o, resume_from, trainer.state().step);
  Logs logs = open_logs(r, !resume_from.empty());
  if (o.train.memory_cap_gib > 0) logs.monitor.set_cap(memory_cap_bytes(o.train));
  if (lead) log_plan(r, o, trainer);
  const auto started = std::chrono::steady_clock::now();
  const double elapsed_before = trainer.state().elapsed_s;
  auto now_s = [&] { return elapsed_before + seconds_since(started); };
  logs.memory.write(memory_record(logs.monitor, trainer.state().step, "after_load", now_s()));
  logs.monitor.start_training();

  const Outcome out = train_catching_oom(trainer, r, o, logs, now_s);
  logs.bar.erase();
  logs.monitor.set_cap(0);
  trainer.state().elapsed_s = now_s();
  if (out.code != 0) std::cerr << who << ": " << out.status << ": " << out.error << "\n";
  if (lead) {
    write_summary(r, o, trainer, out, logs.monitor);
    std::cerr << "llt-finetune: " << out.status << " after " << trainer.state().step
              << " steps in " << format_duration(trainer.state().elapsed_s) << "; run folder "
              << r.dir.string() << "\n";
  }
  return leave(out.code, out.agreed);
}

}  // namespace llt::tools

extern "C" int llt_finetune_main(int argc, char** argv, const volatile sig_atomic_t* stopped) {
  using namespace llt::tools;
  catch_stop_signals(on_stop_signal);  // from here on ours; before, the launcher's flag held any signal
  if (*stopped != 0) request_stop();
  return tool_main("llt-finetune", [&] { return run_finetune(parse_finetune(argc, argv)); });
}
