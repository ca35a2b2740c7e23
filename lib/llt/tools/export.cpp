#include "llt/tools/export.h"

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>
#include <string>

#include <signal.h>
#include <unistd.h>

#include "llt/errors.h"
#include "llt/export.h"
#include "llt/runtime.h"
#include "llt/tokenizer.h"
#include "llt/tools/run_folder.h"
#include "llt/tools/setup.h"
#include "llt/train_state.h"
#include "llt/weights.h"

namespace llt::tools {
namespace fs = std::filesystem;

namespace {

// A full fine-tuning run resolved: the step folder whose tensors are exported and the base
// model (and kept layers) that gives their configuration.
struct RunInput {
  fs::path step;
  std::string model;
  int64_t n_layers = 0;
};

RunInput resolve_run(const ExportToolOptions& o) {
  const fs::path given(o.run);
  RunInput in;
  fs::path run_dir;
  if (fs::exists(given / "state.json")) {  // a checkpoints/step-N folder
    in.step = given;
    run_dir = fs::absolute(given).parent_path().parent_path();
  } else {
    run_dir = given;
    in.step = latest_train_state(given / "checkpoints");
    if (in.step.empty()) {
      throw InputError(o.run +
                       ": no checkpoints/step-N with state.json (--run takes a "
                       "fine-tuning run folder or one of its checkpoints/step-N folders)");
    }
  }
  const fs::path config = run_dir / "config.toml";
  if (!fs::exists(config)) {
    if (o.model.empty()) {
      throw InputError(in.step.string() +
                       ": no config.toml two folders up to name the base "
                       "model; pass --model BASE");
    }
    in.model = o.model;
    return in;
  }
  const RunConfig c = read_run_config(config);
  if (c.lora_rank > 0) {
    throw InputError(config.string() + ": lora-rank " + std::to_string(c.lora_rank) +
                     ": a LoRA run's training state holds only the adapter; export it with "
                     "--model BASE --adapter " +
                     (run_dir / "adapter").string());
  }
  in.model = o.model.empty() ? c.model : o.model;
  in.n_layers = c.n_layers;
  if (preset_model_name(in.model).empty() && !fs::exists(in.model)) {
    throw InputError(config.string() + ": model '" + in.model +
                     "' does not exist from here (the run's --model, relative to where it "
                     "started?); pass --model BASE");
  }
  return in;
}

void check_options(const ExportToolOptions& o) {
  if (o.model.empty() && o.run.empty()) throw InputError("give --model BASE or --run RUN");
  if (!o.run.empty() && !o.adapter.empty()) {
    throw InputError("--adapter and --run: a full fine-tuning run has no adapter; give one");
  }
  if (!o.run.empty() && o.n_layers != 0) {
    throw InputError("--n-layers with --run: the run's own n-layers (config.toml) applies");
  }
}

// The output folder may not exist, or be empty, or (--overwrite) be replaced.
void check_output(const ExportToolOptions& o) {
  if (o.output.empty()) throw InputError("--output: a folder is required");
  const fs::path out(o.output);
  if (!fs::exists(out)) return;
  if (!fs::is_directory(out))
    throw InputError(o.output + ": exists and is not a folder (--output)");
  if (!o.overwrite && !fs::is_empty(out)) {
    throw InputError(o.output +
                     ": already exists and is not empty (--output); pass "
                     "--overwrite to replace it");
  }
}

// --output as an absolute path without a trailing '/' ("out/" names the folder "out").
fs::path output_path(const std::string& output) {
  fs::path out = fs::absolute(output).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();
  return out;
}

// The folder --output is written beside, and the prefix of this tool's staging folders in it.
fs::path parent_of(const fs::path& out) {
  return out.parent_path();
}
std::string staging_prefix(const fs::path& out) {
  return "." + out.filename().string() + ".llt-export-";
}

// Staging folders of exports to the same --output whose process is gone (killed mid-way).
void remove_stale_staging(const fs::path& out) {
  const std::string prefix = staging_prefix(out);
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(parent_of(out), ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string pid = name.substr(name.rfind('-') + 1);
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (::kill(static_cast<pid_t>(std::stol(pid)), 0) == -1 && errno == ESRCH) {
      fs::remove_all(entry.path(), ec);
    }
  }
}

void check_space(const fs::path& dir, int64_t bytes) {
  std::error_code ec;
  const auto space = fs::space(dir, ec);
  const auto needed = static_cast<uintmax_t>(bytes) + (uintmax_t{64} << 20);  // + JSON, tokenizer
  if (!ec && space.available < needed) {
    throw RuntimeError(dir.string() + ": " + std::to_string(space.available >> 20) +
                       " MiB free, the export needs about " + std::to_string(needed >> 20) +
                       " MiB");
  }
}

// Renames the finished `staging` onto `out`; an existing `out` is moved aside first and removed
// once the new folder is in place.
void move_into_place(const fs::path& staging, const fs::path& out) {
  const fs::path old = parent_of(out) / (staging_prefix(out) + "old-" + std::to_string(getpid()));
  const bool replace = fs::exists(out) && !fs::is_empty(out);
  if (replace) fs::rename(out, old);
  fs::rename(staging, out);  // onto a missing or empty folder
  if (replace) fs::remove_all(old);
}

}  // namespace

int run_export(const ExportToolOptions& o) {
  check_options(o);
  check_output(o);
  configure_threads(o.threads);
  const auto started = std::chrono::steady_clock::now();

  std::unique_ptr<ExportWeights> weights;
  std::string model = o.model;
  if (!o.run.empty()) {
    const RunInput run = resolve_run(o);
    model = run.model;
    weights = std::make_unique<ExportWeights>(run.model, run.n_layers);
    weights->use_trained(trained_weights_file(run.step));
  } else {
    weights = std::make_unique<ExportWeights>(o.model, o.n_layers);
    if (!o.adapter.empty()) weights->merge_adapter(o.adapter);
  }
  if (o.tokenizer.empty() && !preset_model_name(model).empty()) {
    throw InputError("--model " + model +
                     ": random weights have no tokenizer.model beside "
                     "them; pass --tokenizer");
  }
  ModelOptions paths;
  paths.model = model;
  paths.tokenizer = o.tokenizer;
  const Tokenizer tokenizer = Tokenizer::load(find_tokenizer(paths));
  ExportOptions options;
  options.format = o.format;
  options.dtype = o.dtype ? scalar_type(*o.dtype) : weights->stored_dtype();
  options.max_shard_size = o.max_shard_size;

  const fs::path out = output_path(o.output);
  fs::create_directories(parent_of(out));
  remove_stale_staging(out);
  const int64_t bytes = export_tensor_bytes(weights->args(), options.dtype);
  check_space(parent_of(out), bytes);
  const fs::path staging = parent_of(out) / (staging_prefix(out) + std::to_string(getpid()));
  fs::remove_all(staging);
  fs::create_directory(staging);
  try {
    write_export(*weights, tokenizer, staging, options);
    move_into_place(staging, out);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    throw;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::cout << "llt-export: " << o.output << " (" << name_of(o.format) << ", "
            << weights->args().n_layers << " layers, " << dtype_name(options.dtype) << ", "
            << std::fixed << std::setprecision(bytes < 1e9 ? 1 : 2)
            << (bytes < 1e9 ? bytes / 1e6 : bytes / 1e9) << (bytes < 1e9 ? " MB" : " GB")
            << " of tensors) in " << std::setprecision(1) << seconds << " s" << std::endl;
  return 0;
}

}  // namespace llt::tools
