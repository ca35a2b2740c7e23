// LoRA (Hu et al. 2021) as torchtune and Hugging Face PEFT do it: a frozen base linear map plus a
// trainable low-rank update, y = x W^T + (alpha / r) * dropout(x) A^T B^T, with B initialised to
// zero so a fresh adapter leaves the model's output unchanged (bitwise: the update adds zeros).
//
// Names: the base weight keeps its Meta name ("layers.3.attention.wq.weight"); the adapter adds
// "layers.3.attention.wq.lora_a" (r, in) and "...wq.lora_b" (out, r). Adapter files:
//   save_adapter         DIR/adapter.safetensors (llt names) + DIR/adapter_config.json
//   export_peft_adapter  DIR/adapter_model.safetensors + DIR/adapter_config.json in the Hugging
//                        Face PEFT layout ("base_model.model.model.layers.3.self_attn.q_proj
//                        .lora_A.weight"), for the HF checkpoint of the same base model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "llt/model.h"
#include "llt/options.h"

namespace llt {

// The modules LoRA can adapt, by their Meta names: attention wq wk wv wo, feed-forward w1 w2 w3.
const std::vector<std::string>& lora_target_names();

// Throws InputError naming `source` and the field when rank < 1, alpha <= 0, dropout is outside
// [0, 1), or a target is unknown or repeated.
void validate_lora_options(const LoraOptions& options, const std::string& source);

// A LinearImpl with a LoRA update. The base weight W (out, in) is shared with the module it
// replaces (no copy) and frozen. The adapter lives on W's device in fp32 (the trainable master
// weights, also when W is stored in bf16/fp16) or fp64 when W is fp64.
class LoraLinearImpl : public LinearImpl {
 public:
  // A is Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)), from the default
  // CPU/CUDA generator (as PEFT and torchtune); B is zero.
  LoraLinearImpl(const LinearImpl& base, int64_t rank, double alpha, double dropout);

  // x (..., in) -> (..., out). Dropout on the adapter input is active in train() mode only.
  torch::Tensor forward(const torch::Tensor& x) override;
  // The adapter computed, the base matmul not (LinearImpl::forward_for_gradients).
  torch::Tensor forward_for_gradients(const torch::Tensor& x) override;

  // (scale * B A) in fp32, (out, in): what merging adds to W.
  torch::Tensor delta_weight() const;

  torch::Tensor lora_a;  // (r, in)
  torch::Tensor lora_b;  // (out, r)
  int64_t rank;
  double alpha;
  double dropout;
  double scale;  // alpha / r

 private:
  // out + the adapter's update of x.
  torch::Tensor with_adapter(const torch::Tensor& x, const torch::Tensor& out);
};

// Replaces the `options.targets` linear maps of every block with LoraLinear (replace_module, so
// the modules and the typed members wq ... w3 agree) and freezes every other parameter
// (requires_grad false). Throws InputError on bad options, RuntimeError if LoRA is already on.
void apply_lora(TransformerImpl& model, const LoraOptions& options);

// True when any module of the model is a LoraLinear.
bool has_lora(TransformerImpl& model);

// The adapter parameters, in module order: ("layers.0.attention.wq.lora_a", A), (".lora_b", B)...
std::vector<std::pair<std::string, torch::Tensor>> lora_parameters(TransformerImpl& model);

// Number of adapter parameters apply_lora(options) adds to a model with `args`, computed from
// the shapes alone (8,388,608 for the 7B model with r = 16 on wq, wv). Throws as validate.
int64_t count_lora_parameters(const ModelArgs& args, const LoraOptions& options);

// The merged weight W + scale * B A in fp32 (out, in) on W's device, for W (out, in) of any
// dtype, A (r, in), B (out, r): what merging stores, cast to W's dtype (merge_lora, llt-export).
torch::Tensor merged_lora_weight(const torch::Tensor& w, const torch::Tensor& a,
                                 const torch::Tensor& b, double scale);

// Folds every adapter into its base weight (merged_lora_weight, stored in W's dtype) and puts
// plain LinearImpl modules back, sharing the updated W. No-op without LoRA.
void merge_lora(TransformerImpl& model);

// Writes DIR/adapter.safetensors (fp32 lora_a/lora_b under llt names) and
// DIR/adapter_config.json (format, rank, alpha, dropout, targets, n_layers, dim), creating DIR
// and replacing earlier files of the same run. Throws RuntimeError on I/O errors or without LoRA.
void save_adapter(const std::filesystem::path& dir, TransformerImpl& model,
                  const LoraOptions& options);

// An adapter read from its folder, without a model: its options and, per adapted module
// ("layers.3.attention.wq"), A (r, in) and B (out, r) in fp32, in module order.
struct LoraAdapter {
  LoraOptions options;
  std::vector<std::pair<std::string, std::pair<torch::Tensor, torch::Tensor>>> modules;
};

// Reads an adapter for a model with `args`: one written by save_adapter (its n_layers and dim
// must be the model's), or a Hugging Face PEFT LoRA adapter (adapter_config.json with peft_type
// LORA, adapter_model.safetensors or .bin), as export_peft_adapter and PEFT's save_pretrained
// write it: r, lora_alpha, lora_dropout and target_modules from the config, q/k lora_B rows
// un-permuted; modules of blocks outside layers_to_transform are left out. DoRA, rsLoRA,
// biases, modules_to_save, per-module ranks or alphas and later variants (aLoRA, QALoRA,
// exclude_modules, ...) are refused by name. Throws InputError
// naming the file and the field or key on another format, a mismatch, a missing, mis-shaped or
// extra tensor.
LoraAdapter read_adapter(const std::filesystem::path& dir, const ModelArgs& args);

// Reads an adapter (as read_adapter) into `model`: applies LoRA with the file's options if the
// model has none (else they must match), then copies every tensor; a module the adapter leaves
// out gets B = 0. Returns the options.
// Throws InputError naming the file and the field or key on a mismatch, missing or extra tensor.
LoraOptions load_adapter(const std::filesystem::path& dir, TransformerImpl& model);

// Writes the adapter in Hugging Face PEFT's layout (see the top of this file) for the HF
// checkpoint of the base model: lora_B rows of wq (wk) get HF's rotate-half row permutation with
// n_heads (n_kv_heads), as the HF q/k weights have it. `base_model_name_or_path`: the base's
// Hub name ("" writes null); `base_n_layers`: the base's blocks, when the model kept fewer
// (--n-layers) the config's layers_to_transform lists the ones it has. lora_alpha is written as
// an integer when it is one. load_adapter reads the folder back. Throws as save_adapter.
void export_peft_adapter(const std::filesystem::path& dir, TransformerImpl& model,
                         const LoraOptions& options, const std::string& base_model_name_or_path,
                         int64_t base_n_layers);

}  // namespace llt
