// Loading LLaMA-2 checkpoints as users have them (DESIGN.md "The model"):
//   Meta          directory with params.json + consolidated.NN.pth (torch.save, bf16; one or
//   several
//                 model-parallel shards);
//   Hugging Face  directory with config.json + model.safetensors | *.safetensors and
//                 model.safetensors.index.json (fp16; q/k rows permuted for rotate-half RoPE)
//                 | pytorch_model.bin [+ index];
//   llama2.c      a legacy .bin file (7 int32 header, then fp32 weights in run.c's order).
// The format is told from content; the configuration comes from the checkpoint itself. Weights are
// read one tensor at a time into the model's parameters, converted to the requested dtype.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "llt/model.h"

namespace llt {

// kPreset: "--model preset:NAME" (llama2_7b, llama2_13b, tiny) with seeded random weights, for
// measuring time and memory of a shape without its checkpoint.
enum class CheckpointFormat { kMeta, kHuggingFace, kLlama2c, kPreset };

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
  CheckpointFormat format;
  std::filesystem::path path;
};

// The format of the checkpoint at `path` (a directory, or a file), from content: a directory's
// params.json (Meta) or config.json (HF); a file's first bytes (a .pth/.safetensors file stands
// for its directory). Throws InputError naming the path if it is none of them.
CheckpointFormat detect_format(const std::filesystem::path& path);

// The model configuration stored in the checkpoint, reading no weights (for Meta's
// "vocab_size": -1, the shape of tok_embeddings from the index). Throws InputError naming the
// file and field.
ModelArgs read_model_args(const std::filesystem::path& path);

// Builds the model on options.device/dtype and fills every parameter from the checkpoint. Throws
// InputError naming the file and key on a missing, unexpected or mis-shaped tensor (both shapes)
// and on truncated or corrupt files.
LoadedModel load_model(const std::filesystem::path& path, const LoadOptions& options);

// "meta", "huggingface", "llama2c".
std::string format_name(CheckpointFormat format);

// --- names and layouts shared with exporters (LoRA adapters, merged models)

// The one HF <-> Meta name table. Maps module paths with any suffix:
// "model.layers.3.self_attn.q_proj.weight" <-> "layers.3.attention.wq.weight",
// "model.layers.3.self_attn.q_proj.lora_A.weight" <-> "layers.3.attention.wq.lora_A.weight".
// std::nullopt when the name is not in the table.
std::optional<std::string> hf_to_meta_name(const std::string& hf_name);
std::optional<std::string> meta_to_hf_name(const std::string& meta_name);

// Buffers that real checkpoints carry but that are not weights (recomputed by the model):
// Meta's "rope.freqs", early HF Llama-2's "model.layers.N.self_attn.rotary_emb.inv_freq".
bool is_known_non_weight(const std::string& name);

// HF stores wq/wk rows per head in rotate-half order (transformers'
// convert_llama_weights_to_hf.py permute()). Returns Meta's interleaved-pair row order; w is
// (heads * hd, ...) and `n_heads` is n_heads for wq, n_kv_heads for wk.
at::Tensor unpermute_hf_rows(const at::Tensor& w, int64_t n_heads);
// The inverse (Meta -> HF rows), for exports.
at::Tensor permute_hf_rows(const at::Tensor& w, int64_t n_heads);

// Parameter names and shapes of the model `args` describes, as Transformer registers them,
// computed without building it.
std::vector<std::pair<std::string, std::vector<int64_t>>> parameter_shapes(const ModelArgs& args);

}  // namespace llt
