// Loading LLaMA-2 model weights as users have them (DESIGN.md "The model"):
//   Meta          directory with params.json + consolidated.NN.pth (torch.save, bf16; one or
//                 several model-parallel shards);
//   Hugging Face  directory with config.json + model.safetensors | *.safetensors and
//                 model.safetensors.index.json (fp16; q/k rows permuted for rotate-half RoPE)
//                 | pytorch_model.bin [+ index];
//   llama2.c      a legacy .bin file (7 int32 header, then fp32 weights in run.c's order).
// The format is told from content; the configuration comes from the weights' own files. Weights
// are read one tensor at a time into the model's parameters, converted to the requested dtype.
// Their names and layouts across formats: lib/llt/weight_names.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "llt/model.h"

namespace llt {

// kPreset: "--model preset:NAME" (llama2_7b, llama2_13b, tiny) with seeded random weights, for
// measuring time and memory of a shape without its weights.
enum class WeightsFormat { kMeta, kHuggingFace, kLlama2c, kPreset };

// The preset name of a "preset:NAME" model path, or "" for a real path.
std::string preset_model_name(const std::filesystem::path& path);

struct LoadOptions {
  c10::Device device{c10::kCPU};        // where the parameters live
  c10::ScalarType dtype = c10::kFloat;  // parameters are converted to it per tensor on load
  int64_t n_layers = 0;                 // > 0: keep only the first n blocks; others are never read
};

struct LoadedModel {
  ModelArgs args;  // of the loaded model (n_layers as kept)
  Transformer model{nullptr};
  WeightsFormat format;
  std::filesystem::path path;
};

// The format of the weights at `path` (a directory, or a file), from content: a directory's
// params.json (Meta) or config.json (HF); a file's first bytes (a .pth/.safetensors file stands
// for its directory). Throws InputError naming the path if it is none of them.
WeightsFormat detect_format(const std::filesystem::path& path);

// The model configuration stored with the weights, reading none of them (for Meta's
// "vocab_size": -1, the shape of tok_embeddings from the index). Throws InputError naming the
// file and field.
ModelArgs read_model_args(const std::filesystem::path& path);

// A checkpoint opened to be read one tensor at a time, by Meta parameter name (what load_model
// fills a model from, and what llt-export streams): nothing is read until a tensor is asked for.
class WeightsReader {
 public:
  // Opens the weights at `path` (any format, or "preset:NAME"), keeping the first `n_layers`
  // blocks (0: all), and checks every expected tensor is there with its shape. Throws InputError
  // as load_model.
  WeightsReader(const std::filesystem::path& path, int64_t n_layers);
  ~WeightsReader();
  WeightsReader(WeightsReader&&) noexcept;
  WeightsReader& operator=(WeightsReader&&) noexcept;

  const ModelArgs& args() const;  // of the kept model (n_layers as kept)
  WeightsFormat format() const;
  // The dtype the kept tensors are stored in: fp32 for llama2.c and presets (drawn in fp32).
  // Throws InputError naming two tensors when they are stored in different dtypes.
  c10::ScalarType stored_dtype() const;
  // Parameter `name` (of parameter_shapes(args())) as a CPU tensor of its stored dtype, in
  // Meta's layout (HF's q/k rows un-permuted, Meta's model-parallel shards joined). A preset's
  // tensors are drawn as load_model draws them on the CPU (init_random), so they must be read
  // in parameter order.
  // Throws InputError on unreadable files, RuntimeError on an unknown name or a preset read out
  // of order.
  at::Tensor read(const std::string& name);
  // read(name) copied into `dst`, converted to its dtype and device. Throws as read.
  void copy_into(const std::string& name, at::Tensor& dst);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Builds the model on options.device/dtype and fills every parameter from the weights at `path`.
// Throws InputError naming the file and key on a missing, unexpected or mis-shaped tensor (both
// shapes) and on truncated or corrupt files.
LoadedModel load_model(const std::filesystem::path& path, const LoadOptions& options);

// "meta", "huggingface", "llama2c".
std::string format_name(WeightsFormat format);

}  // namespace llt
