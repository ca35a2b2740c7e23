#include "llt/tools/setup.h"

#include <chrono>
#include <string>

#include "llt/errors.h"
#include "llt/lora.h"
#include "llt/runtime.h"
#include "llt/version.h"

namespace llt::tools {

std::filesystem::path find_tokenizer(const ModelOptions& options) {
  if (!options.tokenizer.empty()) return options.tokenizer;
  const std::filesystem::path model(options.model);
  const auto dir = std::filesystem::is_directory(model) ? model : model.parent_path();
  const auto candidate = dir / "tokenizer.model";
  if (std::filesystem::exists(candidate)) return candidate;
  throw InputError(options.model + ": no tokenizer.model beside the model; pass --tokenizer");
}

InferenceModel load_inference_model(const ModelOptions& options) {
  const int threads = configure_threads(options.threads);
  const auto device = resolve_device(options.device);
  const auto dtype = resolve_dtype(options.dtype, device);
  const auto started = std::chrono::steady_clock::now();
  LoadOptions load;
  load.device = device;
  load.dtype = dtype;
  load.n_layers = options.n_layers;
  auto loaded = load_model(options.model, load);
  if (!options.adapter.empty()) load_adapter(options.adapter, *loaded.model);
  loaded.model->eval();  // no LoRA dropout at inference
  const double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return InferenceModel{std::move(loaded), device, dtype, threads, load_seconds};
}

nlohmann::json model_provenance(const ModelOptions& options, const InferenceModel& model) {
  auto or_null = [](const std::string& s) { return s.empty() ? nlohmann::json() : nlohmann::json(s); };
  return {{"model", options.model},
          {"adapter", or_null(options.adapter)},
          {"tokenizer", or_null(options.tokenizer)},
          {"n_layers", model.loaded.args.n_layers},
          {"dtype", dtype_name(model.dtype)},
          {"device", model.device.str()},
          {"git_sha", git_sha()},
          {"llt_version", llt_version()}};
}

ModelSetup setup_model(const ModelOptions& options) {
  resolve_dtype(options.dtype, resolve_device(options.device));  // bad flags before files
  const auto tokenizer_path = find_tokenizer(options);
  auto tokenizer = Tokenizer::load(tokenizer_path);
  ModelSetup setup{load_inference_model(options), std::move(tokenizer)};

  const int64_t model_vocab = setup.loaded.args.vocab_size;
  if (setup.tokenizer.vocab_size() > model_vocab) {
    throw InputError(tokenizer_path.string() + ": tokenizer has " +
                     std::to_string(setup.tokenizer.vocab_size()) + " pieces but the model at " +
                     options.model + " has vocab_size " + std::to_string(model_vocab) +
                     "; wrong --tokenizer?");
  }
  return setup;
}

}  // namespace llt::tools
