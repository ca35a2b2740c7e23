// Writing a model for other programs (llt-export), one tensor at a time so that only the tensors
// in flight are ever in memory: a Hugging Face transformers folder (LlamaForCausalLM: config.json,
// safetensors shards and their index, tokenizer files) or Meta's layout (params.json +
// consolidated.00.pth, a torch.save archive). The model is a base checkpoint, optionally with a
// LoRA adapter merged in, or a full fine-tuning run's trained tensors (ExportWeights).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include "llt/options.h"  // ExportFormat

namespace llt {

struct ModelArgs;
class Tokenizer;

// The model to export, read one tensor at a time under Meta's names and in Meta's layout.
class ExportWeights {
 public:
  // The checkpoint at `model` (any format llt reads, or preset:NAME), its first `n_layers`
  // blocks (0: all). Reads no tensor. Throws InputError as load_model.
  ExportWeights(const std::filesystem::path& model, int64_t n_layers);
  ~ExportWeights();

  // Merges the llt adapter in `dir` (a run's adapter/): every adapted W is read as
  // merged_lora_weight (W + alpha/r * B A in fp32). Throws InputError as read_adapter.
  void merge_adapter(const std::filesystem::path& dir);
  // Takes every tensor from `trainable` (a full fine-tuning step's trainable.safetensors, Meta
  // names), the checkpoint giving only the configuration. Throws InputError naming the file and
  // tensor on a missing, mis-shaped or extra tensor, or mixed dtypes.
  void use_trained(const std::filesystem::path& trainable);

  const ModelArgs& args() const;
  // The dtype of the tensors as stored (the base's, or the trained file's): the output's
  // default. Throws InputError when they are stored in different dtypes.
  c10::ScalarType stored_dtype() const;
  // Parameter `name` (parameter_shapes(args()) order: reads must follow it) as a CPU tensor: the
  // stored dtype, or fp32 where an adapter was merged. Throws InputError on unreadable files.
  at::Tensor read(const std::string& name);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct ExportOptions {
  ExportFormat format = ExportFormat::kHuggingFace;
  c10::ScalarType dtype = c10::kFloat;     // of every tensor written
  int64_t max_shard_size = 5'000'000'000;  // bytes of tensors per safetensors file, at most (HF)
};

// "5GB" -> 5'000'000'000: a size as Hugging Face's max_shard_size takes it, a number of bytes or
// a number with a unit (one space between them at most), B, KB, MB, GB, TB (powers of 1000) or
// KiB, MiB, GiB, TiB (of 1024), case-insensitive; std::nullopt for anything else, or under 1 byte.
std::optional<int64_t> parse_byte_size(const std::string& text);

// The files of a sharded export: tensors given in order with their byte sizes, grouped into
// consecutive shards of at most `max_bytes` each (transformers' rule: a tensor that does not fit
// starts a new shard; one larger than max_bytes gets a shard of its own). Indices into `bytes`.
std::vector<std::vector<size_t>> plan_shards(const std::vector<int64_t>& bytes, int64_t max_bytes);

// Bytes the export of `args` in `dtype` writes for its tensors (headers and JSON excluded).
int64_t export_tensor_bytes(const ModelArgs& args, c10::ScalarType dtype);

// Writes the model into `dir` (an existing, empty folder) in options.format:
//   hf    config.json, generation_config.json, model.safetensors or model-0000k-of-0000n
//         .safetensors + model.safetensors.index.json (HF names, q/k rows in HF's rotate-half
//         order, metadata {"format": "pt"}), tokenizer.model, tokenizer_config.json,
//         special_tokens_map.json;
//   meta  params.json, consolidated.00.pth (torch.save's zip format), tokenizer.model.
// Each file is written under a temporary name and renamed. Throws InputError on a model the
// format cannot describe, RuntimeError on I/O errors.
void write_export(ExportWeights& weights, const Tokenizer& tokenizer,
                  const std::filesystem::path& dir, const ExportOptions& options);

}  // namespace llt
