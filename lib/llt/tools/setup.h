// What every inference/training tool does first: threads, device, dtype, model and tokenizer,
// checked against each other.
#pragma once

#include <filesystem>

#include <nlohmann/json.hpp>

#include "llt/tokenizer.h"
#include "llt/tools/options.h"
#include "llt/weights.h"

namespace llt::tools {

// A model ready for inference: on its device, in its compute dtype, adapter applied, eval mode.
struct InferenceModel {
  LoadedModel loaded;
  c10::Device device{c10::kCPU};
  c10::ScalarType dtype = c10::kFloat;
  int threads = 1;
  double load_seconds = 0;
};

struct ModelSetup : InferenceModel {
  Tokenizer tokenizer;
};

// The tokenizer to use: --tokenizer if given, else `tokenizer.model` in the model directory (or
// beside the model file). Throws InputError if none is found.
std::filesystem::path find_tokenizer(const ModelOptions& options);

// Configures threads, resolves device/dtype, loads the model (straight into device and dtype)
// and applies --adapter; no tokenizer (for input that is already tokenized). Throws InputError.
InferenceModel load_inference_model(const ModelOptions& options);

// load_inference_model plus the tokenizer, checking the tokenizer's vocabulary fits the
// model's. Throws InputError.
ModelSetup setup_model(const ModelOptions& options);

// Where a result came from, for the records the tools write (perplexity.json, each line of
// generations.jsonl): model, adapter and tokenizer as given (null when not), the layers kept,
// dtype, device, llt's version and git sha.
nlohmann::json model_provenance(const ModelOptions& options, const InferenceModel& model);

}  // namespace llt::tools
